"""Pointwise rerankers: each (query, document) pair gets a score on its own.

* :class:`CrossEncoder`: any Hugging Face sequence-classification cross-encoder
  (cross-encoder/ms-marco-MiniLM-L-6-v2, BAAI/bge-reranker-*), sigmoid or raw logit.
* :class:`LLMPointwise`: a causal LLM asked whether the passage answers the query;
  score = logit("Yes") - logit("No") at the answer position, chat template when the model has one.
* :class:`Splade`: SPLADE query and document vectors, score = their dot product.

All run on the batched engine (length-sorted, token-budget batches, bf16 where the hardware
has it). Long documents are truncated from the document side; the query is kept whole.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from ..errors import DataError
from ..models.backends import Graph, runner
from ..models.engine import Cost, Encoded, Engine, Truncation, finite_scores, kept_encodings, kept_now
from ..models.loading import LoadedModel, batch_budget, context_window, load_model
from .base import Reranker
from .templates import Template, compile_parts, fill, for_model
from .templates import load as load_template

log = logging.getLogger("rerank")


def tokenize_pairs(tokenizer: Any, queries: list[str], docs: list[str], max_length: int, name: str, **options: Any) -> Any:
    """Tokenize (query, document) pairs, truncating the document; when a query alone overflows
    ``max_length``, both sides are shortened (longer first) and a warning says so."""
    try:
        return tokenizer(queries, docs, truncation="only_second", max_length=max_length, **options)
    except Exception:  # noqa: BLE001 - the tokenizer raises a bare Exception for this
        log.warning("%s: some queries do not fit %d tokens with any passage; they are truncated too", name, max_length)
        return tokenizer(queries, docs, truncation="longest_first", max_length=max_length, **options)


def _check_max_length(max_length: int | None) -> None:
    if max_length is not None and max_length < 16:
        raise ValueError(f"max_length {max_length} is too short for a query and a passage")


class _ModelReranker(Reranker):
    """Loading, device, dtype and the engine, shared by the pointwise models."""

    kind = "model"
    family = "pointwise"
    spec_options: ClassVar[tuple[str, ...]] = ("depth", "block", "cache", "device", "dtype", "batch_tokens", "max_length")
    # tokens per batch: on CPU small batches stay in cache (MiniLM fp32, 1,000 DL19 pairs: 12.1 s at
    # 4,096 vs 14.2 s at 16,384); a GPU wants large ones
    cpu_batch_tokens = 4096
    gpu_batch_tokens = 32768
    #: what the model computes, for the ONNX Runtime and OpenVINO backends (None: PyTorch only)
    graph: ClassVar[Graph | None] = None

    def __init__(self, name: str, *, max_length: int | None = None, batch_tokens: int | None = None, device: str = "auto",
                 dtype: str = "auto", depth: int = 100, cache: Any = None, backend: str = "auto",
                 quantize: str = "none") -> None:
        super().__init__(depth=depth, cache=cache)
        _check_max_length(max_length)  # before any weights load
        if self.graph is None and (backend not in ("auto", "torch") or quantize != "none"):
            raise ValueError(f"{self.kind} runs on PyTorch only (backend {backend!r}, quantize {quantize!r} asked for)")
        loaded = load_model(name, self.model_kind, device=device, dtype=dtype, max_length=max_length,
                            backend=backend if self.graph is not None else "torch", quantize=quantize)
        self._setup(name, loaded.path, loaded.device, loaded.dtype, batch_tokens, max_length)
        self.fingerprint = loaded.fingerprint
        self._attach(loaded.tokenizer, loaded.model, loaded)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str = "in-memory", *, max_length: int | None = None,
                    batch_tokens: int | None = None, depth: int = 100, **options: Any) -> Any:
        """Wrap a model already in memory (e.g. one being trained) without loading anything."""
        self = cls.__new__(cls)
        Reranker.__init__(self, depth=depth)
        for k, v in options.items():  # subclass options (e.g. activation), as their __init__ would set them
            setattr(self, k, v)
        param = next(model.parameters())
        self._setup(name, name, str(param.device), param.dtype, batch_tokens, max_length)
        self.fingerprint = f"in-memory:{id(model)}"  # no score cache: the weights change while training
        self._attach(tokenizer, model)
        return self

    def _setup(self, name: str, path: str, device: str, dtype: Any, batch_tokens: int | None, max_length: int | None) -> None:
        self.model_name, self.path, self.device, self.dtype = name, path, device, dtype
        self.engine = Engine(device=device, batch_tokens=batch_budget(device, batch_tokens, self.cpu_batch_tokens,
                                                                      self.gpu_batch_tokens))
        self._max_length = max_length
        self.name = f"{self.kind}:{name}"
        unit = "texts" if self.kind == "splade" else "pairs (cut on the document side)"
        self.truncation = Truncation(self.name, unit)

    def _attach(self, tokenizer: Any, model: Any, loaded: LoadedModel | None = None) -> None:
        self.tokenizer, self.model = tokenizer, model
        self.window = self._window(self.tokenizer, self.model.config)
        pad = self.tokenizer.pad_token_id
        self.engine.pad_id = pad if pad is not None else 0
        if self.graph is not None:
            # the forward pass of the family's graph on the chosen backend (PyTorch: the model itself)
            self._run = runner(loaded, self.graph) if loaded is not None else self.graph.bind(model)
        # what a cached score depends on: the weights' content (not their folder), dtype, window, backend
        self.model_key = f"{self.kind}|{self.fingerprint}|{self.dtype}|{self.window}"
        self.backend, self.quantize = (loaded.backend, loaded.quantize) if loaded is not None else ("torch", "none")
        if self.backend != "torch":
            self.model_key += f"|{self.backend}-{self.quantize}-{self.graph.name if self.graph else ''}"

    def _on_engine(self, name: str, llm: Any, *, max_length: int | None = None, batch_tokens: int | None = None,
                   device: str = "auto", dtype: str = "auto", depth: int = 100, cache: Any = None,
                   quantize: str = "none", backend: str = "vllm") -> None:
        """Set up on a model that another engine runs (vLLM: ``llm`` has its path, device, dtype,
        tokenizer, window and fingerprint): tokenization, truncation and the cache key as on the torch
        engine; the scores from that engine."""
        del device, dtype, backend  # the engine's
        if quantize != "none":
            raise ValueError(f"{self.kind} runs vLLM without int8 quantization (quantize {quantize!r} asked for)")
        Reranker.__init__(self, depth=depth, cache=cache)
        self._setup(name, llm.path, llm.device, llm.dtype, batch_tokens, max_length)
        self.fingerprint = llm.fingerprint
        self.tokenizer, self.window = llm.tokenizer, llm.window
        self.backend, self.quantize = "vllm", "none"
        self.model_key = f"{self.kind}|{self.fingerprint}|{self.dtype}|{self.window}|vllm"

    @property
    def cost(self) -> Cost:
        return self.engine.cost

    def _window(self, tokenizer: Any, config: Any) -> int:
        _check_max_length(self._max_length)
        return context_window(config, tokenizer, self._max_length)

    def _note_truncation(self, n: int, total: int, window: int) -> None:
        self.truncation.add(n, total, window)


class CrossEncoder(_ModelReranker):
    """A Hugging Face cross-encoder. ``activation``: "sigmoid" (as sentence-transformers does for
    one-label models) or "none" (raw logit). Two-label models score log p(relevant).

    ``backend="vllm"``: the model on vLLM's pooling runner (:class:`~rerank.models.vllm_engine.VLLMClassifier`),
    every pair of a block of queries in one submission, the same tokens, logits and scores as on
    PyTorch; ``auto`` never picks it (measured only on a shared CPU so far: docs/installing.md)."""

    kind = "cross-encoder"
    spec_help = "any Hugging Face cross-encoder (sequence classification), sigmoid or raw logit"
    spec_options: ClassVar[tuple[str, ...]] = (*_ModelReranker.spec_options, "activation", "backend", "quantize")
    model_kind = "sequence-classification"
    graph = Graph("seq-cls-logits", lambda model, x: model(**x).logits.float(), ("labels",))

    vllm: Any = None  # the model on vLLM (backend "vllm"); None: the backend of load_model

    def __init__(self, name: str, *, activation: str = "sigmoid", **kwargs: Any) -> None:
        if activation not in ("sigmoid", "none"):
            raise ValueError(f"activation must be 'sigmoid' or 'none', not {activation!r}")
        if kwargs.get("backend") == "vllm":
            from ..models.vllm_engine import VLLMClassifier

            _check_max_length(kwargs.get("max_length"))  # before any weights load
            self.vllm = VLLMClassifier(name, device=kwargs.get("device") or "auto", dtype=kwargs.get("dtype") or "auto",
                                       max_length=kwargs.get("max_length"))
            self._on_engine(name, self.vllm, **kwargs)
        else:
            super().__init__(name, **kwargs)
        self.activation = activation
        self.model_key += f"|{activation}"

    @property
    def cost(self) -> Cost:
        return self.vllm.cost if self.vllm is not None else self.engine.cost

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        enc = tokenize_pairs(self.tokenizer, [q for q, _ in pairs], [d for _, d in pairs], self.window, self.name)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        items = [{k: enc[k][i] for k in keys} for i in range(len(pairs))]
        self._note_truncation(sum(len(x["input_ids"]) >= self.window for x in items), len(pairs), self.window)
        return items

    def _forward(self, batch: dict[str, Any]) -> Any:
        return self._head(self._run(batch))

    def _head(self, logits: Any) -> Any:
        """The scores of a batch's logits (one row a pair)."""
        import torch

        if logits.shape[-1] == 1:
            s = logits[:, 0]
            return torch.sigmoid(s) if self.activation == "sigmoid" else s
        return torch.log_softmax(logits, dim=-1)[:, 1]

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if self.vllm is None:
            return finite_scores(self.engine.run(self.encode(pairs), self._forward), self.name)
        if not pairs:
            return []
        import torch

        rows = self.vllm.logits(self.encode(pairs))
        return finite_scores(self._head(torch.tensor(rows, dtype=torch.float32).reshape(len(pairs), -1)).tolist(),
                             self.name)


