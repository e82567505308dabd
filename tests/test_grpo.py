"""GRPO (rerank.train.grpo), the sampler it trains with (ChatLM.sample), ProRank and the Rank-R1 objective."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from rerank.train.grpo import GRPOConfig, GRPOTask, GRPOTrainer, Prompt, group_advantages, grpo_loss, lora_policy
from rerank.train.trainer import TrainConfig


def test_group_advantages_and_grpo_loss_equal_a_direct_computation():
    rewards = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    adv = group_advantages(rewards, eps=1e-4)
    for p, row in enumerate(rewards.tolist()):
        mean, std = statistics.mean(row), statistics.stdev(row)  # the unbiased deviation of the group
        assert adv[p].tolist() == pytest.approx([(r - mean) / (std + 1e-4) for r in row])
    assert adv[1].abs().max() == 0  # equal rewards: no advantage

    # two completions of 3 and 2 tokens (the second padded); ratios 1.5 and 0.5 fall outside [0.8, 1.2]
    old = torch.log(torch.tensor([[0.2, 0.5, 0.4], [0.3, 0.6, 0.9]]))
    new_p = torch.tensor([[0.3, 0.5, 0.44], [0.15, 0.66, 0.5]])
    new = torch.log(new_p).requires_grad_()
    ref = torch.log(torch.tensor([[0.25, 0.4, 0.4], [0.2, 0.6, 0.7]]))
    mask = torch.tensor([[True, True, True], [True, True, False]])
    a = torch.tensor([1.0, -0.5])
    eps, beta = 0.2, 0.1
    loss, stats = grpo_loss(new, old, a, mask, clip_eps=eps, ref=ref, beta=beta)
    total, clipped, kls = 0.0, 0, []
    for i in range(2):
        for t in range(3):
            if not mask[i, t]:
                continue
            ratio = math.exp(new[i, t].item() - old[i, t].item())
            cl = min(max(ratio, 1 - eps), 1 + eps)
            d = ref[i, t].item() - new[i, t].item()
            kl = math.exp(d) - d - 1
            kls.append(kl)
            clipped += cl != ratio
            total += -(min(ratio * a[i].item(), cl * a[i].item()) - beta * kl)
    assert loss.item() == pytest.approx(total / 5, rel=1e-6)  # token-level mean over the 5 completion tokens
    assert stats["clipped"] == pytest.approx(clipped / 5) and clipped == 2
    assert stats["kl"] == pytest.approx(sum(kls) / 5, rel=1e-5)
    loss.backward()
    # token (0, 0): ratio 1.5 > 1.2 with A > 0, so the clipped term is the minimum: only the KL term moves it
    d = ref[0, 0].item() - new[0, 0].item()
    assert new.grad[0, 0].item() == pytest.approx(beta * (1 - math.exp(d)) / 5, rel=1e-5)
    assert new.grad[1, 2].item() == 0  # padding
    # one inner update (new == old): the policy gradient -A / T per token, no KL
    same = torch.log(new_p).requires_grad_()
    pg, _ = grpo_loss(same, same.detach(), a, mask)
    pg.backward()
    assert torch.allclose(same.grad, torch.tensor([[-1 / 5] * 3, [0.5 / 5, 0.5 / 5, 0.0]]))


@pytest.fixture(scope="module")
def llm(tiny_smol):
    from rerank.models.llm import LLM

    return LLM(tiny_smol, dtype="float32", device="cpu")


def test_sampler_greedy_seeded_and_token_ids(llm):
    prompts = [llm.tokens([llm.render("Say something.")])[0], llm.tokens([llm.render("What is a cat?")])[0]]
    greedy = llm.sample(prompts, 5, n=3)
    assert [[c.text for c in row] for row in greedy] == [[t] * 3 for t in llm.generate(prompts, 5)]
    state = torch.get_rng_state()
    a = llm.sample(prompts, 6, n=4, temperature=1.0, seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded call leaves the process's generator alone
    assert a == llm.sample(prompts, 6, n=4, temperature=1.0, seed=7, top_p=1.0)
    assert a != llm.sample(prompts, 6, n=4, temperature=1.0, seed=8)
    assert len(a) == 2 and all(len(row) == 4 for row in a) and len({c.text for c in a[0]}) > 1
    ends = llm.generation_config_eos() | {llm.engine.pad_id}
    for row in a + greedy:
        for c in row:
            assert llm.tokenizer.decode(list(c.token_ids), skip_special_tokens=True) == c.text
            assert c.finished == (c.token_ids[-1] in ends) and not set(c.token_ids[:-1]) & ends
            assert len(c.token_ids) <= 6
    assert llm.generate(prompts, 6, temperature=1.0, seed=7) == [row[0].text for row in llm.sample(prompts, 6, temperature=1.0,
                                                                                                   seed=7)]
    for bad, match in (({"n": 0}, "n "), ({"temperature": -1.0}, "temperature"), ({"top_p": 0.0}, "top_p")):
        with pytest.raises(ValueError, match=match):
            llm.sample(prompts, 4, **bad)


def _peaked(tmp_path, tiny_smol):
    """A 1-layer Llama with large initial weights (a peaked next-token distribution) and its prompt."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rerank.models.llm import LLM

    tok = AutoTokenizer.from_pretrained(tiny_smol)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=1.0,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "peaked")
    tok.save_pretrained(tmp_path / "peaked")
    llm = LLM(str(tmp_path / "peaked"), dtype="float32", device="cpu")
    llm.toy_prompt = llm.tokens(["Say yes."])[0]
    with torch.no_grad():  # the untrained model's second most likely next token
        llm.toy_target = int(llm.model(torch.tensor([llm.toy_prompt])).logits[0, -1].topk(2).indices[1])
    llm.toy_lora = lora_policy(llm.model, 4)
    return llm


