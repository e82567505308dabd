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
    assert lines[-2].strip() == "then: --reranker first:Qwen2.5-Coder-1.5B-Instruct"
    assert "--reranker llm-pointwise:Qwen2.5-Coder-1.5B-Instruct" in lines[-1]  # what ranks best zero-shot at this size


def test_a_missing_offline_model_is_fetched_by_its_hub_id(tmp_path, monkeypatch):
    from rerank.errors import ModelNotFound
    from rerank.models import resolve_model

    monkeypatch.setenv("RERANK_OFFLINE_MODELS", str(tmp_path))
    with pytest.raises(ModelNotFound) as e:
        resolve_model("all-MiniLM-L6-v2")
    assert (f"hf download sentence-transformers/all-MiniLM-L6-v2 --local-dir {tmp_path / 'all-MiniLM-L6-v2'}"
            in str(e.value))
    with pytest.raises(ModelNotFound) as e:  # a folder name of the offline tool with no known hub id: none is made up
        resolve_model("splade-tiny-msmarco")
    assert "hf download" not in str(e.value) and "'splade-tiny-msmarco' is no Hugging Face id" in str(e.value)
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


# ---------------------------------------------------------------- 39.10 noise and slips
def test_a_run_file_is_tagged_with_the_whole_pipeline(tmp_path, dl19, tiny_ce):
    from click.testing import CliRunner

    from rerank.cli import main

    out = tmp_path / "run.trec"
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(dl19), "--reranker", f"cross-encoder:{tiny_ce}", "-k", "5",
                                  "--rerank-depth", "5", "--dtype", "float32", "-q", "-o", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    tags = {line.split()[5] for line in out.read_text().splitlines()}
    assert tags == {f"bm25>>cross-encoder:{tiny_ce}"}


# ---------------------------------------------------------------- 39.3 Ctrl-C
def test_ctrl_c_during_reranking_stops_cleanly_with_exit_130_and_no_output(tmp_path, dl19, minilm_ce):
    import signal
    import time

    out = tmp_path / "out" / "run.trec"
    # a model that takes tens of seconds over the 43 queries, so the signal comes while it works (tiny_ce took 2 s)
    cmd = [str(RERANK), "run", "-r", "bm25", "-d", str(dl19), "--reranker", f"cross-encoder:{minilm_ce}", "--dtype", "float32",
           "--block-queries", "1", "--progress", "lines", "-o", str(out)]
    # SIGINT as a terminal's Ctrl-C sends it: a test run started in the background by a script (`cmd &`)
    # has SIGINT ignored, the child inherits that, and Python then installs no KeyboardInterrupt
    p = subprocess.Popen(cmd, cwd=tmp_path, env=_env(RERANK_PROGRESS_EVERY="0.01", PYTHONFAULTHANDLER="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert p.stderr is not None
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # scoring has started once a progress line is out
        line = p.stderr.readline()
        seen.append(line)
        if "reranking with" in line or not line:
            break
    p.send_signal(signal.SIGINT)
    try:
        rest = p.communicate(timeout=60)[1]
    except subprocess.TimeoutExpired:  # still running a minute after Ctrl-C: every thread's stack (faulthandler)
        p.send_signal(signal.SIGABRT)
        pytest.fail("no exit within 60 s of SIGINT; where its threads were:\n" + "".join(seen) + p.communicate(timeout=60)[1])
    stderr = "".join(seen) + rest
    assert p.returncode == 130, stderr
    assert "terminate called" not in stderr and "Aborted!" not in stderr and "Traceback" not in stderr, stderr
    assert rest.strip().splitlines()[-1].startswith("rerank: interrupted"), stderr
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # nothing half-written


# ---------------------------------------------------------------- 39.2 progress
def test_progress_lines_report_windows_within_a_block_with_rate_and_time_left(tmp_path, dl19, tiny_smol):
    from click.testing import CliRunner

    from rerank.cli import main

    os.environ["RERANK_PROGRESS_EVERY"] = "0"  # a line at every update
    try:
        r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(dl19), "--reranker", f"first:{tiny_smol}", "--window", "4",
                                      "--stride", "2", "--rerank-depth", "8", "-k", "8", "--dtype", "float32",
                                      "--progress", "lines"], catch_exceptions=False)
    finally:
        del os.environ["RERANK_PROGRESS_EVERY"]
    assert r.exit_code == 0, r.output
    lines = [x for x in r.stderr.splitlines() if x.startswith("rerank: reranking with first:")]
    # one block of 32 queries then one of 11, 3 windows each: the count moves by windows, not by blocks
    counts = [float(x.split(": ")[2].split("/")[0]) for x in lines]
    assert any(0 < c < 32 for c in counts), lines
    # once something moved, a line has the rate and the time left (a heartbeat may come first, at 0)
    moved = next(x for x, c in zip(lines, counts, strict=True) if c > 0)
    assert "/43 queries (" in moved and "query/s, about" in moved and "left" in moved, lines
    assert all(c == 0 for c in counts[: lines.index(moved)]), lines
    assert lines[-1].endswith(tuple("0123456789s")) and "43/43 queries in " in lines[-1], lines
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "-d", str(dl19), "--reranker", f"first:{tiny_smol}", "--window", "4",
                                  "--stride", "2", "--rerank-depth", "8", "-k", "8", "--progress", "none"])
    assert r.exit_code == 0 and "reranking with" not in r.stderr, r.output


