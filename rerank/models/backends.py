"""Where a loaded model's forward pass runs: PyTorch, ONNX Runtime or OpenVINO, in fp32, bf16 or int8.

A family says what its model computes as a :class:`Graph`: a function of the loaded model and
the engine's padded batch (``input_ids``, ``attention_mask``, ``token_type_ids``) returning one
tensor (a cross-encoder's logits, SPLADE's pooled vocabulary weights, a sentence embedding).
:func:`runner` turns it into a callable with the same inputs and output for the backend asked
for. PyTorch calls the function; ONNX Runtime and OpenVINO run an export of that same function,
made once per (weights fingerprint, graph, backend, quantization, opset, library versions) and
kept under ``$RERANK_INDEXES/exports`` with a manifest, written atomically and checked (file
sizes and hashes) each time it is reused: a changed model gets a new export, a damaged one is
rebuilt. The batched engine drives every backend alike: batching, padding, OOM back-off and the
NaN guard are not written again here.

int8: ONNX Runtime's dynamic quantization of its fused graph (int8 weights, activations
quantized per batch at run time); OpenVINO's int8 weight compression (NNCF), its CPU plugin
quantizing activations at run time. Neither needs calibration data. int8 changes scores a
little, so ``auto`` never picks it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import platform
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..env import atomic_write, indexes_dir
from ..errors import MissingDependency, RerankError
from ..indexes import building
from .loading import REQUIRES, LoadedModel, need

log = logging.getLogger("rerank")

OPSET = 17
#: the operators ONNX Runtime's int8 quantizes (weights of MatMul/Gemm, the fused Attention's projections)
ORT_INT8_OPS = ("MatMul", "Gemm", "Attention")
#: bump when the way an export is made changes (every cached export is then rebuilt)
RECIPE = 1
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
Runner = Callable[[dict[str, Any]], Any]


class ExportError(RerankError, RuntimeError):
    """A model could not be exported to a backend (the message names the model and the step)."""


@dataclass(frozen=True)
class Graph:
    """What a family's model computes from a padded batch: ``name`` identifies the computation in
    export keys (change it when ``forward`` changes), ``forward(model, inputs)`` returns a float
    tensor with the batch as its first dimension, ``output_axes`` names its other dynamic axes."""

    name: str
    forward: Callable[[Any, dict[str, Any]], Any]
    output_axes: tuple[str, ...] = ()

    def bind(self, model: Any) -> Runner:
        """The PyTorch runner: the graph on ``model`` itself."""
        return lambda inputs: self.forward(model, {k: v for k, v in inputs.items() if k in INPUTS})


def runner(loaded: LoadedModel, graph: Graph) -> Runner:
    """A callable that runs ``graph`` on ``loaded``'s model with its backend (``loaded.backend``,
    ``loaded.quantize``): it takes the engine's padded batch (torch tensors) and returns a torch
    tensor. A backend that ``auto`` picked and that cannot export the model falls back to PyTorch
    (:func:`on_pytorch`)."""
    if loaded.backend == "torch":
        return graph.bind(loaded.model)
    import torch

    try:
        folder = export(loaded, graph, loaded.backend, loaded.quantize)
        run = _ort_runner(folder) if loaded.backend == "onnx" else \
            _openvino_runner(folder, "bf16" if loaded.dtype == torch.bfloat16 else "f32")
    except ExportError as e:
        if not loaded.auto_backend:
            raise
        log.warning("%s; running it on PyTorch instead (--backend torch skips the attempt)", e)
        on_pytorch(loaded)
        return graph.bind(loaded.model)
    loaded.model.to("meta")  # the PyTorch weights are not needed any more: their memory is freed, the config kept
    return run


def on_pytorch(loaded: LoadedModel) -> None:
    """``loaded`` run on PyTorch after all (``auto`` never makes a model fail that PyTorch runs):
    its fp32 weights, loaded for an export, take the precision it was to run in."""
    loaded.backend, loaded.quantize = "torch", "none"
    loaded.model.to(loaded.dtype)


# ------------------------------------------------------------------ exports
def _versions(backend: str) -> dict[str, str]:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "recipe": str(RECIPE)}
    if backend == "onnx":
        import onnxruntime

        out["onnxruntime"] = onnxruntime.__version__
    else:
        import nncf
        import openvino

        out["openvino"], out["nncf"] = openvino.get_version(), nncf.__version__
    return out


def export_key(loaded: LoadedModel, graph: Graph, backend: str, quantize: str) -> dict[str, Any]:
    """What an export depends on: the weights' content, the computation, how it is run."""
    return {"weights": loaded.fingerprint, "graph": graph.name, "backend": backend, "quantize": quantize, "opset": OPSET,
            "versions": _versions(backend), "machine": platform.machine()}


