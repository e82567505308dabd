"""Progress of long jobs, in one of four modes:

* ``bar``: a tqdm bar (count, rate, time left), redrawn in place;
* ``lines``: a line every ``$RERANK_PROGRESS_EVERY`` seconds (30) with count, rate and time left,
  for logs, nohup and CI, where a bar would print nothing useful; a job shorter than that prints none;
  a line comes every period even while no unit finishes (one large batch on an engine), so a long
  job is never silent;
* ``none``: nothing;
* ``auto`` (the default): a bar when stderr is a terminal, else lines.

The command line's ``--progress`` sets the mode (:func:`set_progress`); else ``$RERANK_PROGRESS``
(auto, bar, lines, none; 1 means bar, 0 none). Work inside a unit (a query's windows) moves the
innermost open bar by fractions of a unit: :func:`tick`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

MODES = ("auto", "bar", "lines", "none")
_ALIASES = {"1": "bar", "true": "bar", "yes": "bar", "on": "bar", "0": "none", "false": "none", "no": "none", "off": "none"}
_mode: str | None = None
_open: list[Any] = []  # bars now open, innermost last (ticks from worker threads go to it)
_lock = threading.Lock()
_silenced = threading.Event()  # set when the process is about to end (Ctrl-C): heartbeats print nothing more


def set_progress(mode: str | None) -> None:
    """The mode for this process (None: back to ``$RERANK_PROGRESS``)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"unknown progress mode {mode!r}; one of {', '.join(MODES)}")
    global _mode
    _mode = mode


def progress_mode(show: bool | None = None) -> str:
    """bar, lines or none: ``show`` when given (True: as auto, False: none), else the mode set,
    else ``$RERANK_PROGRESS``, with auto resolved by whether stderr is a terminal."""
    if show is False:
        return "none"
    env = os.environ.get("RERANK_PROGRESS", "").strip().lower()
    mode = _mode or _ALIASES.get(env, env if env in MODES else "auto")
    if show is True and mode == "none":
        mode = "auto"
    if mode != "auto":
        return mode
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def progress_shown(show: bool | None = None) -> bool:
    """Whether progress is reported at all."""
    return progress_mode(show) != "none"


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Lines:
    """tqdm's counting interface, reported as a line to stderr every ``every`` seconds, and once
    at the end when any was."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, every: float | None = None) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, float(initial)
        self.every = every if every is not None else float(os.environ.get("RERANK_PROGRESS_EVERY", "30"))
        self.start = self.last = time.monotonic()
        self.initial = float(initial)
        self.printed = False

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        self.beat()

    def beat(self) -> None:
        """A line when the period has passed since the last one (also called with no progress)."""
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(now)

    def _line(self, now: float, end: bool = False) -> None:
        if _silenced.is_set():  # the process is ending (a worker thread's update may still come)
            return
        took = now - self.start
        rate = (self.n - self.initial) / took if took > 0 else 0.0
        units = self.unit[:-1] + "ies" if self.unit.endswith("y") else self.unit + "s"
        done = f"{self.n:.0f}/{self.total} {units}" if self.n == int(self.n) else f"{self.n:.1f}/{self.total} {units}"
        if end:
            text = f"{done} in {_duration(took)}"
        else:
            left = (self.total - self.n) / rate if rate > 0 else None
            pct = 100 * self.n / self.total if self.total else 100.0
            text = (f"{done} ({pct:.0f}%) in {_duration(took)}, {rate:.3g} {self.unit}/s"
                    + (f", about {_duration(left)} left" if left is not None else ""))
        sys.stderr.write(f"rerank: {self.desc}: {text}\n")
        sys.stderr.flush()
        self.printed = True

    def close(self) -> None:
        if self.printed:
            self._line(time.monotonic(), end=True)
            self.printed = False


class _Tracked:
    """A bar registered as the innermost open one while it is open (:func:`tick` moves it), with a
    heartbeat thread that reports it every ``period`` seconds even while it does not move."""

    def __init__(self, bar: Any, period: float | None = None) -> None:
        self.bar = bar
        with _lock:
            _open.append(self)
        self._stop = threading.Event()
        if period is not None and period > 0:
            threading.Thread(target=self._heartbeat, args=(period,), daemon=True, name="rerank-progress").start()

    def _heartbeat(self, period: float) -> None:
        while not self._stop.wait(period):
            with _lock:
                if self._stop.is_set() or _silenced.is_set():  # closed while this waited for the lock, or ending
                    return
                if isinstance(self.bar, Lines):
                    self.bar.beat()
                else:
                    self.bar.refresh()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bar, name)

    def __enter__(self) -> _Tracked:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        with _lock:
            self.bar.update(n)

    def close(self) -> None:
        self._stop.set()
        with _lock:
            if self in _open:
                _open.remove(self)
            self.bar.close()


def progress_bar(total: int, desc: str, unit: str = "doc", initial: int = 0, show: bool | None = None) -> Any:
    """A counter over ``total`` units (tqdm's ``update``/``close``/``n``, a context manager),
    reported as the mode says (:func:`progress_mode`)."""
    mode = progress_mode(show)
    if mode == "lines":
        lines = Lines(total, desc, unit, initial)
        return _Tracked(lines, period=min(max(lines.every, 0.25), 5.0))
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=mode == "none", dynamic_ncols=True,
               mininterval=1.0, bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]")
    return _Tracked(bar, period=None if mode == "none" else 1.0)


def silence() -> None:
    """No more heartbeat lines from any bar (the process is ending: its last line is the reason)."""
    with _lock:  # a line being written finishes first
        _silenced.set()


def tick(units: float) -> None:
    """Move the innermost open bar by ``units`` (a fraction of its unit: a query's share of the
    windows just ranked); nothing when none is open."""
    with _lock:
        bar = _open[-1] if _open else None
    if bar is not None:
        bar.update(units)


def move_to(bar: Any, n: float) -> None:
    """Set ``bar`` to ``n`` units done (after ticks that approximated the units of a block)."""
    if n != bar.n:
        bar.update(n - bar.n)
