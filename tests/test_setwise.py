"""Rank-R1 setwise reranking: the heap and bubble sorts by selection against exact expectations
(a fake engine that reads each prompt's passages and answers as a judge would), the answer
parser's repairs, the prompt (the chat template over rank_r1_messages), and a run on real DL19
passages with a tiny Llama (no ranking skill: behaviour and costs, not quality)."""

from __future__ import annotations

import copy
import itertools
import random
import re

import pytest

from rerank import DataError, load_dataset
from rerank.models import llm_engines
from rerank.models.llm import ChatLM, LLMCost
from rerank.rerankers import make_reranker
from rerank.rerankers.setwise import RankR1, SetwiseCost, parse_setwise_answer, rank_r1_messages


# ------------------------------------------------------------ a fake engine
class CharTokenizer:
    """One token per character."""

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [ord(c) for c in texts]}
        return {"input_ids": [[ord(c) for c in t] for t in texts]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(map(chr, ids))


class FakeLLM(ChatLM):
    """Answers each selection prompt with ``answer(the docs in label order)``; records its calls."""

    def __init__(self, answer):
        self.name, self.chat, self.window = "fake", False, 10**6
        self.tokenizer, self.cost, self.answer = CharTokenizer(), LLMCost(), answer
        self.calls: list[int] = []  # prompts per generate call

    def generate(self, prompts, max_new_tokens, stop=()):
        self.calls.append(len(prompts))
        self._account(len(prompts), sum(map(len, prompts)), 0.0)
        out = []
        for p in prompts:
            text = self.tokenizer.decode(p)
            docs = [int(d) for _, d in re.findall(r"^\[(\d+)\] d(\d+)$", text, re.MULTILINE)]
            out.append(self.answer(docs))
            self.cost.generated += 5
        return out


def fake_reranker(monkeypatch, answer, **options) -> RankR1:
    fake = FakeLLM(answer)
    monkeypatch.setattr(llm_engines, "load_llm", lambda name, **kw: fake)
    return RankR1("fake", **options)


def best_of(truth):
    """A perfect selector: the label of the document with the highest true score."""
    def answer(docs):
        best = max(range(len(docs)), key=lambda i: truth[docs[i]])
        return f"<think>[{best + 1}] answers it best</think>\n<answer>[{best + 1}]</answer>"
    return answer


def docs_of(n):
    return [f"d{i}" for i in range(n)]


# ------------------------------------------------------------ the sorts, exactly
CASES = [(n, c, k) for n, c, k in itertools.product((1, 2, 6, 13, 25), (1, 2, 3, 19), (1, 3, 10))]


@pytest.mark.parametrize("method", ["heapsort", "bubblesort"])
@pytest.mark.parametrize("n,num_child,k", CASES)
def test_a_perfect_selector_gives_the_true_top_k(monkeypatch, method, n, num_child, k):
    rng = random.Random(n * 1000 + num_child * 10 + k)
    truth = [rng.random() for _ in range(n)]
    r = fake_reranker(monkeypatch, best_of(truth), method=method, num_child=num_child, k=k)
    order = [d.index for d in r.rank("q", docs_of(n))]
    best = sorted(range(n), key=lambda i: -truth[i])
    assert order[:k] == best[:k] and sorted(order) == list(range(n))
    if method == "heapsort":  # the rest keep their first-stage order
        assert order[k:] == [i for i in range(n) if i not in best[:k]]
    assert r.cost.repaired == 0 and r.cost.lists == 1
    assert set(r.llm.calls) == ({1} if n > 1 else set())  # one query: one selection at a time (none for one passage)


@pytest.mark.parametrize("answer", ["<think>the first</think><answer>[1]</answer>", "no idea", "<answer>[1]</answer>",
                                    "<think>x</think><answer>[0]</answer>"])
@pytest.mark.parametrize("method,expected,prompts", [("heapsort", [0, 6, 5, 1, 2, 3, 4], 4),
                                                     ("bubblesort", [0, 1, 2, 3, 4, 5, 6], 4)])
def test_a_selector_of_the_first_label_gives_the_stable_order(monkeypatch, answer, method, expected, prompts):
    """Always [1] (or an answer repaired to the first candidate): no selection moves anything.
    Heap sort (7 passages, 3 children a node, top 3) asks nodes 1 and 0 to build the heap and the
    root twice after taking 0, then 6 (the last leaf, moved to the root); bubble sort asks
    (3,4,5,6), (0,1,2,3), then (1,2,3), (2,3): the bottom window, unchanged, from the memo."""
    r = fake_reranker(monkeypatch, lambda docs: answer, method=method, num_child=3, k=3)
    assert [d.index for d in r.rank("q", docs_of(7))] == expected
    assert r.cost.calls == prompts
    assert r.cost.repaired == (0 if answer.startswith("<think>the first") else prompts)


def test_selections_of_different_queries_share_generate_calls(monkeypatch):
    rng = random.Random(7)
    truth = [rng.random() for _ in range(30)]
    sizes = [30, 12, 5]
    alone = []
    for n in sizes:
        r = fake_reranker(monkeypatch, best_of(truth), num_child=3, k=5)
        alone.append((r._order(["q"], [docs_of(n)])[0], list(r.llm.calls)))
    r = fake_reranker(monkeypatch, best_of(truth), num_child=3, k=5)
    together = r._order(["q"] * 3, [docs_of(n) for n in sizes])
    assert together == [order for order, _ in alone]
    assert len(r.llm.calls) == max(len(calls) for _, calls in alone)  # one call per round, not per query
    assert sum(r.llm.calls) == sum(sum(calls) for _, calls in alone) == r.cost.calls
    assert r.cost.lists == 3


# ------------------------------------------------------------ parsing
@pytest.mark.parametrize("text,n,expected", [
    ("<think>r</think> <answer>[2]</answer>", 3, (1, True)),
    ("<think>r\nr</think>\n<answer> [ 3 ] </answer>", 3, (2, True)),
    ("<THINK>r</THINK><ANSWER>[1]</ANSWER>", 3, (0, True)),
    ("<think>r</think><answer>[20]</answer>", 20, (19, True)),
    ("<answer>[2]</answer>", 3, (1, False)),  # no reasoning block
    ("<think>r</think><answer>[2] or [3]</answer>", 3, (1, False)),  # several labels: the first
    ("<think>r</think><answer>3</answer>", 3, (2, False)),  # a bare number in the answer
    ("<think>[1] is off topic</think><answer>[5]</answer>", 3, (0, False)),  # out of range: the first label in range
    ("<think>[1] perhaps</think> so the best is [3]", 3, (2, False)),  # no answer tags: after </think> first
    ("<think>r</think><answer>[2]", 3, (1, False)),  # cut off before </answer>
    ("Passage [2] is the most relevant.", 3, (1, False)),
    ("<think>r</think><answer>[0]</answer>", 3, (None, False)),
    ("I do not know.", 3, (None, False)),
    ("<think>the reasoning ran out of tokens", 3, (None, False)),
])
def test_parse_setwise_answer(text, n, expected):
    assert parse_setwise_answer(text, n) == expected


def test_rank_r1_messages_is_the_papers_prompt():
    (sys_role, system), (user_role, user) = ((m["role"], m["content"]) for m in rank_r1_messages('what is "x"? {q}',
                                                                                              ["first {doc}", "second"]))
    assert (sys_role, user_role) == ("system", "user")
    assert system.startswith("A conversation between User and Assistant.") and "<answer> answer here </answer>." in system
    assert user.startswith('Given the query: "what is "x"? {q}", which of the following documents is most relevant?\n'
                           "[1] first {doc}\n[2] second\nAfter completing the reasoning process")
    assert user.endswith("<think> reasoning process here </think> <answer>[3]</answer>.")


# ------------------------------------------------------------ the model
@pytest.fixture(scope="module")
def dl19_top6(dl19):
    ds = load_dataset(str(dl19))
    run = ds.candidate_run("bm25")
    queries = ds.queries[:2]
    return queries, {q.qid: run[q.qid][:8] for q in queries}


def test_the_prompt_is_the_chat_template_over_the_messages(tiny_smol, dl19_top6):
    from transformers import AutoTokenizer

    queries, ranking = dl19_top6
    tok = AutoTokenizer.from_pretrained(tiny_smol)
    r = RankR1(tiny_smol, max_new_tokens=64, dtype="float32")
    passages = [h.text for h in ranking[queries[0].qid][:4]]
    chat = rank_r1_messages(queries[0].text, passages)
    assert r.selection_prompt(queries[0].text, passages) == list(tok.apply_chat_template(chat, add_generation_prompt=True,
                                                                                         return_dict=True)["input_ids"])
    short = RankR1(tiny_smol, max_new_tokens=64, max_length=400, max_passage_tokens=None, dtype="float32")
    cut = short.selection_prompt(queries[0].text, [p * 4 for p in passages])
    assert 300 < len(cut) <= 400 - 64  # cut evenly to leave room for the answer
    assert tok.decode(cut).count("[4] ") == 1 and "<answer>[3]</answer>" in tok.decode(cut)
    with pytest.raises(DataError, match="does not fit the 400-token context with 390 new tokens"):
        RankR1(tiny_smol, max_new_tokens=390, max_length=400, dtype="float32").selection_prompt("q", passages)


@pytest.mark.parametrize("method", ["heapsort", "bubblesort"])
def test_rank_r1_reranks_real_passages_with_a_tiny_llm(tiny_smol, dl19_top6, method):
    queries, ranking = dl19_top6
    before = copy.deepcopy(ranking)
    r = make_reranker(f"rank-r1:{tiny_smol}:{method}", num_child=2, k=3, max_new_tokens=12, depth=6, dtype="float32")
    assert isinstance(r, RankR1) and r.method == method and isinstance(r.cost, SetwiseCost)
    calls = []
    generate = r.llm.generate

    def counting(prompts, max_new_tokens, stop=()):
        calls.append(len(prompts))
        return generate(prompts, max_new_tokens, stop)

    r.llm.generate = counting
    out = r(queries, ranking)
    assert ranking == before  # the caller's ranking is untouched
    for q in queries:
        got, had = out[q.qid], ranking[q.qid]
        assert sorted(h.docid for h in got[:6]) == sorted(h.docid for h in had[:6])  # a permutation of the top 6
        assert [h.docid for h in got[6:]] == [h.docid for h in had[6:]]  # the tail keeps its order
        assert all(a.score > b.score for a, b in itertools.pairwise(got))
    c = r.cost
    assert c.calls == sum(calls) and len(calls) < c.calls  # both queries' selections shared generate calls
    assert c.lists == 2 and c.tokens > 0 and 0 < c.generated <= 12 * c.calls
    assert 0 <= c.repaired <= c.calls  # a random-weight model rarely writes the format: repaired, counted
    d = c.as_dict()
    assert d["generated_tokens"] == c.generated and d["repaired_outputs"] == c.repaired
    assert d["prompts_per_list"] == pytest.approx(c.calls / 2, abs=0.01)
    assert f"{c.repaired} of {c.calls} answers malformed" in c.summary()


def test_bad_options_are_errors(monkeypatch):
    for bad, match in ((dict(method="quick"), "unknown setwise method 'quick'"), (dict(num_child=0), "num_child must be"),
                       (dict(k=0), "k must be"), (dict(max_new_tokens=0), "max_new_tokens must be")):
        with pytest.raises(ValueError, match=match):
            fake_reranker(monkeypatch, lambda docs: "", **bad)
