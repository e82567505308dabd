import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from rerank import read_run
from rerank.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_eval_reproduces_the_official_figures_and_compares(dl19, tmp_path):
    out = tmp_path / "m.json"
    r = invoke("eval", dl19 / "bm25.top100.json", dl19 / "splade-pp-ed.top100.json", "--dataset", dl19, "--metrics-json", out)
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[2].split()[1:] == ["0.5058", "0.7024", "0.4910"]
    assert lines[3].split()[1] == "0.7308"
    assert "t-test p" in r.output
    data = json.loads(out.read_text())
    assert data["relevance_threshold"] == 2
    assert data["runs"][str(dl19 / "bm25.top100.json")]["metrics"]["nDCG@10"] == pytest.approx(0.5058, abs=5e-5)


def test_run_bm25_scifact_writes_run_and_metrics(tmp_path):
    run_file, metrics = tmp_path / "out" / "run.trec", tmp_path / "m.json"
    r = invoke("run", "--retriever", "bm25", "--dataset", "scifact", "--output", run_file, "--metrics-json", metrics)
    assert r.exit_code == 0, r.output
    data = json.loads(metrics.read_text())
    assert set(data) >= {"metrics", "cost"}
    assert data["metrics"]["nDCG@10"] == pytest.approx(0.676, abs=0.004)
    assert data["cost"]["queries"] == 300 and data["cost"]["seconds"] > 0
    run = read_run(run_file)
    assert len(run) == 300 and max(len(h) for h in run.values()) == 100
    assert sorted(p.name for p in run_file.parent.iterdir()) == ["run.trec"]


def test_run_cranfield_offline_through_ir_datasets():
    r = invoke("run", "--retriever", "bm25", "--dataset", "cranfield", "--top-k", "50")
    assert r.exit_code == 0, r.output
    ndcg = float(r.stdout.splitlines()[2].split()[-3])
    assert 0.30 < ndcg < 0.36  # both backends give 0.322 here


def test_run_trec_dl_19_uses_published_bm25_candidates():
    r = invoke("run", "--retriever", "bm25", "--dataset", "trec-dl-19")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[2].split()[-3:] == ["0.5058", "0.7024", "0.4910"]
    assert "published BM25 candidates" in r.stderr


def test_a_query_with_no_candidates_scores_zero_and_is_named(tmp_path, dl19):
    data = json.loads((dl19 / "bm25.top100.json").read_text())
    dropped = data[0]["hits"][0]["qid"]
    (tmp_path / "partial.json").write_text(json.dumps(data[1:]))
    r = invoke("run", "--retriever", f"run:{tmp_path / 'partial.json'}", "--dataset", dl19)
    assert r.exit_code == 0, r.output
    assert "1 of 43 queries have no candidates" in r.stderr and str(dropped) in r.stderr
    assert float(r.stdout.splitlines()[2].split()[-3]) < 0.5058


def test_errors_are_one_line_with_exit_code_2(tmp_path, dl19):
    r = invoke("run", "--retriever", "bm25", "--dataset", "trec-dl19")
    assert r.exit_code == 2 and "Close matches: trec-dl-19" in r.stderr
    bad = tmp_path / "bad.trec"
    bad.write_text("264014 Q0 5611210 1 15.78 x\n264014 Q0 6641238 2\n")
    r = invoke("eval", bad, "--dataset", dl19)
    assert r.exit_code == 2 and f"{bad}:2: expected 6 columns" in r.stderr
    r = invoke("run", "--retriever", "splade", "--dataset", dl19)
    assert r.exit_code == 2 and "unknown --retriever 'splade'" in r.stderr
    r = invoke("run", "--retriever", "bm25", "--reranker", "rankt5", "--dataset", dl19)
    assert r.exit_code == 2 and "unknown reranker 'rankt5'" in r.stderr


def test_non_utf8_corpus_is_refused_then_loaded_on_request(tmp_path, scifact_dir):
    (tmp_path / "qrels").mkdir()
    shutil.copy(scifact_dir / "qrels" / "test.tsv", tmp_path / "qrels" / "test.tsv")
    shutil.copy(scifact_dir / "queries.jsonl", tmp_path / "queries.jsonl")
    raw = (scifact_dir / "corpus.jsonl").read_bytes().replace(b"The first gene", b"The \xff first gene", 1)
    (tmp_path / "corpus.jsonl").write_bytes(raw)
    r = invoke("run", "--retriever", "bm25", "--dataset", tmp_path)
    assert r.exit_code == 2 and "corpus.jsonl:" in r.stderr and "not valid UTF-8 (byte 0xff" in r.stderr
    r = invoke("run", "--retriever", "bm25", "--dataset", tmp_path, "--encoding-errors", "replace", "-q")
    assert r.exit_code == 0, r.output


def test_index_and_datasets_commands():
    r = invoke("index", "--retriever", "bm25", "--dataset", "scifact")
    assert r.exit_code == 0 and "5183 documents" in r.output
    r = invoke("datasets")
    assert r.exit_code == 0
    for name in ("trec-dl-19", "trec-dl-20", "scifact", "cranfield", "msmarco-dev"):
        assert name in r.output


def test_console_script_help_is_fast_and_light():
    code = ("import sys, time; t=time.perf_counter(); from rerank.cli import main; import rerank; "
            "print(round(time.perf_counter()-t, 3), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"
    r = subprocess.run([shutil.which("rerank") or "rerank", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "eval" in r.stdout and "run" in r.stdout


# configs marked `reproduce: benchmark` encode a whole corpus with a model (minutes on a CPU without bf16):
# `rerank reproduce` runs them; `reproduce: readme` ones are the README's examples, run by tests/test_readme.py;
# the tests here run every other config
CONFIGS = sorted(c for c in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")
                 if "\nreproduce: " not in c.read_text())


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_reproduces_its_expected_scores(config, tmp_path):
    out = tmp_path / "m.json"
    r = invoke("run", "--config", config, "--metrics-json", out, "-q")
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text())
    assert data["reproduced"] is True and data["expected"]


def test_a_config_that_is_not_reproduced_fails(tmp_path):
    cfg = tmp_path / "wrong.yaml"
    cfg.write_text("dataset: trec-dl-19\nretriever: bm25\nexpected: {nDCG@10: 0.6, AP: 0.3}\nmetrics: [nDCG@10]\n")
    r = invoke("run", "--config", cfg)
    assert r.exit_code == 1
    assert "nDCG@10: measured 0.5058, expected 0.6000" in r.stderr and "AP: expected 0.3, not measured" in r.stderr
    cfg.write_text("dataset: trec-dl-19\nretriver: bm25\n")
    r = invoke("run", "--config", cfg)
    assert r.exit_code == 2 and "unknown keys ['retriver']" in r.stderr


def test_topics_and_qrels_files_as_a_dataset(dl19):
    r = invoke("run", "--retriever", f"run:{dl19 / 'bm25.top100.trec'}", "--dataset", dl19 / "topics.dl19-passage.txt",
               "--qrels", dl19 / "qrels.dl19-passage.txt", "--rel", "2")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[2].split()[-3:] == ["0.5058", "0.7024", "0.4910"]
