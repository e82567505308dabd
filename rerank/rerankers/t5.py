"""T5 rerankers: monoT5 and duoT5 (Nogueira et al., "Document Ranking with a Pretrained
Sequence-to-Sequence Model", Findings of EMNLP 2020; Pradeep et al., "The Expando-Mono-Duo Design
Pattern for Text Ranking with Pretrained Sequence-to-Sequence Models", 2021).

* :class:`MonoT5` (``monot5:castorini/monot5-base-msmarco``): the encoder reads
  ``Query: q Document: d Relevant:``; the score is log p("true") of the softmax over the logits
  of "true" and "false" at the first decoder step (as pygaggle and PyTerrier compute it).
* :class:`DuoT5` (``duot5:castorini/duot5-base-msmarco``): ``Query: q Document0: a Document1: b
  Relevant:``, p("true") = P(a is more relevant than b). It is a comparator of Pairwise Ranking
  Prompting's methods: ``allpair`` (the default; both orders of every pair, aggregated by the
  paper's sym-sum, s_i = sum_j p_ij + (1 - p_ji)), ``sorting`` and ``sliding``.

Long texts are cut on the document side, so "Relevant:" and the query always stay (pygaggle cuts
the whole input at 512 tokens, which drops "Relevant:" from long documents; the scores agree
whenever the input fits). Each piece of the input is tokenized on its own, which gives the same
tokens as the whole string for T5's SentencePiece tokenizer (it splits at spaces).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from ..errors import DataError
from ..models.engine import Encoded, Engine, finite_scores
from ..models.llm import LLMCost, PromptModel
from ..models.loading import batch_budget, load_model
from .base import ListReranker
from .listwise import _Listwise, parse_permutation
from .pairwise import PRP
from .pointwise import _ModelReranker


def _token(tokenizer: Any, word: str, name: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise DataError(f"{name}: {word!r} is {len(ids)} tokens in this tokenizer; a T5 reranker answers with one token")
    return int(ids[0])


def _eos(tokenizer: Any) -> list[int]:
    return [int(tokenizer.eos_token_id)] if tokenizer.eos_token_id is not None else []


def true_logprob(model: Any, batch: dict[str, Any], false_true: list[int]) -> Any:
    """log p("true") over {"false", "true"} at the first decoder step, for each row of ``batch``."""
    import torch

    start = model.config.decoder_start_token_id
    decoder = torch.full((batch["input_ids"].shape[0], 1), 0 if start is None else start, dtype=torch.long,
                         device=batch["input_ids"].device)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=decoder).logits
    return torch.log_softmax(logits[:, 0, false_true].float(), dim=-1)[:, 1]


class MonoT5(_ModelReranker):
    """monoT5: ``MonoT5("castorini/monot5-base-msmarco")``."""

    kind = "monot5"
    spec_help = "monoT5, a T5 reranker: log p(true) for 'Query: q Document: d Relevant:'"
    model_kind = "seq2seq-lm"

    def __init__(self, name: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_length", 512)
        super().__init__(name, **kwargs)
        self._setup_t5()

    def _setup_t5(self) -> None:
        tok = self.tokenizer
        self.false_true = [_token(tok, "false", self.model_name), _token(tok, "true", self.model_name)]
        query, document, relevant = tok(["Query:", "Document:", "Relevant:"], add_special_tokens=False)["input_ids"]
        self._pieces = (list(query), list(document), list(relevant) + _eos(tok))

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, name: str = "in-memory", **options: Any) -> Any:
        self = super().from_loaded(model, tokenizer, name, **options)
        self._setup_t5()
        return self

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[Encoded]:
        qs = self.tokenizer([q for q, _ in pairs], add_special_tokens=False)["input_ids"]
        ds = self.tokenizer([d for _, d in pairs], add_special_tokens=False)["input_ids"]
        query, document, tail = self._pieces
        fixed = len(query) + len(document) + len(tail)
        items, cut = [], 0
        for q, d in zip(qs, ds, strict=True):
            q = list(q)[: max(1, self.window - fixed - 16)]
            room = self.window - fixed - len(q)
            cut += len(d) > room
            items.append({"input_ids": query + q + document + list(d)[:room] + tail})
        self._note_truncation(cut, len(pairs), self.window)
        return items

    def _forward(self, batch: dict[str, Any]) -> Any:
        return true_logprob(self.model, batch, self.false_true)

    def _score(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        return finite_scores(self.engine.run(self.encode(pairs), self._forward), self.name)


class T5Judge(PromptModel):
    """A T5 model prompted with token ids on the batched engine: "true"/"false" answers (duoT5's
    comparisons) and fusion-in-decoder generation (LiT5)."""

    cpu_batch_tokens = 8192
    gpu_batch_tokens = 65536

    def __init__(self, name: str, *, device: str = "auto", dtype: str = "auto", batch_tokens: int | None = None,
                 max_length: int | None = None) -> None:
        loaded = load_model(name, "seq2seq-lm", device=device, dtype=dtype, max_length=max_length or 512)
        self.name, self.device, self.dtype = name, loaded.device, loaded.dtype
        self.tokenizer, self.model, self.window = loaded.tokenizer, loaded.model, loaded.window
        self.fingerprint = loaded.fingerprint
        pad = self.tokenizer.pad_token_id
        self.engine = Engine(device=self.device, batch_tokens=batch_budget(self.device, batch_tokens, self.cpu_batch_tokens,
                                                                          self.gpu_batch_tokens), pad_id=pad or 0)
        self.false_true = [_token(self.tokenizer, "false", name), _token(self.tokenizer, "true", name)]
        self.eos = _eos(self.tokenizer)
        self.cost = LLMCost()

    def p_true(self, prompts: Sequence[list[int]]) -> list[float]:
        import math

        before, batches = self.engine.cost.seconds, self.engine.cost.batches
        out = self.engine.run([{"input_ids": list(p)} for p in prompts],
                              lambda batch: true_logprob(self.model, batch, self.false_true))
        self.cost.batches += self.engine.cost.batches - batches
        self._account(len(prompts), sum(map(len, prompts)), self.engine.cost.seconds - before)
        return [math.exp(x) for x in out]

    def generate_fid(self, windows: Sequence[Sequence[list[int]]], max_new_tokens: int) -> list[str]:
        """Fusion-in-decoder generation: each window's inputs (one per passage) are encoded on their
        own, their encodings joined, and the decoder writes greedily over all of them."""
        import time

        import torch
        from transformers.modeling_outputs import BaseModelOutput

        t0 = time.perf_counter()
        out = [""] * len(windows)
        sizes = [sum(len(x) for x in w) for w in windows]
        with torch.inference_mode():
            for idx in self.engine.batches(sizes):
                flat = [x for i in idx for x in windows[i]]
                enc = self.engine.pad([{"input_ids": list(x)} for x in flat])
                hidden = self.model.encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
                width = hidden.shape[1]
                rows, masks, a = [], [], 0
                longest = max(len(windows[i]) for i in idx) * width
                for i in idx:
                    n = len(windows[i])
                    h = hidden[a : a + n].reshape(1, n * width, -1)
                    m = enc["attention_mask"][a : a + n].reshape(1, n * width)
                    pad = longest - n * width
                    rows.append(torch.nn.functional.pad(h, (0, 0, 0, pad)))
                    masks.append(torch.nn.functional.pad(m, (0, pad)))
                    a += n
                gen = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=torch.cat(rows)),
                                          attention_mask=torch.cat(masks), max_new_tokens=max_new_tokens, do_sample=False,
                                          num_beams=1)
                for row, i in enumerate(idx):
                    ids = gen[row].tolist()[1:]  # after the decoder start token
                    n_new = next((j for j, t in enumerate(ids) if t in (self.tokenizer.eos_token_id, self.engine.pad_id)),
                                 len(ids))
                    self.cost.generated += n_new
                    out[i] = self.tokenizer.decode(ids[:n_new], skip_special_tokens=True)
                self.cost.batches += 1
        self._account(len(windows), sum(sizes), time.perf_counter() - t0)
        return out


class DuoT5(PRP):
    """duoT5 as a pairwise comparator: ``DuoT5("castorini/duot5-base-msmarco", method="allpair")``.
    Rerank the top 50 of a pointwise stage, as the paper does (``monot5:M % 50 >> duot5:M``)."""

    kind = "duot5"
    model_kind = "seq2seq-lm"
    spec_help = "duoT5, a pairwise T5 reranker (all pairs by sym-sum, heap sort to the top k, or sliding passes)"
    spec_options: ClassVar[tuple[str, ...]] = (*ListReranker.spec_options, "method", "k")
    allpair_by = "sym-sum"

    def __init__(self, name: str, *, max_passage_tokens: int | None = None, depth: int = 50, **options: Any) -> None:
        super().__init__(name, mode="score", max_passage_tokens=max_passage_tokens, depth=depth, **options)

    def _setup_prompt(self) -> None:
        self._pieces = self.llm.tokens(["Query:", "Document0:", "Document1:", "Relevant:"])

    def _load(self, name: str, **options: Any) -> Any:
        return T5Judge(name, **options)

    def _prompt(self, q: list[int], a: list[int], b: list[int]) -> list[int]:
        p = self._pieces
        return p[0] + q + p[1] + a + p[2] + b + p[3] + self.llm.eos

    def _first_wins(self, prompts: list[list[int]]) -> list[float]:
        return list(self.llm.p_true(prompts))


class LiT5(_Listwise):
    """LiT5-Distill (Tamber et al., "Scaling Down, LiTting Up: Efficient Zero-Shot Listwise
    Reranking with Seq2seq Encoder-Decoder Models", 2023), as RankLLM runs it: each passage of a
    window is encoded with the query on its own (``Search Query: q Passage: [i] p Relevance
    Ranking:``, at most ``passage_tokens`` tokens, the passage cut so the rest stays), the decoder
    reads all of them and writes the permutation ``[2] > [1] > ...``; windows of 20 with stride 10."""

    kind = "lit5"
    model_kind = "seq2seq-lm"
    spec_help = "LiT5-Distill: fusion-in-decoder T5 that writes the window's permutation, over sliding windows"
    spec_options: ClassVar[tuple[str, ...]] = (*(o for o in _Listwise.spec_options if o != "max_passage_tokens"),
                                                "passage_tokens")

    def __init__(self, name: str, *, passage_tokens: int = 150, **options: Any) -> None:
        if passage_tokens < 16:
            raise ValueError(f"passage_tokens must be at least 16, got {passage_tokens}")
        super().__init__(name, max_passage_tokens=None, **options)
        self.passage_tokens = passage_tokens
        self.labels = "1"  # numbered identifiers, [1] to [window]
        self._pieces = self.llm.tokens(["Search Query:", "Passage:", "Relevance Ranking:"])
        self._numbers = self.llm.tokens([f"[{i + 1}]" for i in range(self.window)])

    def _load(self, name: str, **options: Any) -> Any:
        return T5Judge(name, **options)

    def _window_input(self, query: list[int], passages: Sequence[list[int]]) -> list[list[int]]:
        head, passage, tail = self._pieces
        end = tail + self.llm.eos
        q = query[: self.passage_tokens // 2]  # a query that long leaves half of each input to its passage
        out = []
        for i, p in enumerate(passages):
            fixed = head + q + passage + self._numbers[i]
            out.append(fixed + list(p)[: max(0, self.passage_tokens - len(fixed) - len(end))] + end)
        return out

    def _rank_windows(self, prompts: list[Any], sizes: list[int]) -> list[list[int]]:
        texts = self.llm.generate_fid(prompts, max_new_tokens=5 * max(sizes, default=1) + 8)
        out = []
        for text, n in zip(texts, sizes, strict=True):
            perm, repaired = parse_permutation(text, n, self.labels)
            self.cost.repaired += repaired
            out.append(perm)
        return out
