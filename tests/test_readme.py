"""The README's examples marked ``<!-- runnable offline -->`` run as written, offline, on the shared
data and the small offline models, and print the figures their ``# prints:`` lines claim.

Each block runs in a fresh folder beside a link to the shared data (so ``../shared/data`` resolves
as in a checkout) with the checkout's ``configs/``; ``pip install`` lines are checked, not run
(`.ci/run` has installed every extra)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MARK = "<!-- runnable offline -->"


def runnable_blocks() -> list[tuple[str, str, int]]:
    """(language, code, line number) of every fenced block right after the marker."""
    lines = (ROOT / "README.md").read_text().splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARK:
            continue
        fence = lines[i + 1]
        assert fence.startswith("```"), f"README.md:{i + 1}: the marker must precede a code block"
        end = next(j for j in range(i + 2, len(lines)) if lines[j].startswith("```"))
        blocks.append((fence[3:].strip(), "\n".join(lines[i + 2 : end]), i + 1))
    return blocks


BLOCKS = runnable_blocks()


def test_the_readme_marks_its_offline_examples_and_stays_short():
    assert len(BLOCKS) >= 6 and {lang for lang, _, _ in BLOCKS} == {"bash", "python"}
    assert len((ROOT / "README.md").read_bytes()) < 12_000
    assert all("# prints:" in code for _, code, _ in BLOCKS), "every runnable example claims what it prints"
    # the configs the test of configs leaves to the README are run here
    readme = [c for c in (ROOT / "configs").glob("*.yaml") if "\nreproduce: readme" in c.read_text()]
    for config in readme:
        assert any(f"rerank run --config configs/{config.name}" in code for _, code, _ in BLOCKS), config


@pytest.mark.parametrize(("lang", "code", "line"), BLOCKS, ids=[f"README.md:{line}" for _, _, line in BLOCKS])
def test_a_readme_example_runs_and_prints_what_it_claims(lang, code, line, shared, tmp_path):
    work = tmp_path / "checkout"
    work.mkdir()
    (tmp_path / "shared").symlink_to(shared.parent, target_is_directory=True)
    (work / "configs").symlink_to(ROOT / "configs", target_is_directory=True)
    env = {**os.environ, "RERANK_SHARED_DATA": str(shared), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "RERANK_PROGRESS": "0", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    claims = [c.split("# prints:", 1)[1].split() for c in code.splitlines() if c.strip().startswith("# prints:")]
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        commands = [c for c in re.sub(r"\\\n\s*", " ", code).splitlines() if c.strip() and not c.lstrip().startswith("#")]
        for c in commands:
            assert c.startswith(("rerank ", "pip install ", "curl ", "kill ")), f"README.md:{line}: an unexpected command {c!r}"
            if c.startswith("pip install "):  # installed by .ci/run: check that the extra's package is there
                extra = re.search(r"\[(\w+)\]", c)
                assert extra, c
                __import__({"distributed": "ray", "serve": "fastapi"}.get(extra.group(1), extra.group(1)))
        # a server started in the background (`rerank serve ... &`) is stopped by the block's `kill $!`
        script = "\n".join(c for c in commands if not c.startswith("pip install "))
        cmd = ["bash", "-euo", "pipefail", "-c", script]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = r.stdout + r.stderr
    assert r.returncode == 0, f"README.md:{line} failed:\n{output[-3000:]}"
    words = output.split()
    for claim in claims:
        for i, token in enumerate(claim):
            if token.startswith("~"):  # a figure that depends on the CPU's arithmetic (long training): within 0.01,
                # printed right after the words that precede it in the claim
                after = r"\s+".join(re.escape(w) for w in claim[:i])
                found = [float(x) for x in re.findall(after + r"\s+(-?\d+\.\d+)", output)]
                assert any(abs(x - float(token[1:])) <= 0.01 for x in found), \
                    f"README.md:{line}: {' '.join(claim[:i])} within 0.01 of {token[1:]} not printed:\n{output[-3000:]}"
                continue
            assert token in output or token in words, f"README.md:{line}: {token!r} not printed:\n{output[-3000:]}"


# ---------------------------------------------------------------- what a new user sees
def _rerank(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RERANK_PROGRESS": "0"}
    exe = Path(sys.executable).parent / "rerank"
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_the_headline_command_offline_says_what_would_work(tmp_path):
    from conftest import offline_model

    offline_model("SmolLM2-135M-Instruct")  # installed by .ci/run: a causal LM that FIRST can run
    r = _rerank("run", "--retriever", "bm25", "--reranker", "first", "--dataset", "trec-dl-19", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith("error: model 'castorini/first_mistral'") and "hf download castorini/first_mistral" in r.stderr
    smol = [x for x in r.stderr.splitlines() if x.strip().startswith("SmolLM2-135M-Instruct:")]
    assert smol and "installed" in smol[0] and "no ranking skill" in smol[0], r.stderr
    assert "all-MiniLM-L6-v2" not in r.stderr  # an encoder body cannot run FIRST (tests/test_firsthour.py: the ranking)


def test_a_run_prints_results_and_useful_lines_only(tmp_path, dl19):
    r = _rerank("run", "-r", "bm25", "-d", "scifact", "--metrics", "nDCG@10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "zip file" not in r.stderr and "[error]" not in r.stderr, r.stderr  # ir_datasets' attempt is not news
    a, b = dl19 / "bm25.top100.json", dl19 / "splade-pp-ed.top100.json"
    r = _rerank("eval", str(a), str(b), "-d", str(dl19), "--per-query", "--metrics", "nDCG@10", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert any(x.split()[:2] == ["query", "nDCG@10"] for x in lines)  # the per-query table heads its ids "query"
    head = next(x for x in lines if x.startswith("metric"))
    assert "bm25.top100.json" in head and "splade-pp-ed.top100.json" in head  # run names in full


def test_truncation_is_reported_once_as_a_total_over_the_run(dl19, tiny_ce, caplog):
    import logging

    from rerank import load_dataset
    from rerank.rerankers.pointwise import CrossEncoder

    ds = load_dataset(str(dl19))
    run = {q: hits[:30] for q, hits in ds.candidate_run("bm25").items()}
    ce = CrossEncoder(tiny_ce, dtype="float32", max_length=48)
    ce.block = 4  # many blocks: the count must cover all of them, not the first
    with caplog.at_level(logging.INFO, logger="rerank"):
        ce(ds.queries, run)
    notes = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(notes) == 1, notes
    cut, total = (int(x) for x in re.search(r"(\d+) of (\d+) pairs", notes[0]).groups())
    assert total == 30 * len(run) and cut > total // 2
