"""CPU backends: ONNX Runtime and OpenVINO run the same computation as PyTorch (to 1e-4 in
fp32), int8 stays close, exports are cached by content, checked and rebuilt, and every wrong
choice gets a one-line answer."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rerank.cli import main
from rerank.errors import MissingDependency
from rerank.models import loading
from rerank.models.backends import ExportError
from rerank.models.encoder import Encoder
from rerank.models.loading import pick_backend
from rerank.rerankers.pointwise import CrossEncoder, Splade

FP32 = {"torch": {"backend": "torch", "dtype": "float32"}, "onnx": {"backend": "onnx"},
        "openvino": {"backend": "openvino", "dtype": "float32"}}


@pytest.fixture(scope="module")
def dl19_pairs(dl19):
    """172 real (query, passage) pairs: each DL19 query with its first four BM25 passages."""
    from rerank import load_dataset

    ds = load_dataset(str(dl19))
    text = {q.qid: q.text for q in ds.queries}
    return [(text[qid], h.text) for qid, hits in ds.candidate_run("bm25").items() for h in hits[:4]]


@pytest.fixture(scope="module")
def fp32_outputs(minilm_ce, dl19_pairs):
    """PyTorch fp32's outputs of a MiniLM cross-encoder, SPLADE-tiny and all-MiniLM-L6-v2 (real weights)."""
    return {"ce": CrossEncoder(minilm_ce, activation="none", **FP32["torch"])._score(dl19_pairs),
            "splade": Splade("splade-tiny-msmarco", **FP32["torch"])._score(dl19_pairs[:60]),
            "encoder": Encoder("all-MiniLM-L6-v2", **FP32["torch"]).encode_docs([d for _, d in dl19_pairs[:60]])}


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_exports_score_as_pytorch_fp32(backend, minilm_ce, dl19_pairs, fp32_outputs):
    ref = np.array(fp32_outputs["ce"])
    model = CrossEncoder(minilm_ce, activation="none", **FP32[backend])
    assert next(model.model.parameters()).device.type == "meta"  # PyTorch's copy of the weights is freed
    ce = np.array(model._score(dl19_pairs))
    assert np.abs(ce - ref).max() < 1e-4 and ref.std() > 0.01
    ref = np.array(fp32_outputs["splade"])
    splade = np.array(Splade("splade-tiny-msmarco", **FP32[backend])._score(dl19_pairs[:60]))
    assert np.abs(splade - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()) and ref.max() > 1
    emb = Encoder("all-MiniLM-L6-v2", **FP32[backend]).encode_docs([d for _, d in dl19_pairs[:60]])
    assert emb.shape == fp32_outputs["encoder"].shape and np.abs(emb - fp32_outputs["encoder"]).max() < 1e-4


@pytest.mark.parametrize("backend", ["onnx", "openvino"])
def test_int8_stays_close_to_fp32(backend, dl19_pairs):
    """int8 embeddings of real passages: nearly the same direction, and the same nearest passage."""
    docs = [d for _, d in dl19_pairs][:100]
    queries = list(dict.fromkeys(q for q, _ in dl19_pairs))[:20]
    ref = Encoder("all-MiniLM-L6-v2", **FP32["torch"])
    q8 = Encoder("all-MiniLM-L6-v2", backend=backend, quantize="int8")
    assert q8.params()["backend"] == f"{backend}-int8" and "backend" not in ref.params()
    d32, d8 = ref.encode_docs(docs), q8.encode_docs(docs)
    cos = (d32 * d8).sum(1)
    assert cos.min() > 0.97 and np.abs(d32 - d8).max() > 1e-4  # really quantized, and close
    top32 = (ref.encode_queries(queries) @ d32.T).argmax(1)
    top8 = (q8.encode_queries(queries) @ d8.T).argmax(1)
    assert (top32 == top8).mean() >= 0.85


def _copy(folder: str, tmp_path: Path) -> str:
    out = tmp_path / "model"
    shutil.copytree(folder, out)
    return str(out)


