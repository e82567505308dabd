"""Late interaction: ColBERT reranking by MaxSim over token embeddings (Khattab and Zaharia,
SIGIR 2020; Santhanam et al., ColBERTv2, NAACL 2022).

``colbert:colbert-ir/colbertv2.0`` or ``colbert:answerdotai/answerai-colbert-small-v1``. A
checkpoint comes in one of two layouts, read as the checkpoint defines itself:

* Stanford ColBERT (``artifact.metadata`` beside ``config.json``): the BERT body and the
  projection ``linear.weight`` in one weights file; markers ``query_token_id`` /
  ``doc_token_id`` (``[unused0]``/``[unused1]``), ``query_maxlen``, ``doc_maxlen``,
  ``attend_to_mask_tokens``, ``mask_punctuation``;
* PyLate (``config_sentence_transformers.json`` and a ``1_Dense`` module): ``query_prefix`` /
  ``document_prefix``, ``query_length``, ``document_length``, ``do_query_expansion``,
  ``attend_to_expansion_tokens``, ``skiplist_words``.

A query is ``[CLS] [Q] tokens [SEP]`` padded with ``[MASK]`` to its full length (query
augmentation: the masks get embeddings too, without being attended to unless the checkpoint
says so); a document is ``[CLS] [D] tokens [SEP]``, with punctuation (the skiplist) and padding
left out of the match. Embeddings are L2-normalised; score = sum over query tokens of the best
cosine with any document token. Queries and documents are encoded once each per call, on the
batched engine, and documents' embeddings are kept for the next call (a query's candidates are
often another query's).
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import ModelNotFound
from ..models.engine import Cost, Encoded, Engine, Truncation, finite_scores, kept_encodings
from ..models.loading import batch_budget, load_model, load_weights, mismatch
from .base import Reranker


@dataclass(frozen=True)
class Settings:
    query_marker: str = "[unused0]"
    doc_marker: str = "[unused1]"
    query_length: int = 32
    doc_length: int = 180
    expansion: bool = True
    attend_expansion: bool = False
    skiplist: tuple[str, ...] = tuple(string.punctuation)


def read_settings(name: str, folder: Path) -> tuple[Settings, str]:
    """The checkpoint's own ColBERT settings, and which layout it is ("colbert" or "pylate")."""
    meta = folder / "artifact.metadata"
    if meta.is_file():
        m = json.loads(meta.read_text(encoding="utf-8"))
        return Settings(query_marker=m.get("query_token_id", "[unused0]"), doc_marker=m.get("doc_token_id", "[unused1]"),
                        query_length=int(m.get("query_maxlen", 32)), doc_length=int(m.get("doc_maxlen", 180)),
                        attend_expansion=bool(m.get("attend_to_mask_tokens", False)),
                        skiplist=tuple(string.punctuation) if m.get("mask_punctuation", True) else ()), "colbert"
    st = folder / "config_sentence_transformers.json"
    if st.is_file() and (folder / "1_Dense").is_dir():
        m = json.loads(st.read_text(encoding="utf-8"))
        return Settings(query_marker=str(m.get("query_prefix", "[Q] ")).strip(),
                        doc_marker=str(m.get("document_prefix", "[D] ")).strip(),
                        query_length=int(m.get("query_length", 32)), doc_length=int(m.get("document_length", 180)),
                        expansion=bool(m.get("do_query_expansion", True)),
                        attend_expansion=bool(m.get("attend_to_expansion_tokens", False)),
                        skiplist=tuple(m.get("skiplist_words") or string.punctuation)), "pylate"
    raise mismatch(name, folder, "a ColBERT checkpoint", "it has neither artifact.metadata (Stanford ColBERT) nor "
                   "config_sentence_transformers.json with a 1_Dense module (PyLate)")


def projection(folder: Path, layout: str) -> Any:
    """The linear projection from the encoder's hidden size to ColBERT's dimension (no bias), read
    alone from the weights file (safetensors; else a PyTorch file, loaded weights-only)."""
    where = folder / "1_Dense" if layout == "pylate" else folder
    keys = ("linear.weight", "0.linear.weight")
    if (where / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(where / "model.safetensors"), framework="pt") as f:
            key = next((k for k in keys if k in f.keys()), None)
            if key is not None:
                return f.get_tensor(key).float()
    elif (where / "pytorch_model.bin").is_file():
        weights = load_weights(where / "pytorch_model.bin")
        key = next((k for k in keys if k in weights), None)
        if key is not None:
            return weights[key].float()
    else:
        raise ModelNotFound(f"{where} has no model.safetensors or pytorch_model.bin")
    raise ModelNotFound(f"{folder}: no ColBERT projection (linear.weight) in its weights")


