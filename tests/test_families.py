"""The reranker families people ask for by name: T5 (monoT5, duoT5), instruction LLM rerankers by
prompt template (Qwen3-Reranker, BGE-Gemma, mxbai-rerank-v2), hosted APIs, and ``auto:MODEL``.

No hub access here, so each family runs on a tiny model of its real architecture built from a
config (random weights, fixed seed) with a real tokenizer, and its scores are checked against a
direct computation of the model card's formula through the raw transformers model."""

import json
import string
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import offline_model

import rerank
from rerank import Hit, Query, load_dataset
from rerank.cli import main
from rerank.errors import ModelMismatch, RerankError
from rerank.rerankers.api import API, retry_after
from rerank.rerankers.auto import family
from rerank.rerankers.pairwise import _drive, _sliding
from rerank.rerankers.pointwise import LLMPointwise
from rerank.rerankers.t5 import DuoT5, MonoT5
from rerank.rerankers.templates import load as load_template

QUERY = "what is the boiling point of water at altitude"
DOCS = ["Water boils at lower temperatures at high altitude because the air pressure is lower.",
        "The Eiffel Tower is in Paris.",
        "At sea level water boils at 100 degrees Celsius; on a mountain it boils below that.",
        "Cooking pasta takes longer in the mountains."]


@pytest.fixture(scope="module")
def dl19_texts(dl19):
    ds = load_dataset(str(dl19))
    run = ds.candidate_run("bm25")
    q = ds.queries[0]
    return q.text, [h.text for h in run[q.qid][:6]]


