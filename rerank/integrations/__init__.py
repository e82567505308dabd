"""The rerankers of the frameworks RAG apps are written in, over a local reranker or a server:

* :mod:`.langchain`: :class:`~rerank.integrations.langchain.RerankCompressor`, a LangChain
  ``BaseDocumentCompressor`` (extra ``langchain``);
* :mod:`.llama_index`: :class:`~rerank.integrations.llama_index.RerankPostprocessor`, a LlamaIndex
  ``BaseNodePostprocessor`` (extra ``llama-index``).

Each takes a :class:`~rerank.Reranker`, a :class:`~rerank.client.Client`, a server URL or a spec.
"""