class ColBERT(Reranker):
    """ColBERT as a reranker: ``ColBERT("colbert-ir/colbertv2.0")``."""

    kind = "colbert"
    family = "pointwise"
    model_kind = "encoder"
    spec_help = "late interaction: MaxSim over ColBERT token embeddings (Stanford ColBERT or PyLate checkpoints)"
    spec_options: ClassVar[tuple[str, ...]] = ("depth", "block", "cache", "device", "dtype", "batch_tokens", "max_length")
    cpu_batch_tokens = 8192
    gpu_batch_tokens = 65536
    vector_cache = 20_000  # documents whose token embeddings are kept

    def __init__(self, name: str, *, max_length: int | None = None, batch_tokens: int | None = None, device: str = "auto",
                 dtype: str = "auto", depth: int = 100, cache: Any = None) -> None:
        super().__init__(depth=depth, cache=cache)
        loaded = load_model(name, "encoder", device=device, dtype=dtype)
        folder = Path(loaded.path)
        self.settings, self.layout = read_settings(name, folder)
        self.model, self.tokenizer, self.device, self.dtype = loaded.model, loaded.tokenizer, loaded.device, loaded.dtype
        self.linear = projection(folder, self.layout).to(self.device)
        tok = self.tokenizer
        self.markers = [tok.convert_tokens_to_ids(m) for m in (self.settings.query_marker, self.settings.doc_marker)]
        if any(i is None or i == tok.unk_token_id for i in self.markers):
            raise ModelNotFound(f"{name}: the markers {self.settings.query_marker!r}/{self.settings.doc_marker!r} are not "
                                f"tokens of its tokenizer")
        self.skip = {i for w in self.settings.skiplist for i in tok.encode(w, add_special_tokens=False)[:1]}
        self.doc_length = min(max_length or self.settings.doc_length, loaded.window)
        self.model_name, self.name, self.fingerprint = name, f"colbert:{name}", loaded.fingerprint
        self.model_key = f"colbert|{loaded.fingerprint}|{self.dtype}|{self.doc_length}"
        self.engine = Engine(device=self.device, batch_tokens=batch_budget(self.device, batch_tokens, self.cpu_batch_tokens,
                                                                          self.gpu_batch_tokens), pad_id=tok.pad_token_id or 0)
        self.truncation = Truncation(self.name, "documents")

    @property
    def cost(self) -> Cost:
        return self.engine.cost

    # ------------------------------------------------------------ encoding
    def _items(self, texts: Sequence[str], query: bool) -> list[Encoded]:
        tok, s = self.tokenizer, self.settings
        length = s.query_length if query else self.doc_length
        marker = self.markers[0 if query else 1]
        body = tok(list(texts), add_special_tokens=False)["input_ids"]
        items, cut = [], 0
        for ids in body:
            cut += len(ids) > length - 3
            seq = [tok.cls_token_id, marker, *ids[: length - 3], tok.sep_token_id]
            attend = [1] * len(seq)
            keep = [1] * len(seq) if query else [0 if t in self.skip else 1 for t in seq]
            if query and s.expansion:  # query augmentation: [MASK]s to the full length, embedded, attended as asked
                extra = length - len(seq)
                seq += [tok.mask_token_id] * extra
                attend += [1 if s.attend_expansion else 0] * extra
                keep += [1] * extra
            items.append({"input_ids": seq, "attend": attend, "keep": keep})
        if not query:
            self.truncation.add(cut, len(texts), length)
        return items

    def _forward(self, batch: dict[str, Any]) -> list[Any]:
        import torch

        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attend"]).last_hidden_state
        vectors = torch.nn.functional.normalize(hidden.float() @ self.linear.T, dim=-1)
        return [v[k.bool()].cpu() for v, k in zip(vectors, batch["keep"], strict=True)]

    def embed(self, texts: Sequence[str], query: bool) -> list[Any]:
        """Token embeddings (tokens x dim, normalised) of ``texts`` as queries or documents."""
        return self.engine.run(self._items(texts, query), self._forward)

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        queries = list(dict.fromkeys(q for q, _ in pairs))
        qv = dict(zip(queries, self.embed(queries, query=True), strict=True))
        dv = kept_encodings(self.model_key, [d for _, d in pairs], lambda docs: self.embed(docs, query=False),
                            self.vector_cache)
        return finite_scores([float((qv[q] @ dv[d].T).max(dim=1).values.sum()) for q, d in pairs], self.name)
