"""A seeded, resumable training loop for rankers over lists.

A :class:`Task` says how to turn a batch of list indices into model inputs with labels and a
mask, how to score them, how to evaluate on a dev split and how to save the result; the
:class:`Trainer` owns the rest: AdamW with linear warm-up and decay, gradient accumulation,
gradient clipping, bf16 autocast (GPU, or CPU with native bf16), a checkpoint (model,
optimiser, scheduler, RNG states, position in the epoch) written atomically every
``checkpoint_every`` steps and at an epoch's end (when the last is a minute old), and a dev
evaluation per epoch.

Determinism: the list order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone
(of the task's ``blocks`` when it groups its lists, see :func:`epoch_order`), and tasks draw
their own sampling (negatives) from ``(seed, epoch, index)``, so a run that is stopped and
resumed from its checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..env import atomic_write
from ..errors import DataError, TrainingError
from ..models.loading import load_weights
from .losses import get_loss

log = logging.getLogger("rerank")

CHECKPOINT = "checkpoint.pt"
HISTORY = "training.json"


class Task(Protocol):
    """What the trainer needs to know about the data and the model."""

    def __len__(self) -> int: ...  # number of training lists

    def batch(self, indices: Sequence[int], epoch: int) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """Model inputs, labels [B, L] and mask [B, L] for these lists (deterministic)."""
        ...

    def scores(self, model: torch.nn.Module, inputs: Any) -> torch.Tensor:
        """[B, L] scores of a batch's inputs."""
        ...

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Dev metrics (empty dict when there is no dev split)."""
        ...

    def save(self, model: torch.nn.Module, folder: Path) -> None:
        """Write the trained model so that it loads by path."""
        ...

    def describe(self) -> dict[str, Any]:
        """What identifies the data and model (a resumed run must match it)."""
        ...

    # Optional: ``loss(model, inputs, labels, mask) -> Tensor`` replaces ``scores`` + the
    # configured loss (the click learners of rerank.ultr weigh clicks with their own models).
    # Optional: ``blocks``, lists of list indices that are shuffled as units (see epoch_order).


@dataclass
class TrainConfig:
    loss: str = "listnet"
    loss_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 8  # lists per micro-batch
    accumulate: int = 1  # micro-batches per optimiser step
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of the steps
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"  # auto | bf16 | fp32
    checkpoint_every: int = 100  # optimiser steps
    checkpoint_seconds: float = 60.0  # at an epoch's end, a checkpoint only when the last is this old (short epochs: no GBs)
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total: for tests and budgets
    keep_best: bool = True  # save the epoch with the best dev metric (the first one the task reports), not the last
    activation_checkpointing: str = "auto"  # auto (on for causal LMs) | on | off: see checkpoint_activations

    def check(self) -> None:
        if self.loss != "task":  # "task": the task brings its own loss (e.g. the FIRST objective)
            get_loss(self.loss)
        for name in ("epochs", "batch_size", "accumulate", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, not {self.precision!r}")
        if self.activation_checkpointing not in ("auto", "on", "off"):
            raise ValueError(f"activation_checkpointing must be auto, on or off, not {self.activation_checkpointing!r}")


def use_bf16(precision: str, device: str) -> bool:
    from ..models.loading import cpu_supports_bf16

    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and cpu_supports_bf16()


def checkpoint_activations(model: torch.nn.Module, mode: str) -> bool:
    """Recompute each layer's activations in the backward pass instead of keeping them all
    (transformers' gradient checkpointing, non-reentrant): a step's memory then grows with the
    layers' inputs, not with every intermediate (Qwen2.5-Coder-0.5B's GRPO step over 16 prompts of
    ~520 tokens: killed at 22 GB without it, a 7.0 GB peak for the whole process with it), for about
    a third more compute.
    ``auto``: on for causal LMs (their prompts are long), off for encoders. Returns whether it is on."""
    new_name = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.20's name
    enable = new_name if callable(new_name) else getattr(model, "gradient_checkpointing_enable", None)
    supported = callable(enable) and bool(getattr(model, "supports_gradient_checkpointing", False))
    if mode == "off" or (mode == "auto" and not supported):
        return False
    if not supported:
        raise ValueError(f"activation checkpointing: {type(model).__name__} does not support it (transformers' "
                         "gradient_checkpointing_enable); use activation_checkpointing='off'")
    if mode == "auto":
        archs = list(getattr(getattr(model, "config", None), "architectures", None) or []) + [type(model).__name__]
        if not any(a.endswith("ForCausalLM") for a in archs):
            return False
    kwargs = {"use_reentrant": False}
    if callable(new_name):
        new_name(activation_checkpointing_kwargs=kwargs)
    else:
        enable(gradient_checkpointing_kwargs=kwargs)  # type: ignore[misc]
    return True


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def _order(n: int, seed: int, epoch: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).tolist()


def epoch_order(n: int, seed: int, epoch: int, blocks: Sequence[Sequence[int]] | None = None) -> list[int]:
    """The list order of one epoch, drawn from ``seed`` and ``epoch`` alone. ``blocks``: lists that
    stay together (e.g. a query's several shown lists, whose shared texts a batch encodes once):
    the blocks are shuffled, each keeps its lists in the order given."""
    if blocks is None:
        return _order(n, seed, epoch)
    return [i for b in _order(len(blocks), seed, epoch) for i in blocks[b]]


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Train ``model`` on ``task`` into ``output`` (a folder): resumes from its checkpoint."""

    def __init__(self, model: torch.nn.Module, task: Task, config: TrainConfig, output: str | Path, *,
                 device: str = "cpu", overwrite: bool = False) -> None:
        config.check()
        if len(task) == 0:
            raise DataError("no training lists: every query lacks a relevant or a non-relevant candidate")
        self.model, self.task, self.config = model, task, config
        self.output = Path(output)
        self.device = device
        self.bf16 = use_bf16(config.precision, device)
        if checkpoint_activations(model, config.activation_checkpointing):
            log.info("activation checkpointing on (%s): layers recomputed in the backward pass", type(model).__name__)
        custom = getattr(task, "loss", None)
        self.task_loss = custom if callable(custom) else None  # a task with its own objective (clicks, FIRST)
        if config.loss == "task" and self.task_loss is None:
            raise ValueError("loss='task' needs a task with its own loss(model, inputs, labels, mask)")
        self.loss_fn = get_loss(config.loss) if config.loss != "task" else None
        self.steps_per_epoch = math.ceil(len(task) / (config.batch_size * config.accumulate))
        self.total_steps = self.steps_per_epoch * config.epochs
        done = self.output / HISTORY
        if done.is_file() and json.loads(done.read_text()).get("finished") and not overwrite:
            raise TrainingError(f"{self.output} already holds a finished training run; pick another --output "
                                  "or pass overwrite=True (--overwrite) to train again")
        groups = getattr(model, "param_groups", None)
        if callable(groups):  # a model that sets its own learning rates (e.g. DLA's propensity model)
            param_groups = groups(config.lr, config.weight_decay)
        else:
            decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() > 1]
            rest = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() <= 1]
            param_groups = [{"params": decay, "weight_decay": config.weight_decay},
                            {"params": rest, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(param_groups, lr=config.lr)
        warm = int(config.warmup * self.total_steps)

        def schedule(step: int) -> float:
            if step < warm:
                return (step + 1) / (warm + 1)
            return max(0.0, (self.total_steps - step) / max(1, self.total_steps - warm))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, Any]] = []
        self.steps_log: list[dict[str, float]] = []
        self.step_stats: dict[str, float] = {}  # what the loss reports beside its value (PG-Rank: sampled utility)
        self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None  # (dev metric, epoch, state)
        when = ("max_steps", "checkpoint_every", "checkpoint_seconds")  # when to stop or save: not what is learnt
        self.identity = {"config": {k: v for k, v in asdict(config).items() if k not in when},
                         "task": task.describe()}

    # ------------------------------------------------------------------ checkpoints
    def _checkpoint_path(self) -> Path:
        return self.output / CHECKPOINT

    def save_checkpoint(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        state = {"identity": self.identity, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": _rng_state(), "epoch": self.epoch,
                 "step_in_epoch": self.step_in_epoch, "global_step": self.global_step, "history": self.history,
                 "steps_log": self.steps_log, "best": self.best}
        with atomic_write(self._checkpoint_path(), "wb", encoding=None) as f:
            torch.save(state, f)
        self._saved_at = time.perf_counter()

    def resume(self) -> bool:
        """Load the checkpoint in ``output`` when there is one; False when starting afresh."""
        path = self._checkpoint_path()
        if not path.is_file():
            return False
        try:  # weights-only: tensors and plain containers, never code (a checkpoint may come from anywhere)
            state = load_weights(path, "a rerank checkpoint", map_location=self.device)
        except DataError as e:
            raise TrainingError(f"{e}; delete it to start over") from None
        if not isinstance(state, dict) or not isinstance(state.get("identity"), dict):
            raise TrainingError(f"{path} is not a rerank checkpoint (no identity); delete it to start over")
        if state["identity"] != self.identity:
            diff = sorted(k for part in ("config", "task") for k in set(state["identity"][part]) | set(self.identity[part])
                          if state["identity"][part].get(k) != self.identity[part].get(k))
            raise TrainingError(f"{path} belongs to a different training run (differs in: {', '.join(diff)}); "
                            "use another --output, or delete the checkpoint to start over")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.history, self.steps_log, self.best = state["history"], state["steps_log"], state["best"]
        log.info("resumed from %s: epoch %d, step %d of %d", path, self.epoch + 1, self.global_step, self.total_steps)
        return True

    # ------------------------------------------------------------------ the loop
    def _groups(self, epoch: int) -> Iterator[tuple[int, list[list[int]]]]:
        order = epoch_order(len(self.task), self.config.seed, epoch, getattr(self.task, "blocks", None))
        per_step = self.config.batch_size * self.config.accumulate
        for step in range(self.steps_per_epoch):
            chunk = order[step * per_step : (step + 1) * per_step]
            micro = [chunk[i : i + self.config.batch_size] for i in range(0, len(chunk), self.config.batch_size)]
            yield step, micro

    def _step(self, micro: list[list[int]], epoch: int) -> float:
        total = sum(len(m) for m in micro)
        value = 0.0
        self.step_stats = {}
        for part in micro:
            inputs, labels, mask = self.task.batch(part, epoch)
            labels, mask = labels.to(self.device), mask.to(self.device)
            with autocast(self.device, self.bf16):
                if self.task_loss is not None:
                    loss = self.task_loss(self.model, inputs, labels, mask)
                else:
                    scores = self.task.scores(self.model, inputs)
            if self.task_loss is None:
                assert self.loss_fn is not None
                loss = self.loss_fn(scores.float(), labels.float(), mask, **self.config.loss_options)
            if not torch.isfinite(loss):
                raise TrainingError(f"the {self.config.loss} loss became {loss.item()} at step {self.global_step + 1}; "
                                         "lower the learning rate")
            (loss * (len(part) / total)).backward()
            value += loss.item() * len(part) / total
            reporter = self.task if self.task_loss is not None else self.loss_fn
            for key, v in (getattr(reporter, "last_stats", None) or {}).items():  # e.g. PG-Rank's sampled utility
                self.step_stats[key] = self.step_stats.get(key, 0.0) + v * len(part) / total
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return value

    def evaluate(self) -> dict[str, float]:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), autocast(self.device, self.bf16):
                return self.task.evaluate(self.model)
        finally:
            self.model.train(was)

    def train(self) -> dict[str, Any]:
        """Run (or finish) the training; returns the history written to ``training.json``."""
        self.resume()
        if not self.history and self.global_step == 0:
            before = self.evaluate()
            if before:
                self.history.append({"epoch": 0, "step": 0, **before})
                log.info("dev before training: %s", _fmt(before))
        self.model.train()
        start = logged = self._saved_at = time.perf_counter()
        while self.epoch < self.config.epochs:
            for step, micro in self._groups(self.epoch):
                if step < self.step_in_epoch:
                    continue  # done before the checkpoint
                loss = self._step(micro, self.epoch)
                self.step_in_epoch = step + 1
                self.global_step += 1
                self.steps_log.append({"step": self.global_step, "loss": round(loss, 6),
                                       "lr": float(self.scheduler.get_last_lr()[0]),
                                       **{k: round(v, 6) for k, v in self.step_stats.items()}})
                now = time.perf_counter()
                if self.global_step % 10 == 0 or self.global_step == self.total_steps or now - logged >= 60:
                    logged = now  # every 10 steps, and at least once a minute (slow LLM steps)
                    recent = [s["loss"] for s in self.steps_log[-10:]]
                    log.info("epoch %d step %d/%d loss %.4f (%.1f s)", self.epoch + 1, self.global_step, self.total_steps,
                             sum(recent) / len(recent), time.perf_counter() - start,
                             extra={"per_step": "last" if self.global_step == self.total_steps else True})
                if self.config.max_steps is not None and self.global_step >= self.config.max_steps:
                    self.save_checkpoint()
                    return {"stopped_at": self.global_step, "history": self.history}
                if self.global_step % self.config.checkpoint_every == 0:
                    self.save_checkpoint()
            metrics = self.evaluate()
            self.history.append({"epoch": self.epoch + 1, "step": self.global_step, **metrics})
            if metrics:
                log.info("dev after epoch %d: %s", self.epoch + 1, _fmt(metrics), extra={"per_step": True})
                value = next(iter(metrics.values()))
                if self.config.keep_best and (self.best is None or value > self.best[0]):
                    state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
                    self.best = (value, self.epoch + 1, state)
            self.epoch += 1
            self.step_in_epoch = 0
            if self.epoch < self.config.epochs and time.perf_counter() - self._saved_at >= self.config.checkpoint_seconds:
                self.save_checkpoint()  # the last epoch's end is the finished model, saved below
        self.output.mkdir(parents=True, exist_ok=True)
        best_epoch = self.config.epochs
        if self.best is not None and self.best[1] != self.config.epochs:
            best_epoch = self.best[1]
            log.info("keeping epoch %d (best dev metric %.4f)", best_epoch, self.best[0])
            self.model.load_state_dict(self.best[2])
        self.task.save(self.model, self.output)
        result = {"finished": True, **self.identity, "steps": self.global_step, "saved_epoch": best_epoch,
                  "history": self.history,
                  "loss_per_step": self.steps_log, "train_seconds_this_process": round(time.perf_counter() - start, 1)}
        with atomic_write(self.output / HISTORY) as f:
            json.dump(result, f, indent=1)
        self._checkpoint_path().unlink(missing_ok=True)
        return result


def _fmt(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
