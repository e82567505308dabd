"""The FIRST training objective for listwise LLM rerankers (Reddy et al., EMNLP 2024).

A training example is a window of passages in their first-stage order with a gold ranking of
them (from labels, or from a teacher's ranking). The model sees the listwise prompt of
:class:`~rerank.rerankers.listwise.First` (same text, same identifier tokens, the assistant turn
primed as at inference) followed by the target permutation ``[B] > [A] > ...``. The loss is

    L = LM(target) + λ · RankNet_w(z)

``LM`` the mean token cross-entropy of the target permutation (and end of turn), ``z`` the
logits of the identifier tokens as the first answer token (what FIRST ranks by at inference),
and ``RankNet_w = Σ_{r_i < r_j} w_ij log(1 + exp(z_j − z_i)) / Σ w_ij`` over the pairs of gold
ranks ``r`` (1 = best) with ``w_ij = 1 / (r_i + r_j)``, which stresses the top of the ranking.
λ = 10 in the FIRST code; λ = 0 is plain language-model fine-tuning. Only the target positions
are projected onto the vocabulary, so long prompts cost no vocabulary-sized activations.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import Qrels
from ..errors import DataError
from ..evaluate import evaluate
from ..types import Query, Ranking

if TYPE_CHECKING:
    from ..data import Dataset
    from .trainer import TrainConfig

log = logging.getLogger("rerank")


@dataclass(frozen=True)
class Window:
    """Passages in the order shown to the model, and the gold ranking (indices, best first)."""

    query: str
    passages: tuple[str, ...]
    gold: tuple[int, ...]


def label_windows(queries: Sequence[Query], candidates: Ranking, qrels: Qrels, *, window: int = 20, rel: int = 1,
                  docs: Any = None) -> list[Window]:
    """One window per query: the first ``window`` candidates in first-stage order, ranked by
    their judged grade (ties keep the first-stage order); queries whose window holds no passage
    judged ``>= rel`` are left out (nothing to learn about the top)."""
    out = []
    for q in queries:
        judged = qrels.get(q.qid, {})
        hits = []
        for h in candidates.get(q.qid, []):
            text = h.text if h.text is not None else (docs.get(h.docid) if docs is not None else None)
            if text is not None:
                hits.append((h.docid, text))
            if len(hits) == window:
                break
        if len(hits) < 2 or not any(judged.get(d, 0) >= rel for d, _ in hits):
            continue
        gold = sorted(range(len(hits)), key=lambda i: (-judged.get(hits[i][0], 0), i))
        out.append(Window(q.text, tuple(t for _, t in hits), tuple(gold)))
    return out


def first_ranknet(z: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Weighted RankNet over identifier logits ``z`` [B, W] with gold ranks [B, W] (1 = best):
    per window ``Σ_{r_i<r_j} w_ij softplus(z_j - z_i) / Σ w_ij``, ``w_ij = 1/(r_i + r_j)``; mean over windows."""
    r = ranks.to(z.dtype)
    pairs = (r[:, :, None] < r[:, None, :]) & mask[:, :, None] & mask[:, None, :]
    w = torch.where(pairs, 1.0 / (r[:, :, None] + r[:, None, :]).clamp_min(1.0), torch.zeros_like(r[:, :, None].expand_as(pairs)))
    diff = z[:, None, :] - z[:, :, None]  # [b, i, j] = z_j - z_i
    per = (w * torch.nn.functional.softplus(torch.where(pairs, diff, torch.zeros_like(diff)))).sum(dim=(1, 2))
    total = w.sum(dim=(1, 2))
    keep = total > 0
    if not bool(keep.any()):
        return (z * 0.0).sum()
    return (per[keep] / total[keep]).mean()


def answer_states(model: Any, inputs: Sequence[tuple[Sequence[int], Sequence[int]]],
                  pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """One forward pass of a causal LM over (prompt, answer) pairs of token ids: the hidden states
    that predict the answer tokens (concatenated, pair after pair), the answer tokens, each pair's
    hidden state before its answer, and the output head. Only these rows are worth projecting
    onto the vocabulary, so long prompts cost no vocabulary-sized activations."""
    device = next(model.parameters()).device
    seqs = [list(p) + list(t) for p, t in inputs]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long, device=device)
    att = torch.zeros_like(ids)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, device=device)
        att[b, : len(s)] = 1
    hidden = model.base_model(input_ids=ids, attention_mask=att).last_hidden_state
    rows = [hidden[b, len(p) - 1 : len(p) - 1 + len(t)] for b, (p, t) in enumerate(inputs)]  # position k predicts k + 1
    targets = torch.cat([torch.tensor(list(t), dtype=torch.long, device=device) for _, t in inputs])
    first = torch.stack([hidden[b, len(p) - 1] for b, (p, _) in enumerate(inputs)])
    return torch.cat(rows), targets, first, model.get_output_embeddings()


