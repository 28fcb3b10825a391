"""Models' per-frame networks as ONNX files, run with ONNX Runtime or OpenVINO in the engine.

The engine calls a model's heavy networks through a :data:`~twoshot.model.interface.Wrap`
(``wrap(fn, name)``); :class:`RuntimeWrap` is one that exports the network behind ``fn`` to
ONNX and runs it with ONNX Runtime (``runtime="onnxruntime"``) or OpenVINO (``"openvino"``) on
the CPU, in float32, so memory, scheduling, aggregation and output handling stay the engine's
own. Supported: STCN (``stcn``, ``tiny``; :mod:`twoshot.inference.onnx_stcn`, exported once
with dynamic shapes), Cutie (:mod:`twoshot.inference.onnx_cutie`, exported for each frame
size and object count a run meets) and SAM 2 (:mod:`twoshot.inference.onnx_sam2`, exported
once at the model's input size, the memory length dynamic).

:func:`export_onnx` writes the same networks as files (``twoshot export --format onnx``):
``<name>.onnx`` for each, plus ``onnx.json`` naming the inputs and outputs (and, for Cutie
and SAM 2, the fixed shapes). Optional packages: ``onnx`` and ``onnxruntime`` (``pip install
'twoshot[onnx]'``), ``openvino`` (``pip install 'twoshot[openvino]'``).
"""

from __future__ import annotations

import functools
import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twoshot.errors import UserError
from twoshot.fsutil import atomic_open, write_json
from twoshot.inference import onnx_cutie, onnx_sam2, onnx_stcn
from twoshot.inference.onnx_cache import ExportedGraphs, GraphCache, shapes_key, weights_digest
from twoshot.inference.onnx_stcn import Run
from twoshot.model.cutie.network import Cutie
from twoshot.model.interface import VOSModel
from twoshot.model.sam2.network import Sam2
from twoshot.model.stcn.network import STCN

OPSET = 17
RUNTIME_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("onnx", ("onnx", "onnxruntime")),
    "openvino": ("openvino", ("onnx", "openvino")),
}
"""runtime -> (the pyproject extra that installs it, the modules it needs)."""


def require_runtime(runtime: str) -> Any:
    """The module running ``runtime`` (``onnxruntime`` or ``openvino``, after checking that
    ``onnx`` imports too); UserError naming the extra to install when one is missing."""
    import importlib

    extra, modules = RUNTIME_EXTRAS[runtime]
    try:
        loaded = [importlib.import_module(name) for name in modules]
    except ImportError as exc:
        raise UserError(
            f"inference.runtime {runtime} and ONNX export need the optional packages "
            f"{' and '.join(modules)}: pip install 'twoshot[{extra}]'"
        ) from exc
    return loaded[-1]


def _check_model(model: object) -> STCN | Cutie | Sam2:
    """``model`` as an STCN, a Cutie or a SAM 2; UserError for any other model."""
    if not isinstance(model, STCN | Cutie | Sam2):
        raise UserError(
            "ONNX export and the onnxruntime / openvino runtimes support the stcn, cutie and "
            f"sam2 models, not {getattr(model, 'kind', type(model).__name__)!r}"
        )
    return model


