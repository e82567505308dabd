"""Where things live (shared data, indexes), whether we are offline, and atomic writes."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def flag(name: str, *, strict: bool = False) -> bool:
    """Whether the environment variable ``name`` is set to 1/true/yes/on. ``strict``: a value that
    is neither that nor 0/false/no/off (or unset) is an error naming the variable, not a quiet no."""
    value = os.environ.get(name, "").strip().lower()
    if strict and value not in _TRUE | _FALSE:
        from .errors import RerankError

        raise RerankError(f"{name}={value!r}: use 1 or 0 (or true/false, yes/no, on/off)")
    return value in _TRUE


def offline() -> bool:
    """True when the user asked for no network: RERANK_OFFLINE or HF_HUB_OFFLINE set to 1/true."""
    return flag("RERANK_OFFLINE") or flag("HF_HUB_OFFLINE")


_reachable: dict[tuple[str, int], bool] = {}
PROBE_TIMEOUT_S = 3.0


def reachable(host: str, port: int = 443) -> bool:
    """Whether ``host`` completes a TLS handshake within a few seconds (remembered per process).
    Asked before a library's own download retries, so a network that silently drops packets, or a
    proxy that accepts connections and then fails TLS, fails in seconds rather than minutes. With
    ``HTTPS_PROXY`` set, the proxy is what must accept a connection."""
    key = (host, port)
    if key not in _reachable:
        _reachable[key] = _probe(host, port)
    return _reachable[key]


def _probe(host: str, port: int) -> bool:
    import ssl
    from urllib.parse import urlsplit

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    if proxy:
        u = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        try:
            socket.create_connection((u.hostname or "", u.port or 80), timeout=PROBE_TIMEOUT_S).close()
            return True
        except (OSError, ValueError):
            return False
    try:
        context = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE"))
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock:
            sock.settimeout(PROBE_TIMEOUT_S)
            with context.wrap_socket(sock, server_hostname=host):
                return True
    except (OSError, ValueError):  # ssl.SSLError is an OSError
        return False


def shared_data_dir() -> Path | None:
    """The local data mirror: $RERANK_SHARED_DATA, else ../shared/data beside the working directory
    or beside the source checkout. None when there is none."""
    env = os.environ.get("RERANK_SHARED_DATA")
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent.parent
    for cand in (Path.cwd() / ".." / "shared" / "data", here / ".." / "shared" / "data"):
        if cand.is_dir():
            return cand.resolve()
    return None


def indexes_dir() -> Path:
    """Where built indexes are kept: $RERANK_INDEXES, else ./indexes."""
    return Path(os.environ.get("RERANK_INDEXES", "indexes")).expanduser()


_umask: list[int] = []


def umask() -> int:
    """The process's umask (read once: reading it means setting it)."""
    if not _umask:
        current = os.umask(0o022)
        os.umask(current)
        _umask.append(current)
    return _umask[0]


def _file_mode(path: Path) -> int:
    """An overwritten file keeps its mode; a new one gets what open() would give it (0666 less the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~umask()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Write to a temporary file beside ``path`` and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fchmod(f.fileno(), _file_mode(path))
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], work: Path | None = None) -> Iterator[Path]:
    """Build a folder under a temporary name and swap it into place only on success.
    ``work``: build in this folder (beside ``path``) instead, and keep it on failure, so a
    long build can resume from what it wrote."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = work if work is not None else Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
