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
# models run on PyTorch unless a test asks for another backend (auto would pick OpenVINO on CPUs without bf16)
os.environ["RERANK_BACKEND"] = "torch"

SHARED = Path(os.environ["RERANK_SHARED_DATA"])


# `pytest -n 2 --dist loadfile` hands each worker whole files, in collection order, as it frees up;
# the longest files (measured on a 2-core AVX2-only CPU) go first, so that none starts when the rest
# is done and one worker runs it alone (alphabetically, test_ultr.py's ~3 minutes came last)
LONGEST_FIRST = ("test_distributed.py", "test_readme.py", "test_ultr.py", "test_backends.py", "test_firsthour.py",
                 "test_train.py", "test_dense.py", "test_rerankers.py", "test_serve.py", "test_cur.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort: the rest keep their order

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


@pytest.fixture(scope="session")
def dl19_requests_30(dl19):
    """Real rerank requests: each DL19 query's text with the texts of its BM25 top 30."""
    from rerank import load_dataset

    ds = load_dataset(str(dl19))
    text = {q.qid: q.text for q in ds.queries}
    return [(text[qid], [h.text for h in hits[:30]]) for qid, hits in ds.candidate_run("bm25").items()]


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


def _tiny_bert(out: Path, head: bool) -> str:
    """A 2-layer BERT (hidden 64, seed 0) with all-MiniLM-L6-v2's tokenizer, saved to ``out``."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

    tok = AutoTokenizer.from_pretrained(offline_model("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512, num_labels=1)
    torch.manual_seed(0)
    (BertForSequenceClassification(cfg) if head else BertModel(cfg)).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A tiny BERT body of the real architecture, for tests whose assertions do not depend on what
    the model knows (the same results on Ray as in one process, resumption, training plumbing)."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-bert"), head=False)


@pytest.fixture(scope="session")
def tiny_ce(tmp_path_factory) -> str:
    """The tiny BERT as a one-logit cross-encoder (fixed-seed head)."""
    return _tiny_bert(tmp_path_factory.mktemp("tiny-ce"), head=True)


@pytest.fixture(scope="session")
def tiny_smol(tmp_path_factory) -> str:
    """A 2-layer Llama (hidden 64, seed 0) with SmolLM2-135M-Instruct's tokenizer and chat template:
    the causal-LM architecture of the LLM rerankers at a size where training steps take a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(offline_model("SmolLM2-135M-Instruct"))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      intermediate_size=128, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny-smol")
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)
