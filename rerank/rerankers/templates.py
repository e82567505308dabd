"""Prompt templates of the LLM pointwise rerankers, as data.

A template is a JSON file (the built-in ones are in ``rerank/rerankers/prompts/``; a user's is
given by path)::

    {"pieces": ["<|im_start|>system ...", "<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {passage}",
                "<|im_end|>\\n<|im_start|>assistant\\n"],
     "yes": "yes", "no": "no", "score": "p-yes", "instruction": "Given a web search query, ...",
     "max_length": 8192, "models": ["Qwen3-Reranker"]}

* ``pieces``: the prompt, cut where the model's reference code tokenizes separately; each piece
  is tokenized whole after ``{query}``, ``{passage}`` and ``{instruction}`` are filled in (so
  the tokens are those of the reference implementation). The piece holding ``{passage}`` must
  end with it: a long passage is cut from that piece's end. Query and passage go in whatever
  order the pieces put them.
* ``chat``: true when the pieces are the user's message, to be wrapped in the model's own chat
  template (then each placeholder is tokenized on its own).
* ``bos``: start with the tokenizer's BOS token.
* ``yes``/``no``: the answer tokens (one token each); ``score``: ``logit-diff`` (logit(yes) -
  logit(no)), ``p-yes`` (their softmax: p(yes)) or ``logit-yes``.
* ``instruction``: the default instruction; ``instruction_format``: how an instruction is
  written into ``{instruction}`` (e.g. ``"instruction: {instruction}\\n"``; no instruction
  writes nothing).
* ``max_length``: the context the model was trained with (the default window).
* ``models``: model names (the last part of a hub id, or a prefix of it) this template is for;
  :func:`for_model` picks a template by them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DataError

FOLDER = Path(__file__).with_name("prompts")
SCORES = ("logit-diff", "p-yes", "logit-yes")
_FIELDS = ("query", "passage", "instruction")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Template:
    name: str
    pieces: tuple[str, ...]
    yes: str = "Yes"
    no: str = "No"
    score: str = "logit-diff"
    chat: bool = False
    bos: bool = False
    instruction: str | None = None
    instruction_format: str = "{instruction}"
    max_length: int | None = None
    models: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        where = f"prompt template {self.name!r}"
        if not self.pieces or not all(isinstance(p, str) for p in self.pieces):
            raise DataError(f"{where}: 'pieces' must be a non-empty list of strings")
        found = [f for p in self.pieces for f in _PLACEHOLDER.findall(p)]
        unknown = sorted(set(found) - set(_FIELDS))
        if unknown:
            raise DataError(f"{where}: unknown placeholder {{{unknown[0]}}}; use {{query}}, {{passage}} and {{instruction}}")
        if found.count("query") != 1 or found.count("passage") != 1:
            raise DataError(f"{where}: the pieces must hold {{query}} and {{passage}} once each")
        if not self.chat and not any(p.endswith("{passage}") for p in self.pieces):
            raise DataError(f"{where}: the piece with {{passage}} must end with it (a long passage is cut from its end)")
        if self.score not in SCORES:
            raise DataError(f"{where}: score must be one of {', '.join(SCORES)}, not {self.score!r}")
        if "{instruction}" not in self.instruction_format:
            raise DataError(f"{where}: instruction_format must hold {{instruction}}")

    @classmethod
    def from_prompt(cls, prompt: str) -> Template:
        """A template from a user's prompt with ``{query}`` and ``{passage}``, in the model's chat template."""
        if "{passage}" not in prompt or "{query}" not in prompt:
            raise ValueError("the prompt needs {passage} and {query} placeholders")
        return cls("prompt", (prompt,), chat=True, max_length=512)

    def instruction_text(self, instruction: str | None) -> str:
        """What ``{instruction}`` becomes: the given or default instruction, formatted; nothing without one."""
        text = instruction if instruction is not None else self.instruction
        return fill(self.instruction_format, instruction=text) if text else ""

    def to_json(self) -> str:
        return json.dumps({"pieces": list(self.pieces), "yes": self.yes, "no": self.no, "score": self.score,
                           "chat": self.chat, "bos": self.bos, "instruction": self.instruction,
                           "instruction_format": self.instruction_format, "max_length": self.max_length}, sort_keys=True)


def fill(text: str, **values: str) -> str:
    """``text`` with its placeholders replaced in one pass (a query that holds "{passage}" stays as written)."""
    return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def builtin() -> list[str]:
    """The names of the built-in templates."""
    return sorted(p.stem for p in FOLDER.glob("*.json"))


def load(name_or_path: str) -> Template:
    """A built-in template by name (``qwen3-reranker``) or a user's JSON file by path."""
    path = Path(name_or_path).expanduser()
    if not path.suffix == ".json" or not path.is_file():
        path = FOLDER / f"{name_or_path}.json"
        if not path.is_file():
            raise DataError(f"unknown prompt template {name_or_path!r}: give a JSON file or one of {', '.join(builtin())}")
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"prompt template {path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"prompt template {path}: must be a JSON object")
    known = {"pieces", "yes", "no", "score", "chat", "bos", "instruction", "instruction_format", "max_length", "models",
             "description"}
    extra = sorted(set(data) - known)
    if extra:
        raise DataError(f"prompt template {path}: unknown field {extra[0]!r}; fields: {', '.join(sorted(known))}")
    try:
        return Template(name=path.stem, pieces=tuple(data.get("pieces") or ()), yes=str(data.get("yes", "Yes")),
                        no=str(data.get("no", "No")), score=str(data.get("score", "logit-diff")),
                        chat=bool(data.get("chat", False)), bos=bool(data.get("bos", False)),
                        instruction=data.get("instruction"),
                        instruction_format=str(data.get("instruction_format", "{instruction}")),
                        max_length=data.get("max_length"), models=tuple(data.get("models") or ()),
                        description=str(data.get("description", "")))
    except TypeError as e:
        raise DataError(f"prompt template {path}: {e}") from None


