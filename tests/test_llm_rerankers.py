"""Pairwise (PRP) and listwise (FIRST, generative) LLM rerankers. The orchestration (sorting,
sliding passes, windows, parsing, truncation) is checked against exact expectations; the model
plumbing runs on the small offline SmolLM2-135M-Instruct and real DL19 passages (that model has
no ranking skill, so these tests check behaviour, not quality: benchmarks/llm_rerankers.py does)."""

import copy
import itertools
import random
import time

import pytest
from click.testing import CliRunner
from conftest import offline_model

from rerank import DataError, Hit, load_dataset
from rerank.cli import main
from rerank.errors import ModelNotFound, RerankError
from rerank.models.llm import LLM, fit_passages
from rerank.rerankers import make_reranker
from rerank.rerankers.listwise import LABELS, First, ListwiseGenerate, identifier_tokens, parse_permutation, windows
from rerank.rerankers.pairwise import PRP, _drive, _heap_top_k, _sliding


@pytest.fixture(scope="session")
def smol() -> str:
    return offline_model("SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def dl19_small(dl19):
    ds = load_dataset(str(dl19))
    run = ds.candidate_run("bm25")
    queries = ds.queries[:2]
    return ds, queries, {q.qid: run[q.qid][:8] for q in queries}


# ------------------------------------------------------------ orchestration, exactly
def oracle_preferences(true_rank: dict[int, int]):
    """A consistent judge: the document with the smaller true rank wins."""
    def prefs(jobs):
        return [(1.0 if true_rank[a[0]] < true_rank[b[0]] else 0.0, 0.0) for _, a, b in jobs]
    return prefs


@pytest.mark.parametrize("n,k", [(1, 1), (2, 1), (7, 3), (10, 10), (20, 5)])
def test_heap_sort_and_sliding_find_the_true_top_k(n, k):
    rng = random.Random(n * 31 + k)
    truth = list(range(n))
    rng.shuffle(truth)  # truth[i] = true rank of the document at input position i
    dtok = [[[i] for i in range(n)]]
    prefs = oracle_preferences(dict(enumerate(truth)))
    best = sorted(range(n), key=lambda i: truth[i])
    heap = _drive({0: _heap_top_k(n, k)}, dtok, [[0]], prefs)[0]
    assert heap[:k] == best[:k] and sorted(heap) == list(range(n))
    slide = _drive({0: _sliding(n, k)}, dtok, [[0]], prefs)[0]
    assert slide[:k] == best[:k] and sorted(slide) == list(range(n))


def test_sliding_and_sorting_prompt_counts():
    n, k = 20, 10
    asked = []

    def prefs(jobs):
        asked.extend(jobs)
        return [(0.5, 0.5)] * len(jobs)  # all ties: nothing moves
    order = _drive({0: _sliding(n, k)}, [[[i] for i in range(n)]], [[0]], prefs)[0]
    assert order == list(range(n))
    assert len(asked) == n - 1  # later passes repeat the first pass's pairs: answered from the memo
    asked.clear()
    reverse = oracle_preferences({i: n - i for i in range(n)})  # the input is upside down: every comparison swaps

    def counting(jobs):
        asked.extend(jobs)
        return reverse(jobs)
    order = _drive({0: _sliding(n, k)}, [[[i] for i in range(n)]], [[0]], counting)[0]
    assert order[:k] == list(range(n - 1, n - 1 - k, -1))
    assert len(asked) == sum(n - 1 - p for p in range(k))  # K passes: about K(N-1) comparisons, 2K(N-1) prompts


def test_windows_move_back_to_front():
    assert windows(100, 20, 10) == [(80, 100), (70, 90), (60, 80), (50, 70), (40, 60), (30, 50), (20, 40), (10, 30), (0, 20)]
    assert windows(8, 20, 10) == [(0, 8)]  # fewer candidates than the window
    assert windows(25, 20, 10) == [(5, 25), (0, 15)]
    assert windows(0, 20, 10) == []


def test_parse_permutation_repairs_and_flags():
    assert parse_permutation("[B] > [A] > [C]", 3) == ([1, 0, 2], False)
    assert parse_permutation("[B] > [B] > [Z] > [a]", 3) == ([1, 0, 2], True)  # repeat, unknown, lower case; C missing
    assert parse_permutation("I cannot rank these.", 3) == ([0, 1, 2], True)


def test_fit_passages_cuts_evenly():
    p = [[1] * 10, [2] * 100, [3] * 100]
    out = fit_passages(p, 90)
    assert [len(x) for x in out] == [10, 40, 40]  # the short one keeps all, the rest share evenly
    assert [len(x) for x in fit_passages(p, 1000, cap=30)] == [10, 30, 30]
    assert out[1] == [2] * 40  # the beginning is kept
    with pytest.raises(DataError, match="leaves 2 tokens for 3 passages"):
        fit_passages(p, 2)


class FakeTokenizer:
    """Tokenizes by a fixed table (to exercise identifier strategies without a real vocabulary)."""

    def __init__(self, merged: set[str], split_letters: set[str] = frozenset()):
        self.merged, self.split = merged, split_letters
        self.vocab: dict[str, int] = {}

    def _id(self, piece):
        return self.vocab.setdefault(piece, len(self.vocab))

    def encode(self, text, add_special_tokens=False):
        out, i = [], 0
        while i < len(text):
            if text[i] == "[" and i + 1 < len(text) and text[i + 1] in self.merged:
                out.append(self._id(text[i : i + 2]))
                i += 2
            elif text[i] in self.split:
                out += [self._id(text[i] + "1"), self._id(text[i] + "2")]
                i += 1
            elif text[i] == " " and i + 1 < len(text) and text[i + 1] == "[":
                out.append(self._id(" ["))
                i += 2
            else:
                out.append(self._id(text[i]))
                i += 1
        return out

    def decode(self, ids):
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids)


