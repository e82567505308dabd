"""The causal-LM backend of the LLM rerankers (pairwise PRP, listwise FIRST, generative listwise).

Prompts are chat messages rendered with the model's chat template (plain text for base models),
tokenized once, and run on the batched engine: many prompts per forward pass, sorted by length
and grouped by a token budget. Two ways to read the model:

* :meth:`LLM.next_token_logits`: one forward pass per prompt, the hidden state at the last
  position projected onto a few candidate tokens only, in fp32 (a bf16 projection rounds the
  logits to steps of ~0.1 and leaves ties);
* :meth:`ChatLM.sample`: ``n`` continuations per prompt (greedy at temperature 0, else sampled
  with temperature and nucleus ``top_p``, seeded), batched with left padding, as
  :class:`Completion` (text and token ids: GRPO trains on the ids); :meth:`ChatLM.generate`, the
  texts of one continuation per prompt, is built on it. The vLLM engine implements the same call.

:class:`LLMCost` counts calls (prompts), prompt tokens, generated tokens and seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from ..errors import DataError
from .engine import Cost, Engine
from .loading import batch_budget, load_model

log = logging.getLogger("rerank")


@dataclass
class LLMCost(Cost):
    """:class:`Cost` plus tokens generated and outputs that had to be repaired."""

    unit: ClassVar[str] = "prompts"
    generated: int = 0
    repaired: int = 0

    def as_dict(self) -> dict[str, float]:
        return {**super().as_dict(), "generated_tokens": self.generated, "repaired_outputs": self.repaired}


class Completion(NamedTuple):
    """One continuation of a prompt: its text (decoded, special tokens dropped) and the token ids
    generated, with the end-of-sequence token that ended it when one did (``finished``)."""

    text: str
    token_ids: tuple[int, ...]
    finished: bool


def check_sampling(n: int, temperature: float, top_p: float) -> None:
    """A one-line error for sampling options out of range."""
    if n < 1:
        raise ValueError(f"n (samples per prompt) must be >= 1, got {n}")
    if not temperature >= 0:
        raise ValueError(f"temperature must be >= 0 (0: greedy), got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


class PromptModel:
    """What the list rerankers need of the model they prompt (the causal :class:`LLM`, a T5 judge):
    text pieces as token ids, a context window and an :class:`LLMCost`."""

    tokenizer: Any
    window: int
    cost: LLMCost

    def tokens(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of text pieces, no special tokens added."""
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _account(self, calls: int, tokens: int, seconds: float) -> None:
        self.cost.calls += calls
        self.cost.tokens += tokens
        self.cost.seconds += seconds