def _toy_run(llm, out, lr: float, steps: int = 12, max_steps: int | None = None):
    """GRPO with reward 1 for a completion whose first token is the untrained model's second most likely one."""
    ids, target = llm.toy_prompt, llm.toy_target

    def reward(text, _):
        ok = llm.tokens([text])[0][:1] == [target]
        return float(ok), ok

    task = GRPOTask(llm, lambda i: Prompt(tuple(ids), None), steps * 2, reward, GRPOConfig(group=8, max_new_tokens=1),
                    lora=llm.toy_lora, identity={"toy": target})
    cfg = TrainConfig(loss="task", batch_size=2, lr=lr, warmup=0.0, checkpoint_every=10**9, max_steps=max_steps)
    return GRPOTrainer(llm.model, task, cfg, out).train()


@pytest.mark.parametrize("lr", [3e-3, 1e-9])
def test_a_tiny_policy_learns_a_toy_reward(tiny_smol, tmp_path, lr):
    torch.manual_seed(0)
    result = _toy_run(_peaked(tmp_path, tiny_smol), tmp_path / "toy", lr)
    reward = result["reward_curve"]["reward"]
    assert len(reward) == 12 and len(result["reward_curve"]["format_rate"]) == 12
    rise = sum(reward[-4:]) / 4 - sum(reward[:4]) / 4
    if lr > 1e-6:
        assert rise > 0.2, reward  # e.g. 0.56 -> 0.89
    else:
        assert rise < 0.2, reward  # the same run that does not learn: the assertion above can fail
    saved = json.loads((tmp_path / "toy" / "training.json").read_text())
    assert saved["reward_curve"] == result["reward_curve"]
    assert all({"reward", "format_rate", "kl", "clipped", "completion_tokens"} <= set(s) for s in saved["loss_per_step"])


def test_grpo_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tiny_smol, tmp_path):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    straight = _toy_run(_peaked(tmp_path / "a", tiny_smol), tmp_path / "straight", 3e-3, steps=4)
    torch.manual_seed(0)
    llm = _peaked(tmp_path / "b", tiny_smol)
    assert _toy_run(llm, tmp_path / "resumed", 3e-3, steps=4, max_steps=2)["stopped_at"] == 2
    torch.manual_seed(123)  # a new process: another generator state, restored from the checkpoint
    resumed = _toy_run(llm, tmp_path / "resumed", 3e-3, steps=4)
    assert resumed["reward_curve"] == straight["reward_curve"]
    assert [s["loss"] for s in resumed["loss_per_step"]] == [s["loss"] for s in straight["loss_per_step"]]
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "straight").state_dict()
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "resumed").state_dict()
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k]) for k in a)


