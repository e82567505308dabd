"""`rerank serve`: the Cohere and TEI shapes, search, limits and their 4xx, the API key, health and
metrics, a load and fault test over loopback, SIGTERM under load, the client, LangChain, LlamaIndex
and the Cohere SDK against the real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from rerank import CrossEncoder
from rerank.rerankers.api import API
from rerank.serve import Limits, Service, create_app


@pytest.fixture(scope="module")
def ce(tiny_ce):
    return CrossEncoder(tiny_ce, dtype="float32")


@pytest.fixture(scope="module")
def requests_dl19(dl19_requests_30):
    return dl19_requests_30


class Running:
    """An app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=None))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.port = port

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(ce):
    service = Service(ce, limits=Limits(max_documents=100, max_request_bytes=200_000))
    with Running(create_app(service)) as running:
        yield running


def scores_alone(ce, query, docs):
    return ce.score([(query, d) for d in docs])


def test_cohere_and_tei_shapes_give_the_models_scores(server, ce, requests_dl19):
    query, docs = requests_dl19[0]
    expect = scores_alone(ce, query, docs)
    order = sorted(range(len(docs)), key=lambda i: (-expect[i], i))
    with httpx.Client(base_url=server.url) as http:
        v2 = http.post("/v2/rerank", json={"model": "any", "query": query, "documents": docs, "top_n": 5}).json()
        assert [r["index"] for r in v2["results"]] == order[:5]
        assert np.allclose([r["relevance_score"] for r in v2["results"]], [expect[i] for i in order[:5]], atol=1e-5)
        assert "document" not in v2["results"][0] and v2["meta"]["api_version"] == {"version": "2"}
        assert v2["meta"]["tokens"]["input_tokens"] > sum(len(d.split()) for d in docs)
        v1 = http.post("/v1/rerank", json={"query": query, "documents": [{"text": d} for d in docs[:3]]}).json()
        assert [r["document"]["text"] for r in v1["results"]] == [docs[r["index"]] for r in v1["results"]]  # v1 returns them
        cut = http.post("/v2/rerank", json={"query": query, "documents": docs[:4], "max_tokens_per_doc": 8}).json()
        assert cut["meta"]["truncated"]["truncated_to_max_tokens"] == 4
        short = [ce.tokenizer.decode(ce.tokenizer(d, add_special_tokens=False)["input_ids"][:8]) for d in docs[:4]]
        assert np.allclose(sorted(r["relevance_score"] for r in cut["results"]),
                           sorted(scores_alone(ce, query, short)), atol=1e-4)  # the first 8 tokens scored
        tei = http.post("/rerank", json={"query": query, "texts": docs, "return_text": True}).json()
        assert [r["index"] for r in tei] == order and tei[0]["text"] == docs[order[0]]
        raw = http.post("/rerank", json={"query": query, "texts": docs[:2], "raw_scores": True}).json()
        logits = {r["index"]: r["score"] for r in raw}
        assert np.allclose([1 / (1 + np.exp(-logits[i])) for i in range(2)], expect[:2], atol=1e-5)  # the logit before sigmoid
        assert http.post("/v2/rerank", json={"query": query, "documents": []}).json()["results"] == []


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 422, "must be a JSON object"),
    ({"query": "q"}, 422, "missing field 'documents'"),
    ({"query": "q", "documents": ["a"], "colour": "red"}, 422, "unknown field 'colour'"),
    ({"query": "  ", "documents": ["a"]}, 422, "query is empty"),
    ({"query": 5, "documents": ["a"]}, 422, "query must be a string"),
    ({"query": "q", "documents": "a"}, 422, "documents must be a list"),
    ({"query": "q", "documents": ["a", None]}, 422, "documents[1] must be a string"),
    ({"query": "q", "documents": [{"title": "x"}]}, 422, "documents[0] is an object without a string 'text'"),
    ({"query": "q", "documents": ["a"] * 101}, 422, "the limit is 100 per request"),
    ({"query": "q", "documents": ["a"], "top_n": 0}, 422, "top_n must be a positive integer"),
    ({"query": "q", "documents": ["a"], "return_documents": "yes"}, 422, "return_documents must be true or false"),
    ({"query": "q", "documents": ["a" * 150_000, "b" * 60_000]}, 413, "the limit is 200000"),
    ({"query": "q", "documents": ["\ud800"]}, 422, "lone surrogate"),
])
def test_bad_requests_get_one_line_4xx(server, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{server.url}/v2/rerank", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status
    assert message in r.json()["message"] and "\n" not in r.json()["message"]


def test_search_needs_a_collection_and_reranks_its_hits(server, ce, scifact):
    from rerank.specs import pipeline

    assert httpx.post(f"{server.url}/v1/search", json={"query": "q"}).status_code == 404
    first = pipeline("bm25 % 20", scifact, with_text=True)
    with Running(create_app(Service(ce, first_stage=first))) as running:
        query = scifact.queries[0].text
        got = httpx.post(f"{running.url}/v1/search", json={"query": query, "top_n": 5}).json()["results"]
    hits = first([scifact.queries[0]])[scifact.queries[0].qid]
    direct = ce.rank(query, [h.text for h in hits], top_k=5)
    assert [g["id"] for g in got] == [hits[r.index].docid for r in direct]
    assert [g["rank"] for g in got] == [1, 2, 3, 4, 5]
    assert all(g["text"] == scifact.docs[g["id"]] for g in got)


def test_api_key_health_and_metrics(ce):
    with Running(create_app(Service(ce), api_key="s3cret")) as running:
        body = {"query": "q", "documents": ["a", "b"]}
        assert httpx.post(f"{running.url}/v2/rerank", json=body).status_code == 401
        wrong = httpx.post(f"{running.url}/v2/rerank", json=body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["message"]
        ok = httpx.post(f"{running.url}/v2/rerank", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert httpx.get(f"{running.url}/health").json()["status"] == "ok"  # open: probes carry no key
        assert httpx.get(f"{running.url}/metrics").status_code == 401
        text = httpx.get(f"{running.url}/metrics", headers={"Authorization": "Bearer s3cret"}).text
    assert 'rerank_requests_total{endpoint="/v2/rerank",status="401"} 2.0' in text
    assert 'rerank_requests_total{endpoint="/v2/rerank",status="200"} 1.0' in text
    assert "rerank_batch_items_count" in text and "rerank_queue_depth 0.0" in text
    assert "rerank_items_scored_total" in text and "rerank_tokens_scored_total" in text


def _slow(ce, monkeypatch, seconds):
    """The model made slow; returns the documents it is asked to score, in order."""
    fast = ce._score
    seen: list[str] = []

    def slow(pairs):
        seen.extend(d for _, d in pairs)
        time.sleep(seconds)
        return fast(pairs)
    monkeypatch.setattr(ce, "_score", slow)
    return seen


def test_a_full_queue_answers_429_and_a_slow_request_504(ce, monkeypatch):
    from rerank.client import Client

    _slow(ce, monkeypatch, 0.6)
    service = Service(ce, limits=Limits(max_queue=1, timeout_s=5))
    with Running(create_app(service)) as running, ThreadPoolExecutor(2) as pool:
        body = {"query": "q", "documents": ["a", "b"]}
        first = pool.submit(httpx.post, f"{running.url}/v2/rerank", json=body, timeout=30)
        while service.inflight < 1:
            time.sleep(0.005)
        busy = httpx.post(f"{running.url}/v2/rerank", json=body)
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1" and "limit of 1" in busy.json()["message"]
        assert first.result().status_code == 200
        # the client retries after Retry-After and gets its answer
        late = pool.submit(httpx.post, f"{running.url}/v2/rerank", json=body, timeout=30)
        while service.inflight < 1:
            time.sleep(0.005)
        assert len(Client(running.url).rank("q", ["a", "b"])) == 2
        assert late.result().status_code == 200
    slow = Service(ce, limits=Limits(timeout_s=0.2))
    with Running(create_app(slow)) as running:
        r = httpx.post(f"{running.url}/v2/rerank", json={"query": "q", "documents": ["a"]}, timeout=30)
    assert r.status_code == 504 and "longer than 0.2 s" in r.json()["message"]


def test_a_client_that_disconnects_has_its_pairs_dropped(ce, monkeypatch):
    seen = _slow(ce, monkeypatch, 0.5)
    service = Service(ce)
    with Running(create_app(service)) as running, ThreadPoolExecutor(1) as pool:
        busy = pool.submit(httpx.post, f"{running.url}/v2/rerank", json={"query": "q", "documents": ["first"]}, timeout=30)
        while "first" not in seen:
            time.sleep(0.005)  # the model is busy with the first request (the server's warm-up came before)
        _disconnecting_client(running.port, json.dumps({"query": "q", "documents": ["never scored"]}).encode())
        assert busy.result().status_code == 200
        time.sleep(0.3)
        assert httpx.post(f"{running.url}/v2/rerank", json={"query": "q", "documents": ["last"]}).status_code == 200
    assert "never scored" not in seen and seen[-1] == "last"
    assert service.inflight == 0


def _disconnecting_client(port: int, body: bytes) -> None:
    """Sends a whole request and hangs up without reading the answer."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /v2/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


def test_load_with_faults_every_valid_request_gets_its_own_scores(ce, requests_dl19):
    """Thousands of requests from many clients with malformed and disconnecting ones mixed in: the
    server stays up, each valid request gets exactly its own scores, each bad one a 4xx, and
    memory does not grow."""
    import psutil

    expect = {q: dict(zip(docs, scores_alone(ce, q, docs), strict=True)) for q, docs in requests_dl19}
    rng = np.random.default_rng(0)
    work = []
    for i in range(1600):
        q, docs = requests_dl19[int(rng.integers(len(requests_dl19)))]
        pick = [docs[j] for j in rng.choice(len(docs), size=int(rng.integers(1, 21)), replace=False)]
        kind = "bad" if i % 10 == 3 else "gone" if i % 20 == 7 else "ok"
        work.append((kind, q, pick))
    service = Service(ce)
    rss = psutil.Process()
    clients = threading.local()  # one connection pool per client thread, as an app keeps
    with Running(create_app(service)) as running:
        def one(job):
            kind, q, docs = job
            if kind == "gone":
                _disconnecting_client(running.port, json.dumps({"query": q, "documents": docs}).encode())
                return None
            if not hasattr(clients, "http"):
                clients.http = httpx.Client(base_url=running.url, timeout=60)
            return clients.http.post("/v2/rerank", json={"query": q, "documents": docs + [7] if kind == "bad" else docs})

        with ThreadPoolExecutor(24) as pool:
            first_half = list(pool.map(one, work[:800]))
            mem_mid = rss.memory_info().rss
            second_half = list(pool.map(one, work[800:]))
        mem_end = rss.memory_info().rss
        assert httpx.get(f"{running.url}/health").status_code == 200  # still up
    for (kind, q, docs), r in zip(work, first_half + second_half, strict=True):
        if kind == "gone":
            continue
        if kind == "bad":
            assert r.status_code == 422 and f"documents[{len(docs)}] must be a string" in r.json()["message"]
            continue
        assert r.status_code == 200
        got = r.json()["results"]
        assert sorted(x["index"] for x in got) == list(range(len(docs)))
        for x in got:
            assert abs(x["relevance_score"] - expect[q][docs[x["index"]]]) < 1e-5
    assert service.reranker.combiner.stats.largest > 20  # concurrent requests shared rounds
    assert mem_end - mem_mid < 64 * 2**20, f"memory grew by {(mem_end - mem_mid) / 2**20:.0f} MB over 800 requests"
    assert service.inflight == 0


def start_cli_server(tiny_ce: str, *options: str) -> tuple[subprocess.Popen[str], str, int]:
    """``rerank serve`` over the tiny cross-encoder in a process of its own on a free port, once it
    answers /health: the process, its URL and its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = [sys.executable, "-c", "from rerank.cli import main; main()"]
    proc = subprocess.Popen([*cli, "serve", "--reranker", f"cross-encoder:{tiny_ce}", "--port", str(port), "--dtype", "float32",
                             "-q", *options], env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return proc, url, port
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.stderr.read() if proc.stderr else "the server did not start")
        time.sleep(0.1)


def test_sigterm_under_load_answers_every_accepted_request(tiny_ce, requests_dl19):
    proc, url, _ = start_cli_server(tiny_ce)
    try:
        query, docs = requests_dl19[1]
        body = {"query": query, "documents": docs * 3}  # 90 documents: each request takes a while
        with ThreadPoolExecutor(16) as pool:
            futures = [pool.submit(httpx.post, f"{url}/v2/rerank", json=body, timeout=120) for _ in range(16)]
            while True:  # every request accepted: the server counts them as in progress
                depth = [line for line in httpx.get(f"{url}/metrics").text.splitlines() if line.startswith("rerank_queue_depth")]
                if depth and float(depth[0].split()[1]) >= 16:
                    break
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [a.status_code for a in answers] == [200] * 16
    assert len({json.dumps([r["index"] for r in a.json()["results"]]) for a in answers}) == 1


def test_cli_serve_errors_are_one_line(tiny_ce):
    from click.testing import CliRunner

    from rerank.cli import main

    r = CliRunner().invoke(main, ["serve", "--reranker", f"cross-encoder:{tiny_ce}", "--pipeline", "bm25"])
    assert r.exit_code == 2 and "--pipeline and --dataset go together" in r.output
    r = CliRunner().invoke(main, ["serve", "--reranker", "cross-encoder:/no/such/model"])
    # one line names the problem; a missing model's error may add indented lines on what to do instead
    first, *rest = r.output.splitlines()
    assert r.exit_code == 2 and first.startswith("error:") and "/no/such/model" in first
    assert all(line.startswith("  ") for line in rest), r.output


def test_missing_serve_extra_names_the_install(monkeypatch):
    from rerank.errors import MissingDependency
    from rerank.serve import require_serve

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(MissingDependency, match=r"pip install 'rerank\[serve\]'"):
        require_serve()


# ---------------------------------------------------------------- the client and the frameworks
def test_client_langchain_llamaindex_and_cohere_sdk_rank_like_the_model(server, ce, requests_dl19):
    import asyncio

    import cohere
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from llama_index.core.schema import NodeWithScore, TextNode

    from rerank.client import Client
    from rerank.integrations.langchain import RerankCompressor
    from rerank.integrations.llama_index import RerankPostprocessor

    query, docs = requests_dl19[2]
    docs = docs[:12]
    expect = scores_alone(ce, query, docs)
    top = sorted(range(len(docs)), key=lambda i: (-expect[i], i))[:4]

    client = Client(server.url)
    assert [r.index for r in client.rank(query, docs, top_k=4)] == top
    for target in (server.url, f"{server.url}/v2/rerank"):  # api:URL finds the TEI shape of /rerank, or takes Cohere's
        assert API(target).score([(query, d) for d in docs]) == pytest.approx(expect, abs=1e-6)
    assert [r.index for r in asyncio.run(client.arank(query, docs, top_k=4))] == top

    lc_docs = [Document(page_content=d, metadata={"n": i}) for i, d in enumerate(docs)]
    for ranker in (ce, server.url):
        out = RerankCompressor(reranker=ranker, top_n=4).compress_documents(lc_docs, query)
        assert [d.metadata["n"] for d in out] == top
        assert np.allclose([d.metadata["relevance_score"] for d in out], [expect[i] for i in top], atol=1e-5)
    assert "relevance_score" not in lc_docs[0].metadata  # the caller's documents are not changed

    class Fixed(BaseRetriever):
        def _get_relevant_documents(self, query, *, run_manager):
            return lc_docs

    retriever = ContextualCompressionRetriever(base_compressor=RerankCompressor(reranker=server.url, top_n=4),
                                               base_retriever=Fixed())
    assert [d.metadata["n"] for d in retriever.invoke(query)] == top
    assert [d.metadata["n"] for d in asyncio.run(retriever.ainvoke(query))] == top

    nodes = [NodeWithScore(node=TextNode(text=d, id_=f"n{i}"), score=0.0) for i, d in enumerate(docs)]
    for ranker in (ce, server.url):
        post = RerankPostprocessor(ranker, top_n=4)
        out = post.postprocess_nodes(nodes, query_str=query)
        assert [n.node.node_id for n in out] == [f"n{i}" for i in top]
        assert np.allclose([n.score for n in out], [expect[i] for i in top], atol=1e-5)
        assert [n.node.node_id for n in asyncio.run(post.apostprocess_nodes(nodes, query_str=query))] == [f"n{i}" for i in top]
    assert nodes[0].score == 0.0

    co = cohere.ClientV2(api_key="unused", base_url=server.url)
    res = co.rerank(model="rerank-local", query=query, documents=docs, top_n=4)
    assert [r.index for r in res.results] == top
    assert np.allclose([r.relevance_score for r in res.results], [expect[i] for i in top], atol=1e-5)