def _causal(out: Path, config_class: str, model_class: str, **extra) -> str:
    """A 2-layer causal LM of ``config_class``'s architecture with SmolLM2's tokenizer (ChatML tokens)."""
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(offline_model("SmolLM2-135M-Instruct"))
    cfg = getattr(transformers, config_class)(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_class)(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _last_logits(folder: str, ids: list[int]) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


# ------------------------------------------------------------ instruction LLM rerankers
@pytest.fixture(scope="module")
def tiny_qwen3(tmp_path_factory) -> str:
    return _causal(tmp_path_factory.mktemp("m") / "Qwen3-Reranker-tiny", "Qwen3Config", "Qwen3ForCausalLM", head_dim=32)


def test_qwen3_reranker_matches_the_model_cards_formula(tiny_qwen3, dl19_texts):
    q, docs = dl19_texts
    llm = LLMPointwise(tiny_qwen3, dtype="float32", max_length=1024)  # the template comes from the name
    assert llm.template.name == "qwen3-reranker"
    tok = llm.tokenizer
    prefix = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
              "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
    suffix = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    instruction = "Given a web search query, retrieve relevant passages that answer the query"
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    want = []
    for d in docs[:3]:
        ids = (tok(prefix, add_special_tokens=False)["input_ids"]
               + tok(f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}", add_special_tokens=False)["input_ids"]
               + tok(suffix, add_special_tokens=False)["input_ids"])
        logits = _last_logits(tiny_qwen3, ids)
        want.append(float(torch.softmax(logits[[no, yes]], dim=0)[1]))
    got = llm.score([(q, d) for d in docs[:3]])
    assert got == pytest.approx(want, abs=2e-5)
    # the query comes before the passage; the instruction is the user's when given
    custom = LLMPointwise(tiny_qwen3, dtype="float32", max_length=1024, instruction="Find the scientific claim")
    [item] = custom.encode([(q, docs[0])])
    text = tok.decode(item["input_ids"])
    assert "<Instruct>: Find the scientific claim\n<Query>: " + q in text and text.index(q) < text.index(docs[0][:30])
    assert custom.score([(q, docs[0])]) != pytest.approx(got[:1], abs=1e-7)


def test_templates_batch_invariant_and_truncate_the_passage(tiny_qwen3, dl19_texts):
    q, docs = dl19_texts
    pairs = [(q, d) for d in docs]
    a = LLMPointwise(tiny_qwen3, dtype="float32", max_length=256)
    b = LLMPointwise(tiny_qwen3, dtype="float32", max_length=256, batch_tokens=1)
    assert np.abs(np.array(a.score(pairs)) - np.array(b.score(pairs))).max() < 1e-5 and b.cost.batches == len(pairs)
    [item] = a.encode([(q, "steam " * 3000)])
    ids = item["input_ids"]
    assert len(ids) == 256 and ids[-len(a.suffix):] == a.suffix  # cut from the passage; the answer prompt stays
    assert 0.0 <= a.score([(q, "steam " * 3000)])[0] <= 1.0  # p(yes)


def test_bge_gemma_and_mxbai_templates_match_their_reference_code(tmp_path_factory, dl19_texts):
    q, d = dl19_texts[0], dl19_texts[1][0]
    gemma = _causal(tmp_path_factory.mktemp("m") / "bge-reranker-v2-gemma", "GemmaConfig", "GemmaForCausalLM", head_dim=32)
    llm = LLMPointwise(gemma, dtype="float32")
    tok = llm.tokenizer
    prompt = ("Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a "
              "prediction of either 'Yes' or 'No'.")
    piece = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    ids = [tok.bos_token_id] + piece(f"A: {q}") + piece("\n") + piece(f"B: {d}") + piece("\n") + piece(prompt)
    assert llm.encode([(q, d)])[0]["input_ids"] == ids
    assert llm.score([(q, d)])[0] == pytest.approx(float(_last_logits(gemma, ids)[piece("Yes")[0]]), abs=1e-4)

    mxbai = _causal(tmp_path_factory.mktemp("m") / "mxbai-rerank-base-v2", "Qwen2Config", "Qwen2ForCausalLM")
    llm = LLMPointwise(mxbai, dtype="float32", instruction="Rank medical passages")
    task = ("You are a search relevance expert who evaluates how well documents match search queries. For each query-document "
            "pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 "
            "for not relevant, 1 for relevant).\nRelevance:")
    ids = (piece("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                 "<|im_start|>user\n") + piece(f"instruction: Rank medical passages\nquery: {q}") + piece("\n")
           + piece(f"document: {d}") + piece("\n") + piece(task) + piece("<|im_end|>\n<|im_start|>assistant\n"))
    assert llm.encode([(q, d)])[0]["input_ids"] == ids
    logits = _last_logits(mxbai, ids)
    assert llm.score([(q, d)])[0] == pytest.approx(float(logits[piece("1")[0]] - logits[piece("0")[0]]), abs=1e-4)


def test_a_users_template_file_and_bad_templates(tiny_qwen3, tmp_path):
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"pieces": ["Q: {query}", "\nP: {passage}", "\nRelevant (yes/no):"], "yes": "yes",
                                "no": "no", "score": "logit-diff"}))
    llm = LLMPointwise(tiny_qwen3, template=str(mine), dtype="float32")
    tok = llm.tokenizer
    [item] = llm.encode([("a query", "a passage")])
    assert tok.decode(item["input_ids"]) == "Q: a query\nP: a passage\nRelevant (yes/no):"
    [item] = llm.encode([("what is {passage}?", "p {query}")])  # texts are filled in as written, never as placeholders
    assert tok.decode(item["input_ids"]) == "Q: what is {passage}?\nP: p {query}\nRelevant (yes/no):"
    for bad, says in ((["{query} {passage} tail"], "must end with it"), (["{query}"], "once each"),
                      (["{query} {passage}", "{colour}"], "unknown placeholder")):
        mine.write_text(json.dumps({"pieces": bad}))
        with pytest.raises(RerankError, match=says):
            load_template(str(mine))
    with pytest.raises(RerankError, match="unknown prompt template 'nope'.*qwen3-reranker"):
        load_template("nope")


