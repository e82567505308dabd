"""A LangChain document compressor that reranks (usable in ``ContextualCompressionRetriever``).

    from rerank.integrations.langchain import RerankCompressor
    compressor = RerankCompressor(reranker="http://127.0.0.1:8000", top_n=3)
    compressor.compress_documents(docs, "query")  # the top 3, relevance_score in their metadata
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..client import resolve
from ..errors import MissingDependency

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, field_validator
except ImportError:  # pragma: no cover - exercised by the missing-extra message
    raise MissingDependency("the LangChain adapter", "langchain", "langchain-core") from None


class RerankCompressor(BaseDocumentCompressor):
    """The ``top_n`` documents by ``reranker`` (a Reranker, a Client, a server URL or a spec), best
    first, each a copy with its score in ``metadata["relevance_score"]`` (the inputs are not changed)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    reranker: Any
    top_n: int | None = 3

    @field_validator("reranker", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve(value)

    @field_validator("top_n")
    @classmethod
    def _positive(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"top_n must be positive, got {value}")
        return value

    @staticmethod
    def _scored(documents: Sequence[Document], ranked: list[Any]) -> list[Document]:
        out = []
        for r in ranked:
            doc = documents[r.index]
            out.append(Document(page_content=doc.page_content, metadata={**doc.metadata, "relevance_score": r.score},
                                id=doc.id))
        return out

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None) -> list[Document]:
        docs = list(documents)
        return self._scored(docs, self.reranker.rank(query, [d.page_content for d in docs], top_k=self.top_n))

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> list[Document]:
        docs = list(documents)
        return self._scored(docs, await self.reranker.arank(query, [d.page_content for d in docs], top_k=self.top_n))
