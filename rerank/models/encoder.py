"""Sentence-transformers bi-encoders on the batched engine.

Texts are tokenized once, sorted by length and batched by a token budget (so a batch of short
passages is large and a batch of long ones small), and run in bf16 where the hardware has fast
bf16. Query and document prefixes ("prompts") and normalisation come from the model's own
configuration unless overridden. Models whose first module is not a plain text transformer
(static embeddings, CLIP, chat-template embedders, pooling that excludes the prompt) are
encoded by sentence-transformers itself, with the same outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .backends import Graph, on_pytorch, runner
from .engine import Cost, Encoded, Engine, Truncation
from .loading import batch_budget, load_model

log = logging.getLogger("rerank")
SIMILARITIES = ("cosine", "dot", "euclidean")
#: a sentence-transformers model's embedding of a padded batch (pooling and any dense layers included)
EMBEDDING = Graph("st-embedding", lambda model, x: model(x)["sentence_embedding"].float(), ("dimension",))


class Encoder:
    """A bi-encoder: ``encode_queries`` and ``encode_docs`` return float32 arrays (n x dim).

    ``query_prefix``/``doc_prefix``: None takes the model's "query"/"document" prompts;
    ``normalize``: None normalises when the model's similarity is cosine; ``max_length`` caps
    the model's own maximum sequence length.
    """

    cpu_batch_tokens = 8192
    gpu_batch_tokens = 65536

    def __init__(self, name: str, *, query_prefix: str | None = None, doc_prefix: str | None = None,
                 normalize: bool | None = None, max_length: int | None = None, batch_tokens: int | None = None,
                 device: str = "auto", dtype: str = "auto", backend: str = "auto", quantize: str = "none") -> None:
        self._options = {"query_prefix": query_prefix, "doc_prefix": doc_prefix, "normalize": normalize,
                         "max_length": max_length, "batch_tokens": batch_tokens, "dtype": dtype, "backend": backend,
                         "quantize": quantize}
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be at least 2, got {max_length}")
        loaded = load_model(name, "sentence-transformer", device=device, dtype=dtype, max_length=max_length,
                            backend=backend, quantize=quantize)
        self.name, self.path, self.device, self.dtype, self.model = name, loaded.path, loaded.device, loaded.dtype, loaded.model
        self.max_length = loaded.window
        self.fingerprint = loaded.fingerprint
        self.similarity = str(getattr(self.model, "similarity_fn_name", None) or "cosine")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"{name}: similarity {self.similarity!r} is not supported for search; "
                             f"supported: {', '.join(SIMILARITIES)}")
        prompts = dict(getattr(self.model, "prompts", None) or {})
        self.query_prefix: str = query_prefix if query_prefix is not None else str(prompts.get("query") or "")
        default_doc = str(prompts.get("document") or prompts.get("passage") or "")
        self.doc_prefix: str = doc_prefix if doc_prefix is not None else default_doc
        self.normalize = (self.similarity == "cosine") if normalize is None else bool(normalize)
        if self.normalize and self.similarity == "euclidean":
            self.similarity = "cosine"  # unit vectors: euclidean order equals cosine order
        elif not self.normalize and self.similarity == "cosine":
            self.similarity = "dot"  # asked not to normalise: raw inner products
        self.engine = Engine(device=self.device, batch_tokens=batch_budget(self.device, batch_tokens, self.cpu_batch_tokens,
                                                                           self.gpu_batch_tokens))
        self._tokenizer = self._fast_path_tokenizer()
        if self._tokenizer is not None:
            pad = self._tokenizer.pad_token_id
            self.engine.pad_id = pad if pad is not None else 0
            self.engine.padding_side = getattr(self._tokenizer, "padding_side", "right") or "right"
            self._run = runner(loaded, EMBEDDING)
        elif loaded.backend != "torch" and loaded.auto_backend:
            on_pytorch(loaded)
        elif loaded.backend != "torch":
            raise ValueError(f"{name}: its first module is not a plain text transformer, so it runs on PyTorch only "
                             f"(backend {loaded.backend!r} asked for)")
        self.backend, self.quantize = loaded.backend, loaded.quantize
        self.truncation = Truncation(name, "texts", logging.WARNING)
        dim_fn = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_fn() or self.encode_docs(["dimension probe"]).shape[1])

    def _fast_path_tokenizer(self) -> Any:
        """The tokenizer when the model is a text transformer we can batch ourselves, else None."""
        first = self.model[0]
        modalities = getattr(first, "modality_config", None) or {"text": None}
        if type(first).__name__ != "Transformer" or "text" not in modalities or "message" in modalities:
            return None
        if getattr(first, "transformer_task", "feature-extraction") != "feature-extraction":
            return None
        prefixes = self.query_prefix or self.doc_prefix
        if prefixes and any(getattr(m, "include_prompt", True) is False for m in self.model):
            return None  # pooling that leaves the prompt out: sentence-transformers tracks its length
        tok = getattr(first, "tokenizer", None) or getattr(first, "processor", None)
        return tok if callable(tok) and hasattr(tok, "pad_token_id") else None

    @property
    def cost(self) -> Cost:
        return self.engine.cost

    def options(self) -> dict[str, Any]:
        """The options this encoder was made with (all but the device): another process given them
        and the same device type builds an encoder that gives the same embeddings."""
        return dict(self._options)

    def params(self) -> dict[str, Any]:
        """What determines the document embeddings (an index built with other values is stale)."""
        out = {"model": self.name, "weights": self.fingerprint, "doc_prefix": self.doc_prefix, "normalize": self.normalize,
               "max_length": self.max_length, "similarity": self.similarity, "dtype": str(self.dtype).removeprefix("torch.")}
        if self.backend != "torch":
            out["backend"] = f"{self.backend}-{self.quantize}"
        return out

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self.query_prefix)

    def encode_docs(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        return self._encode(texts, self.doc_prefix, progress)

    def _encode(self, texts: Sequence[str], prefix: str, progress: Callable[[int], None] | None = None) -> np.ndarray:
        dim = getattr(self, "dim", 0)
        if not texts:
            return np.zeros((0, dim), dtype=np.float32)
        if getattr(self, "_tokenizer", None) is None:
            return self._encode_st(texts, prefix, progress)
        enc = self._tokenizer([prefix + t for t in texts], truncation=True, max_length=self.max_length,
                              return_attention_mask=False)
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        items: list[Encoded] = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        self.truncation.add(sum(len(x["input_ids"]) >= self.max_length for x in items), len(items), self.max_length)
        rows = self.engine.run(items, self._forward, progress)
        return np.stack(rows).astype(np.float32, copy=False)

    def _forward(self, batch: dict[str, Any]) -> Any:
        import torch

        out = self._run(batch)
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out

    def _encode_st(self, texts: Sequence[str], prefix: str, progress: Callable[[int], None] | None) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 1024):
            chunk = list(texts[start : start + 1024])
            out.append(self.model.encode(chunk, prompt=prefix or None, batch_size=32, convert_to_numpy=True,
                                         normalize_embeddings=self.normalize, show_progress_bar=False))
            if progress is not None:
                progress(len(chunk))
        return np.concatenate(out).astype(np.float32, copy=False)
