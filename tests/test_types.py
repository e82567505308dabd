import subprocess
import sys

import pytest

from rerank import Cutoff, DataError, FromRun, Hit, Pipeline, Query, Stage


def test_query_rejects_empty_text_naming_the_query():
    with pytest.raises(DataError, match="query 'q7' has empty text"):
        Query("q7", "   ")
    with pytest.raises(DataError, match="non-empty string"):
        Query("", "text")


class Scale(Stage):
    """A toy reranker: negates scores and reverses the order."""

    name = "scale"

    def __call__(self, queries, ranking=None):
        return {qid: [Hit(h.docid, -h.score, h.text) for h in reversed(hits)] for qid, hits in ranking.items()}


def test_operators_compose_and_cut_without_mutating_input():
    original = {"q": [Hit(f"d{i}", 10.0 - i) for i in range(5)]}
    snapshot = {q: list(h) for q, h in original.items()}
    first = FromRun(original, name="fixed")
    pipe = first % 3 >> Scale()
    assert isinstance(pipe, Pipeline)
    assert [s.name for s in pipe.stages] == ["fixed", "top3", "scale"]
    out = pipe([Query("q", "text")])
    assert [h.docid for h in out["q"]] == ["d2", "d1", "d0"]
    assert original == snapshot  # the caller's lists are untouched


def test_cutoff_validates_k():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError):
            Cutoff(bad)
    with pytest.raises(ValueError, match="needs a ranking"):
        Cutoff(3)([Query("q", "t")])


def test_import_does_not_load_torch_or_ir_datasets():
    code = "import sys, rerank; bad = [m for m in ('torch', 'ir_datasets', 'transformers') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