def test_grpo_kl_and_inner_updates_on_the_toy(tiny_smol, tmp_path):
    """β > 0 reads the reference (the adapters off): KL 0 at the first step (LoRA starts as the
    identity), > 0 once the policy moved; on-policy the ratio is 1 (nothing clipped); with three
    inner updates the later ones are off-policy and get clipped."""

    def run(out, **options):
        llm = _peaked(tmp_path / out, tiny_smol)  # a finished run merges its adapters: a fresh model each
        task = GRPOTask(llm, lambda i: Prompt(tuple(llm.toy_prompt), None), len(options) * 2,
                        lambda t, _: (float(len(t) % 2), True), GRPOConfig(group=4, max_new_tokens=2, **options),
                        lora=llm.toy_lora, identity={})
        cfg = TrainConfig(loss="task", batch_size=2, lr=1e-2, warmup=0.0)
        return GRPOTrainer(llm.model, task, cfg, tmp_path / out).train()["loss_per_step"]

    steps = run("kl", beta=0.5, clip_eps=0.2)
    assert len(steps) == 2 and steps[0]["kl"] == pytest.approx(0.0, abs=1e-7) and steps[1]["kl"] > 1e-4
    assert all(s["clipped"] == 0 for s in steps)
    steps = run("inner", inner_updates=3, clip_eps=0.01, beta=0.0)
    assert any(s["clipped"] > 0 for s in steps)
    with pytest.raises(ValueError, match="group of at least 2"):
        GRPOConfig(group=1).check()


def test_judgement_and_setwise_rewards():
    from rerank.train.prorank import judgement_reward
    from rerank.train.rank_r1 import setwise_reward

    assert judgement_reward("Yes", "Yes") == (2.0, True)
    assert judgement_reward(" yes, it does", "Yes") == (1.0, False)
    assert judgement_reward('"No".', "Yes") == (0.0, False)
    assert judgement_reward("", "No") == (0.0, False)
    from rerank.rerankers.setwise import parse_setwise_answer

    reward = setwise_reward(parse_setwise_answer, 4)
    assert reward("<think>b fits</think><answer>[2]</answer>", frozenset({1})) == (2.0, True)
    assert reward("<think>b fits</think><answer>[3]</answer>", frozenset({1})) == (1.0, True)
    assert reward("[2]", frozenset({1})) == (1.0, False)  # the right choice, malformed
    assert reward("nothing", frozenset({1})) == (0.0, False)