def test_progress_lines_keep_coming_while_one_long_batch_moves_nothing(monkeypatch, capsys):
    import time

    from rerank import progress

    monkeypatch.setenv("RERANK_PROGRESS_EVERY", "0.2")
    with progress.progress_bar(43, "reranking", unit="query", show=True) as bar:
        time.sleep(1.3)  # an engine busy with one submission: no unit finishes
        quiet = capsys.readouterr().err.splitlines()
        bar.update(43)
    assert len(quiet) >= 3 and all(x.startswith("rerank: reranking: 0/43 queries (0%) in ") for x in quiet), quiet
    time.sleep(0.5)
    end = capsys.readouterr().err.splitlines()
    assert end[-1].startswith("rerank: reranking: 43/43 queries in "), end  # and the heartbeat stopped with the bar
    assert len(end) <= 2, end


def test_progress_is_lines_when_stderr_is_not_a_terminal_and_the_flag_wins(monkeypatch):
    from rerank import progress

    monkeypatch.delenv("RERANK_PROGRESS", raising=False)
    assert progress.progress_mode() == "lines"  # pytest captures stderr: no terminal
    monkeypatch.setenv("RERANK_PROGRESS", "0")
    assert progress.progress_mode() == "none"
    progress.set_progress("bar")
    try:
        assert progress.progress_mode() == "bar"
    finally:
        progress.set_progress(None)


def test_train_ltr_writes_a_few_lines_not_one_per_epoch(tmp_path, shared):
    from click.testing import CliRunner

    from rerank.cli import main

    data = shared / "ltr" / "lightgbm-lambdarank"
    args = ["train-ltr", "--features", str(data / "rank.train"), "--epochs", "20", "-o", str(tmp_path / "m")]
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert len(r.stderr.splitlines()) <= 5, r.stderr
    r = CliRunner().invoke(main, [*args, "--overwrite", "-v"], catch_exceptions=False)
    assert sum("dev after epoch" in x for x in r.stderr.splitlines()) == 20, r.stderr


def test_a_ray_run_prints_no_ray_notices_on_success(tmp_path, dl19, tiny_ce):
    r = subprocess.run([str(RERANK), "run", "-r", "bm25", "-d", str(dl19), "--reranker", f"cross-encoder:{tiny_ce}", "-k", "5",
                        "--rerank-depth", "5", "--dtype", "float32", "--ray", "--workers", "1", "-q"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    assert "Token authentication" not in r.stderr and "original_thread_pool" not in r.stderr, r.stderr


# ---------------------------------------------------------------- 39.9 help
def test_run_help_is_grouped_with_one_short_line_per_option():
    from click.testing import CliRunner

    from rerank.cli import main

    r = CliRunner().invoke(main, ["run", "--help"], terminal_width=100)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert len(lines) <= 80, len(lines)
    headings = [x for x in lines if x and not x.startswith(" ") and x.endswith(":")]
    assert headings == ["Pipeline:", "Data and evaluation:", "Model:", "CUR first stage (cur:SCORER):", "Performance:",
                        "Output:"], headings
    rows = [i for i, x in enumerate(lines) if x.lstrip().startswith("-")]
    # an option's help takes at most two lines (the --reranker and --retriever rows list the kinds by name)
    assert max(b - a for a, b in zip(rows, rows[1:], strict=False)) <= 3
    backend = next(x for x in lines if "--backend" in x) + lines[lines.index(next(x for x in lines if "--backend" in x)) + 1]
    assert "OpenVINO" in backend and "bf16 CPUs" not in backend
    assert "[x>=1]" not in r.output


def test_kinds_lists_the_flags_as_typed():
    from click.testing import CliRunner

    from rerank.cli import main
    from rerank.cli.run import run

    r = CliRunner().invoke(main, ["kinds"])
    assert r.exit_code == 0, r.output
    first = r.output.split("  first[:MODEL]")[1].split("\n  ")[0:3]
    flags = next(x for x in first if x.strip().startswith("flags:")).split()[1:]
    assert "--rerank-depth" in flags and "--block-queries" in flags and "--window" in flags
    assert "depth" not in r.output.replace("--rerank-depth", "")  # no Python names where a flag exists
    typed = {o for p in run.params for o in p.opts}
    listed = {f for line in r.output.splitlines() if line.strip().startswith("flags:") for f in line.split()[1:]}
    assert listed <= typed, listed - typed


# ---------------------------------------------------------------- 39.8 steps the README states
def test_the_readme_states_every_step_and_the_extras_they_need():
    import re

    readme = (ROOT / "README.md").read_text()
    start = readme.split("## Start here", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    steps = re.split(r"\n(?=# \d+\. )", start.strip())
    offline = next(s for s in steps if "offline-models small" in s)
    assert offline.startswith("# 2. "), steps  # a numbered step, not prose
    # the step installs what the tool needs to convert the GGUF LLMs (gguf, accelerate) in command 1's venv
    pyproject = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    extras = {name: re.findall(r'"([^"]+)"', deps) for name, deps in re.findall(r"^([\w-]+) = \[(.*?)\]", pyproject, re.M | re.S)}
    installed = {d for e in re.findall(r'pip install -e "\.\[([\w,-]+)\]"', start) for x in e.split(",") for d in extras[x]}
    assert {"gguf", "accelerate"} <= {re.split(r"[<>=\[]", d)[0] for d in installed}, installed
    # an example that needs an extra says how to install it
    for block in re.findall(r"```python\n(.*?)```", readme, re.S):
        if "langchain" in block:
            assert 'pip install -e ".[langchain]"' in block, block
    # times are ranges, not one figure that a busy machine makes 3-5x low
    assert not re.findall(r"\(~\d+ ?s\)|; ~\d+ ?s\)", readme)
    # docs/serving.md imports what it uses
    serving = (ROOT / "docs" / "serving.md").read_text()
    for block in re.findall(r"```python\n(.*?)```", serving, re.S):
        if "ContextualCompressionRetriever(" in block:
            assert "import ContextualCompressionRetriever" in block, block
