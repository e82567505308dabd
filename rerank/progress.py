"""Progress bars for long jobs: shown on a terminal, silent when stderr is piped or a file.

``RERANK_PROGRESS=1`` shows them anywhere, ``RERANK_PROGRESS=0`` nowhere."""

from __future__ import annotations

import os
import sys
from typing import Any


def progress_shown(show: bool | None = None) -> bool:
    """Whether to draw a bar: ``show`` when given, else $RERANK_PROGRESS, else whether stderr is a terminal."""
    if show is not None:
        return show
    env = os.environ.get("RERANK_PROGRESS", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress_bar(total: int, desc: str, unit: str = "doc", initial: int = 0, show: bool | None = None) -> Any:
    """A tqdm bar (count, rate, time left) over ``total`` units, drawn only when :func:`progress_shown`."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not progress_shown(show), dynamic_ncols=True,
                mininterval=1.0)
