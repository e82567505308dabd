"""GRPO: group relative policy optimisation (Shao et al., "DeepSeekMath", 2024), the
reinforcement learning of Rank-R1 and ProRank.

For each prompt ``q`` the current policy samples a group of ``G`` completions ``o_1..o_G``
(:meth:`rerank.models.llm.ChatLM.sample`); a reward function scores each, and the advantage of
every token of ``o_i`` is its group-normalised reward::

    A_i = (r_i - mean(r)) / (std(r) + eps)         (std: the unbiased sample deviation of the group)

The loss of a step is the clipped policy-ratio objective over every completion token ``t`` of the
step, with the log-probabilities of the policy that sampled the group (``old``) and, optionally, a
KL penalty to the reference model (the starting weights: the base with its LoRA adapters
disabled) by the k3 estimator::

    ρ_t  = exp(log π(o_t) - log π_old(o_t))
    KL_t = exp(log π_ref(o_t) - log π(o_t)) - (log π_ref(o_t) - log π(o_t)) - 1
    loss = -(1 / T) Σ_t [min(ρ_t A, clip(ρ_t, 1 - ε, 1 + ε) A) - β KL_t]

*Normalisation*: ``T`` is the number of completion tokens in the whole step (all prompts, all
samples, all micro-batches): a token-level mean, so a long completion weighs by its length (as in
DAPO and TRL's default), not the per-sequence mean of the DeepSeekMath paper. With one inner update
per group (the default) ``ρ = 1`` and the gradient is the policy gradient ``-A ∇ log π``; with
``inner_updates`` > 1 the same groups are reused for that many optimiser steps, and clipping keeps
the later ones near the sampling policy. Log-probabilities are of ``logits / temperature`` (the
distribution the samples were drawn from). Groups whose rewards are all equal get zero advantage
(they still count in ``T`` and in the KL term).

The training loop is :class:`~rerank.train.trainer.Trainer`'s (AdamW, warm-up, bf16 autocast,
checkpoints with the RNG state, so a resumed run samples what an uninterrupted one samples) with
the step replaced (:class:`GRPOTrainer`). Each step's mean reward, format-reward rate, mean
completion length, clipped fraction and KL (both averaged over the inner updates) go to
``training.json`` (``loss_per_step``), and the curve of the first two to its ``reward_curve``.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..env import atomic_write
from ..errors import TrainingError
from .first import add_lora, answer_states
from .trainer import HISTORY, Trainer, autocast

log = logging.getLogger("rerank")
Tensor = torch.Tensor

#: ``reward(completion text, target) -> (reward, well formed)``
Reward = Callable[[str, Any], tuple[float, bool]]


def group_advantages(rewards: Tensor, eps: float = 1e-4) -> Tensor:
    """[P, G] advantages of [P, G] rewards (a row a prompt's group): ``(r - mean) / (std + eps)``
    with the group's unbiased standard deviation (0 for a group of one)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + eps)


def k3_kl(ref: Tensor, new: Tensor) -> Tensor:
    """The k3 estimator of KL(π || π_ref) per token: ``exp(ref - new) - (ref - new) - 1`` (>= 0)."""
    d = ref - new
    return torch.exp(d) - d - 1


def grpo_loss(new: Tensor, old: Tensor, advantages: Tensor, mask: Tensor, *, clip_eps: float = 0.2,
              ref: Tensor | None = None, beta: float = 0.0, tokens: float | None = None) -> tuple[Tensor, dict[str, float]]:
    """The GRPO loss of [N, T] token log-probabilities under the policy being trained (``new``), the
    sampling policy (``old``) and the reference (``ref``, with ``beta`` > 0), [N] advantages and the
    [N, T] mask of real completion tokens: the sum over the masked tokens divided by ``tokens``
    (default: their number; pass the step's total to split a step into micro-batches). Also
    returns the clipped fraction and the mean KL of these tokens."""
    m = mask.to(new.dtype)
    ratio = torch.exp(new - old)
    a = advantages.to(new.dtype)[:, None]
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps)
    per_token = -torch.minimum(ratio * a, clipped * a)
    kl = k3_kl(ref, new) if ref is not None else torch.zeros_like(new)
    if ref is not None and beta:
        per_token = per_token + beta * kl
    count = float(m.sum())
    loss = (per_token * m).sum() / (tokens if tokens is not None else max(count, 1.0))
    with torch.no_grad():
        stats = {"clipped": float(((clipped != ratio).to(m.dtype) * m).sum() / max(count, 1.0)),
                 "kl": float((kl * m).sum() / max(count, 1.0))}
    return loss, stats


