"""The package's shape: no import cycles between rerank's modules (imports inside functions
count, those under TYPE_CHECKING do not), and the layers import downwards only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "rerank"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def import_graph() -> dict[str, set[str]]:
    """module -> the rerank modules it imports (at any depth in the file)."""
    files = {module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        tree = ast.parse(path.read_text())
        skip = _type_checking_lines(tree)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(tree):
            if getattr(node, "lineno", 0) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(0, node.level - 1)):
                    base = base.rpartition(".")[0]
                source = (f"{base}.{node.module}" if node.module else base) if node.level else (node.module or "")
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                if t in files and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    # a package's __init__ re-exporting its submodules is not a cycle of the code's layers:
    # leave out the edges from a package to its own submodules
    graph = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in import_graph().items()}
    assert cycles(graph) == []


# lower layers never import higher ones (rerank/__init__ is the public API and imports all)
LAYERS = [
    ("rerank.types", "rerank.errors", "rerank.env", "rerank.progress"),
    ("rerank.data", "rerank.models", "rerank.indexes", "rerank.evaluate"),
    ("rerank.retrieve", "rerank.rerankers"),
    ("rerank.specs",),
    ("rerank.train", "rerank.ultr", "rerank.distributed", "rerank.serve", "rerank.client", "rerank.integrations"),
    ("rerank.cli",),
]


def layer(mod: str) -> int | None:
    for i, names in enumerate(LAYERS):
        if any(mod == n or mod.startswith(n + ".") for n in names):
            return i
    return None


def test_layers_import_downwards():
    upward = []
    for mod, targets in import_graph().items():
        here = layer(mod)
        for t in targets:
            there = layer(t)
            if here is not None and there is not None and there > here:
                upward.append(f"{mod} -> {t}")
    # the stage classes name the spec module only to report the other kinds in an error, the
    # reranker package's make_reranker is the spec parser's, kept where callers import it from, and
    # auto:MODEL builds the kind it picks through the parser
    allowed = {"rerank.retrieve.cur -> rerank.specs", "rerank.rerankers -> rerank.specs",
               "rerank.rerankers.auto -> rerank.specs"}
    assert sorted(set(upward) - allowed) == []