class LLMPointwise(_ModelReranker):
    """A causal LLM as a relevance judge, by a prompt template (:mod:`rerank.rerankers.templates`):
    rerank's own yes/no prompt (``yes-no``, the default), a model's published format
    (``qwen3-reranker``, ``bge-reranker-gemma``, ``mxbai-rerank-v2``), a user's JSON file, or a
    ``prompt`` string with ``{query}`` and ``{passage}`` in the model's chat template. Only the
    hidden state at the answer position goes through the output layer, and only for the two
    answer tokens."""

    kind = "llm-pointwise"
    spec_help = "a causal LLM as relevance judge by a prompt template (yes-no, qwen3-reranker, bge-reranker-gemma, ...)"
    spec_options: ClassVar[tuple[str, ...]] = (*_ModelReranker.spec_options, "prompt", "template", "instruction",
                                                "max_query_tokens", "backend")
    model_kind = "causal-lm"
    gpu_batch_tokens = 16384
    llm: Any = None  # the causal LM when another engine (vLLM) runs it; None: this reranker's own torch engine

    def __init__(self, name: str, *, template: str | Template | None = None, prompt: str | None = None,
                 instruction: str | None = None, max_query_tokens: int = 64, backend: str | None = None,
                 **kwargs: Any) -> None:
        if prompt is not None and template is not None:
            raise ValueError("give a prompt or a template, not both")
        if prompt is not None:
            tpl = Template.from_prompt(prompt)
        else:
            chosen = template or for_model(name)
            tpl = chosen if isinstance(chosen, Template) else load_template(chosen or "yes-no")
            if template is None and chosen:
                log.info("%s: the %s prompt template (written for this model; --template to change it)", name, chosen)
        kwargs.setdefault("max_length", tpl.max_length or 512)
        from ..models.llm_engines import on_vllm

        _check_max_length(kwargs["max_length"])  # before any weights load
        self.llm = on_vllm(name, backend, device=kwargs.get("device") or "auto", dtype=kwargs.get("dtype") or "auto",
                           max_length=kwargs["max_length"])
        if self.llm is None:
            super().__init__(name, **kwargs)
        else:
            self._on_engine(name, self.llm, **kwargs)
        self.template, self.max_query_tokens = tpl, max_query_tokens
        self.instruction = tpl.instruction_text(instruction)
        self.yes, self.no = self._answer_token(tpl.yes), self._answer_token(tpl.no)
        self.parts = compile_parts(tpl, self.tokenizer)
        dynamic = [i for i, p in enumerate(self.parts) if p.text is not None]
        self.suffix = [t for p in self.parts[dynamic[-1] + 1 :] for t in p.ids]  # the fixed tokens after the last text
        fixed = sum(len(p.ids) for p in self.parts)
        if fixed + max_query_tokens + 16 > self.window:
            raise ValueError(f"max_length {self.window} leaves no room for a passage after the prompt ({fixed} tokens)")
        self.model_key += f"|{tpl.to_json()}|{self.instruction}"
        if self.llm is not None:
            return
        # the two answer rows of the output layer, kept in fp32: a bf16 product rounds the logits to
        # steps of ~0.1, which leaves 20 passages with 6-7 distinct scores (measured) and many ties
        head = self.model.get_output_embeddings()
        self._head_w = head.weight[[self.yes, self.no]].detach().float()
        bias = getattr(head, "bias", None)
        self._head_b = bias[[self.yes, self.no]].detach().float() if bias is not None else None

    @property
    def cost(self) -> Cost:
        return self.llm.cost if self.llm is not None else self.engine.cost

    def _answer_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise DataError(f"{self.model_name}: the answer {word!r} is {len(ids)} tokens in this tokenizer; "
                            f"the yes/no scorer needs single-token answers")
        return int(ids[0])

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        """The prompt of each pair: the template's pieces, filled and tokenized as the model's reference
        code does; a passage that does not fit is cut from its end (a query that alone leaves no room
        is cut to ``max_query_tokens`` first)."""
        texts: dict[int, list[list[int]]] = {}
        for i, part in enumerate(self.parts):
            if part.text is not None:
                filled = [fill(part.text, query=q, passage=d, instruction=self.instruction) for q, d in pairs]
                texts[i] = self.tokenizer(filled, add_special_tokens=False)["input_ids"]
        fixed = sum(len(p.ids) for p in self.parts)
        items, cut = [], 0
        for n in range(len(pairs)):
            seqs = [list(texts[i][n]) if i in texts else list(p.ids) for i, p in enumerate(self.parts)]
            for i, p in enumerate(self.parts):
                if p.query_only and len(seqs[i]) + fixed + 16 > self.window:
                    seqs[i] = seqs[i][: self.max_query_tokens]
            over = sum(map(len, seqs)) - self.window
            if over > 0:
                cut += 1
                i = next(i for i, p in enumerate(self.parts) if p.has_passage)
                seqs[i] = seqs[i][: max(1, len(seqs[i]) - over)]
            items.append({"input_ids": [t for s in seqs for t in s][: self.window]})
        self._note_truncation(cut, len(pairs), self.window)
        return items

    def _forward(self, batch: dict[str, Any]) -> Any:
        import torch

        hidden = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["lengths"] - 1]
        logits = last.float() @ self._head_w.T
        if self._head_b is not None:
            logits = logits + self._head_b
        return self._judge(logits)

    def _judge(self, logits: Any) -> Any:
        """The template's score from the (yes, no) logits, one row a prompt."""
        import torch

        diff = logits[:, 0] - logits[:, 1]
        if self.template.score == "p-yes":
            return torch.sigmoid(diff)  # = softmax over (yes, no), p(yes)
        return logits[:, 0] if self.template.score == "logit-yes" else diff

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if self.llm is None:
            return finite_scores(self.engine.run(self.encode(pairs), self._forward), self.name)
        import torch

        rows = self.llm.next_token_logits([x["input_ids"] for x in self.encode(pairs)], [self.yes, self.no])
        return finite_scores(self._judge(torch.tensor(rows, dtype=torch.float32).reshape(-1, 2)).tolist(), self.name)