def test_identifier_token_strategies():
    def names(tok, ids):
        return [tok.decode([i]) for i in ids]

    tok = FakeTokenizer(merged=set())  # "[A]" = "[" "A" "]"
    prime, labels, ids = identifier_tokens(tok, 5)
    assert (prime, labels, names(tok, ids)) == ("[", "ABCDE", list("ABCDE"))
    tok = FakeTokenizer(merged=set(LABELS) - {"C"})  # every "[X" one token but "[C": labels skip C
    prime, labels, ids = identifier_tokens(tok, 5)
    assert (prime, labels, names(tok, ids)) == ("", "ABDEF", ["[A", "[B", "[D", "[E", "[F"])
    tok = FakeTokenizer(merged={"A", "B"})  # too few merged letters; " [" keeps the letters apart
    prime, labels, ids = identifier_tokens(tok, 5)
    assert (prime, labels, names(tok, ids)) == (" [", "ABCDE", list("ABCDE"))
    prime, labels, ids = identifier_tokens(FakeTokenizer(merged=set(LABELS) - {"C"}), 5, "letters")
    assert prime == "[" and labels == "ABCDE"
    with pytest.raises(DataError, match="splits the identifier letter 'C'.*listwise-gen"):
        identifier_tokens(FakeTokenizer(merged=set(), split_letters={"C"}), 5)
    with pytest.raises(ValueError, match="unknown identifier strategy"):
        identifier_tokens(FakeTokenizer(merged=set()), 5, "digits")
    assert parse_permutation("[D] > [A]", 3, "ABD") == ([2, 0, 1], True)


# ------------------------------------------------------------ the real model
def test_llm_backend_counts_and_batches(smol):
    llm = LLM(smol, dtype="float32")
    before, after = llm.wrap("You rank passages.", assistant="Passage")
    prompts = [before + llm.tokens([t])[0] + after for t in ["Which is better, A or B?", "Short.", "A much longer question " * 5]]
    cands = [llm.single_token(" A"), llm.single_token(" B")]
    together = llm.next_token_logits(prompts, cands)
    alone = [llm.next_token_logits([p], cands)[0] for p in prompts]
    for a, b in zip(together, alone, strict=True):
        assert a == pytest.approx(b, abs=1e-4)  # padding does not change a prompt's logits
    assert llm.cost.calls == 6 and llm.cost.tokens == 2 * sum(len(p) for p in prompts)
    texts = llm.generate(prompts[:2], max_new_tokens=5)
    assert len(texts) == 2 and 0 < llm.cost.generated <= 10
    with pytest.raises(DataError, match="must be one"):
        llm.single_token("Passage A and B")


def test_prp_methods_rerank_real_passages(tiny_smol, dl19_small):
    smol = tiny_smol  # the counts and invariants hold for any model: a tiny Llama with SmolLM2's tokenizer
    _, queries, ranking = dl19_small
    before = copy.deepcopy(ranking)
    allpair = PRP(smol, method="allpair", depth=5, max_passage_tokens=48, dtype="float32")
    out = allpair(queries, ranking)
    assert ranking == before  # the caller's ranking is untouched
    n = 5
    assert allpair.cost.calls == len(queries) * n * (n - 1)  # every pair, both orders
    for q in queries:
        got = out[q.qid]
        assert sorted(h.docid for h in got[:n]) == sorted(h.docid for h in ranking[q.qid][:n])
        assert [h.docid for h in got[n:]] == [h.docid for h in ranking[q.qid][n:]]  # the tail keeps its order
        assert all(a.score >= b.score for a, b in itertools.pairwise(got))
        # wins (+ half ties) add up to one per pair; the soft tie-breaker adds a tenth of a pair's share
        assert sum(h.score for h in got[:n]) == pytest.approx(n * (n - 1) / 2 * (1 + 1 / (10 * n)))
    sliding = PRP(smol, method="sliding", k=2, depth=5, max_passage_tokens=48, dtype="float32")
    sliding(queries, ranking)
    assert sliding.cost.calls <= len(queries) * 2 * sum(n - 1 - p for p in range(2))
    gen = PRP(smol, method="sorting", k=2, mode="generate", depth=5, max_passage_tokens=48, dtype="float32")
    res = gen(queries, ranking)
    assert gen.cost.generated > 0 and all(len(res[q.qid]) == len(ranking[q.qid]) for q in queries)