def for_model(name: str) -> str | None:
    """The built-in template written for model ``name`` (matched on the last part of its id), if any."""
    last = name.rstrip("/").split("/")[-1].lower()
    for t in builtin():
        for m in load(t).models:
            if last.startswith(m.lower()):
                return t
    return None


@dataclass(frozen=True)
class Part:
    """One piece of a compiled template: fixed token ids, or a format string tokenized per pair."""

    ids: tuple[int, ...] = ()
    text: str | None = None

    @property
    def has_passage(self) -> bool:
        return self.text is not None and "{passage}" in self.text

    @property
    def query_only(self) -> bool:
        return self.text == "{query}"


def compile_parts(template: Template, tokenizer: Any) -> list[Part]:
    """``template``'s pieces against ``tokenizer``: literal pieces tokenized once, the others kept as
    format strings. A chat template's pieces are rendered in the model's chat template (or, for a
    model without one, followed by "Answer:" after a BOS), and each placeholder becomes a piece of its own."""
    pieces = list(template.pieces)
    bos = template.bos
    if template.chat:
        marks = {f: f"\x00{f.upper()}\x00" for f in _FIELDS}
        user = "".join(pieces)
        for f, m in marks.items():
            user = user.replace("{" + f + "}", m)
        if getattr(tokenizer, "chat_template", None):
            text = str(tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                                     add_generation_prompt=True))
        else:
            text, bos = user + "\nAnswer:", True
        back = {m: "{" + f + "}" for f, m in marks.items()}
        pieces = [back.get(s, s) for s in re.split("(" + "|".join(map(re.escape, back)) + ")", text) if s]
    parts = []
    if bos and tokenizer.bos_token_id is not None:
        parts.append(Part(ids=(int(tokenizer.bos_token_id),)))
    for p in pieces:
        if _PLACEHOLDER.search(p):
            parts.append(Part(text=p))
        else:
            parts.append(Part(ids=tuple(tokenizer(p, add_special_tokens=False)["input_ids"])))
    return parts
