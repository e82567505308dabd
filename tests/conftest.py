"""Test setup: real data from ../shared/data (a missing copy fails the run, it never skips),
and a private index folder and ir_datasets home so tests never touch the user's."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_TMP = Path(tempfile.mkdtemp(prefix="rerank-tests-"))
atexit.register(shutil.rmtree, _TMP, ignore_errors=True)

# before anything imports ir_datasets (it reads its home when imported)
os.environ.setdefault("RERANK_SHARED_DATA", str((ROOT / ".." / "shared" / "data").resolve()))
os.environ["IR_DATASETS_HOME"] = str(_TMP / "ir_datasets")
os.environ["RERANK_INDEXES"] = str(_TMP / "indexes")
os.environ["RERANK_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

SHARED = Path(os.environ["RERANK_SHARED_DATA"])


@pytest.fixture(scope="session")
def shared() -> Path:
    """The shared data folder; its absence is a failure (CI always has it)."""
    if not (SHARED / "README.md").is_file():
        pytest.fail(f"shared data not found at {SHARED}: set RERANK_SHARED_DATA or check out ../shared beside the repo")
    return SHARED


@pytest.fixture(scope="session")
def dl19(shared: Path) -> Path:
    return shared / "trec-dl" / "dl19"


@pytest.fixture(scope="session")
def scifact_dir(shared: Path) -> Path:
    return shared / "beir" / "scifact"


@pytest.fixture(scope="session")
def scifact(scifact_dir: Path):
    from rerank import load_dataset

    return load_dataset(str(scifact_dir))


def offline_model(name: str) -> str:
    """The folder of an installed offline model; a missing one fails the test (never skips it)."""
    from rerank.models import model_folders

    for folder in model_folders():
        if (folder / name / "config.json").is_file():
            return str(folder / name)
    pytest.fail(f"offline model {name} is not installed: run ../shared/tools/offline-models small")


@pytest.fixture(scope="session")
def minilm_ce(tmp_path_factory) -> str:
    """A cross-encoder: the all-MiniLM-L6-v2 body with a fixed-seed one-logit head."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src = offline_model("all-MiniLM-L6-v2")
    out = tmp_path_factory.mktemp("minilm-ce")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)
