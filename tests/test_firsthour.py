"""What a new user meets in the first hour: the headline job offline, progress on long jobs,
Ctrl-C, help that can be read, and no noise (issue 39)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RERANK = Path(sys.executable).parent / "rerank"
ROOT = Path(__file__).resolve().parent.parent

# the offline-models tool's catalogue as a checkout's environment has it (read as data, never run)
CATALOGUE = '''
MODELS = {
    "all-MiniLM-L6-v2": ("sentence-transformers bi-encoder, 384-d, 22M params (Apache-2.0)", ["p==1"], ("dir", "m/")),
    "SmolLM2-135M-Instruct": (
        "instruction-tuned causal LM, 135M params (Apache-2.0); plumbing only, no ranking skill", ["p==1"], ("gguf", [])),
    "Qwen2.5-Coder-0.5B-Instruct": (
        "instruction-tuned causal LM, 0.5B params (upstream Apache-2.0); weak at pairwise/listwise", ["p==1"], ("gguf", [])),
    "Qwen2.5-Coder-1.5B-Instruct": (
        "instruction-tuned causal LM, 1.5B params (upstream Apache-2.0); passes pointwise, pairwise and listwise probes",
        [f"part{i}==0.2.0" for i in range(1, 23)], ("gguf", [])),
}
raise SystemExit("this script must never run")
'''


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout beside ``shared/tools/offline-models`` and ``shared/data``, with an offline-models
    folder that holds only SmolLM2 (a causal LM with no ranking skill)."""
    tool = tmp_path / "shared" / "tools" / "offline-models"
    tool.parent.mkdir(parents=True)
    tool.write_text(CATALOGUE)
    tool.chmod(0o755)
    (tmp_path / "shared" / "data").mkdir()
    smol = tmp_path / "models" / "SmolLM2-135M-Instruct"
    smol.mkdir(parents=True)
    (smol / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (tmp_path / "checkout").mkdir()
    return tmp_path / "checkout"


# ---------------------------------------------------------------- 39.1 the headline job offline
def test_the_headline_job_offline_names_the_models_that_rank_first_and_how_to_install_them(checkout):
    env = _env(RERANK_OFFLINE_MODELS=str(checkout.parent / "models"), RERANK_SHARED_DATA=str(checkout.parent / "shared" / "data"))
    r = subprocess.run([str(RERANK), "run", "--retriever", "bm25", "--reranker", "first", "--dataset", "trec-dl-19"],
                       cwd=checkout, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0].startswith("error: model 'castorini/first_mistral' is not available offline"), lines
    assert len(lines) <= 8, lines
    assert "hf download castorini/first_mistral --local-dir" in r.stderr and "huggingface-cli" not in r.stderr
    named = [x.split(":")[0].strip() for x in lines if x.startswith("    ")]
    assert named == ["Qwen2.5-Coder-1.5B-Instruct", "Qwen2.5-Coder-0.5B-Instruct", "SmolLM2-135M-Instruct"], lines
    assert "all-MiniLM-L6-v2" not in r.stderr  # a bi-encoder cannot run FIRST
    best = next(x for x in lines if x.strip().startswith("Qwen2.5-Coder-1.5B-Instruct"))
    assert "install: ../shared/tools/offline-models Qwen2.5-Coder-1.5B-Instruct" in best and "passes" in best
    smol = next(x for x in lines if x.strip().startswith("SmolLM2"))
    assert "installed" in smol and "no ranking skill" in smol
    assert lines[-1].strip() == "then: --reranker first:Qwen2.5-Coder-1.5B-Instruct"


def test_a_missing_offline_model_is_fetched_by_its_hub_id(tmp_path, monkeypatch):
    from rerank.errors import ModelNotFound
    from rerank.models import resolve_model

    monkeypatch.setenv("RERANK_OFFLINE_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFound) as e:
        resolve_model("splade-tiny-msmarco")
    assert f"hf download rasyosef/splade-tiny --local-dir {tmp_path / 'splade-tiny-msmarco'}" in str(e.value)
    with pytest.raises(ModelNotFound, match=r"'my-own-model' is no Hugging Face id"):
        resolve_model("my-own-model")


def test_an_empty_models_folder_without_the_tool_still_names_a_way_forward(tmp_path, monkeypatch):
    from rerank.models import offline
    from rerank.models.loading import load_model

    monkeypatch.setenv("RERANK_OFFLINE_MODELS", str(tmp_path))
    monkeypatch.setattr(offline, "offline_tool", lambda: None)
    with pytest.raises(offline.ModelNotHere) as e:
        load_model("castorini/first_mistral", "causal-lm")
    message = str(e.value)
    assert "hf download castorini/first_mistral" in message
    assert f"or put a folder holding a causal language model (LLM rerankers) under {tmp_path}" in message
    assert e.value.best is None
