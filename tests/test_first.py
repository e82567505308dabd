"""The FIRST training objective: the loss against a direct computation through the full model,
the weighted RankNet against its formula, and a few real training steps on SciFact windows."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import offline_model

from rerank.errors import DataError
from rerank.rerankers.listwise import First
from rerank.train.first import FirstTask, Window, first_ranknet, label_windows
from rerank.train.trainer import TrainConfig, Trainer


def test_weighted_ranknet_matches_its_formula():
    z = torch.tensor([[0.3, -1.0, 2.0, 0.5], [1.0, 0.2, 0.0, 0.0]], dtype=torch.float64)
    ranks = torch.tensor([[2, 4, 1, 3], [2, 1, 0, 0]], dtype=torch.float64)
    mask = ranks > 0
    per = []
    for b in range(2):
        num = den = 0.0
        for i in range(4):
            for j in range(4):
                if mask[b, i] and mask[b, j] and ranks[b, i] < ranks[b, j]:
                    w = 1.0 / float(ranks[b, i] + ranks[b, j])
                    num += w * math.log1p(math.exp(float(z[b, j] - z[b, i])))
                    den += w
        per.append(num / den)
    assert first_ranknet(z, ranks, mask).item() == pytest.approx(sum(per) / 2, rel=1e-12)


@pytest.fixture(scope="module")
def smol():
    return First(offline_model("SmolLM2-135M-Instruct"), window=4, dtype="float32", max_passage_tokens=24)


def test_first_loss_equals_a_direct_computation(smol):
    w = Window("what do cats eat", ("Cats eat fish and meat.", "The sky is blue.", "Dogs bark at night.", "Cat food is meat."),
               (0, 3, 2, 1))
    task = FirstTask(smol, [w], lam=10.0)
    inputs, ranks, mask = task.batch([0], 0)
    model = smol.llm.model.eval()
    with torch.no_grad():
        got = task.loss(model, inputs, ranks, mask).item()
        prompt, target = inputs[0]
        logits = model(input_ids=torch.tensor([prompt + target])).logits[0].float()
        n = len(prompt)
        lm = torch.nn.functional.cross_entropy(logits[n - 1 : n - 1 + len(target)], torch.tensor(target)).item()
        z = logits[n - 1, smol.identifier_ids[:4]]
    # gold ranks of the shown slots A..D: passage 0 first, then 3, 2, 1
    assert ranks[0].tolist() == [1, 4, 3, 2]
    assert target[0] == smol.identifier_ids[0]  # the answer starts with the identifier FIRST reads
    assert smol.llm.tokenizer.decode(target[1:]).startswith("] > [D] > [C] > [B]")
    rank = sum(1 / (ri + rj) * math.log1p(math.exp(float(z[j] - z[i])))
               for i, ri in enumerate([1, 4, 3, 2]) for j, rj in enumerate([1, 4, 3, 2]) if ri < rj)
    rank /= sum(1 / (ri + rj) for ri in [1, 4, 3, 2] for rj in [1, 4, 3, 2] if ri < rj)
    assert got == pytest.approx(lm + 10 * rank, rel=1e-4)
    task0 = FirstTask(smol, [w], lam=0.0)
    with torch.no_grad():
        assert task0.loss(model, inputs, ranks, mask).item() == pytest.approx(lm, rel=1e-4)
    with pytest.raises(DataError, match="exceeds the reranker's window"):
        FirstTask(smol, [Window("q", ("a",) * 5, tuple(range(5)))])


def test_first_training_steps_on_scifact_lower_the_loss(tiny_smol, scifact_dir, tmp_path):
    from rerank.data import load_dataset
    from rerank.retrieve.bm25 import BM25

    smol = First(tiny_smol, window=4, dtype="float32", max_passage_tokens=24)  # SmolLM2's tokenizer, a tiny Llama

    ds = load_dataset(str(scifact_dir), split="train")
    qrels = ds.require_qrels()
    queries = [q for q in ds.queries if q.qid in qrels][:30]
    windows = label_windows(queries, BM25(ds, k=4)(queries), qrels, window=4)[:6]
    assert len(windows) == 6 and all(len(w.passages) == 4 for w in windows)
    task = FirstTask(smol, windows, lam=10.0)
    cfg = TrainConfig(loss="task", epochs=4, batch_size=3, lr=1e-4, warmup=0.0, checkpoint_every=10**9)
    result = Trainer(smol.llm.model, task, cfg, tmp_path / "first").train()
    steps = result["loss_per_step"]
    assert len(steps) == 8 and all("lm_loss" in s and "ranknet" in s for s in steps)
    assert sum(s["loss"] for s in steps[-2:]) < sum(s["loss"] for s in steps[:2])
    assert (tmp_path / "first" / "config.json").is_file()
    reloaded = First(str(tmp_path / "first"), window=4, max_passage_tokens=24)
    assert reloaded.identifier_ids == smol.identifier_ids


def test_first_with_lora_trains_adapters_only_and_saves_a_merged_model(tiny_smol, tmp_path):
    from rerank.train.first import add_lora

    reranker = First(tiny_smol, window=4, dtype="float32", max_passage_tokens=24)
    model = reranker.llm.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapped = add_lora(model, rank=4)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    w = Window(
        "what do cats eat", ("Cats eat fish and meat.", "The sky is blue.", "Dogs bark.", "Cat food is meat."), (0, 3, 2, 1)
    )
    task = FirstTask(reranker, [w, w], lam=10.0, lora=wrapped)
    cfg = TrainConfig(loss="task", epochs=2, batch_size=2, lr=1e-3, warmup=0.0, checkpoint_every=10**9, max_steps=1)
    assert Trainer(model, task, cfg, tmp_path / "lora").train()["stopped_at"] == 1
    frozen = [(n, p) for n, p in model.named_parameters() if "lora_" not in n]
    assert len(frozen) == len(before)
    for (n, p), (n0, p0) in zip(frozen, before.items(), strict=True):  # the base weights stay as they were while training
        assert torch.equal(p, p0), (n, n0)
    cfg.max_steps = None
    Trainer(model, task, cfg, tmp_path / "lora").train()  # resumes, finishes, merges the adapters and saves
    saved = First(str(tmp_path / "lora"), window=4, max_passage_tokens=24)
    names = [n for n, _ in saved.llm.model.named_parameters()]
    assert not any("lora" in n for n in names) and len(names) == len(before)
