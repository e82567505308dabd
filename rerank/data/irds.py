"""ir_datasets behind rerank's Dataset, offline-safe.

Two things are added to ir_datasets' download step (patched once, on first use):

* a **local mirror**: a file ir_datasets wants at ``$IR_DATASETS_HOME/REL`` is first looked
  for at ``<shared data>/ir_datasets_home/REL`` and copied into place (md5-checked when
  ir_datasets knows the hash), so e.g. Cranfield loads through the real ir_datasets path
  from the archive in ../shared/data;
* **fail-fast**: offline (RERANK_OFFLINE=1 or HF_HUB_OFFLINE=1) nothing is fetched, and a
  failed download is reported at once as :class:`DatasetUnavailable` naming the dataset, the
  missing file and where to put it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..env import offline, reachable, shared_data_dir
from ..errors import DatasetUnavailable

_patched = False
_lock = threading.Lock()
_current = threading.local()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _home() -> Path:
    import ir_datasets

    return Path(ir_datasets.util.home_path())


def _mirror_for(cache_path: Path) -> Path | None:
    shared = shared_data_dir()
    if shared is None:
        return None
    try:
        rel = cache_path.resolve().relative_to(_home().resolve())
    except ValueError:
        return None
    cand = shared / "ir_datasets_home" / rel
    return cand if cand.is_file() else None


def _any_reachable(urls: list[str]) -> bool:
    """Whether any mirror's host answers (ir_datasets retries each mirror 3 times with a 15 s timeout)."""
    from urllib.parse import urlsplit

    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return True  # not ours to judge (gs://, local paths)
        if reachable(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)):
            return True
    return False


def _unavailable(cache_path: Path | None, urls: list[str], cause: str) -> DatasetUnavailable:
    name = getattr(_current, "dataset", None) or "this ir_datasets dataset"
    where = f"put the file at {cache_path}" if cache_path else "download it where the network is reachable"
    shared = shared_data_dir()
    mirror = f" (or at {shared / 'ir_datasets_home'}/<same relative path>)" if shared and cache_path else ""
    src = f" from {urls[0]}" if urls else ""
    return DatasetUnavailable(f"{name}: {cause}; it needs a file{src}: {where}{mirror}", cause)


def _install_patch() -> None:
    global _patched
    with _lock:
        if _patched:
            return
        from ir_datasets.util import download as dl

        orig_path = dl.Download.path
        orig_stream = dl.Download.stream

        def path(self: Any, force: bool = True) -> Any:
            cache = Path(self._cache_path) if self._cache_path is not None else None
            if self._path is not None or not force or (cache is not None and (cache.exists() or str(cache) == os.devnull)):
                return orig_path(self, force)
            urls = [getattr(m, "url", repr(m)) for m in self.mirrors]
            mirror = _mirror_for(cache) if cache is not None else None
            if mirror is not None and cache is not None:
                if self.expected_md5 and _md5(mirror) != self.expected_md5:
                    raise DatasetUnavailable(f"{mirror}: md5 differs from the {self.expected_md5} ir_datasets expects")
                cache.parent.mkdir(parents=True, exist_ok=True)
                tmp = cache.with_name(cache.name + ".rerank-tmp")
                shutil.copyfile(mirror, tmp)
                os.replace(tmp, cache)
                return orig_path(self, force)
            if offline():
                raise _unavailable(cache, urls, "offline (RERANK_OFFLINE/HF_HUB_OFFLINE) and not in the local cache")
            if not _any_reachable(urls):
                raise _unavailable(cache, urls, "no network connection to its download hosts")
            try:
                return orig_path(self, force)
            except Exception as e:
                raise _unavailable(cache, urls, f"download failed ({type(e).__name__})") from e

        @contextlib.contextmanager
        def stream(self: Any) -> Iterator[Any]:
            if self._stream and offline():
                urls = [getattr(m, "url", repr(m)) for m in self.mirrors]
                raise _unavailable(None, urls, "offline (RERANK_OFFLINE/HF_HUB_OFFLINE) and not in the local cache")
            with orig_stream(self) as s:
                yield s

        dl.Download.path = path
        dl.Download.stream = stream
        _quiet_ir_datasets_logs()
        _patched = True


class _QuietFilter(logging.Filter):
    """ir_datasets' own lines about opening archives, and about failures that rerank reports in
    its own words (a missing file offline), are noise on a successful run."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "opening zip file" not in message and not message.startswith("[error]")


def _quiet_ir_datasets_logs() -> None:
    from ir_datasets import log as irds_log

    orig = irds_log.Logger.logger
    quiet = _QuietFilter()

    def logger(self: Any) -> Any:
        out = orig(self)
        if quiet not in out.filters:
            out.addFilter(quiet)
        return out

    irds_log.Logger.logger = logger


@contextlib.contextmanager
def loading(dataset_id: str) -> Iterator[None]:
    """Name the dataset in errors raised while ir_datasets works inside this block."""
    _install_patch()
    prev = getattr(_current, "dataset", None)
    _current.dataset = dataset_id
    try:
        yield
    finally:
        _current.dataset = prev


def registry_ids() -> list[str]:
    import ir_datasets

    return list(ir_datasets.registry)


def irds_load(dataset_id: str) -> Any:
    import ir_datasets

    _install_patch()
    return ir_datasets.load(dataset_id)


def doc_text(doc: Any) -> str:
    """The text ir_datasets considers the document's content (title and body where both exist)."""
    if hasattr(doc, "default_text"):
        return doc.default_text()
    return getattr(doc, "text", "")
