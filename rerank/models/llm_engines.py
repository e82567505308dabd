"""Which engine runs a causal LM for the LLM rerankers (rerank's torch loop, :class:`~rerank.models.llm.LLM`,
or vLLM, :class:`~rerank.models.vllm_engine.VLLM`), and loading it there: the one place that knows both."""

from __future__ import annotations

import logging
import os

from .llm import LLM, LLM_BACKENDS, ChatLM
from .loading import cpu_supports_bf16, pick_device

log = logging.getLogger("rerank")

#: whether ``auto`` takes vLLM on a CPU: where the CPU has bf16 instructions (AVX512-BF16 or AMX), the
#: CPUs it was measured on, each method faster there with Qwen2.5-Coder-1.5B in bf16 on quiet machines
#: (benchmarks/llm_engines.py, docs/benchmarks.md): 1.13-1.53x on a 2-core Xeon with AMX, 1.19x (the
#: judge) and 1.81x (generative listwise) on a 2-core EPYC, start-up apart (18-38 s, paid back within
#: a few queries). On a CPU with AVX2 only (fp32) it was not measured: the torch engine there.
#: None: decided by the CPU; True or False: always (tests).
VLLM_ON_CPU: bool | None = None


def pick_llm_backend(backend: str | None, device: str | None = "auto") -> tuple[str, str]:
    """The engine an LLM reranker runs on, and why. ``auto``: vLLM where it is installed and the
    model runs on a GPU or a CPU with bf16 instructions, else the torch engine (:data:`VLLM_ON_CPU`). ``$RERANK_BACKEND``
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
        if not (cpu_supports_bf16() if VLLM_ON_CPU is None else VLLM_ON_CPU):
            return "torch", ("auto: on a CPU without bf16 instructions the torch engine "
                             "(vLLM not measured faster there; --backend vllm)")
        return "vllm", "auto: vLLM is installed, on a CPU with bf16 instructions"
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