def export_module(
    module: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> bytes:
    """``module`` (put in eval mode) traced on ``inputs`` as the bytes of an ONNX model."""
    buffer = io.BytesIO()
    # The tracer's warnings (shapes taken as constants, indexing notes) are about the traced
    # shapes, which the callers fix or declare dynamic; a run would print dozens of them.
    with torch.no_grad(), onnx_cutie.area_as_average_pool(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            inputs,
            buffer,  # type: ignore[arg-type]
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic_axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def export_stcn_part(model: STCN, name: str, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """Part ``name`` (``encode_key``, ``encode_value``, ``decode``) of an STCN network traced on
    ``inputs`` (:func:`onnx_stcn.examples`), with dynamic frame size and row count."""
    wrapper, input_names, outputs, axes = onnx_stcn.PARTS[name]
    return export_module(wrapper(model), inputs, input_names, outputs, axes)


def export_cutie_part(model: Cutie, name: str, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """Part ``name`` of Cutie (:data:`onnx_cutie.PARTS`) for inputs of the shapes of ``inputs``."""
    wrapper, input_names, outputs = onnx_cutie.PARTS[name]
    return export_module(wrapper(model), inputs, input_names, outputs)


def export_sam2_part(model: Sam2, name: str, inputs: tuple[torch.Tensor, ...]) -> bytes:
    """Part ``name`` of SAM 2 (:data:`onnx_sam2.PARTS`) for inputs of the shapes of ``inputs``,
    the memory length dynamic."""
    wrapper, input_names, outputs, axes = onnx_sam2.PARTS[name]
    return export_module(wrapper(model), inputs, input_names, outputs, axes)


def export_onnx(
    model: VOSModel,
    out: str | Path,
    exact: bool = False,
    size: tuple[int, int] | None = None,
    objects: int = 2,
) -> list[Path]:
    """Write ``model``'s per-frame networks to ``out``/<name>.onnx and ``out``/onnx.json
    naming their inputs and outputs. Returns the files written.

    STCN: dynamic shapes; ``exact``: the network as it is, else its fast inference copy
    (BatchNorm folded). Cutie: fixed shapes, for padded ``size`` (height, width; multiples of
    16, required) frames and ``objects`` objects in one memory bucket. SAM 2: fixed shapes at
    its square input (``size`` None or that square; ``objects`` unused: one object at a
    time), the memory length dynamic. UserError for another model, a missing or bad size, or without the onnx
    extra."""
    require_runtime("onnxruntime")
    network = _check_model(model)
    folder = Path(out)
    parts: dict[str, bytes] = {}
    manifest: dict[str, Any] = {"model": model.kind, "opset": OPSET}
    if isinstance(network, STCN):
        stcn = network if exact else network.fast_copy()
        stcn = stcn.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
        manifest["fast_copy"] = not exact
        manifest["weights"] = weights_digest(stcn)
        manifest["parts"] = {}
        for name, (_, inputs, outputs, axes) in onnx_stcn.PARTS.items():
            examples = onnx_stcn.examples(stcn, name)
            parts[name] = export_stcn_part(stcn, name, examples)
            shapes = shapes_key(inputs, examples, axes)
            manifest["parts"][name] = {"inputs": inputs, "outputs": outputs, "shapes": shapes}
    elif isinstance(network, Sam2):
        sam2 = network.to("cpu").eval()
        square = (sam2.image_size, sam2.image_size)
        if size is not None and tuple(size) != square:
            raise UserError(
                f"--size {size}: SAM 2's networks take its square input {square} "
                "(model.sam2.image_size); leave --size out"
            )
        manifest["image_size"] = sam2.image_size
        manifest["weights"] = weights_digest(sam2)
        manifest["parts"] = {}
        for name, (_, inputs, outputs, axes) in onnx_sam2.PARTS.items():
            examples = onnx_sam2.examples(sam2, name)
            parts[name] = export_sam2_part(sam2, name, examples)
            manifest["parts"][name] = _part_entry(shapes_key(inputs, examples, axes), outputs)
    else:
        if size is None or any(v <= 0 or v % 16 for v in size) or objects < 1:
            raise UserError(
                f"--size {size}, --objects {objects}: Cutie's networks are exported for one padded "
                "frame size (height and width, positive multiples of 16) and a positive object count"
            )
        cutie = network.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
        manifest["weights"] = weights_digest(cutie)
        manifest["parts"] = {}
        for name, (_, inputs, outputs) in onnx_cutie.PARTS.items():
            examples = onnx_cutie.examples(cutie, name, size[0], size[1], objects)
            parts[name] = export_cutie_part(cutie, name, examples)
            manifest["parts"][name] = _part_entry(shapes_key(inputs, examples, None), outputs)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in parts.items():
        path = folder / f"{name}.onnx"
        with atomic_open(path, "wb") as handle:
            handle.write(data)
        written.append(path)
    write_json(folder / "onnx.json", manifest)
    return [*written, folder / "onnx.json"]


def _part_entry(shapes: dict[str, list[int | str]], outputs: list[str]) -> dict[str, Any]:
    """A fixed-shape part's onnx.json entry: each input's shape (dynamic axes by name), the
    outputs, and ``shapes`` (:func:`shapes_key`: the shapes with the dtype, which the
    runtimes check a run's inputs against)."""
    return {"inputs": {n: dims[:-1] for n, dims in shapes.items()}, "outputs": outputs, "shapes": shapes}


def open_session(runtime: str, model: bytes, threads: int | None = None, keep_layout: bool = False) -> Run:
    """A :data:`Run` of the ONNX ``model`` with ``runtime`` on the CPU in float32, with
    ``threads`` intra-op threads (torch's count when None). ``keep_layout``: ONNX Runtime
    keeps the graph's NCHW layout (all optimisations but its blocked-layout rewrite)."""
    module = require_runtime(runtime)
    count = threads or torch.get_num_threads()
    if runtime == "onnxruntime":
        options = module.SessionOptions()
        options.intra_op_num_threads = count
        options.log_severity_level = 3  # errors only: SAM 2's trunk draws shape-merge warnings
        if keep_layout:
            # Cutie: the blocked (NCHWc) convolutions of the highest level round differently,
            # which its thresholded attention turns into drift (docs/performance.md), as
            # channels-last does in torch.
            options.graph_optimization_level = module.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        session = module.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        return lambda feeds: _as_tensors(session.run(None, _as_arrays(feeds)))
    core = _openvino_core()
    # OpenVINO computes in bfloat16 by default on CPUs that have it: ask for float32.
    compiled = core.compile_model(
        core.read_model(model),
        "CPU",
        {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": count, "PERFORMANCE_HINT": "LATENCY"},
    )
    request = compiled.create_infer_request()
    count_out = len(compiled.outputs)

    def run(feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        request.infer(_as_arrays(feeds))
        return _as_tensors([request.get_output_tensor(i).data.copy() for i in range(count_out)])

    return run


@functools.cache
def _openvino_core() -> Any:
    """The process's one OpenVINO ``Core``. Each ``Core`` loads its own CPU plugin, which
    installs an alternate signal stack on the calling thread and, when destroyed, puts back
    the one it found: with several alive, destroyed out of order, the main thread was left
    with an unmapped signal stack, and the next Python signal handler (a DataLoader worker's
    SIGCHLD) killed the process with SIGSEGV (docs/performance.md)."""
    return require_runtime("openvino").Core()


def _as_arrays(feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.detach().float().cpu().numpy()) for k, v in feeds.items()}


def _as_tensors(outputs: list[Any]) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(out)) for out in outputs]


class RuntimeWrap:
    """A :data:`~twoshot.model.interface.Wrap` running STCN's, Cutie's or SAM 2's networks
    with ``runtime`` (``onnxruntime`` or ``openvino``).

    ``wrap(fn, name)`` exports the network ``fn`` is bound to (its ``__self__``) for part
    ``name`` and returns a callable with ``fn``'s signature and results: STCN's parts are
    exported once, SAM 2's on their first call (from its inputs), Cutie's for each set of
    input shapes, when first called. ``cache``: the folder of a
    :class:`~twoshot.inference.onnx_cache.GraphCache` that keeps the exported graphs for
    later processes (None: export every time). ``graphs``: a folder :func:`export_onnx`
    wrote, whose graphs run instead of exporting any
    (:class:`~twoshot.inference.onnx_cache.ExportedGraphs`; ``cache`` is then unused).
    """

    def __init__(
        self, runtime: str, threads: int | None = None, cache: Path | None = None, graphs: Path | None = None
    ) -> None:
        require_runtime(runtime)
        self.runtime = runtime
        self.threads = threads
        self.cache: GraphCache | ExportedGraphs = (
            GraphCache(cache) if graphs is None else ExportedGraphs(graphs)
        )

    def __call__(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        network = _check_model(getattr(fn, "__self__", None))
        if isinstance(self.cache, ExportedGraphs):
            self.cache.check_network(network)  # now, not at the first frame of a lazy export
        if isinstance(network, STCN):
            if name not in onnx_stcn.PARTS:
                raise ValueError(f"{name}: not one of STCN's exported parts {sorted(onnx_stcn.PARTS)}")
            _, inputs, _, axes = onnx_stcn.PARTS[name]
            examples = onnx_stcn.examples(network, name)
            shapes = shapes_key(inputs, examples, axes)
            graph = self.cache.graph(
                network, name, shapes, OPSET, lambda: export_stcn_part(network, name, examples)
            )
            return onnx_stcn.call(name, self._open(graph))
        if isinstance(network, Sam2):
            if name not in onnx_sam2.PARTS:
                raise ValueError(f"{name}: not one of SAM 2's exported parts {sorted(onnx_sam2.PARTS)}")
            sam2 = network

            def export_sam2(inputs: tuple[torch.Tensor, ...]) -> Run:
                _, names, _, axes = onnx_sam2.PARTS[name]
                shapes = shapes_key(names, inputs, axes)
                return self._open(
                    self.cache.graph(sam2, name, shapes, OPSET, lambda: export_sam2_part(sam2, name, inputs))
                )

            return onnx_sam2.call(name, sam2, export_sam2)
        if name not in onnx_cutie.PARTS:
            raise ValueError(f"{name}: not one of Cutie's exported parts {sorted(onnx_cutie.PARTS)}")
        cutie = network

        def export_cutie(part: str, inputs: tuple[torch.Tensor, ...]) -> Run:
            shapes = shapes_key(onnx_cutie.PARTS[part][1], inputs, None)
            graph = self.cache.graph(
                cutie, part, shapes, OPSET, lambda: export_cutie_part(cutie, part, inputs)
            )
            return self._open(graph, keep_layout=True)

        return onnx_cutie.call(name, export_cutie)

    def _open(self, model: bytes, keep_layout: bool = False) -> Run:
        return open_session(self.runtime, model, self.threads, keep_layout)


def runtime_manifest(folder: str | Path) -> dict[str, Any]:
    """The onnx.json of an export folder (for tools that load the files themselves)."""
    return dict(json.loads((Path(folder) / "onnx.json").read_text()))