def test_an_export_is_reused_rebuilt_when_damaged_and_remade_for_new_weights(tiny_ce, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))
    model = _copy(tiny_ce, tmp_path)
    pairs = [("what is a river", "a river is a natural stream of water"), ("q", "an unrelated passage about tax law")]
    caplog.set_level(logging.INFO, logger="rerank")
    first = CrossEncoder(model, backend="onnx")._score(pairs)
    [folder] = list((tmp_path / "indexes" / "exports").iterdir())
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["key"]["backend"] == "onnx" and set(manifest["files"]) == {"model.onnx"}
    stamp = (folder / "model.onnx").stat().st_mtime_ns
    caplog.clear()
    assert CrossEncoder(model, backend="onnx")._score(pairs) == first
    assert (folder / "model.onnx").stat().st_mtime_ns == stamp and "using the onnx none export" in caplog.text

    with (folder / "model.onnx").open("r+b") as fh:  # damaged on disk: a byte flipped in the middle
        fh.seek(fh.seek(0, 2) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    caplog.clear()
    assert CrossEncoder(model, backend="onnx")._score(pairs) == pytest.approx(first, abs=1e-6)
    assert "rebuilt (model.onnx differs from its manifest)" in caplog.text

    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(1)  # retrained into the same folder: the export made from the old weights is not used
    AutoModelForSequenceClassification.from_config(AutoModelForSequenceClassification.from_pretrained(model).config
                                                   ).save_pretrained(model)
    new = CrossEncoder(model, backend="onnx")._score(pairs)
    assert new != pytest.approx(first, abs=1e-4)
    assert new == pytest.approx(CrossEncoder(model, **FP32["torch"])._score(pairs), abs=1e-5)
    assert len(list((tmp_path / "indexes" / "exports").iterdir())) == 2


def test_a_missing_extra_and_a_failing_export_say_what_to_do(tiny_ce, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"pip install 'rerank\[onnx\]'"):
        CrossEncoder(tiny_ce, backend="onnx")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(MissingDependency, match=r"pip install 'rerank\[openvino\]'"):
        Encoder("all-MiniLM-L6-v2", backend="openvino")
    monkeypatch.undo()
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))

    import torch

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::something_new\nmore detail")
    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(ExportError, match=rf"{tiny_ce}: could not export to ONNX for backend 'openvino' \(none\): "
                                          r"Unsupported: aten::something_new$"):
        CrossEncoder(tiny_ce, backend="openvino", dtype="float32")
    assert not list((tmp_path / "indexes" / "exports").glob("*openvino*"))  # nothing half-made left in place


def test_a_model_auto_cannot_export_runs_on_pytorch(tiny_ce, tmp_path, monkeypatch, caplog):
    import torch

    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))
    monkeypatch.delenv("RERANK_BACKEND")  # auto takes OpenVINO: it is installed here

    def broken(*args, **kwargs):
        raise RuntimeError("Unsupported: aten::something_new")
    monkeypatch.setattr(torch.onnx, "export", broken)
    pairs = [("what is a river", "a river is a natural stream of water"), ("q", "tax law")]
    caplog.set_level(logging.WARNING, logger="rerank")
    ce = CrossEncoder(tiny_ce, dtype="float32")
    assert ce.backend == "torch" and "|openvino" not in ce.model_key
    assert "could not export to ONNX" in caplog.text and "running it on PyTorch instead" in caplog.text
    assert ce._score(pairs) == pytest.approx(CrossEncoder(tiny_ce, **FP32["torch"])._score(pairs), abs=1e-6)