def test_prorank_both_stages_end_to_end_serve_as_llm_pointwise(tiny_smol, scifact_dir, tmp_path):
    from click.testing import CliRunner

    from rerank.cli import main
    from rerank.data import load_dataset
    from rerank.rerankers.pointwise import LLMPointwise

    out = tmp_path / "prorank"
    args = ["train", "-m", tiny_smol, "-d", str(scifact_dir), "--objective", "prorank", "--stages", "both", "--steps", "2",
            "--group", "2", "--batch-size", "2", "--train-queries", "6", "--dev-queries", "0", "--negatives", "bm25:5",
            "--group-size", "3", "--max-new-tokens", "2", "--lora", "4", "--lr", "1e-3", "-o", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output  # ~10 s on an idle 2-core CPU
    assert "stage 1 (GRPO warm-up): mean reward" in res.output and f"llm-pointwise:{out}" in res.output
    stage1 = json.loads((out / "stage1" / "training.json").read_text())
    assert len(stage1["reward_curve"]["reward"]) == 2 and stage1["task"]["objective"] == "prorank-1"
    stage2 = json.loads((out / "training.json").read_text())
    assert len(stage2["loss_per_step"]) == 2 and stage2["config"]["loss"] == "listnet"
    ds = load_dataset(str(scifact_dir), split="train")
    qrels = ds.require_qrels()
    q = ds.queries[0]
    docs = [ds.docs.get(next(iter(qrels[x.qid]))) for x in ds.queries[:3]]
    scores = {}
    for name in (tiny_smol, str(out / "stage1"), str(out)):
        reranker = LLMPointwise(name)
        assert not any("lora" in n for n, _ in reranker.model.named_parameters())
        scores[name] = reranker.score([(q.text, d) for d in docs])
        assert all(math.isfinite(s) for s in scores[name])
    assert scores[str(out)] != scores[str(out / "stage1")]  # stage 2 changed the scores
    res = CliRunner().invoke(main, args)  # a finished run is not trained over
    assert res.exit_code == 2 and "already holds a finished training run" in res.output


def test_rank_r1_objective_trains_on_setwise_prompts(tiny_smol, scifact_dir, tmp_path):
    from rerank.data import load_dataset
    from rerank.rerankers.setwise import rank_r1_messages
    from rerank.train.rank_r1 import train_rank_r1

    ds = load_dataset(str(scifact_dir), split="train")
    cfg = TrainConfig(loss="task", batch_size=2, lr=1e-3, warmup=0.0)
    seen = []

    def messages(query, passages):
        seen.append((query, list(passages)))
        return rank_r1_messages(query, passages)

    result = train_rank_r1(tiny_smol, ds, tmp_path / "r1", cfg, steps=2, grpo=GRPOConfig(group=2, max_new_tokens=4),
                           set_size=3, negatives="bm25:5", max_queries=4, lora=4, max_passage_tokens=16,
                           messages=messages)  # the Rank-R1 reranker's parser by default
    assert len(result["reward_curve"]["reward"]) == 2 and result["task"]["objective"] == "rank-r1"
    assert len(seen) == 4 and all(len(p) == 3 for _, p in seen)
    qrels = ds.require_qrels()
    text_of = {q.text: q.qid for q in ds.queries}
    for query, passages in seen:  # one judged relevant passage in each set
        relevant = [ds.docs.get(d) for d, g in qrels[text_of[query]].items() if g >= ds.rel]
        assert sum(any(r.startswith(p[:40]) for r in relevant) for p in passages) == 1, (relevant, passages)
    assert (tmp_path / "r1" / "config.json").is_file()


def test_activation_checkpointing_auto_for_causal_lms_with_the_same_gradients(tiny_smol, tmp_path):
    """A causal LM trains with its layers recomputed in the backward pass (a 0.5B model's GRPO step
    over 16 prompts of ~520 tokens was killed at 22 GB otherwise): same loss and gradients, on by ``auto``; an
    encoder stays as it is; an unknown mode is refused."""
    from transformers import BertConfig, BertForSequenceClassification

    from rerank.models.llm import LLM
    from rerank.train.grpo import completion_logprobs
    from rerank.train.trainer import checkpoint_activations

    llm = LLM(tiny_smol, dtype="float32", device="cpu")
    lora_policy(llm.model, 4)
    prompts = [llm.tokens([llm.render(t)])[0] for t in ("Say something.", "What is a cat? Answer in a word.")]
    pairs = [(p, c) for p in prompts for c in ([5, 6, 7], [9])]

    def grads() -> tuple[float, list[torch.Tensor]]:
        llm.model.train()
        llm.model.zero_grad(set_to_none=True)
        lp, mask = completion_logprobs(llm.model, pairs, llm.engine.pad_id)
        loss = -(lp * mask).sum()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in llm.model.parameters() if p.requires_grad]

    def on(model: torch.nn.Module) -> bool:  # transformers' flag, by its >= 5.20 name where it has it
        return bool(getattr(model, "is_activation_checkpointing", None) if hasattr(type(model), "is_activation_checkpointing")
                    else model.is_gradient_checkpointing)

    plain = grads()
    assert not on(llm.model)
    assert checkpoint_activations(llm.model, "auto") and on(llm.model)
    again = grads()
    assert again[0] == pytest.approx(plain[0], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(plain[1], again[1], strict=True))
    encoder = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=32, num_labels=1))
    assert not checkpoint_activations(encoder, "auto") and not on(encoder)
    assert checkpoint_activations(encoder, "on") and on(encoder)
    with pytest.raises(ValueError, match="activation_checkpointing"):
        TrainConfig(activation_checkpointing="sometimes").check()