def completion_logprobs(model: Any, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int,
                        temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """[N, T] log-probabilities (fp32) of each completion's tokens after its prompt under ``model``'s
    ``logits / temperature``, right-padded, and the [N, T] mask of real tokens."""
    rows, targets, _, head = answer_states(model, pairs, pad_id)
    logits = head(rows).float() / (temperature if temperature > 0 else 1.0)
    flat = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None])[:, 0]
    lengths = [len(c) for _, c in pairs]
    width = max(lengths)
    out = torch.zeros(len(pairs), width, dtype=flat.dtype, device=flat.device)
    mask = torch.zeros(len(pairs), width, dtype=torch.bool, device=flat.device)
    start = 0
    for b, n in enumerate(lengths):
        out[b, :n] = flat[start : start + n]
        mask[b, :n] = True
        start += n
    return out, mask


@dataclass(frozen=True)
class GRPOConfig:
    """GRPO's own settings (the schedule, learning rate and seed are the :class:`TrainConfig`'s)."""

    group: int = 8  # G: completions sampled per prompt
    max_new_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    clip_eps: float = 0.2  # ε of the ratio clipping
    beta: float = 0.0  # weight of the KL to the reference model (0: no reference pass)
    inner_updates: int = 1  # optimiser steps per sampled batch
    eps: float = 1e-4  # added to the group's reward deviation

    def check(self) -> None:
        if self.group < 2:
            raise ValueError(f"GRPO needs a group of at least 2 completions per prompt, got {self.group}")
        if self.max_new_tokens < 1 or self.inner_updates < 1:
            raise ValueError("max_new_tokens and inner_updates must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"GRPO samples: temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1 or not 0 <= self.clip_eps < 1 or self.beta < 0 or self.eps <= 0:
            raise ValueError(f"need 0 < top_p <= 1, 0 <= clip_eps < 1, beta >= 0, eps > 0; got {self}")


class Prompt(NamedTuple):
    """A training prompt: its token ids and what the reward compares a completion with."""

    ids: tuple[int, ...]
    target: Any


class Rollout(NamedTuple):
    """A micro-batch's sampled groups: (prompt, completion) ids, advantages [N], the reference
    log-probabilities [N, T] (None without KL), and each completion's reward and format flag."""

    pairs: list[tuple[tuple[int, ...], tuple[int, ...]]]
    advantages: Tensor
    ref: Tensor | None
    rewards: list[float]
    formats: list[bool]


class GRPOTask:
    """Prompts and a reward for :class:`GRPOTrainer`. ``llm``: the policy (a torch
    :class:`~rerank.models.llm.LLM` whose model carries LoRA adapters, ``lora`` the peft wrapper:
    the reference is the model with them disabled); ``prompt(index)`` the ``size`` training prompts
    (deterministic); ``reward`` scores a completion's text against the prompt's target;
    ``identity``: what identifies the data (a resumed run must match it)."""

    def __init__(self, llm: Any, prompt: Callable[[int], Prompt], size: int, reward: Reward, grpo: GRPOConfig, *,
                 lora: Any, identity: dict[str, Any], evaluate: Callable[[], dict[str, float]] | None = None) -> None:
        grpo.check()
        self.llm, self.prompt, self.size, self.reward, self.grpo, self.lora = llm, prompt, size, reward, grpo, lora
        self.identity, self._evaluate = identity, evaluate

    def __len__(self) -> int:
        return self.size

    def describe(self) -> dict[str, Any]:
        return {"model": self.llm.name, **self.identity, "grpo": asdict(self.grpo)}

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, Tensor, Tensor]:
        raise NotImplementedError("GRPO samples its batches (GRPOTrainer calls rollout)")

    def scores(self, model: torch.nn.Module, inputs: Any) -> Tensor:
        raise NotImplementedError("GRPO brings its own loss")

    def loss(self, model: torch.nn.Module, inputs: Any, labels: Tensor, mask: Tensor) -> Tensor:
        raise NotImplementedError("GRPOTrainer computes the GRPO loss of sampled groups (rollout, grpo_loss)")

    def rollout(self, model: torch.nn.Module, indices: Sequence[int], device: str, bf16: bool) -> Rollout:
        """Sample a group per prompt from the current policy (in eval mode, the trainer's torch
        generator), score the completions and normalise the rewards in each group."""
        g = self.grpo
        prompts = [self.prompt(i) for i in indices]
        was = model.training
        model.eval()
        try:
            groups = self.llm.sample([list(p.ids) for p in prompts], g.max_new_tokens, n=g.group,
                                     temperature=g.temperature, top_p=g.top_p)
        finally:
            model.train(was)
        pairs, rewards, formats = [], [], []
        for p, group in zip(prompts, groups, strict=True):
            for c in group:
                r, ok = self.reward(c.text, p.target)
                pairs.append((p.ids, c.token_ids))
                rewards.append(float(r))
                formats.append(bool(ok))
        adv = group_advantages(torch.tensor(rewards, dtype=torch.float64).reshape(len(prompts), g.group), g.eps)
        ref = None
        if g.beta > 0:
            with torch.no_grad(), self.lora.disable_adapter(), autocast(device, bf16):
                ref, _ = completion_logprobs(model, pairs, self.llm.engine.pad_id, g.temperature)
        return Rollout(pairs, adv.reshape(-1).float().to(device), ref, rewards, formats)

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        return self._evaluate() if self._evaluate is not None else {}

    def save(self, model: Any, folder: Path) -> None:
        """The policy with its adapters merged: a plain model folder, with the tokenizer."""
        self.lora.merge_and_unload().save_pretrained(folder)
        self.llm.tokenizer.save_pretrained(folder)


