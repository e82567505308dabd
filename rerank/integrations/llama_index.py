"""A LlamaIndex node postprocessor that reranks.

    from rerank.integrations.llama_index import RerankPostprocessor
    post = RerankPostprocessor("http://127.0.0.1:8000", top_n=3)
    post.postprocess_nodes(nodes, query_str="query")  # the top 3 nodes, scores set
"""

from __future__ import annotations

from typing import Any

from ..client import resolve
from ..errors import MissingDependency

try:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
    from pydantic import PrivateAttr
except ImportError:  # pragma: no cover - exercised by the missing-extra message
    raise MissingDependency("the LlamaIndex adapter", "llama-index", "llama-index-core") from None


class RerankPostprocessor(BaseNodePostprocessor):
    """The ``top_n`` nodes by ``reranker`` (a Reranker, a Client, a server URL or a spec), best first,
    as new ``NodeWithScore`` objects carrying the reranker's scores (the inputs are not changed)."""

    top_n: int | None = 3
    _reranker: Any = PrivateAttr()

    def __init__(self, reranker: Any, top_n: int | None = 3, **kwargs: Any) -> None:
        if top_n is not None and top_n < 1:
            raise ValueError(f"top_n must be positive, got {top_n}")
        super().__init__(top_n=top_n, **kwargs)  # type: ignore[call-arg]  # a pydantic field
        self._reranker = resolve(reranker)

    @classmethod
    def class_name(cls) -> str:
        return "RerankPostprocessor"

    @staticmethod
    def _inputs(nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise ValueError("RerankPostprocessor needs the query: postprocess_nodes(nodes, query_str=...)")
        return query_bundle.query_str, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._inputs(nodes, query_bundle)
        ranked = self._reranker.rank(query, texts, top_k=self.top_n)
        return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in ranked]

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore],
                                  query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._inputs(nodes, query_bundle)
        ranked = await self._reranker.arank(query, texts, top_k=self.top_n)
        return [NodeWithScore(node=nodes[r.index].node, score=r.score) for r in ranked]