_PROJECTION_SWAP = threading.RLock()


@contextlib.contextmanager
def _without_projection(model: Any) -> Iterator[None]:
    """``model``'s output projection (hidden states to vocabulary logits) replaced by the identity while
    inside: the masked LM's "logits" are then the hidden states that projection reads."""
    import torch

    head = model.get_output_embeddings()
    name = next(n for n, m in model.named_modules() if m is head)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    with _PROJECTION_SWAP:  # one model may run in two threads: each swaps and restores in turn
        setattr(parent, attr, torch.nn.Identity())
        try:
            yield
        finally:
            setattr(parent, attr, head)


def _splade_hidden(model: Any, x: dict[str, Any]) -> Any:
    """What SPLADE's projection onto the vocabulary reads: the MLM head's hidden states (batch x
    length x hidden). The projection itself runs outside the graph, onto the columns asked for."""
    with _without_projection(model):
        return model(**x).logits


class Splade(_ModelReranker):
    """SPLADE: vectors log(1 + relu(MLM logits)) max-pooled over tokens; score = q · d.

    Reranking needs a document's weights on its query's terms only: the documents are projected onto
    the vocabulary entries of the call's queries (hundreds to thousands of 30k), which is exact and skips
    most of a small model's cost (splade-tiny: 90% of its multiply-adds are that projection).
    Whole vectors (:meth:`vectors`, :meth:`score_matrix`: a CUR search, an index) are encoded once
    per text, and the last ``vector_cache`` of them are kept, shared by the instances of one model
    (same weights, dtype and window) in a process; reranking uses the kept ones it finds."""

    kind = "splade"
    spec_help = "SPLADE query and document vectors, score = their dot product"
    model_kind = "masked-lm"
    graph = Graph("splade-hidden", _splade_hidden, ("length",))
    spec_options: ClassVar[tuple[str, ...]] = (*_ModelReranker.spec_options, "backend", "quantize")
    gpu_batch_tokens = 8192
    vector_cache = 20_000  # texts whose sparse vectors are kept (~3 KB each)
    #: above this share of the vocabulary, a call's documents are encoded whole (and kept) instead
    whole_above = 0.25

    def __init__(self, name: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 256)
        super().__init__(name, **kwargs)

    def _attach(self, tokenizer: Any, model: Any, loaded: LoadedModel | None = None) -> None:
        head = model.get_output_embeddings()
        if head is None or getattr(head, "weight", None) is None:
            raise DataError(f"{getattr(model.config, 'name_or_path', 'the model')}: no output projection onto a "
                            f"vocabulary; SPLADE needs a masked language model")
        weight, bias = head.weight, getattr(head, "bias", None)
        if loaded is not None and loaded.backend != "torch":  # an exported backend frees the PyTorch weights
            weight = weight.detach().clone()
            bias = bias.detach().clone() if bias is not None else None
        self._projection = (weight, bias)
        super()._attach(tokenizer, model, loaded)

    def _pool(self, hidden: Any, mask: Any, cols: Any = None) -> Any:
        """log(1 + relu(projected hidden states)), max-pooled over the real tokens, on the vocabulary
        entries ``cols`` (all when None); the projection is computed a slice of columns at a time, so
        the batch x length x vocabulary logits never exist at once."""
        import torch

        weight, bias = self._projection
        if cols is not None:
            weight, bias = weight[cols], bias[cols] if bias is not None else None
        hidden = hidden.to(device=weight.device, dtype=weight.dtype)
        pad = (mask == 0).unsqueeze(-1).to(hidden.device)
        step = max(1, (1 << 25) // max(1, hidden.shape[0] * hidden.shape[1]))  # ~32M logits at a time
        parts = []
        for s in range(0, weight.shape[0], step):
            logits = torch.nn.functional.linear(hidden, weight[s : s + step], None if bias is None else bias[s : s + step])
            parts.append(logits.masked_fill(pad, float("-inf")).amax(dim=1))  # log1p, relu: monotone
        return torch.log1p(torch.relu(torch.cat(parts, dim=1).float()))

    def vectors(self, texts: Sequence[str]) -> dict[str, tuple[Any, Any]]:
        """The vectors of ``texts`` (distinct ones), encoding only those not kept from earlier calls
        (a model in memory, whose weights may change, keeps none)."""
        if self.fingerprint.startswith("in-memory"):
            distinct = list(dict.fromkeys(texts))
            return dict(zip(distinct, self.encode_texts(distinct) if distinct else [], strict=True))
        return kept_encodings(self.model_key, texts, self.encode_texts, self.vector_cache)

    def _forward(self, batch: dict[str, Any]) -> Any:
        reps = self._pool(self._run(batch), batch["attention_mask"]).cpu()
        out = []
        for r in reps:
            nz = r.nonzero().squeeze(1)
            out.append((nz, r[nz]))
        return out

    def _items(self, texts: Sequence[str]) -> list[Encoded]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.window)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        items = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        self._note_truncation(sum(len(x["input_ids"]) >= self.window for x in items), len(texts), self.window)
        return items

    def encode_texts(self, texts: Sequence[str]) -> list[tuple[Any, Any]]:
        """SPLADE vectors of ``texts`` as (vocabulary indices, weights) of their non-zero terms."""
        return self.engine.run(self._items(texts), self._forward)

    def weights_on(self, texts: Sequence[str], cols: Any) -> Any:
        """The SPLADE weights of ``texts`` on the vocabulary entries ``cols`` (sorted indices) only:
        a float32 array, a row per text."""
        import numpy as np

        if not texts or not len(cols):  # no text, or queries without a term (all-zero vectors)
            return np.zeros((len(texts), len(cols)), dtype=np.float32)
        rows = self.engine.run(self._items(texts), lambda b: self._pool(self._run(b), b["attention_mask"], cols))
        return np.stack(rows).astype(np.float32, copy=False)

    def score_matrix(self, queries: Sequence[str], docs: Sequence[str]) -> Any:
        """Every query against every document with one encoding of each text (a sparse product).
        The documents' vectors are kept for the next call with the same documents (an index
        build scores many blocks of queries against one corpus)."""
        import hashlib

        import numpy as np
        import torch

        size = self.model.config.vocab_size

        def sparse(texts: Sequence[str]) -> Any:
            kept = self.vectors(texts)
            vecs = [kept[t] for t in texts]
            empty = torch.zeros(0, dtype=torch.long)
            rows = torch.cat([torch.full_like(i, n) for n, (i, _) in enumerate(vecs)]) if vecs else empty
            cols = torch.cat([i for i, _ in vecs]) if vecs else empty
            vals = torch.cat([v for _, v in vecs]) if vecs else torch.zeros(0)
            return torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (len(texts), size),
                                           check_invariants=False).coalesce()

        h = hashlib.blake2b(digest_size=16)
        for d in docs:
            h.update(d.encode("utf-8", "surrogatepass") + b"\x00")
        key = (self.model_key, h.hexdigest(), len(docs))
        if getattr(self, "_doc_matrix", (None,))[0] != key:
            self._doc_matrix = (key, sparse(docs))
        q, d = sparse(queries), self._doc_matrix[1]
        out = torch.sparse.mm(d, q.to_dense().T).T.numpy().astype(np.float32)
        if not np.isfinite(out).all():
            finite_scores(out.ravel().tolist(), self.name)  # raises, naming the first bad item
        return out

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """Each pair's q . d over the query's terms: the documents projected onto the call's query
        terms only (or taken whole where kept, or when the queries span much of the vocabulary)."""
        import numpy as np
        import torch

        qv = {q: (i.numpy(), v.float().numpy()) for q, (i, v) in self.vectors([q for q, _ in pairs]).items()}
        docs = list(dict.fromkeys(d for _, d in pairs))
        cols = np.unique(np.concatenate([i for i, _ in qv.values()])) if qv else np.zeros(0, dtype=np.int64)
        whole = kept_now(self.model_key, docs)
        if len(cols) > self.whole_above * self.model.config.vocab_size:
            whole = self.vectors(docs)
        rest = [d for d in docs if d not in whole]
        rows = dict(zip(rest, self.weights_on(rest, torch.from_numpy(cols)), strict=True))
        for d, (i, v) in whole.items():  # a whole vector read on the same columns
            dense = np.zeros(self.model.config.vocab_size, dtype=np.float32)
            dense[i.numpy()] = v.float().numpy()
            rows[d] = dense[cols]
        at_q = {q: np.searchsorted(cols, i) for q, (i, _) in qv.items()}
        scores = [float(np.dot(qv[q][1], rows[d][at_q[q]])) for q, d in pairs]
        return finite_scores(scores, self.name)
