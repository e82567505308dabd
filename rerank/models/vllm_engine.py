"""The vLLM engine behind the LLM rerankers and cross-encoders (``backend="vllm"``): the same two calls as the torch
engine (:class:`rerank.models.llm.LLM`), run by vLLM (paged attention, prefix caching, continuous
batching).

* :meth:`VLLM.next_token_logits`: one step per prompt, with vLLM returning the raw logits of
  exactly the candidate tokens (``logprobs_mode="raw_logits"`` and ``logprob_token_ids``), the
  output layer in fp32 (``head_dtype``) as the torch engine computes it;
* :meth:`VLLM.sample` (and :meth:`VLLM.generate` on it): greedy decoding, or ``n`` samples per
  prompt (``SamplingParams(n=..., temperature=..., top_p=..., seed=...)``);
* :class:`VLLMClassifier`: a sequence-classification model (a cross-encoder) on vLLM's pooling
  runner, the computation of vLLM's score task for cross-encoders (the pair's tokens, the
  model's pooling and classifier) without its activation: the raw logits of pairs that rerank
  tokenized and truncated itself.

Every call hands all its prompts to vLLM at once, which schedules them itself; prefix caching is
on for causal LMs (a query's instruction and text repeat across its windows and pairs). One engine
per (model weights, dtype, context window, runner) is started per process and shared by every
reranker that asks for it. On a CPU the engine runs inside the calling process (no
``if __name__ == "__main__"`` guard needed), on every core, with a KV cache of ``$VLLM_CPU_KVCACHE_SPACE`` GiB (4 by
default), and eagerly unless ``$RERANK_VLLM_COMPILE`` is 1: compiling costs a minute or more at a start and pays back
on long runs (:func:`compile_on_cpu`).
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from collections.abc import Sequence
from typing import Any

from ..env import flag
from ..errors import MissingDependency, RerankError
from .engine import Cost, Encoded
from .llm import ChatLM, Completion, LLMCost
from .loading import context_window, import_transformers, model_fingerprint, pick_device, pick_dtype, resolve_model

log = logging.getLogger("rerank")

#: KV cache of a CPU engine, GiB, unless $VLLM_CPU_KVCACHE_SPACE says otherwise
CPU_KV_CACHE_GIB = 4
_engines: dict[tuple[str, str, int, str, str, bool], Any] = {}
#: token ids whose logits the running :meth:`VLLM.next_token_logits` call reads, projected in fp32 (CPU)
_EXACT: list[int] = []


class EngineUnavailable(RerankError, RuntimeError):
    """vLLM cannot run a model (the message names the model and the reason)."""


def vllm_extra() -> str:
    """The extra that brings vLLM on this machine."""
    import torch

    return "vllm" if torch.cuda.is_available() else "vllm-cpu"


def compile_on_cpu() -> bool:
    """Whether a CPU engine compiles its model (vLLM's default on a GPU): ``$RERANK_VLLM_COMPILE`` is 1.
    Off by default: compiling adds a minute or more to a start on a small CPU (less once vLLM's compile cache
    holds the model), which a long run (a DL19 sweep) pays back and a short one does not."""
    return flag("RERANK_VLLM_COMPILE", strict=True)


def _import_vllm() -> Any:
    on_cpu = not _cuda()
    if on_cpu:  # before vLLM is imported: it reads these once
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this process: no spawn, no main guard
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # no core kept for a scheduler process there is none of
        # a compiled model ($RERANK_VLLM_COMPILE) from inductor's cache at the next start: vllm-cpu 0.32 saves its
        # AOT-compiled models but fails to load them ("'function' object has no attribute 'finalize_loading'") and
        # compiles anew at every start (SmolLM2-135M on a 2-core EPYC: 58 s a start; 22 s from inductor's cache)
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
    # vLLM's start-up warnings (no tcmalloc in LD_PRELOAD, thread binding, deprecations) are not the
    # user's to act on: errors only, unless $VLLM_LOGGING_LEVEL asks for more
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm(\.|$)")
    try:
        import vllm
    except ModuleNotFoundError as e:
        if e.name != "vllm":
            raise EngineUnavailable(f"vLLM is installed but does not import: {e} (see docs/installing.md, vLLM)") from e
        raise MissingDependency("backend 'vllm'", vllm_extra(), "vllm") from None
    except (ImportError, OSError, RuntimeError) as e:
        raise EngineUnavailable(f"vLLM is installed but does not import: {str(e).splitlines()[0]} "
                                f"(see docs/installing.md, vLLM)") from e
    if on_cpu:
        _exact_head_on_cpu()
    return vllm


def _exact_head_on_cpu() -> None:
    """The output layer on a CPU for a bf16 model whose engine asks for an fp32 head (``head_dtype:
    float32``, for :meth:`VLLM.next_token_logits`): vLLM 0.32 casts the whole head's weight to
    fp32 on every engine step off CUDA/ROCm (1.5B Qwen: 0.9 GB made anew, 0.38 s a step on a
    2-core EPYC against 0.04 s in bf16), which made a decoding step of SmolLM2-135M 2.7x slower
    (85 ms against 31). Here the head projects in the model's dtype, as the torch engine's
    ``generate`` does, and only the tokens a :meth:`VLLM.next_token_logits` call reads
    (:data:`_EXACT`, set for that call) are projected again in fp32, as the torch engine reads
    them: the same values as vLLM's fp32 head for those tokens. Quantized heads, GPUs and vLLM
    versions without the method keep vLLM's own path. On a CPU the engine runs in this process,
    so the change reaches it."""
    try:
        from vllm.model_executor.layers import logits_processor as lp
    except ImportError:
        return
    cls = getattr(lp, "LogitsProcessor", None)
    original = getattr(cls, "_apply_head", None)
    plain = tuple(getattr(lp, n) for n in ("UnquantizedEmbeddingMethod", "UnquantizedLinearMethod") if hasattr(lp, n))
    if cls is None or original is None or getattr(original, "_rerank_exact", False) or not plain:
        return

    def apply_head(self: Any, lm_head: Any, hidden_states: Any, embedding_bias: Any) -> Any:
        dtype = getattr(self, "head_dtype", None)
        quant = getattr(lm_head, "quant_method", None)
        if (dtype is None or dtype == hidden_states.dtype or hidden_states.device.type != "cpu"
                or not isinstance(quant, plain)):
            return original(self, lm_head, hidden_states, embedding_bias)
        import torch

        logits = quant.apply(lm_head, hidden_states, bias=embedding_bias).to(dtype)
        if _EXACT:
            ids = torch.tensor(_EXACT, device=hidden_states.device)
            bias = embedding_bias[ids].to(dtype) if embedding_bias is not None else None
            logits[..., ids] = torch.nn.functional.linear(hidden_states.to(dtype), lm_head.weight[ids].to(dtype), bias)
        return logits

    apply_head._rerank_exact = True  # type: ignore[attr-defined]
    apply_head.__wrapped__ = original  # type: ignore[attr-defined]
    cls._apply_head = apply_head


def _cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class _OnVLLM:
    """What a model vLLM runs keeps: its weights, where and in what it runs, its tokenizer."""

    name: str
    path: str
    device: str
    dtype: Any
    tokenizer: Any
    fingerprint: str
    architectures: str  # as its config.json names them

    def _place(self, name: str, what: str, device: str, dtype: str) -> Any:
        """Set where the model is and runs (a device vLLM was not built for is refused); its
        transformers config."""
        transformers = import_transformers(what)
        self.name, self.path = name, resolve_model(name)
        self.device = pick_device(device)
        if self.device.startswith("cuda") != _cuda():
            raise EngineUnavailable(f"{name}: vLLM runs where it was built for ({'GPU' if _cuda() else 'CPU'}), "
                                    f"not on device {self.device!r}")
        self.dtype = pick_dtype(dtype, self.device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
        self.fingerprint = model_fingerprint(self.path)
        config = transformers.AutoConfig.from_pretrained(self.path)
        self.architectures = ", ".join(getattr(config, "architectures", None) or ()) or "no architecture named"
        return config


class VLLM(ChatLM, _OnVLLM):
    """A Hugging Face causal LM by id or path, run by vLLM. Raises :class:`EngineUnavailable`
    (one line: the model and vLLM's reason) for a model vLLM cannot load or run here."""

    def __init__(self, name: str, *, device: str = "auto", dtype: str = "auto", batch_tokens: int | None = None,
                 max_length: int | None = None) -> None:
        del batch_tokens  # vLLM schedules its own batches
        config = self._place(name, "LLM rerankers", device, dtype)
        self.window = context_window(config, self.tokenizer, max_length, 4096)
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self.cost = LLMCost()
        self.engine = _engine(self, self.window, "generate")
        self._vllm = _import_vllm()

    def _run(self, prompts: Sequence[list[int]], params: Any) -> list[Any]:
        from vllm.inputs import TokensPrompt

        t0 = time.perf_counter()
        outs = self.engine.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
        self._account(len(prompts), sum(map(len, prompts)), time.perf_counter() - t0)
        self.cost.batches += 1  # one submission; vLLM forms the batches inside it
        return list(outs)

    def next_token_logits(self, prompts: Sequence[list[int]], candidates: Sequence[int]) -> list[list[float]]:
        """For each tokenized prompt, the logits of the ``candidates`` tokens as the next token:
        vLLM's raw logits of exactly these tokens (no top-k), in fp32."""
        if not prompts:
            return []
        self._check_fits(prompts)
        wanted = list(dict.fromkeys(int(c) for c in candidates))
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=wanted, detokenize=False)
        _EXACT[:] = wanted  # the engine runs in this call (in this process on a CPU): these in fp32 there
        try:
            outs = self._run(prompts, params)
        finally:
            _EXACT.clear()
        rows = []
        for out in outs:
            got = out.outputs[0].logprobs[0]  # token id -> Logprob; with raw_logits, .logprob is the logit
            rows.append([float(got[int(c)].logprob) for c in candidates])
        return rows

    def _sample(self, prompts: Sequence[list[int]], max_new_tokens: int, n: int, temperature: float, top_p: float,
                seed: int | None, stop: Sequence[str]) -> list[list[Completion]]:
        params = self._vllm.SamplingParams(n=n, max_tokens=max_new_tokens, temperature=temperature,
                                           top_p=top_p if temperature > 0 else 1.0, seed=seed, skip_special_tokens=True,
                                           stop=list(stop) or None)
        rows = []
        for out in self._run(prompts, params):
            row = []
            for done in out.outputs:
                eos = done.finish_reason == "stop" and done.stop_reason is None  # ended by EOS, which vLLM lists
                self.cost.generated += len(done.token_ids) - int(eos)  # as the torch engine counts: without the EOS
                row.append(Completion(done.text, tuple(int(t) for t in done.token_ids), bool(eos)))
            rows.append(row)
        return rows


class VLLMClassifier(_OnVLLM):
    """A Hugging Face sequence-classification model (a cross-encoder) by id or path, on vLLM's
    pooling runner. Raises :class:`EngineUnavailable` (one line: the model and vLLM's reason) for a
    model vLLM cannot load or cannot run as a classifier."""

    def __init__(self, name: str, *, device: str = "auto", dtype: str = "auto", max_length: int | None = None) -> None:
        config = self._place(name, "cross-encoders", device, dtype)
        self.window = context_window(config, self.tokenizer, max_length)
        self.cost = Cost()
        self.engine = _engine(self, self.window, "pooling")
        tasks = tuple(getattr(self.engine, "supported_tasks", ()))
        if "classify" not in tasks:
            raise EngineUnavailable(f"vLLM cannot score with {name} ({self.path}): it runs it for {', '.join(tasks)}, "
                                    "not as a classifier")
        self._vllm = _import_vllm()

    def logits(self, items: Sequence[Encoded]) -> list[list[float]]:
        """The classifier's raw logits (no sigmoid or softmax) of each tokenized pair (``input_ids``,
        and ``token_type_ids`` where the tokenizer makes them), all handed to vLLM in one call."""
        if not items:
            return []
        from vllm.inputs import TokensPrompt

        prompts, params = [], []
        for x in items:
            prompts.append(TokensPrompt(prompt_token_ids=list(x["input_ids"])))
            types = list(x.get("token_type_ids") or ())
            # as vLLM's score task passes a pair's segments: the position where the second begins
            extra = {"compressed_token_type_ids": types.index(1) if 1 in types else len(types)} if types else None
            params.append(self._vllm.PoolingParams(use_activation=False, extra_kwargs=extra))
        t0 = time.perf_counter()
        outs = self.engine.encode(prompts, pooling_params=params, pooling_task="classify", use_tqdm=False)
        self.cost.seconds += time.perf_counter() - t0
        self.cost.calls += len(items)
        self.cost.tokens += sum(len(x["input_ids"]) for x in items)
        self.cost.batches += 1  # one submission; vLLM forms the batches inside it
        return [[float(v) for v in out.outputs.data.reshape(-1).tolist()] for out in outs]


def _engine(model: _OnVLLM, window: int, runner: str) -> Any:
    """The vLLM engine of ``model``'s weights and dtype with this context window and runner
    (``generate`` for causal LMs, ``pooling`` for classifiers): started once per process."""
    name, path, device, dtype = model.name, model.path, model.device, str(model.dtype).removeprefix("torch.")
    compiled = device != "cpu" or compile_on_cpu()
    key = (model.fingerprint, dtype, window, device, runner, compiled)
    if key in _engines:
        return _engines[key]
    vllm = _import_vllm()
    # vLLM's own implementations only: its Transformers fallback patches the transformers model class in place
    # (the architecture then no longer loads on PyTorch in this process, where auto falls back to it)
    options: dict[str, Any] = {"model": path, "tokenizer": path, "dtype": dtype, "max_model_len": window, "seed": 0,
                               "trust_remote_code": False, "model_impl": "vllm"}
    if runner == "pooling":
        options["runner"] = "pooling"  # its classifier head runs in fp32 (vLLM's default for pooling models)
    else:
        options["enable_prefix_caching"] = True
        options["logprobs_mode"] = "raw_logits"  # the candidates' logits as they are, not log-softmaxed or top-k
        if dtype != "float32":
            options["hf_overrides"] = {"head_dtype": "float32"}  # the output layer in fp32, as the torch engine reads it
    if device == "cpu":
        options["enforce_eager"] = not compiled
        if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            options["kv_cache_memory_bytes"] = CPU_KV_CACHE_GIB << 30
    t0 = time.perf_counter()
    try:
        engine = vllm.LLM(**options)
    except Exception as e:  # noqa: BLE001 - vLLM raises many kinds for a model it cannot run
        raise EngineUnavailable(f"vLLM cannot load {name} ({model.architectures}; {path}): {_reason(e)}") from e
    log.info("%s: vLLM %s engine started in %.0f s (%s, %s, context %d, %s)", name, runner, time.perf_counter() - t0,
             device, dtype, window, "compiled" if compiled else "eager")
    _engines[key] = engine
    return engine


def _reason(e: BaseException) -> str:
    """vLLM's reason in one line: a config validation error's own message (not its header), cut
    before the list of every supported architecture."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    lines = [line for line in lines if not re.match(r"\d+ validation errors? for ", line)] or [type(e).__name__]
    reason = lines[0].removeprefix("Value error, ").split(" Supported architectures")[0]
    return reason if len(reason) <= 300 else reason[:297] + "..."
