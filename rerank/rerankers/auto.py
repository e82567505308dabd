"""``auto:MODEL``: the reranker family a model belongs to, from its name and its config.

A user arrives with a model name from a leaderboard or a paper; :func:`family` says which kind
runs it (and why), :class:`Auto` builds that kind from a spec, and :func:`rerank.reranker`
does the same in Python. The choice, in order:

1. a table of known names (the last part of the id): monoT5, duoT5, LiT5, FIRST, RankZephyr/RankVicuna,
   Qwen3-Reranker, BGE-Gemma, mxbai-rerank-v2 (the LLM prompt templates name their models),
   SPLADE, ColBERT; a local folder laid out as a ColBERT checkpoint (Stanford or PyLate);
2. the architecture in ``config.json``: ``*ForSequenceClassification`` -> cross-encoder,
   ``T5ForConditionalGeneration`` -> monoT5, ``*ForMaskedLM`` -> SPLADE, ``*ForCausalLM`` ->
   the LLM pointwise judge;
3. otherwise an error naming what the folder holds and the kinds there are.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelMismatch, ModelNotFound, RerankError
from ..models.loading import KIND_WORDS, model_heads, resolve_model
from .base import Reranker
from .templates import for_model

if TYPE_CHECKING:
    from ..specs import Context, Spec
    from ..types import Stage

log = logging.getLogger("rerank")

#: known names (a prefix of the id's last part, lower case) -> kind
KNOWN: tuple[tuple[str, str], ...] = (
    ("monot5", "monot5"), ("duot5", "duot5"), ("lit5", "lit5"), ("first_", "first"), ("first-", "first"),
    ("rank_zephyr", "listwise-gen"), ("rankzephyr", "listwise-gen"), ("rank_vicuna", "listwise-gen"),
    ("splade", "splade"), ("colbert", "colbert"), ("answerai-colbert", "colbert"),
)
#: architecture ending -> kind
ARCHITECTURES: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "cross-encoder"), ("T5ForConditionalGeneration", "monot5"),
    ("ForMaskedLM", "splade"), ("ForCausalLM", "llm-pointwise"),
)


def _config(name: str, path: str) -> dict[str, Any]:
    """``config.json`` of a local folder, or fetched from the hub for an id (online)."""
    folder = Path(path)
    if folder.is_dir():
        file = folder / "config.json"
    else:
        try:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(name, "config.json"))
        except Exception as e:  # noqa: BLE001 - any failure means the config cannot be read
            raise ModelNotFound(f"auto: cannot read {name}'s config.json from the hub ({e})") from None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelNotFound(f"auto: {file} is not readable JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def family(name: str) -> tuple[str, str]:
    """The reranker kind that runs model ``name`` and why (a local folder, a folder of the model
    path, or a hub id when online)."""
    last = name.rstrip("/").split("/")[-1].lower()
    template = for_model(name)
    if template:
        return "llm-pointwise", f"{name.split('/')[-1]} is a known LLM reranker (prompt template {template})"
    for prefix, kind in KNOWN:
        if last.startswith(prefix):
            return kind, f"the name {name.split('/')[-1]} is a known {kind} model"
    path = resolve_model(name)
    folder = Path(path)
    if (folder / "artifact.metadata").is_file() or ((folder / "1_Dense").is_dir() and not (folder / "1_Pooling").is_dir()
                                                   and (folder / "config_sentence_transformers.json").is_file()):
        return "colbert", "it is a ColBERT checkpoint (" + ("artifact.metadata" if (folder / "artifact.metadata").is_file()
                                                            else "PyLate modules") + ")"
    archs = [a for a in _config(name, path).get("architectures") or [] if isinstance(a, str)]
    for arch in archs:
        for ending, kind in ARCHITECTURES:
            if arch.endswith(ending):
                return kind, f"its config.json says {arch}"
    heads = model_heads(path) if Path(path).is_dir() else []
    holds = " and ".join(KIND_WORDS[h] for h in heads) or (f"a {', '.join(archs)}" if archs else "no architecture rerank knows")
    from ..specs import RERANKER, kinds, usage

    raise ModelMismatch(f"auto: {name!r} holds {holds}, which fits no reranker family; name one: "
                        f"{', '.join(usage(k) for k in kinds(RERANKER) if k != 'auto')}", fits=heads)


class Auto(Reranker):
    """Not a reranker of its own: ``auto:MODEL`` builds the kind :func:`family` picks for MODEL."""

    kind = "auto"
    spec_help = "the family picked from the model's name and config.json (says which)"

    takes_every_option = True  # the registry gives it every reranker option; the picked kind checks them
    @classmethod
    def from_spec(cls, spec: Spec, ctx: Context) -> Stage:
        from ..specs import RERANKER, check_options, parse

        if not spec.arg:
            raise RerankError("auto needs a model: auto:MODEL")
        kind, why = family(spec.arg)
        chosen = parse(f"{kind}:{spec.arg}", RERANKER)
        check_options([chosen], {k: v for k, v in ctx.options.items() if k in cls.spec_options})
        log.info("auto: %s runs as %s (%s)", spec.arg, kind, why)
        return chosen.cls.from_spec(chosen, ctx)