def export(loaded: LoadedModel, graph: Graph, backend: str, quantize: str, root: Path | None = None) -> Path:
    """The folder of ``loaded``'s export for ``backend``/``quantize``: reused when its manifest
    and files check out, else (re)built."""
    for module in REQUIRES[backend]:
        need(module, backend)
    if loaded.fingerprint.startswith("in-memory"):
        raise ExportError(f"{loaded.name}: a model in memory (being trained) has no fingerprint to key an export by; "
                          "use backend 'torch'")
    key = export_key(loaded, graph, backend, quantize)
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=10).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", loaded.name.rstrip("/").split("/")[-1])[:60] or "model"
    folder = (root or indexes_dir() / "exports") / f"{slug}-{graph.name}-{backend}-{quantize}-{digest}"
    problem = _check(folder, key)
    if problem is None:
        log.info("%s: using the %s %s export in %s", loaded.name, backend, quantize, folder)
        return folder
    if problem != "absent":
        log.warning("%s: the export in %s is rebuilt (%s)", loaded.name, folder, problem)
    t0 = time.perf_counter()
    with building(folder) as tmp:
        files = _build(loaded, graph, backend, quantize, tmp)
        manifest = {"key": key, "model": loaded.name, "files": {f: _file_hash(tmp / f) for f in files},
                    "seconds": round(time.perf_counter() - t0, 1)}
        with atomic_write(tmp / "manifest.json") as fh:
            json.dump(manifest, fh, indent=1)
    log.info("%s: exported for %s (%s) in %.0f s into %s", loaded.name, backend, quantize, time.perf_counter() - t0, folder)
    return folder


def _quiet(record: logging.LogRecord) -> bool:
    return "pre-processing before quantization" not in record.getMessage()


_hashes: dict[tuple[str, int, int], dict[str, Any]] = {}


def _file_hash(path: Path) -> dict[str, Any]:
    """Size and content hash of an export's file, memoised per process on (path, size, mtime): a
    model loaded again in one process (a server's restarts of a stage, a sweep) hashes it once."""
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _hashes:
        h = hashlib.blake2b(digest_size=16)
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                h.update(block)
        _hashes[memo] = {"size": stat.st_size, "blake2b": h.hexdigest()}
    return _hashes[memo]


def _check(folder: Path, key: dict[str, Any]) -> str | None:
    """None when ``folder`` holds a complete export for ``key``, else what is wrong with it."""
    if not folder.exists():
        return "absent"
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable manifest"
    if manifest.get("key") != key:
        return "made for other weights or versions"
    for name, expect in (manifest.get("files") or {}).items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != expect.get("size") or _file_hash(path) != expect:
            return f"{name} differs from its manifest"
    return None if manifest.get("files") else "no files in its manifest"


class _Wrapped:
    """A Graph as a torch module with positional tensor inputs, for the exporter."""

    def __new__(cls, model: Any, graph: Graph, names: list[str]) -> Any:
        import torch

        class Module(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *tensors: Any) -> Any:
                return graph.forward(self.model, dict(zip(names, tensors, strict=True)))

        return Module()


def _example(loaded: LoadedModel) -> dict[str, Any]:
    """A small batch of two texts of unequal length, as the engine pads them."""
    tok = loaded.tokenizer
    enc = tok(["an example query about rivers", "a"], ["a passage of some length about the flow of water", "b c"],
              padding=True, return_tensors="pt", truncation=True, max_length=64)
    return {k: enc[k] for k in INPUTS if k in enc}


