"""The ``rerank`` command line: thin commands over the library (rerank.specs builds every stage).

* :mod:`.run`: run, eval, index, reproduce, kinds, datasets
* :mod:`.train`: train, train-ltr
* :mod:`.clicks`: clicks simulate | stats | propensity
* :mod:`.serve`: serve (HTTP)
* :mod:`.common`: logging, one-line errors, option groups
"""

from __future__ import annotations

import click

from .clicks import clicks
from .run import datasets, eval_, index, kinds, reproduce, run
from .serve import serve
from .train import train, train_ltr


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rerank")
def main() -> None:
    """Neural retrieval and reranking: first stages, rerankers, evaluation."""


for command in (run, eval_, index, reproduce, train, train_ltr, clicks, kinds, datasets, serve):
    main.add_command(command)

__all__ = ["main"]

if __name__ == "__main__":
    main()