def test_auto_picks_by_what_is_installed_and_the_cpu(monkeypatch):
    monkeypatch.delenv("RERANK_BACKEND")
    installed = {"onnx", "openvino"}  # backends whose modules are installed
    monkeypatch.setattr(loading, "_installed", lambda m: m in installed)
    bf16 = [True]
    monkeypatch.setattr(loading, "cpu_supports_bf16", lambda: bf16[0])
    assert pick_backend("auto", "none", "cpu", "auto")[0] == "openvino"
    assert pick_backend("auto", "none", "cuda", "auto")[0] == "torch"
    assert pick_backend("auto", "none", "cpu", "float16")[0] == "torch"
    assert pick_backend("auto", "int8", "cpu", "auto")[0] == "openvino"
    installed -= {"openvino"}
    assert pick_backend("auto", "none", "cpu", "auto")[0] == "torch"  # PyTorch bf16 beats ONNX Runtime fp32
    bf16[0] = False
    assert pick_backend("auto", "none", "cpu", "auto")[0] == "onnx"
    assert pick_backend("auto", "int8", "cpu", "auto")[0] == "onnx"
    installed.clear()
    backend, why = pick_backend("auto", "none", "cpu", "auto")
    assert backend == "torch" and "rerank[openvino]" in why
    with pytest.raises(MissingDependency, match="rerank.onnx"):
        pick_backend("auto", "int8", "cpu", "auto")
    monkeypatch.setenv("RERANK_BACKEND", "torch")
    assert pick_backend("auto", "none", "cpu", "auto")[0] == "torch"
    for args, message in [(("torch", "int8", "cpu", "auto"), "needs backend 'onnx' or 'openvino'"),
                          (("onnx", "none", "cuda", "auto"), "runs on the CPU"),
                          (("tensorrt", "none", "cpu", "auto"), "unknown backend 'tensorrt'"),
                          (("onnx", "int4", "cpu", "auto"), "unknown quantization 'int4'")]:
        with pytest.raises(ValueError, match=message):
            pick_backend(*args)


def test_cli_backend_and_quantize_options(dl19, tiny_ce, tmp_path, monkeypatch):
    monkeypatch.setenv("RERANK_INDEXES", str(tmp_path / "indexes"))

    def run(*extra: str):
        out = tmp_path / f"m{len(list(tmp_path.glob('m*.json')))}.json"
        r = CliRunner().invoke(main, ["run", "--retriever", f"run:{dl19 / 'bm25.top100.json'}", "--dataset", str(dl19),
                                      "--reranker", f"cross-encoder:{tiny_ce}", "--rerank-depth", "10", "-q",
                                      "--metrics-json", str(out), *extra])
        return r, (json.loads(out.read_text()) if r.exit_code == 0 else None)

    r, torch_fp32 = run("--backend", "torch", "--dtype", "float32")
    assert r.exit_code == 0, r.output
    for extra in (["--backend", "onnx"], ["--backend", "openvino", "--dtype", "float32"]):
        r, got = run(*extra)
        assert r.exit_code == 0, r.output
        assert got["metrics"] == pytest.approx(torch_fp32["metrics"], abs=1e-4)
    r, q8 = run("--quantize", "int8")
    assert r.exit_code == 0, r.output
    made = sorted(p.name.split("-seq-cls-logits-")[1].rsplit("-", 1)[0] for p in (tmp_path / "indexes" / "exports").iterdir())
    assert made == ["onnx-none", "openvino-int8", "openvino-none"]
    assert q8["metrics"]["nDCG@10"] == pytest.approx(torch_fp32["metrics"]["nDCG@10"], abs=0.05)
    for extra, message in [(["--backend", "torch", "--quantize", "int8"], "needs backend 'onnx' or 'openvino'"),
                           (["--backend", "onnx", "--dtype", "bfloat16"], "does not run dtype 'bfloat16'"),
                           (["--backend", "gpu"], "Invalid value for '--backend'")]:
        r, _ = run(*extra)
        assert r.exit_code == 2 and message in r.output, r.output
    r = CliRunner().invoke(main, ["run", "--retriever", "bm25", "--dataset", str(dl19), "--reranker", "prp:x", "--backend",
                                  "onnx"])
    assert r.exit_code == 2 and "backend" in r.output
    assert "--quantize" in CliRunner().invoke(main, ["serve", "--help"]).output


def test_the_llm_judge_runs_on_pytorch_or_vllm_only(tiny_smol):
    from rerank.rerankers.pointwise import LLMPointwise

    with pytest.raises(ValueError, match="LLM rerankers run on auto, torch, vllm, not backend 'onnx'"):
        LLMPointwise(tiny_smol, backend="onnx")
