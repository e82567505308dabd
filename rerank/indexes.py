"""Built indexes under ``indexes/``: one folder each, with a manifest that says what was indexed.

An index is reused only when its manifest matches what is asked for (kind, backend,
parameters, corpus fingerprint); otherwise it is rebuilt, under a temporary name that
replaces the old folder only when the build finished. What a killed build left under a
temporary name is removed by the next build of the same index (:func:`building`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
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


#: how old an unlocked temporary folder must be to be taken for a killed build's (a live build
#: locks its folder microseconds after creating it)
LEFTOVER_AGE_S = 60.0


@contextlib.contextmanager
def building(path: Path, work: Path | None = None) -> Iterator[Path]:
    """:func:`rerank.env.atomic_dir` for a build of ``path`` (an index, a model export), after
    removing the temporary folders killed builds of ``path`` left (``.NAME.XXXXXXXX.tmp``; a
    resumable ``.NAME.partial``, ``work``, is kept to resume from). A build holds a shared
    ``flock`` on its own folder while it runs; a leftover is a folder on which an exclusive lock
    can be taken (the kernel released a killed process's lock) and that is older than
    :data:`LEFTOVER_AGE_S`, so a build running in another process keeps its folder and no pid
    or age guess decides alone. Where the file system has no locks, nothing is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    with atomic_dir(path, work) as tmp:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):  # no locks here: then nothing is removed either
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield tmp
        finally:
            os.close(fd)


def _remove_leftovers(path: Path) -> None:
    left = re.compile(rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")
    for folder in path.parent.iterdir():
        if not left.fullmatch(folder.name):
            continue
        try:
            fd = os.open(folder, os.O_RDONLY)
        except OSError:
            continue  # not a folder, or gone meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if time.time() - os.fstat(fd).st_mtime > LEFTOVER_AGE_S:
                log.info("removing %s, left by a build that did not finish", folder)
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            pass  # locked: a build in progress (or a file system without locks)
        finally:
            os.close(fd)


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
    with building(path, partial_folder(path, expected) if resumable else None) as tmp:
        build(tmp)
        (tmp / "partial.json").unlink(missing_ok=True)
        manifest = dict(expected, format=FORMAT, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        build_seconds=round(time.perf_counter() - t0, 3))
        with atomic_write(tmp / MANIFEST) as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
    return path
