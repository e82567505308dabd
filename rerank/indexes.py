"""Built indexes under ``indexes/``: one folder each, with a manifest that says what was indexed.

An index is reused only when its manifest matches what is asked for (kind, backend,
parameters, corpus fingerprint); otherwise it is rebuilt, under a temporary name that
replaces the old folder only when the build finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .env import atomic_dir, atomic_write, indexes_dir

log = logging.getLogger("rerank")
MANIFEST = "manifest.json"
FORMAT = 1


def index_path(kind: str, corpus_name: str, params: dict[str, Any], root: Path | None = None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", corpus_name).strip("_") or "corpus"
    digest = hashlib.blake2b(json.dumps(params, sort_keys=True).encode(), digest_size=4).hexdigest()
    return (root or indexes_dir()) / f"{slug}.{kind}.{digest}"


def read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stale_reason(path: Path, expected: dict[str, Any]) -> str | None:
    """Why the index at ``path`` cannot serve ``expected`` (None when it can)."""
    m = read_manifest(path)
    if m is None:
        return "no index built yet" if not path.exists() else "no readable manifest"
    if m.get("format") != FORMAT:
        return f"manifest format {m.get('format')} (this version writes {FORMAT})"
    for key in ("kind", "backend", "params"):
        if m.get(key) != expected[key]:
            return f"{key} differs: built with {m.get(key)!r}, asked for {expected[key]!r}"
    if m.get("corpus", {}).get("fingerprint") != expected["corpus"]["fingerprint"]:
        return "the corpus changed since it was indexed (fingerprint differs)"
    return None


def partial_folder(path: Path, expected: dict[str, Any]) -> Path:
    """The folder a resumable build works in: kept when the build stops, reused by the next build
    that asks for the same thing, emptied when it asked for something else."""
    tmp = path.with_name(f".{path.name}.partial")
    stamp = tmp / "partial.json"
    wanted = json.dumps(expected, sort_keys=True)
    if tmp.exists() and not (stamp.is_file() and stamp.read_text() == wanted):
        shutil.rmtree(tmp)
    if not tmp.exists():
        tmp.mkdir(parents=True)
        with atomic_write(stamp) as f:
            f.write(wanted)
    else:
        log.info("resuming the interrupted build in %s", tmp)
    return tmp


def build_or_reuse(path: Path, expected: dict[str, Any], build: Callable[[Path], None], rebuild: bool = False,
                   resumable: bool = False) -> Path:
    """Return ``path`` holding a current index, building it with ``build(tmpdir)`` when needed.

    ``resumable``: ``build`` works in :func:`partial_folder`, which outlives an interrupted build,
    so ``build`` can pick up where it stopped."""
    reason = "rebuild asked for" if rebuild else stale_reason(path, expected)
    if reason is None:
        log.info("using index %s", path)
        return path
    if path.exists():
        log.warning("index %s is stale (%s): rebuilding", path, reason)
    else:
        log.info("building index %s", path)
    t0 = time.perf_counter()
    with atomic_dir(path, partial_folder(path, expected) if resumable else None) as tmp:
        build(tmp)
        (tmp / "partial.json").unlink(missing_ok=True)
        manifest = dict(expected, format=FORMAT, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        build_seconds=round(time.perf_counter() - t0, 3))
        with atomic_write(tmp / MANIFEST) as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
    return path
