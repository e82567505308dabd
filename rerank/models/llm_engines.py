"""Which engine runs a causal LM for the LLM rerankers (rerank's torch loop, :class:`~rerank.models.llm.LLM`,
or vLLM, :class:`~rerank.models.vllm_engine.VLLM`), and loading it there: the one place that knows both."""

from __future__ import annotations

import logging
import os

from .llm import LLM, LLM_BACKENDS, ChatLM
from .loading import pick_device

log = logging.getLogger("rerank")

#: whether ``auto`` takes vLLM on a CPU. No: with Qwen2.5-Coder-1.5B on a 2-core EPYC (bf16), the
#: llm-pointwise judge of DL19's BM25 top 20 took 1,237 s on vLLM and 1,065 s on the torch engine
#: (same rankings within 0.002 nDCG@10); vLLM's lead on a 135M model (2.9-21x) is overhead the torch
#: engine pays per call, which a compute-bound 1.5B model hides (docs/installing.md)
VLLM_ON_CPU = False


def pick_llm_backend(backend: str | None, device: str | None = "auto") -> tuple[str, str]:
    """The engine an LLM reranker runs on, and why. ``auto``: vLLM where it is installed and the
    model runs on a GPU; on a CPU the torch engine (:data:`VLLM_ON_CPU`). ``$RERANK_BACKEND``
    (torch or vllm) names what ``auto`` takes (the test suite sets torch)."""
    import importlib.util

    backend = backend or "auto"
    if backend == "auto" and os.environ.get("RERANK_BACKEND", "auto") in LLM_BACKENDS:
        backend = os.environ.get("RERANK_BACKEND", "auto")
    if backend not in LLM_BACKENDS:
        raise ValueError(f"the LLM rerankers run on {', '.join(LLM_BACKENDS)}, not backend {backend!r}")
    if backend != "auto":
        return backend, "as asked (--backend)"
    if importlib.util.find_spec("vllm") is None:
        return "torch", "auto: vLLM is not installed"
    if not pick_device(device).startswith("cuda"):
        if not VLLM_ON_CPU:
            return "torch", "auto: on a CPU the torch engine (vLLM was not faster there with a 1.5B model; --backend vllm)"
        return "vllm", "auto: vLLM is installed, on a CPU"
    return "vllm", "auto: vLLM is installed, on a GPU"


def load_llm(name: str, *, backend: str | None = "auto", device: str = "auto", dtype: str = "auto",
             batch_tokens: int | None = None, max_length: int | None = None) -> ChatLM:
    """The causal LM ``name`` on the engine :func:`pick_llm_backend` picks (see :func:`on_vllm`)."""
    llm = on_vllm(name, backend, device=device, dtype=dtype, max_length=max_length)
    return llm or LLM(name, device=device, dtype=dtype, batch_tokens=batch_tokens, max_length=max_length)


def on_vllm(name: str, backend: str | None, *, device: str = "auto", dtype: str = "auto",
            max_length: int | None = None) -> ChatLM | None:
    """``name`` on vLLM where :func:`pick_llm_backend` picks vLLM, else None (the torch engine's
    turn). A model vLLM cannot run: with ``backend="vllm"`` an error naming the model and the reason;
    with ``auto`` a warning, and None."""
    chosen, why = pick_llm_backend(backend, device)
    if chosen != "vllm":
        return None
    from .vllm_engine import VLLM, EngineUnavailable

    try:
        llm = VLLM(name, device=device, dtype=dtype, max_length=max_length)
    except EngineUnavailable as e:
        if not why.startswith("auto"):
            raise
        log.warning("%s; it runs on the torch engine instead (--backend torch skips the attempt)", e)
        return None
    log.info("%s runs on vLLM: %s", name, why)
    return llm
