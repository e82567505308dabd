"""The causal-LM backend of the LLM rerankers (pairwise PRP, listwise FIRST, generative listwise).

Prompts are chat messages rendered with the model's chat template (plain text for base models),
tokenized once, and run on the batched engine: many prompts per forward pass, sorted by length
and grouped by a token budget. Two ways to read the model:

* :meth:`LLM.next_token_logits`: one forward pass per prompt, the hidden state at the last
  position projected onto a few candidate tokens only, in fp32 (a bf16 projection rounds the
  logits to steps of ~0.1 and leaves ties);
* :meth:`LLM.generate`: greedy decoding, batched with left padding, for the generative methods.

:class:`LLMCost` counts calls (prompts), prompt tokens, generated tokens and seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

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

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of the tokenized prompts (decoded, special tokens dropped)."""
        raise NotImplementedError


class LLM(ChatLM):
    """A Hugging Face causal LM by id or path, with batched scoring and generation."""

    cpu_batch_tokens = 8192
    gpu_batch_tokens = 65536

    def __init__(self, name: str, *, device: str = "auto", dtype: str = "auto", batch_tokens: int | None = None,
                 max_length: int | None = None) -> None:
        loaded = load_model(name, "causal-lm", device=device, dtype=dtype, max_length=max_length, default_window=4096)
        self.name, self.path, self.device, self.dtype = name, loaded.path, loaded.device, loaded.dtype
        self.tokenizer, self.model, self.window = loaded.tokenizer, loaded.model, loaded.window
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

    def generate(self, prompts: Sequence[list[int]], max_new_tokens: int, stop: Sequence[str] = ()) -> list[str]:
        """Greedy continuations of the tokenized prompts (decoded, special tokens dropped)."""
        import torch

        if not prompts:
            return []
        self._check_fits(prompts, max_new_tokens, generate=True)
        t0 = time.perf_counter()
        outputs: list[str] = [""] * len(prompts)
        lengths = [len(p) + max_new_tokens for p in prompts]
        eos = {self.tokenizer.eos_token_id, self.engine.pad_id} - {None}
        with torch.inference_mode():
            for idx in self.engine.batches(lengths):  # the scoring engine's token budget
                batch = self._left.pad([{"input_ids": list(prompts[i])} for i in idx])
                width = batch["input_ids"].shape[1]
                gen = self.model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                          max_new_tokens=max_new_tokens, do_sample=False,
                                          pad_token_id=self.engine.pad_id, temperature=None, top_p=None, top_k=None)
                for row, i in enumerate(idx):
                    new = gen[row, width:].tolist()
                    n = next((j for j, t in enumerate(new) if t in eos), len(new))
                    self.cost.generated += n
                    outputs[i] = self.tokenizer.decode(new[:n], skip_special_tokens=True)
                self.cost.batches += 1
        self._account(len(prompts), sum(map(len, prompts)), time.perf_counter() - t0)
        return outputs


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
