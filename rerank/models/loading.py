"""One way to turn a model name into weights, for every component.

A name resolves, in order, to:

1. a local folder (a path that exists);
2. a folder in ``$RERANK_MODEL_PATH`` (folders separated by ``:``) or in the offline-models
   folder (``$RERANK_OFFLINE_MODELS``, default ``~/.cache/rerank/offline-models``), named
   like the model: ``Qwen/Qwen2.5-Coder-1.5B-Instruct`` is found as
   ``Qwen2.5-Coder-1.5B-Instruct`` or ``Qwen--Qwen2.5-Coder-1.5B-Instruct``;
3. a snapshot in the Hugging Face cache;
4. the Hugging Face hub, unless offline (HF_HUB_OFFLINE / RERANK_OFFLINE) or the hub is
   unreachable, in which case :class:`ModelNotFound` names the model and every folder searched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..env import flag, offline, reachable
from ..errors import DataError, MissingDependency, ModelMismatch, ModelNotFound
from .offline import hub_hint, missing_model

log = logging.getLogger("rerank")


def import_transformers(what: str, sentence_transformers: bool = False) -> Any:
    """transformers (and sentence-transformers), quiet; without the ``models`` extra, the error
    says how to install it."""
    try:
        import torch  # noqa: F401
        import transformers

        if sentence_transformers:
            import sentence_transformers as st
    except ImportError:
        package = "sentence-transformers" if sentence_transformers else "torch and transformers"
        raise MissingDependency(what, "models", package) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return st if sentence_transformers else transformers


def model_folders() -> list[Path]:
    """Where local models are looked for, in order."""
    folders = [Path(p).expanduser() for p in os.environ.get("RERANK_MODEL_PATH", "").split(os.pathsep) if p]
    default = Path.home() / ".cache" / "rerank" / "offline-models"
    folders.append(Path(os.environ.get("RERANK_OFFLINE_MODELS", default)).expanduser())
    return folders


def _hf_cached(name: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return None
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any miss (not cached, bad id) means "not here"
        return None


def resolve_model(name: str) -> str:
    """A local folder for ``name`` when one exists, else the hub id (online only)."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFound(f"model name must be a non-empty string, got {name!r}")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFound(f"model folder {path} has no config.json")
        return str(path)
    candidates = [name.rstrip("/").split("/")[-1], name.replace("/", "--")]
    folders = model_folders()
    for folder in folders:
        for c in candidates:
            if (folder / c / "config.json").is_file():
                return str(folder / c)
    cached = _hf_cached(name) if "/" in name else None
    if cached is not None:
        return str(cached)
    searched = ", ".join(str(f) for f in folders) + ", the Hugging Face cache"
    if offline():
        why = "is not available offline (HF_HUB_OFFLINE/RERANK_OFFLINE)"
    elif not reachable("huggingface.co"):
        why = "is not available locally and the Hugging Face hub is unreachable"
    else:
        return name
    raise ModelNotFound(f"model {name!r} {why}; searched: {searched}\n  {hub_hint(name, folders[-1])}")


def local_models(kind: str) -> list[str]:
    """Names of the models in the local model folders that hold ``kind``'s weights."""
    found = []
    for folder in model_folders():
        if folder.is_dir():
            found += [sub.name for sub in sorted(folder.iterdir())
                      if (sub / "config.json").is_file() and kind in model_heads(sub)]
    return list(dict.fromkeys(found))


def pick_device(device: str | None = "auto") -> str:
    import torch

    if device is None or device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
    return device


def cpu_supports_bf16() -> bool:
    """bf16 matrix instructions (AVX512-BF16 or AMX), where bf16 is ~3x faster than fp32.
    ``RERANK_NO_BF16=1`` answers no, so ``auto`` runs fp32 as on a CPU without them (AVX2 only)."""
    if flag("RERANK_NO_BF16"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str | None, device: str) -> Any:
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype is None or dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else torch.float32
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; choose auto, float32, bfloat16 or float16")
    return names[dtype]


_announced: set[tuple[str, str]] = set()