class FirstTask:
    """Windows for :class:`~rerank.train.trainer.Trainer` with the FIRST loss. ``reranker`` is a
    :class:`~rerank.rerankers.listwise.First` whose model is trained in place (load it in
    float32: the trainer adds bf16 autocast); ``dev``: (queries, candidates, qrels) reranked with
    the same reranker after every epoch (single window of the top ``window``)."""

    def __init__(self, reranker: Any, windows: Sequence[Window], *, lam: float = 10.0, seed: int = 0,
                 dev: tuple[Sequence[Query], Ranking, Qrels] | None = None, rel: int = 1, shuffle: bool = False,
                 lora: Any = None) -> None:
        if lam < 0:
            raise ValueError(f"λ (the RankNet weight) must be >= 0, got {lam}")
        if not windows:
            raise DataError("no training windows: no query has a relevant passage among its candidates")
        too_big = max(len(w.passages) for w in windows)
        if too_big > reranker.window and not getattr(reranker, "full", False):
            raise DataError(f"a window of {too_big} passages exceeds the reranker's window of {reranker.window}")
        self.reranker, self.windows, self.lam, self.seed = reranker, list(windows), lam, seed
        self.dev, self.rel, self.shuffle = dev, rel, shuffle
        self.lora = lora  # the peft wrapper when the model carries LoRA adapters (see add_lora)
        llm = reranker.llm
        self.eos = [t for t in (llm.tokenizer.eos_token_id,) if t is not None]
        end_of_turn = llm.tokenizer.convert_tokens_to_ids("<|im_end|>") if llm.chat else None
        if isinstance(end_of_turn, int) and end_of_turn >= 0 and end_of_turn != llm.tokenizer.unk_token_id:
            self.eos = [end_of_turn]

    def __len__(self) -> int:
        return len(self.windows)

    def describe(self) -> dict[str, Any]:
        return {"model": self.reranker.llm.name, "windows": len(self.windows), "lambda": self.lam,
                "window": self.reranker.window, "shuffle": self.shuffle, "lora": self.lora is not None,
                "first": [self.windows[0].query[:64], len(self.windows[0].passages)]}

    def shown(self, index: int, epoch: int) -> tuple[str, list[str], list[int]]:
        """(query, the passages in the order the prompt shows them, the gold ranking as shown slots):
        the first-stage order, or with ``shuffle`` a new order each epoch (the gold ranking moves
        with the passages, so the answer cannot be learnt as "keep the input order")."""
        w = self.windows[index]
        order = list(range(len(w.passages)))
        if self.shuffle:
            random.Random(f"{self.seed}/{epoch}/{index}").shuffle(order)
        position = {p: k for k, p in enumerate(order)}  # passage index -> shown slot
        return w.query, [w.passages[i] for i in order], [position[i] for i in w.gold]

    def _example(self, index: int, epoch: int) -> tuple[list[int], list[int], list[int]]:
        """(prompt ids, target ids, gold rank of each shown passage)."""
        query, shown, gold_slots = self.shown(index, epoch)
        llm, labels = self.reranker.llm, self.reranker.labels
        prompt = self.reranker.window_prompt(query, shown)
        # the first answer token is the identifier token FIRST reads; the rest as the tokenizer writes it
        first = self.reranker.identifier_ids[gold_slots[0]]
        rest = "]" + "".join(f" > [{labels[s]}]" for s in gold_slots[1:])
        target = [first] + llm.tokens([rest])[0] + self.eos
        ranks = [0] * len(shown)
        for r, s in enumerate(gold_slots, 1):
            ranks[s] = r
        return prompt, target, ranks

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        examples = [self._example(i, epoch) for i in indices]
        width = max(len(r) for _, _, r in examples)
        ranks = torch.zeros(len(examples), width, dtype=torch.long)
        for b, (_, _, r) in enumerate(examples):
            ranks[b, : len(r)] = torch.tensor(r)
        return [(p, t) for p, t, _ in examples], ranks.float(), ranks > 0

    def scores(self, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        raise NotImplementedError("FirstTask brings its own loss")

    def _forward(self, model: Any, inputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        return answer_states(model, inputs, self.reranker.llm.engine.pad_id)

    def loss(self, model: Any, inputs: Any, ranks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows, targets, first, head = self._forward(model, inputs)
        device = rows.device
        lm = torch.nn.functional.cross_entropy(head(rows).float(), targets)
        ident = self.reranker.identifier_ids[: ranks.shape[1]]
        ids_w = head.weight[ident]
        z = first.float() @ ids_w.float().T
        bias = getattr(head, "bias", None)
        if bias is not None:
            z = z + bias[ident].float()
        self.last_stats = {"lm_loss": float(lm.detach()), "ranknet": 0.0}
        if self.lam == 0:
            return lm
        rank_loss = first_ranknet(z, ranks.to(device), mask.to(device))
        self.last_stats["ranknet"] = float(rank_loss.detach())
        return lm + self.lam * rank_loss

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        if self.dev is None:
            return {}
        queries, candidates, qrels = self.dev
        run = self.reranker(queries, {q.qid: candidates.get(q.qid, [])[: self.reranker.window] for q in queries})
        return {"dev nDCG@10": evaluate(run, qrels, ["nDCG@10"], rel=self.rel).metrics["nDCG@10"]}

    def save(self, model: Any, folder: Path) -> None:
        if self.lora is not None:  # fold the adapters into the weights: the output loads as a plain model
            model = self.lora.merge_and_unload()
        model.save_pretrained(folder)
        self.reranker.llm.tokenizer.save_pretrained(folder)


def add_lora(model: Any, rank: int = 16, alpha: int | None = None, dropout: float = 0.05) -> Any:
    """Inject LoRA adapters (peft) into every linear layer of ``model`` in place and freeze the
    rest; returns the peft wrapper (whose ``merge_and_unload`` gives the merged model back)."""
    from ..errors import MissingDependency

    try:
        import peft
    except ImportError:
        raise MissingDependency("LoRA fine-tuning", "lora", "peft") from None
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    config = peft.LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=dropout, target_modules="all-linear",
                             task_type="CAUSAL_LM")
    wrapped = peft.get_peft_model(model, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA rank %d: %d trainable parameters of %d", rank, trainable, sum(p.numel() for p in model.parameters()))
    return wrapped


def train_first(model: str, dataset: Dataset, output: str | Path, config: TrainConfig, *, candidates: str = "bm25:20",
                window: int = 20, lam: float = 10.0, dev_queries: int = 50, max_passage_tokens: int = 100,
                shuffle: bool = False, lora: int | None = None, device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune the causal LM ``model`` with the FIRST objective on windows of ``dataset``'s
    train split: the top ``window`` of ``candidates`` (``RETRIEVER:DEPTH``) in first-stage order,
    gold order from the qrels; dev queries are held out and reranked (top ``window``) each epoch.
    Full fine-tuning in float32 weights with the trainer's bf16 autocast, or LoRA adapters of
    rank ``lora`` (merged into the saved weights); ``config.loss`` is ``task``. The output loads
    as ``first:OUTPUT``."""
    from ..rerankers.listwise import First
    from .crossencoder import mine_lists
    from .trainer import Trainer

    qrels, train_q, dev_q, cands, _ = mine_lists(dataset, candidates, dev_queries, config.seed)
    windows = label_windows(train_q, cands, qrels, window=window, rel=dataset.rel, docs=dataset.docs)
    log.info("%d training windows of up to %d passages (%d queries without a relevant one left out)", len(windows), window,
             len(train_q) - len(windows))
    reranker = First(model, window=window, dtype="float32", device=device, max_passage_tokens=max_passage_tokens)
    dev = (dev_q, cands, {q.qid: qrels[q.qid] for q in dev_q if q.qid in qrels}) if dev_q else None
    wrapped = add_lora(reranker.llm.model, lora) if lora else None
    task = FirstTask(reranker, windows, lam=lam, seed=config.seed, dev=dev, rel=dataset.rel, shuffle=shuffle, lora=wrapped)
    return Trainer(reranker.llm.model, task, config, output, device=reranker.llm.device, overwrite=overwrite).train()