def _build(loaded: LoadedModel, graph: Graph, backend: str, quantize: str, folder: Path) -> list[str]:
    """Export to ONNX (then fuse, quantize, convert as asked) into ``folder``; the files made."""
    import torch

    step = "export to ONNX"
    try:
        example = _example(loaded)
        names = list(example)
        axes = {n: {0: "batch", 1: "length"} for n in names}
        axes["output"] = {0: "batch", **{i + 1: a for i, a in enumerate(graph.output_axes)}}
        model = loaded.model  # fp32 weights: load_model loads them so for every backend but torch
        raw = folder / "raw.onnx"
        # plain (eager) attention exports as the pattern ONNX Runtime fuses into one Attention op
        with torch.inference_mode(), _eager_attention(model), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on Python control flow fixed at export
            torch.onnx.export(_Wrapped(model, graph, names), tuple(example[n] for n in names), str(raw),
                              input_names=names, output_names=["output"], dynamic_axes=axes, opset_version=OPSET,
                              dynamo=False, do_constant_folding=True)
        if backend == "openvino":
            step = "convert to OpenVINO"
            import openvino

            ov_model = openvino.convert_model(str(raw))
            if quantize == "int8":
                step = "quantize to int8"
                import nncf

                # int8 weights (asymmetric, per output channel), no calibration data needed; OpenVINO's CPU
                # plugin quantizes the activations of those layers per batch at run time
                nncf.set_log_level(logging.ERROR)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    ov_model = nncf.compress_weights(ov_model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            openvino.save_model(ov_model, str(folder / "model.xml"), compress_to_fp16=False)
            raw.unlink()
            return ["model.xml", "model.bin"]
        step = "optimize the ONNX graph"
        fused = folder / "model.onnx"
        _optimize(raw, fused, loaded)
        raw.unlink()
        if quantize == "int8":
            step = "quantize to int8"
            import onnx
            from onnxruntime.quantization import QuantType, quantize_dynamic

            q = folder / "model.int8.onnx"
            root = logging.getLogger()
            root.addFilter(_quiet)  # its advice to pre-process first, logged on the root logger
            try:
                # per output channel: on MiniLM, scores correlate 0.990 with fp32 against 0.970 per tensor, at equal speed
                quantize_dynamic(str(fused), str(q), weight_type=QuantType.QInt8, per_channel=True, reduce_range=False,
                                 op_types_to_quantize=list(ORT_INT8_OPS),
                                 extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
            finally:
                root.removeFilter(_quiet)
            q.replace(fused)
        files = ["model.onnx"]
        return files
    except MissingDependency:
        raise
    except Exception as e:  # noqa: BLE001 - any exporter failure is reported with the model and the step
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ExportError(f"{loaded.name}: could not {step} for backend {backend!r} ({quantize}): {first}") from e


@contextlib.contextmanager
def _eager_attention(model: Any) -> Iterator[None]:
    """The model's attention switched to the eager implementation while it is exported."""
    modules = [m for m in model.modules() if hasattr(m, "set_attn_implementation") and hasattr(m, "config")]
    before = [getattr(m.config, "_attn_implementation", None) for m in modules]
    try:
        for m in modules:
            with contextlib.suppress(Exception):  # a model that knows no eager attention exports as it is
                m.set_attn_implementation("eager")
        yield
    finally:
        for m, b in zip(modules, before, strict=True):
            if b is not None:
                with contextlib.suppress(Exception):
                    m.set_attn_implementation(b)


def _optimize(raw: Path, out: Path, loaded: LoadedModel) -> None:
    """ONNX Runtime's transformer fusions (attention, layer norm, GELU) where it knows the
    architecture; its generic graph optimisations otherwise."""
    config = loaded.model.config
    kind = {"bert": "bert", "distilbert": "bert", "roberta": "bert", "xlm-roberta": "bert", "electra": "bert",
            "mpnet": "bert", "deberta-v2": "bert"}.get(getattr(config, "model_type", ""), "")
    if kind:
        from onnxruntime.transformers.optimizer import optimize_model

        heads = int(getattr(config, "num_attention_heads", 0) or 0)
        hidden = int(getattr(config, "hidden_size", 0) or 0)
        opt = optimize_model(str(raw), model_type=kind, num_heads=heads, hidden_size=hidden, opt_level=1,
                             use_gpu=False, only_onnxruntime=False)
        opt.save_model_to_file(str(out))
    else:
        shutil.copyfile(raw, out)


# ------------------------------------------------------------------ runners
def _ort_runner(folder: Path) -> Runner:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = torch.get_num_threads()  # as PyTorch is set to use
    options.inter_op_num_threads = 1
    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the ONNX export in {folder} does not load: {str(e).splitlines()[0][:300]}") from e
    wanted = [i.name for i in session.get_inputs()]

    def run(inputs: dict[str, Any]) -> Any:
        feeds = {n: inputs[n].cpu().numpy() for n in wanted}
        return torch.from_numpy(session.run(None, feeds)[0])

    return run


def _openvino_runner(folder: Path, precision: str) -> Runner:
    import openvino
    import torch

    core = openvino.Core()
    # the precision is always set: OpenVINO would otherwise compute in bf16 on CPUs that have it
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                              "INFERENCE_NUM_THREADS": torch.get_num_threads()}
    try:
        compiled = core.compile_model(core.read_model(str(folder / "model.xml")), "CPU", config)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"the OpenVINO export in {folder} does not load: {str(e).splitlines()[0][:300]}") from e
    wanted = [p.get_any_name() for p in compiled.inputs]
    request = compiled.create_infer_request()

    def run(inputs: dict[str, Any]) -> Any:
        out = request.infer({n: inputs[n].cpu().numpy() for n in wanted})
        return torch.from_numpy(next(iter(out.values())).copy())

    return run