class ChatLM(PromptModel):
    """A causal LM read through its chat template, on whichever engine runs it (:class:`LLM`, rerank's
    own transformers loop; :class:`rerank.models.vllm_engine.VLLM`): prompt building, the
    context-window checks, and the two calls the rerankers make."""

    name: str
    chat: bool

    # ------------------------------------------------------------ prompts
    def render(self, user: str, system: str | None = None, assistant: str = "") -> str:
        """The prompt text: chat template with the assistant turn opened (and primed with
        ``assistant``), or plain text for models without a template."""
        if not self.chat:
            return (f"{system}\n\n" if system else "") + f"{user}\n\nAnswer: {assistant}"
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)) + assistant

    def wrap(self, system: str | None = None, assistant: str = "") -> tuple[list[int], list[int]]:
        """Token ids before and after the user message: ``before + user_ids + after`` is a prompt."""
        mark = "\u2063USER\u2063"
        before, after = self.render(mark, system, assistant).split(mark)
        pre = self.tokenizer(before, add_special_tokens=not self.chat)["input_ids"]  # BOS where a plain LM wants one
        return list(pre), self.tokens([after])[0] if after else []

    def single_token(self, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise DataError(f"{self.name}: {text!r} is {len(ids)} tokens in this tokenizer, but must be one")
        return int(ids[0])

    def _check_fits(self, prompts: Sequence[list[int]], new_tokens: int = 0, generate: bool = False) -> None:
        if generate and new_tokens < 1:
            raise ValueError(f"max_new_tokens must be positive, got {new_tokens}")
        too_long = [len(p) for p in prompts if len(p) + new_tokens > self.window]
        if not too_long:
            return
        if not new_tokens:
            raise DataError(f"{self.name}: a prompt of {max(too_long)} tokens exceeds the {self.window}-token context")
        raise DataError(f"{self.name}: a prompt of {max(too_long)} tokens leaves no room for {new_tokens} new tokens "
                        f"in the {self.window}-token context")

    def next_token_logits(self, prompts: Sequence[list[int]], candidates: Sequence[int]) -> list[list[float]]:
        """For each tokenized prompt, the logits of the ``candidates`` tokens as the next token."""
        raise NotImplementedError

    def sample(self, prompts: Sequence[list[int]], max_new_tokens: int, *, n: int = 1, temperature: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = ()) -> list[list[Completion]]:
        """``n`` continuations of each tokenized prompt: greedy at ``temperature`` 0 (the ``n`` are then
        one continuation, repeated), else sampled from the softmax of logits / ``temperature`` cut to
        the nucleus ``top_p``. ``seed``: the same draws on every call with the same prompts and
        options (None: the process's torch generator, whose state a training checkpoint keeps).
        ``stop``: strings that end a continuation where the engine supports them (vLLM)."""
        check_sampling(n, temperature, top_p)
        if not prompts:
            return []
        self._check_fits(prompts, max_new_tokens, generate=True)
        draws = 1 if temperature == 0 else n
        out = self._sample(prompts, max_new_tokens, draws, temperature, top_p, seed, stop)
        return [row * n if draws == 1 else row for row in out]

    def _sample(self, prompts: Sequence[list[int]], max_new_tokens: int, n: int, temperature: float, top_p: float,
                seed: int | None, stop: Sequence[str]) -> list[list[Completion]]:
        """The engine's part of :meth:`sample` (arguments checked, ``n`` == 1 when greedy)."""
        raise NotImplementedError

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[str] = (), *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None) -> list[str]:
        """One continuation of each tokenized prompt (decoded, special tokens dropped): greedy by
        default, sampled with ``temperature`` > 0 (see :meth:`sample`)."""
        rows = self.sample(prompts, max_new_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop)
        return [row[0].text for row in rows]