# ------------------------------------------------------------ T5
@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory, dl19) -> str:
    """A 2-layer T5 (d_model 64, seed 0) with a SentencePiece Unigram tokenizer (T5's kind: Metaspace,
    "</s>" appended) whose pieces are the 2,000 commonest words of DL19 passages and their characters."""
    import collections
    import math

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5Config, T5ForConditionalGeneration, T5TokenizerFast

    ds = load_dataset(str(dl19))
    texts = [h.text for hits in ds.candidate_run("bm25").values() for h in hits[:10]]
    counts = collections.Counter(w for t in texts for w in t.split())
    counts.update({w: 1000 for w in ("Query:", "Document:", "Document0:", "Document1:", "Relevant:", "true", "false")})
    chars = collections.Counter(c for t in texts for c in t)
    total = sum(counts.values()) + sum(chars.values())
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", math.log(len(texts) / total))]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in counts.most_common(2000)]
    vocab += [(c, math.log(n / total) - 5) for c, n in chars.items() if c != " "]
    vocab = list({piece: score for piece, score in vocab}.items())
    tk = Tokenizer(models.Unigram(vocab, unk_id=2))
    tk.pre_tokenizer = pre_tokenizers.Metaspace()
    tk.decoder = decoders.Metaspace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok = T5TokenizerFast(tokenizer_object=tk, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
                          model_max_length=512)
    cfg = T5Config(vocab_size=len(tok), d_model=64, d_ff=128, d_kv=32, num_layers=2, num_heads=2, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("m") / "t5-tiny"
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _t5_true(folder: str, text: str) -> float:
    """log p("true") of the softmax over true/false at the first decoder step (pygaggle's monoT5)."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    tok = AutoTokenizer.from_pretrained(folder)
    model = T5ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    ids = tok(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits[0, 0]
    f, t = tok.encode("false", add_special_tokens=False)[0], tok.encode("true", add_special_tokens=False)[0]
    return float(torch.log_softmax(logits[[f, t]], dim=0)[1])


def test_monot5_matches_the_formula_batches_truncates_and_reranks(tiny_t5, dl19_texts, dl19):
    q, docs = dl19_texts
    mono = MonoT5(tiny_t5, dtype="float32")
    got = mono.score([(q, d) for d in docs])
    assert got == pytest.approx([_t5_true(tiny_t5, f"Query: {q} Document: {d} Relevant:") for d in docs], abs=1e-5)
    single = MonoT5(tiny_t5, dtype="float32", batch_tokens=1)
    assert single.score([(q, d) for d in docs]) == pytest.approx(got, abs=1e-5) and single.cost.batches == len(docs)
    [item] = mono.encode([(q, "water " * 2000)])
    tail = mono.tokenizer("Relevant:")["input_ids"]  # "Relevant:" and </s> stay, the document is cut
    assert len(item["input_ids"]) == 512 and item["input_ids"][-len(tail):] == tail
    ranked = mono.rank(q, docs, top_k=3)
    assert [r.score for r in ranked] == sorted(got, reverse=True)[:3]
    ds = load_dataset(str(dl19))
    run = {qq.qid: ds.candidate_run("bm25")[qq.qid][:5] for qq in ds.queries[:2]}
    out = rerank.stage(f"monot5:{tiny_t5}", dtype="float32")(ds.queries[:2], run)
    assert {qid: sorted(h.docid for h in hits) for qid, hits in out.items()} == \
        {qid: sorted(h.docid for h in hits) for qid, hits in run.items()}


def test_duot5_compares_both_orders_and_aggregates_by_sym_sum(tiny_t5, dl19_texts):
    q, docs = dl19_texts
    docs = docs[:4]
    duo = DuoT5(tiny_t5, dtype="float32")
    ranked = duo.rank(q, docs)
    p = {(i, j): np.exp(_t5_true(tiny_t5, f"Query: {q} Document0: {docs[i]} Document1: {docs[j]} Relevant:"))
         for i in range(4) for j in range(4) if i != j}
    sym = {i: sum(p[i, j] + 1 - p[j, i] for j in range(4) if j != i) for i in range(4)}
    assert [r.index for r in ranked] == sorted(range(4), key=lambda i: -sym[i])
    assert [r.score for r in ranked] == pytest.approx(sorted(sym.values(), reverse=True), abs=1e-4)
    assert duo.cost.calls == 4 * 3  # every ordered pair once
    sliding = rerank.stage(f"duot5:{tiny_t5}:sliding", k=1, dtype="float32")
    order = [r.index for r in sliding.rank(q, docs)]
    assert isinstance(sliding, DuoT5) and sorted(order) == [0, 1, 2, 3] and sliding.cost.calls == 2 * 3  # one pass

    def judge(jobs):  # PRP's rule on duoT5's probabilities: a win in both orders, else a tie
        return [(1.0 if p[a[0], b[0]] > 0.5 > p[b[0], a[0]] else 0.0 if p[a[0], b[0]] < 0.5 < p[b[0], a[0]] else 0.5, 0.0)
                for _, a, b in jobs]

    assert order == _drive({0: _sliding(4, 1)}, [[[i] for i in range(4)]], [[0]], judge)[0]


# ------------------------------------------------------------ auto
def test_auto_picks_the_family_from_name_and_config(tiny_qwen3, tiny_t5, tiny_ce, tiny_smol, tiny_bert, tmp_path, caplog):
    import shutil

    duo = tmp_path / "duot5-base-msmarco"
    shutil.copytree(tiny_t5, duo)
    assert family(tiny_ce)[0] == "cross-encoder"
    assert family(tiny_t5) == ("monot5", "its config.json says T5ForConditionalGeneration")
    assert family(str(duo))[0] == "duot5"
    assert family(tiny_qwen3)[0] == "llm-pointwise" and "qwen3-reranker" in family(tiny_qwen3)[1]
    assert family(tiny_smol)[0] == "llm-pointwise"
    assert family(offline_model("splade-tiny-msmarco"))[0] == "splade"
    with pytest.raises(ModelMismatch, match="fits no reranker family; name one: cross-encoder:MODEL"):
        family(tiny_bert)
    picked = rerank.reranker(tiny_qwen3, dtype="float32")
    assert isinstance(picked, LLMPointwise) and picked.template.name == "qwen3-reranker"
    assert isinstance(rerank.reranker(str(duo), dtype="float32"), DuoT5)
    with pytest.raises(RerankError, match="window applies to"):
        rerank.reranker(tiny_ce, window=5)


def test_cli_runs_auto_and_monot5(tiny_t5, dl19):
    r = CliRunner().invoke(main, ["run", "-r", "bm25", "--reranker", f"auto:{tiny_t5}", "--rerank-depth", "5", "-d", str(dl19),
                                  "--dtype", "float32", "-k", "10"])
    assert r.exit_code == 0, r.output
    assert "auto:" in r.output and "runs as monot5" in r.output and "nDCG@10" in r.output


# ------------------------------------------------------------ hosted APIs
class FakeServer:
    """A local Cohere- or TEI-shaped /rerank: scores = words shared with the query; scripted failures."""

    def __init__(self, shape: str = "cohere", failures=(), max_docs: int = 10_000) -> None:
        self.shape, self.failures, self.max_docs = shape, list(failures), max_docs
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if server.failures:
                    status, headers, message = server.failures.pop(0)
                    return self._send(status, {"message": message}, headers)
                docs = body.get("texts" if server.shape == "tei" else "documents")
                if docs is None:
                    return self._send(422, {"error": "missing field `texts`"} if server.shape == "tei" else
                                      {"detail": "documents: field required"})
                if len(docs) > server.max_docs:
                    return self._send(413, {"message": "too many documents"})
                words = set(body["query"].lower().split())
                scores = [len(words & set(d.lower().split())) / 10 for d in docs]
                if server.shape == "tei":
                    return self._send(200, [{"index": i, "score": s} for i, s in sorted(enumerate(scores), key=lambda x: -x[1])])
                return self._send(200, {"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)][::-1],
                                        "meta": {"billed_units": {"search_units": 1}}})

            def _send(self, status, payload, headers=None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def expected_scores(query, docs):
    words = set(query.lower().split())
    return [len(words & set(d.lower().split())) / 10 for d in docs]


def test_api_batches_within_the_providers_limit_and_counts_cost(monkeypatch):
    server = FakeServer()
    monkeypatch.setenv("COHERE_API_KEY", "k-123")
    api = API("cohere:rerank-v3.5", url=f"{server.url}/v2/rerank")
    docs = [f"doc {i} water boils {'altitude' if i % 3 == 0 else 'sea'}" for i in range(2500)]
    scores = api.score([(QUERY, d) for d in docs])
    assert scores == expected_scores(QUERY, docs)
    sizes = sorted(len(r["body"]["documents"]) for r in server.requests)
    assert sizes == [500, 1000, 1000] and {r["auth"] for r in server.requests} == {"Bearer k-123"}
    assert server.requests[0]["body"]["model"] == "rerank-v3.5"
    assert api.cost.calls == 2500 and api.cost.batches == 3 and api.cost.as_dict()["requests"] == 3
    want = expected_scores(QUERY, DOCS)
    best = sorted(range(len(DOCS)), key=lambda i: (-want[i], i))
    assert [r.index for r in api.rank(QUERY, DOCS, top_k=2)] == best[:2]
    run = {"q1": [Hit(f"d{i}", 0.0, d) for i, d in enumerate(DOCS)]}
    assert [h.docid for h in api([Query("q1", QUERY)], run)["q1"]] == [f"d{i}" for i in best]
    server.close()


def test_api_retries_429_and_5xx_honouring_retry_after_then_fails_clearly(monkeypatch):
    monkeypatch.setenv("JINA_API_KEY", "k")
    server = FakeServer(failures=[(429, {"Retry-After": "0"}, "slow down"), (503, {}, "busy"), (429, {"Retry-After": "0"}, "")])
    api = API("jina:jina-reranker-v2-base-multilingual", url=server.url + "/v1/rerank")
    api.backoff = 0.01
    assert api.score([(QUERY, d) for d in DOCS]) == expected_scores(QUERY, DOCS)
    assert api.cost.retries == 3 and len(server.requests) == 4
    assert server.requests[0]["body"]["return_documents"] is False
    server.failures = [(500, {}, "boom")] * 3
    api.retries = 2
    with pytest.raises(RerankError, match=r"answered 500: boom"):
        api.score([("another query", "x")])
    server.failures = [(401, {}, "invalid api token")]
    with pytest.raises(RerankError, match=r"refused the API key \(401: invalid api token\); check JINA_API_KEY"):
        api.score([("a third query", "x")])
    server.failures = [(400, {}, "query is too long")]
    with pytest.raises(RerankError, match="answered 400: query is too long"):
        api.score([("a fourth query", "x")])
    server.close()
    monkeypatch.delenv("VOYAGE_API_KEY", raising=False)
    with pytest.raises(RerankError, match="needs an API key: set VOYAGE_API_KEY"):
        API("voyage:rerank-2")
    assert retry_after({"retry-after": "7"}, 0) == 7.0 and 0.25 <= retry_after({}, 1, base=0.25) <= 0.5
    assert 0.125 <= retry_after({"retry-after": "soon"}, 0, base=0.25) <= 0.25  # neither seconds nor a date: backoff


def test_api_url_finds_out_a_tei_server_and_uses_its_batch_size():
    server = FakeServer(shape="tei", max_docs=32)
    api = rerank.stage(f"api:{server.url}")
    docs = [f"water boils {i}" if i % 2 else f"paris {i}" for i in range(70)]
    assert api.score([(QUERY, d) for d in docs]) == expected_scores(QUERY, docs)
    tei = [r for r in server.requests if "texts" in r["body"]]
    assert [len(r["body"]["texts"]) for r in tei] == [32, 32, 6] and server.requests[0]["path"] == "/rerank"
    assert len(server.requests) == 4  # one Cohere-shaped probe answered 422, then TEI's shape
    server.close()


# ------------------------------------------------------------ late interaction
@pytest.fixture(scope="module")
def tiny_colbert(tmp_path_factory) -> tuple[str, str]:
    """One tiny ColBERT (2-layer BERT, 64 -> 16 projection, seed 0) in both layouts: Stanford ColBERT
    (artifact.metadata, HF_ColBERT weights with linear.weight) and PyLate (modules + 1_Dense)."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(offline_model("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=512)
    torch.manual_seed(0)
    body = BertModel(cfg, add_pooling_layer=False)
    linear = torch.randn(16, 64) / 8
    stanford = tmp_path_factory.mktemp("m") / "colbert-tiny"
    body.save_pretrained(stanford)
    weights = {f"bert.{k}": v.contiguous() for k, v in body.state_dict().items()}
    save_file({**weights, "linear.weight": linear}, str(stanford / "model.safetensors"))
    config = json.loads((stanford / "config.json").read_text())
    (stanford / "config.json").write_text(json.dumps({**config, "architectures": ["HF_ColBERT"]}))
    (stanford / "artifact.metadata").write_text(json.dumps({"query_token_id": "[unused0]", "doc_token_id": "[unused1]",
                                                             "query_maxlen": 32, "doc_maxlen": 64, "mask_punctuation": True,
                                                             "attend_to_mask_tokens": False, "dim": 16}))
    tok.save_pretrained(stanford)
    pylate = tmp_path_factory.mktemp("m") / "pylate-tiny"
    body.save_pretrained(pylate)
    tok.save_pretrained(pylate)
    (pylate / "1_Dense").mkdir()
    save_file({"linear.weight": linear}, str(pylate / "1_Dense" / "model.safetensors"))
    (pylate / "1_Dense" / "config.json").write_text(json.dumps({"in_features": 64, "out_features": 16, "bias": False}))
    (pylate / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense"}]))
    (pylate / "config_sentence_transformers.json").write_text(json.dumps({
        "query_prefix": "[unused0]", "document_prefix": "[unused1]", "query_length": 32, "document_length": 64,
        "do_query_expansion": True, "attend_to_expansion_tokens": False, "skiplist_words": list(string.punctuation)}))
    return str(stanford), str(pylate)


def _maxsim_reference(folder: str, linear: torch.Tensor, q: str, d: str) -> float:
    """ColBERTv2's own recipe: '. ' + text, the marker written over the '.', query pads turned into
    [MASK] (embedded, not attended), punctuation and padding left out of the document, cosine MaxSim."""
    import string

    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(folder)
    bert = BertModel.from_pretrained(folder, add_pooling_layer=False).eval()
    qe = tok([". " + q], padding="max_length", truncation=True, max_length=32, return_tensors="pt")
    qe["input_ids"][:, 1] = tok.convert_tokens_to_ids("[unused0]")
    qe["input_ids"][qe["input_ids"] == tok.pad_token_id] = tok.mask_token_id
    de = tok([". " + d], truncation=True, max_length=64, return_tensors="pt")
    de["input_ids"][:, 1] = tok.convert_tokens_to_ids("[unused1]")
    skip = {tok.encode(p, add_special_tokens=False)[0] for p in string.punctuation}
    with torch.no_grad():
        Q = torch.nn.functional.normalize(bert(**qe).last_hidden_state[0] @ linear.T, dim=-1)
        D = torch.nn.functional.normalize(bert(**de).last_hidden_state[0] @ linear.T, dim=-1)
    keep = torch.tensor([t not in skip for t in de["input_ids"][0].tolist()])
    return float((Q @ D[keep].T).max(dim=1).values.sum())


def test_colbert_maxsim_matches_colbert_and_pylate_layouts(tiny_colbert, dl19_texts):
    from safetensors.torch import load_file

    from rerank.rerankers.colbert import ColBERT

    stanford, pylate = tiny_colbert
    q, docs = dl19_texts
    docs = [*docs[:4], "Punctuation, everywhere; (really)!", "water " * 200]
    a = ColBERT(stanford, dtype="float32")
    assert a.layout == "colbert"
    got = a.score([(q, d) for d in docs])
    linear = load_file(str(Path(stanford) / "model.safetensors"))["linear.weight"]
    assert got == pytest.approx([_maxsim_reference(stanford, linear, q, d) for d in docs], abs=1e-4)
    b = ColBERT(pylate, dtype="float32", batch_tokens=1)
    assert b.layout == "pylate" and b.score([(q, d) for d in docs]) == pytest.approx(got, abs=1e-4)
    assert family(stanford)[0] == family(pylate)[0] == "colbert"
    assert isinstance(rerank.reranker(pylate, dtype="float32"), ColBERT)
    ranked = a.rank(q, docs[:4])
    assert [r.score for r in ranked] == sorted(got[:4], reverse=True)


def test_lit5_reads_each_passage_apart_and_writes_the_permutation(tiny_t5, dl19_texts):
    """LiT5 as fusion-in-decoder: the same permutation as encoding every 'Search Query: q Passage:
    [i] p Relevance Ranking:' on its own, joining the encodings and decoding greedily."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration
    from transformers.modeling_outputs import BaseModelOutput

    from rerank.rerankers.listwise import parse_permutation
    from rerank.rerankers.t5 import LiT5

    q, docs = dl19_texts
    lit5 = LiT5(tiny_t5, window=4, stride=2, dtype="float32")
    assert lit5.rank(q, docs[:4])  # one window
    tok = AutoTokenizer.from_pretrained(tiny_t5)
    model = T5ForConditionalGeneration.from_pretrained(tiny_t5, dtype=torch.float32).eval()
    enc = tok([f"Search Query: {q} Passage: [{i + 1}] {d} Relevance Ranking:" for i, d in enumerate(docs[:4])],
              return_tensors="pt", padding=True, truncation=True, max_length=150)
    with torch.no_grad():
        h = model.encoder(**enc).last_hidden_state.reshape(1, -1, model.config.d_model)
        gen = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=h),
                             attention_mask=enc["attention_mask"].reshape(1, -1), max_new_tokens=28, do_sample=False)
    want, _ = parse_permutation(tok.decode(gen[0], skip_special_tokens=True), 4, "1")
    assert [r.index for r in lit5.rank(q, docs[:4])] == want
    assert parse_permutation("[3] > [1] > [3] > [9]", 4, "1") == ([2, 0, 1, 3], True)
    six = LiT5(tiny_t5, window=4, stride=2, dtype="float32")
    order = [r.index for r in six.rank(q, docs[:6])]
    assert sorted(order) == list(range(6)) and six.cost.calls == 2  # windows (2, 6) and (0, 4)
    with pytest.raises(RerankError, match="max_passage_tokens applies to"):  # LiT5 cuts by passage_tokens
        rerank.stage(f"lit5:{tiny_t5}", max_passage_tokens=5)


def test_hub_configs_are_skipped_where_their_model_is_not_reachable():
    config = Path(__file__).resolve().parent.parent / "configs" / "trec-dl-19-bm25-lit5-distill-base.yaml"
    r = CliRunner().invoke(main, ["reproduce", str(config)])
    assert r.exit_code == 0, r.output
    assert "skipped: needs castorini/LiT5-Distill-base from the Hugging Face hub" in r.output
    assert "0 of 0 configs reproduced; 1 skipped (they need the hub)" in r.output