def announce_choice(device: str, dtype: Any, asked: str | None) -> None:
    """Say once per process which device and dtype models run with, and why."""
    name = str(dtype).removeprefix("torch.")
    if (device, name) in _announced:
        return
    _announced.add((device, name))
    if asked not in (None, "auto"):
        why = "as asked (--dtype)"
    elif device.startswith("cuda"):
        why = "auto: the GPU's native half precision"
    elif flag("RERANK_NO_BF16"):
        why = "auto: RERANK_NO_BF16 is set"
    elif name == "bfloat16":
        why = "auto: this CPU has AVX512-BF16/AMX, where bf16 is ~3x faster than fp32; --dtype float32 for fp32"
    else:
        why = "auto: this CPU has no bf16 instructions (AVX2 only?), where bf16 is emulated and ~10x slower"
    log.info("models run on %s in %s (%s)", device, name, why)


def context_window(config: Any, tokenizer: Any, max_length: int | None = None, default: int = 512) -> int:
    """Tokens a model reads: the smallest of its position embeddings, its tokenizer's limit and
    ``max_length`` (``default`` when the model states neither)."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    window = min([x for x in limits if isinstance(x, int) and 0 < x < 1_000_000] or [default])
    return min(window, max_length) if max_length is not None else window


def batch_budget(device: str, batch_tokens: int | None, cpu: int, gpu: int) -> int:
    """Tokens per batch: ``batch_tokens`` when given, else the family's CPU or GPU default (on a CPU
    small batches stay in cache; a GPU wants large ones)."""
    return batch_tokens or (gpu if device.startswith("cuda") else cpu)


#: where a family's forward pass can run (rerank.models.backends) and how it may be quantized
BACKENDS = ("auto", "torch", "onnx", "openvino")
QUANTIZATIONS = ("none", "int8")
#: the modules each backend needs (ONNX makes the export; the runtime runs it)
REQUIRES = {"torch": (), "onnx": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino", "nncf")}


def check_choice(backend: str, quantize: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantize!r}; choose one of {', '.join(QUANTIZATIONS)}")


def _installed(backend: str) -> bool:
    """Whether the modules ``backend`` needs are installed (none imported)."""
    import importlib.util

    return all(importlib.util.find_spec(module) is not None for module in REQUIRES[backend])


def pick_backend(backend: str, quantize: str, device: str, dtype: str | None) -> tuple[str, str]:
    """The backend to run on and why. ``auto``, as measured by benchmarks/cpu_backends.py: PyTorch
    on a GPU or when a half-precision dtype is asked for; on a CPU, OpenVINO when installed (the
    fastest here in fp32 and in bf16), else ONNX Runtime on a CPU without bf16 instructions (its
    fused fp32 graph beats PyTorch's), else PyTorch. ``$RERANK_BACKEND`` names the backend
    ``auto`` takes (the test suite sets torch, to run alike on every CPU)."""
    check_choice(backend, quantize)
    if backend == "auto" and os.environ.get("RERANK_BACKEND", "auto") != "auto":
        backend = os.environ["RERANK_BACKEND"]
        check_choice(backend, quantize)
        if backend == "torch" and quantize == "int8":
            backend = "auto"  # int8 was asked for: pick a backend that runs it
    if backend != "auto":
        if backend != "torch" and device.startswith("cuda"):
            raise ValueError(f"backend {backend!r} runs on the CPU; use device='cpu' or backend='torch' on a GPU")
        if quantize == "int8" and backend == "torch":
            raise ValueError("quantize='int8' needs backend 'onnx' or 'openvino'")
        for module in REQUIRES[backend]:
            need(module, backend)  # before any weights load
        return backend, "as asked (--backend)"
    if device.startswith("cuda"):
        if quantize == "int8":
            raise ValueError("quantize='int8' runs on the CPU; use device='cpu'")
        return "torch", "auto: a GPU"
    if quantize == "int8":
        if _installed("openvino"):
            return "openvino", "auto: int8 asked for; OpenVINO's int8 is the closer to fp32 measured"
        if _installed("onnx"):
            return "onnx", "auto: int8 asked for"
        raise MissingDependency("quantize='int8'", "onnx", "onnxruntime")
    if dtype in ("float16", "fp16"):
        return "torch", f"auto: dtype {dtype} asked for"
    if _installed("openvino"):
        return "openvino", "auto: OpenVINO is the fastest CPU backend measured"
    if _installed("onnx") and not cpu_supports_bf16() and dtype not in ("bfloat16", "bf16"):
        return "onnx", "auto: no bf16 instructions, where ONNX Runtime's fused fp32 beats PyTorch's"
    hint = "" if _installed("openvino") else "; pip install 'rerank[openvino]' for a faster CPU backend"
    return "torch", f"auto: PyTorch{hint}"


def backend_precision(backend: str, quantize: str, picked: Any, asked: str | None) -> Any:
    """What ``backend`` computes in, given the dtype picked for this machine (``picked``) and the
    one asked for: ONNX Runtime fp32 (its int8 graph has fp32 activations); OpenVINO fp32 or,
    on CPUs with bf16 instructions, bf16 (its own bf16 kernels)."""
    import torch

    if picked == torch.float16 or (backend == "onnx" and asked in ("bfloat16", "bf16")):
        raise ValueError(f"backend {backend!r} does not run dtype {asked!r}; choose float32"
                         + (" or bfloat16" if backend == "openvino" else ""))
    if backend == "openvino" and quantize == "none" and picked == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


def need(module: str, backend: str) -> Any:
    """``module``, imported; missing, an error that names the extra that brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        extra = "openvino" if backend == "openvino" else "onnx"
        raise MissingDependency(f"backend {backend!r}", extra, module) from None


#: what ``load_model``'s ``kind`` loads: a transformers Auto class, or sentence-transformers
AUTO_CLASSES = {"sequence-classification": "AutoModelForSequenceClassification", "causal-lm": "AutoModelForCausalLM",
                "masked-lm": "AutoModelForMaskedLM", "seq2seq-lm": "AutoModelForSeq2SeqLM", "encoder": "AutoModel",
                "sentence-transformer": ""}

#: the architecture name's ending that says a folder holds the weights of a kind's head
HEAD_SUFFIXES = {"ForSequenceClassification": "sequence-classification", "ForCausalLM": "causal-lm",
                 "ForMaskedLM": "masked-lm", "ForConditionalGeneration": "seq2seq-lm"}

# files whose whole content is hashed into a model's fingerprint; larger ones are sampled
_FULL_HASH_BYTES = 1 << 30
_SAMPLE_BYTES = 1 << 20
_fingerprints: dict[tuple[Any, ...], str] = {}


def model_heads(path: str | Path) -> list[str]:
    """The kinds (keys of :data:`AUTO_CLASSES`) a local model folder has trained weights for,
    read from its ``config.json`` (``architectures``) and sentence-transformers' ``modules.json``.
    A bare encoder (``BertModel``) has no head: it fits only ``sentence-transformer``."""
    folder = Path(path)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    archs = (config.get("architectures") or []) if isinstance(config, dict) else []
    heads = [kind for arch in archs if isinstance(arch, str) for suffix, kind in HEAD_SUFFIXES.items() if arch.endswith(suffix)]
    if (folder / "modules.json").is_file() or any(isinstance(a, str) and a.endswith("Model") for a in archs):
        heads.append("sentence-transformer")
    return list(dict.fromkeys(heads))


def model_fingerprint(path: str | Path) -> str:
    """A hash of what a model folder holds: every file's name, size and content (files over
    1 GiB: their size and eleven 1 MiB samples), so a model retrained into the same folder gets a
    new fingerprint and a copy of a folder the same one. Caches and indexes made with a model are
    keyed by it. Memoised per process on (name, size, mtime) of the files."""
    folder = Path(path)
    if not folder.is_dir():
        return f"hub:{path}"
    files = sorted(f for f in folder.rglob("*") if f.is_file() and ".cache" not in f.relative_to(folder).parts)
    stats = tuple((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    memo = (str(folder.resolve()), stats)
    if memo in _fingerprints:
        return _fingerprints[memo]
    digest = hashlib.blake2b(digest_size=16)
    for f, (rel, size, _) in zip(files, stats, strict=True):
        digest.update(f"{rel}\0{size}\0".encode())
        with f.open("rb") as fh:
            if size <= _FULL_HASH_BYTES:
                for block in iter(lambda: fh.read(1 << 22), b""):  # noqa: B023 - consumed in this iteration
                    digest.update(block)
            else:
                for i in range(11):
                    fh.seek((size - _SAMPLE_BYTES) * i // 10)
                    digest.update(fh.read(_SAMPLE_BYTES))
    _fingerprints[memo] = digest.hexdigest()
    return _fingerprints[memo]


#: what each kind is, in a user's words (errors name what a folder holds and what would fit)
KIND_WORDS = {"sequence-classification": "a cross-encoder (sequence-classification head)",
              "causal-lm": "a causal language model (LLM rerankers)", "masked-lm": "a masked language model (SPLADE)",
              "seq2seq-lm": "an encoder-decoder model (T5 rerankers)", "encoder": "a transformer encoder (ColBERT's body)",
              "sentence-transformer": "an encoder body (dense retrieval; a base to train rerankers from)"}


def _check_head(name: str, path: str, kind: str, missing: list[str], allow_new_head: bool | None, train: bool) -> None:
    """Refuse a model whose ``kind`` head would be freshly initialised (random scores), unless
    ``allow_new_head``; in training (``allow_new_head=None``) an encoder body may get a new head,
    a folder with another kind's head (a causal LM given as a cross-encoder) may not."""
    if not missing:
        return
    heads = model_heads(path)
    body = not any(h != "sentence-transformer" for h in heads)
    allowed = allow_new_head if allow_new_head is not None else (train and body)
    listed = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    if allowed:
        log.info("%s: a new %s head is initialised (%s)", name, kind, listed)
        return
    why = ("; to train a new head on it anyway, pass --allow-new-head (allow_new_head=True)" if train
           else ", so its scores would mean nothing")
    raise mismatch(name, path, KIND_WORDS[kind], f"its {listed} would be random weights{why}")


def mismatch(name: str, path: str | Path, wanted: str, why: str) -> ModelMismatch:
    """The one error for a model folder asked to run as what it is not (``wanted``, in a user's
    words): it says what the folder holds, and ``fits`` carries its kinds, from which
    :func:`rerank.specs.stage` names the stages that would take it."""
    heads = model_heads(path)
    holds = " and ".join(KIND_WORDS[h] for h in heads) or "no head rerank knows"
    return ModelMismatch(f"{name!r} ({path}) holds {holds}, not {wanted}: {why}", fits=heads)


def load_weights(path: str | Path, what: str = "a PyTorch weights file", map_location: Any = "cpu") -> Any:
    """The one way rerank reads a PyTorch file (weights, a feature ranker, a training checkpoint):
    ``torch.load(weights_only=True)``, so a pickle that would build anything but tensors and plain
    containers is refused before it runs; any failure is one :class:`DataError` naming the file."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unpickler refusal, a truncated or foreign file
        raise unsafe_weights(path, e, what) from None


def unsafe_weights(where: str | Path, e: BaseException, what: str = "a PyTorch weights file") -> DataError:
    """The one-line error for weights that do not load weights-only (:func:`load_weights`, and
    transformers' own ``torch.load`` of a model folder's ``pytorch_model.bin``)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in text:
        asks = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0].split(" was not an allowed global")[0]
        return DataError(f"{where} is not {what} that loads safely: it holds more than tensors and plain containers "
                         f"({asks}), so it is refused; nothing in it ran")
    first = text.strip().splitlines()[0] if text.strip() else "unreadable"
    return DataError(f"{where} is not {what} that loads safely ({type(e).__name__}: {first})")


def _weights_file(name: str, path: str) -> str:
    """A model's PyTorch weights file, to name in an error (the model, when it has several)."""
    files = sorted(Path(path).glob("*.bin"))
    return str(files[0]) if len(files) == 1 else f"{name!r} ({path})"


@dataclass
class LoadedModel:
    """A model ready to run or train: weights, tokenizer, where it runs and how much it reads."""

    name: str
    path: str
    device: str
    dtype: Any
    model: Any
    tokenizer: Any
    window: int
    fingerprint: str  # of the weights' folder (model_fingerprint): what caches and indexes are keyed by
    backend: str = "torch"  # where the forward pass runs (rerank.models.backends): torch, onnx, openvino
    quantize: str = "none"
    auto_backend: bool = False  # the backend was picked by ``auto``: an export that fails falls back to PyTorch


def load_model(name: str, kind: str, *, device: str | None = "auto", dtype: str | None = "auto",
               max_length: int | None = None, default_window: int = 512, train: bool = False,
               configure: Callable[[Any], None] | None = None, allow_new_head: bool | None = None,
               backend: str = "torch", quantize: str = "none") -> LoadedModel:
    """The one way rerank loads a Hugging Face model, for every family.

    ``name`` resolves by :func:`resolve_model`; ``kind`` is one of :data:`AUTO_CLASSES`;
    ``device``/``dtype`` are picked by :func:`pick_device`/:func:`pick_dtype` (``train=True``:
    fp32 weights in training mode, the trainer's autocast gives bf16); ``configure`` may change
    the model's config before the weights load (e.g. a one-logit head, no attention dropout).
    A folder without trained weights for ``kind``'s head is refused (:class:`ModelMismatch`):
    see :func:`_check_head` for ``allow_new_head``. ``backend``/``quantize``: where the family's
    forward pass runs (:func:`rerank.models.backends.pick_backend`; ``auto`` picks by the machine);
    ONNX Runtime and OpenVINO load the weights in fp32 to export them."""
    if kind not in AUTO_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; one of {', '.join(AUTO_CLASSES)}")
    st_model = kind == "sentence-transformer"
    what = {"sequence-classification": "cross-encoders", "causal-lm": "LLM rerankers", "masked-lm": "SPLADE",
            "seq2seq-lm": "T5 rerankers", "encoder": "ColBERT", "sentence-transformer": "dense retrieval"}[kind]
    lib = import_transformers(what, sentence_transformers=st_model)  # first: without the extra, say how to get it
    try:
        path = resolve_model(name)
    except ModelNotFound as e:
        if "not available" not in str(e):
            raise
        raise missing_model(str(e).splitlines()[0], name, kind, KIND_WORDS[kind], local_models(kind),
                            model_folders()[-1]) from None
    where = pick_device(device)
    backend, why_backend = pick_backend(backend, quantize, where, dtype) if not train else ("torch", "")
    run_dtype = pick_dtype("float32" if train else dtype, where)  # what the forward pass computes in
    if backend != "torch":
        run_dtype = backend_precision(backend, quantize, run_dtype, dtype)
        log.info("%s runs on %s in %s (%s)", name, backend, "int8" if quantize == "int8" else
                 str(run_dtype).removeprefix("torch."), why_backend)
    elif not train:
        announce_choice(where, run_dtype, dtype)
    # the weights as loaded: fp32 for training and for an export (its backend computes in run_dtype)
    torch_dtype = run_dtype if backend == "torch" else pick_dtype("float32", where)
    if st_model:
        try:
            model = lib.SentenceTransformer(path, device=where)
        except pickle.UnpicklingError as e:
            raise unsafe_weights(_weights_file(name, path), e) from None
        except (OSError, ValueError) as e:
            raise ModelNotFound(f"{name!r} ({path}) does not load as a sentence-transformers model: {e}") from e
        if not train:
            model.to(torch_dtype).eval()
        if max_length is not None:
            model.max_seq_length = min(max_length, model.max_seq_length or max_length)
        return LoadedModel(name, path, where, run_dtype, model, model.tokenizer, int(model.max_seq_length or default_window),
                           _fingerprint_of(name, path), backend, quantize, why_backend.startswith("auto"))
    tokenizer = lib.AutoTokenizer.from_pretrained(path)
    config = lib.AutoConfig.from_pretrained(path)
    if configure is not None:
        configure(config)
    try:
        model, info = getattr(lib, AUTO_CLASSES[kind]).from_pretrained(path, config=config, dtype=torch_dtype,
                                                                        output_loading_info=True)
    except pickle.UnpicklingError as e:  # a pytorch_model.bin that is more than tensors: refused, not run
        raise unsafe_weights(_weights_file(name, path), e) from None
    except (OSError, ValueError) as e:  # e.g. config.json without weights, or a truncated file
        if model_heads(path) and "Unrecognized configuration class" in str(e):  # another kind's architecture
            why = f"transformers has no {AUTO_CLASSES[kind]} for its {config.model_type!r} architecture"
            raise mismatch(name, path, KIND_WORDS[kind], why) from None
        raise ModelNotFound(f"{name!r} ({path}) does not load as {KIND_WORDS[kind]}: {str(e).splitlines()[0]}") from e
    missing = sorted(info.get("missing_keys") or ())
    if kind == "encoder":  # a bare encoder's output is its hidden states: a pooler it lacks is never used
        missing = [k for k in missing if not k.startswith("pooler.")]
    _check_head(name, path, kind, missing, allow_new_head, train)
    model = model.to(where)
    if not train:
        model.eval()
    window = context_window(config, tokenizer, max_length, default_window)
    return LoadedModel(name, path, where, run_dtype, model, tokenizer, window,
                       _fingerprint_of(name, path), backend, quantize, why_backend.startswith("auto"))


def _fingerprint_of(name: str, path: str) -> str:
    """The fingerprint of the folder a model was loaded from (a hub id loads into the cache)."""
    if not Path(path).is_dir():
        cached = _hf_cached(name)
        path = str(cached) if cached is not None else path
    return model_fingerprint(path)