def test_first_and_generative_listwise_small_windows(tiny_smol, dl19_small):
    smol = tiny_smol  # the counts and invariants hold for any model: a tiny Llama with SmolLM2's tokenizer
    _, queries, ranking = dl19_small
    first = First(smol, window=4, stride=2, depth=8, max_passage_tokens=48, dtype="float32")
    out = first(queries, ranking)
    assert first.cost.calls == len(queries) * len(windows(8, 4, 2)) and first.cost.generated == 0
    for q in queries:
        assert sorted(h.docid for h in out[q.qid]) == sorted(h.docid for h in ranking[q.qid])
    # fewer candidates than the window: one window of what there is
    few = {q.qid: ranking[q.qid][:3] for q in queries}
    wide = First(smol, window=20, depth=100, max_passage_tokens=48, dtype="float32")
    res = wide(queries, few)
    assert wide.cost.calls == len(queries) and all(len(res[q.qid]) == 3 for q in queries)
    gen = ListwiseGenerate(smol, window=4, stride=2, depth=8, max_passage_tokens=48, dtype="float32")
    res = gen(queries, ranking)
    assert gen.cost.calls == first.cost.calls and gen.cost.generated > 0
    for q in queries:
        assert sorted(h.docid for h in res[q.qid]) == sorted(h.docid for h in ranking[q.qid])
    assert 0 <= gen.cost.repaired <= gen.cost.calls  # SmolLM often writes broken permutations: counted


def test_unparseable_generation_is_repaired_and_counted(smol, dl19_small, monkeypatch):
    _, queries, ranking = dl19_small
    gen = ListwiseGenerate(smol, window=4, stride=4, depth=4, dtype="float32")
    monkeypatch.setattr(
        gen.llm, "generate", lambda prompts, max_new_tokens: ["no idea"] + ["[B] > [A] > [D] > [C]"] * (len(prompts) - 1)
    )
    out = gen(queries, ranking)
    assert gen.cost.repaired == 1
    assert [h.docid for h in out[queries[0].qid][:4]] == [h.docid for h in ranking[queries[0].qid][:4]]  # repaired: input order
    top = ranking[queries[1].qid][:4]
    assert [h.docid for h in out[queries[1].qid][:4]] == [top[1].docid, top[0].docid, top[3].docid, top[2].docid]


def test_long_prompts_truncate_passages_evenly(smol, dl19_small):
    _, queries, ranking = dl19_small
    first = First(smol, window=4, stride=2, depth=8, dtype="float32", max_length=300, max_passage_tokens=None)
    q = first.llm.tokens([queries[0].text])[0]
    passages = first.llm.tokens([h.text * 5 for h in ranking[queries[0].qid][:4]])
    prompt = first._prompt(q, passages)
    assert len(prompt) <= 300
    first(queries, ranking)  # runs within the context
    prp = PRP(smol, depth=4, dtype="float32", max_length=200, max_passage_tokens=None)
    a, b = prp._fit(q, passages[0], passages[1])
    assert abs(len(a) - len(b)) <= 1 and len(prp._prompt(q, a, b)) <= 200


def test_a_list_reranker_in_an_app_and_bad_options(smol):
    first = First(smol, window=3, stride=1, dtype="float32")
    docs = ["Paris is the capital of France.", {"id": "d2", "text": "Bananas are yellow."}, "Berlin is in Germany."]
    ranked = first.rank("capital of france", docs, top_k=2)
    assert len(ranked) == 2 and {r.index for r in ranked} <= {0, 1, 2}
    with pytest.raises(TypeError, match="ranks lists"):
        first.score([("q", "d")])
    with pytest.raises(ValueError, match="window"):
        First(smol, window=1)
    with pytest.raises(ValueError, match="unknown PRP method"):
        PRP(smol, method="bubble")
    with pytest.raises(RerankError, match="window applies to the listwise"):
        make_reranker(f"prp:{smol}", window=5)
    assert make_reranker(f"prp:{smol}:sliding", k=3).method == "sliding"


def test_default_first_model_fails_fast_offline(dl19):
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFound, match="castorini/first_mistral"):
        make_reranker("first")
    r = CliRunner().invoke(main, ["run", "--retriever", "bm25", "--reranker", "first", "--dataset", str(dl19)])
    assert r.exit_code == 2 and "castorini/first_mistral" in r.output and "not available offline" in r.output
    assert time.perf_counter() - t0 < 10


def test_cli_runs_first_with_a_local_model(tiny_smol, dl19, tmp_path):
    out = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "--reranker", f"first:{tiny_smol}", "--rerank-depth", "4", "--window", "4",
                                  "-d", str(dl19), "--metrics-json", str(out), "-q"])
    assert r.exit_code == 0, r.output
    import json

    cost = json.loads(out.read_text())["cost"]["rerank"]
    assert cost["model_calls"] == 43 and cost["generated_tokens"] == 0  # one window of 4 a query


def test_hits_without_text_are_refused(smol):
    first = First(smol, window=3, dtype="float32")
    from rerank import Query

    with pytest.raises(DataError, match="no text"):
        first([Query("q", "x")], {"q": [Hit("d1", 1.0, None)]})