class LLM(ChatLM):
    """A Hugging Face causal LM by id or path, with batched scoring and generation."""

    cpu_batch_tokens = 8192
    gpu_batch_tokens = 65536

    def __init__(self, name: str, *, device: str = "auto", dtype: str = "auto", batch_tokens: int | None = None,
                 max_length: int | None = None) -> None:
        loaded = load_model(name, "causal-lm", device=device, dtype=dtype, max_length=max_length, default_window=4096)
        self.name, self.path, self.device, self.dtype = name, loaded.path, loaded.device, loaded.dtype
        self._attach(loaded.tokenizer, loaded.model, loaded.window, batch_tokens)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, window: int, name: str = "in-memory",
                   batch_tokens: int | None = None) -> LLM:
        """Run a causal LM already in memory (e.g. the one a reranker loaded, being trained)."""
        self = cls.__new__(cls)
        param = next(model.parameters())
        self.name, self.path, self.device, self.dtype = name, name, str(param.device), param.dtype
        self._attach(tokenizer, model, window, batch_tokens)
        return self

    def _attach(self, tokenizer: Any, model: Any, window: int, batch_tokens: int | None) -> None:
        self.tokenizer, self.model, self.window = tokenizer, model, window
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        budget = batch_budget(self.device, batch_tokens, self.cpu_batch_tokens, self.gpu_batch_tokens)
        self.engine = Engine(device=self.device, batch_tokens=budget, pad_id=pad, padding_side="right")
        self._left = Engine(device=self.device, pad_id=pad, padding_side="left")  # generation pads on the left
        self.cost = LLMCost()
        self.chat = bool(getattr(self.tokenizer, "chat_template", None))
        self._head = self.model.get_output_embeddings()

    # ------------------------------------------------------------ running
    def next_token_logits(self, prompts: Sequence[list[int]], candidates: Sequence[int]) -> list[list[float]]:
        """For each tokenized prompt, the logits of the ``candidates`` tokens as the next token."""
        import torch

        if not prompts:
            return []
        self._check_fits(prompts)
        w = self._head.weight[list(candidates)].detach().float()
        bias = getattr(self._head, "bias", None)
        b = bias[list(candidates)].detach().float() if bias is not None else None

        def forward(batch: dict[str, Any]) -> Any:
            hidden = self.model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["lengths"] - 1].float()
            logits = last @ w.T
            return (logits + b) if b is not None else logits

        before, batches = self.engine.cost.seconds, self.engine.cost.batches
        out = self.engine.run([{"input_ids": list(p)} for p in prompts], forward)
        self.cost.batches += self.engine.cost.batches - batches
        self._account(len(prompts), sum(map(len, prompts)), self.engine.cost.seconds - before)
        return [list(map(float, row)) for row in out]

    def _sample(self, prompts: Sequence[list[int]], max_new_tokens: int, n: int, temperature: float, top_p: float,
                seed: int | None, stop: Sequence[str]) -> list[list[Completion]]:
        import torch

        del stop  # transformers' stop strings need the tokenizer at each step; the callers cut their answers
        t0 = time.perf_counter()
        outputs: list[list[Completion]] = [[] for _ in prompts]
        lengths = [len(p) + max_new_tokens for p in prompts]
        ends = self.generation_config_eos() | {self.engine.pad_id}
        options: dict[str, Any] = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if temperature > 0:  # top_k=0: no top-k cut (transformers' default is 50), the nucleus alone
            options = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0, "num_return_sequences": n}
        devices = [torch.device(self.device)] if str(self.device).startswith("cuda") else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            for idx in self.engine.batches([x * n for x in lengths]):  # the scoring engine's token budget
                batch = self._left.pad([{"input_ids": list(prompts[i])} for i in idx])
                width = batch["input_ids"].shape[1]
                gen = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          max_new_tokens=max_new_tokens, pad_token_id=self.engine.pad_id, **options)
                for row in range(gen.shape[0]):  # the n samples of a prompt are consecutive rows
                    new = gen[row, width:].tolist()
                    k = next((j for j, t in enumerate(new) if t in ends), len(new))
                    self.cost.generated += k
                    ids = new[: k + 1] if k < len(new) else new
                    text = self.tokenizer.decode(new[:k], skip_special_tokens=True)
                    outputs[idx[row // n]].append(Completion(text, tuple(ids), k < len(new)))
                self.cost.batches += 1
        self._account(len(prompts), sum(map(len, prompts)), time.perf_counter() - t0)
        return outputs

    def generation_config_eos(self) -> set[int]:
        """The tokens that end a continuation: the tokenizer's EOS and the generation config's."""
        ends = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ends |= set(configured) if isinstance(configured, list) else {configured}
        return {int(t) for t in ends if t is not None}


#: where the LLM rerankers' causal LMs run: rerank's own transformers loop, or vLLM
LLM_BACKENDS = ("auto", "torch", "vllm")


def fit_passages(passages: Sequence[list[int]], budget: int, cap: int | None = None) -> list[list[int]]:
    """Cut tokenized passages so that together they use at most ``budget`` tokens: every passage
    gets an equal share, and the share a short passage leaves unused goes to the longer ones
    (water-filling); ``cap`` limits each passage on its own first. The beginning of each is kept."""
    if budget < len(passages):
        raise DataError(f"the prompt leaves {budget} tokens for {len(passages)} passages; raise max_length or use fewer passages")
    lengths = [min(len(p), cap) if cap else len(p) for p in passages]
    order = sorted(range(len(passages)), key=lambda i: lengths[i])
    share: dict[int, int] = {}
    left, count = budget, len(passages)
    for i in order:
        share[i] = min(lengths[i], left // count)
        left -= share[i]
        count -= 1
    return [list(p[: share[i]]) for i, p in enumerate(passages)]
