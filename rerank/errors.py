"""Errors rerank raises on bad input. Every one names the thing that is wrong."""

from __future__ import annotations


class RerankError(Exception):
    """Base class: a problem with the user's input or environment, reported without a traceback by the CLI."""


class DataError(RerankError, ValueError):
    """A malformed or inconsistent input file (the message names the file and line)."""


class DatasetNotFound(RerankError, LookupError):
    """A dataset name that is neither a path, an alias nor an ir_datasets id."""


class DatasetUnavailable(RerankError, FileNotFoundError):
    """A known dataset whose files are not available locally and cannot be downloaded.
    ``cause`` says briefly why (offline, no network, download failed)."""

    def __init__(self, message: str, cause: str = "") -> None:
        super().__init__(message)
        self.cause = cause or message


class IndexStateError(RerankError):
    """A problem with a built index (missing, stale, incompatible)."""


class MissingDependency(RerankError, ImportError):
    """An optional dependency is needed for the feature the user asked for."""

    def __init__(self, what: str, extra: str, package: str) -> None:
        super().__init__(
            f"{what} needs the optional dependency '{package}'. Install it with: "
            f"pip install 'rerank[{extra}]' (with PIP_CONSTRAINT=constraints.txt, see the README)"
        )


class ModelNotFound(RerankError, FileNotFoundError):
    """A model name that resolves to no local folder and cannot be downloaded."""


class ModelMismatch(RerankError, ValueError):
    """A model folder without trained weights for the kind it is asked to run as (a new head
    would be random). ``fits`` lists the kinds it does hold."""

    def __init__(self, message: str, fits: list[str] | None = None) -> None:
        super().__init__(message)
        self.fits = list(fits or [])


class ScoringError(RerankError, RuntimeError):
    """A model produced unusable scores (NaN/inf) or could not run even one item."""


class TrainingError(RerankError, RuntimeError):
    """Training cannot go on: a finished run in the output folder, a diverging loss, a foreign checkpoint."""
