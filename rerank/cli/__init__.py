"""The ``rerank`` command line: thin commands over the library (rerank.specs builds every stage).

* :mod:`.run`: run, eval, index, reproduce, kinds, datasets
* :mod:`.train`: train, train-ltr, train-labels
* :mod:`.clicks`: clicks simulate | stats | propensity
* :mod:`.serve`: serve (HTTP)
* :mod:`.common`: logging, one-line errors, option groups
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import click

from ..progress import set_progress, silence
from .clicks import clicks
from .run import datasets, eval_, index, kinds, reproduce, run
from .serve import serve
from .train import train, train_labels, train_ltr


class Rerank(click.Group):
    """The command group; Ctrl-C stops any command cleanly (:func:`interrupted`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted()
        finally:
            set_progress(None)  # --progress holds for one command (several run in one process under tests)


def interrupted() -> NoReturn:
    """Stop on Ctrl-C: one line, exit 130. Outputs are written whole (a temporary file renamed) or
    not at all, checkpoints and journals likewise, so there is nothing to clean up; the process
    ends at once, without the interpreter's teardown, which native thread pools still at work
    (OpenMP, OpenVINO, tokenizers) answer with SIGABRT."""
    silence()
    sys.stderr.write("\nrerank: interrupted; files are written whole or not at all, so none is half-written "
                     "(checkpoints, journals and score caches keep what was finished)\n")
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


@click.group(cls=Rerank, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rerank")
def main() -> None:
    """Neural retrieval and reranking: first stages, rerankers, evaluation."""


for command in (run, eval_, index, reproduce, train, train_ltr, train_labels, clicks, kinds, datasets, serve):
    main.add_command(command)

__all__ = ["main"]

if __name__ == "__main__":
    main()