class GRPOTrainer(Trainer):
    """:class:`Trainer` with GRPO's step: sample the groups of the step's prompts, then
    ``inner_updates`` optimiser steps on them (one learning-rate schedule step per batch)."""

    task: GRPOTask

    def _step(self, micro: list[list[int]], epoch: int) -> float:
        g = self.task.grpo
        rolls = [self.task.rollout(self.model, part, self.device, self.bf16) for part in micro]
        tokens = float(sum(len(c) for r in rolls for _, c in r.pairs))
        olds: list[Tensor] = []
        value, clipped, kl = 0.0, 0.0, 0.0  # the loss of the last pass; clipped fraction and KL: mean over the passes
        for inner in range(g.inner_updates):
            value = 0.0
            for k, r in enumerate(rolls):
                with autocast(self.device, self.bf16):
                    new, mask = completion_logprobs(self.model, r.pairs, self.task.llm.engine.pad_id, g.temperature)
                if inner == 0:  # the policy that sampled the groups, before this batch's first update
                    olds.append(new.detach())
                loss, stats = grpo_loss(new, olds[k], r.advantages, mask, clip_eps=g.clip_eps, ref=r.ref, beta=g.beta,
                                        tokens=tokens)
                if not torch.isfinite(loss):
                    raise TrainingError(f"the GRPO loss became {loss.item()} at step {self.global_step + 1}; "
                                        "lower the learning rate")
                loss.backward()
                share = float(mask.sum()) / tokens / g.inner_updates
                value += loss.item()
                clipped += stats["clipped"] * share
                kl += stats["kl"] * share
            if self.config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        rewards = [x for r in rolls for x in r.rewards]
        formats = [x for r in rolls for x in r.formats]
        self.step_stats = {"reward": sum(rewards) / len(rewards), "format_rate": sum(formats) / len(formats),
                           "completion_tokens": tokens / len(rewards), "clipped": clipped, "kl": kl}
        return value

    def train(self) -> dict[str, Any]:
        result = super().train()
        if result.get("finished"):
            steps = result["loss_per_step"]
            result["reward_curve"] = {"reward": [s["reward"] for s in steps],
                                      "format_rate": [s["format_rate"] for s in steps]}
            with atomic_write(self.output / HISTORY) as f:
                json.dump(result, f, indent=1)
        return result


def lora_policy(model: Any, rank: int) -> Any:
    """LoRA adapters (peft) of rank ``rank`` on ``model``, in place, without dropout (the policy
    that samples and the one trained are the same function); returns the peft wrapper."""
    return add_lora(model, rank, dropout=0.0)


def draw(seed: int, what: str, index: int) -> random.Random:
    """The generator of one training prompt's draws: from the seed, the objective and the index alone."""
    return random.Random(f"{seed}/{what}/{index}")


def curve_summary(result: dict[str, Any]) -> str:
    """One line: mean reward and format rate over the first and the last tenth of the steps."""
    curve = result.get("reward_curve") or {}
    reward, fmt = curve.get("reward") or [], curve.get("format_rate") or []
    if not reward:
        return "no reward curve"
    t = max(1, len(reward) // 10)

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    return (f"mean reward: first {t} steps {mean(reward[:t]):.3f}, last {t} steps {mean(reward[-t:]):.3f}; "
            f"format rate {mean(fmt[:t]):.2f} -> {mean(fmt[-t:]):.2f}")
