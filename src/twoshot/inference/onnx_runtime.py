"""STCN's per-frame networks as ONNX files, and running them with ONNX Runtime in the engine.

The engine calls a model's heavy networks through a :data:`~twoshot.model.interface.Wrap`
(``wrap(fn, name)``); :class:`OnnxRuntimeWrap` is one that exports the network behind ``fn``
to ONNX (once per engine) and runs it with an ``onnxruntime.InferenceSession`` on the CPU,
so memory, scheduling, aggregation and output handling stay the engine's own. Supported:
STCN (``stcn`` and ``tiny`` presets): its key encoder (``encode_key``), value encoder
(``encode_value``, one row per object) and decoder (``decode``). Cutie's networks (masked
attention, the sensory memory) are not exported yet: a Cutie model raises UserError.

:func:`export_onnx` writes the same networks as files (``twoshot export --format onnx``):
``<name>.onnx`` for each, with dynamic frame size and object count, plus ``onnx.json`` naming
the inputs and outputs. Needs the optional packages ``onnx`` and ``onnxruntime``
(``pip install 'twoshot[onnx]'``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from twoshot.errors import UserError
from twoshot.fsutil import atomic_open, write_json
from twoshot.model.interface import VOSModel
from twoshot.model.stcn.network import STCN, KeyFeatures

OPSET = 17


class _KeyEncoder(nn.Module):
    """images [B, 3, H, W] -> key, thin, f16, f8, f4 (STCN.encode_key's KeyFeatures, in order)."""

    def __init__(self, model: STCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.model.encode_key(images)
        return f.key, f.thin, f.f16, f.f8, f.f4


class _ValueEncoder(nn.Module):
    """One row per object: images [N, 3, H, W], key_f16 [N, C16, h, w] (broadcast rows of the
    frame), mask and others [N, 1, H, W] -> values [N, Cv, h, w]."""

    def __init__(self, model: STCN) -> None:
        super().__init__()
        self.encoder = model.value_encoder

    def forward(
        self, images: torch.Tensor, key_f16: torch.Tensor, mask: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        return self.encoder(images, key_f16, mask, others)


class _Decoder(nn.Module):
    """readout [N, Cv, h, w] (N = frames x objects), thin [B, Cv, h, w], f8, f4 -> logits [N, 1, H, W]."""

    def __init__(self, model: STCN) -> None:
        super().__init__()
        self.decoder = model.decoder

    def forward(
        self, readout: torch.Tensor, thin: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor
    ) -> torch.Tensor:
        return self.decoder(readout, thin, f8, f4)


# name -> (wrapper, input names, output names, dynamic axes)
_PARTS: dict[str, tuple[type[nn.Module], list[str], list[str], dict[str, dict[int, str]]]] = {
    "encode_key": (
        _KeyEncoder,
        ["images"],
        ["key", "thin", "f16", "f8", "f4"],
        {
            "images": {0: "frames", 2: "height", 3: "width"},
            **{n: {0: "frames", 2: f"h_{n}", 3: f"w_{n}"} for n in ("key", "thin", "f16", "f8", "f4")},
        },
    ),
    "encode_value": (
        _ValueEncoder,
        ["images", "key_f16", "mask", "others"],
        ["values"],
        {
            "images": {0: "rows", 2: "height", 3: "width"},
            "key_f16": {0: "rows", 2: "h", 3: "w"},
            "mask": {0: "rows", 2: "height", 3: "width"},
            "others": {0: "rows", 2: "height", 3: "width"},
            "values": {0: "rows", 2: "h", 3: "w"},
        },
    ),
    "decode": (
        _Decoder,
        ["readout", "thin", "f8", "f4"],
        ["logits"],
        {
            "readout": {0: "rows", 2: "h", 3: "w"},
            "thin": {0: "frames", 2: "h", 3: "w"},
            "f8": {0: "frames", 2: "h8", 3: "w8"},
            "f4": {0: "frames", 2: "h4", 3: "w4"},
            "logits": {0: "rows", 2: "h4", 3: "w4"},
        },
    ),
}


def _require_onnx() -> Any:
    """The onnxruntime module; UserError naming the extra when it is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError as exc:
        raise UserError(
            "the onnxruntime runtime and ONNX export need the optional packages onnx and "
            "onnxruntime: pip install 'twoshot[onnx]'"
        ) from exc
    return onnxruntime


def _check_model(model: object) -> STCN:
    """``model`` as an STCN; UserError for any other model."""
    if not isinstance(model, STCN):
        raise UserError(
            f"ONNX export and the onnxruntime runtime support STCN only (stcn, tiny presets), "
            f"not {getattr(model, 'kind', type(model).__name__)!r}"
        )
    return model


def _examples(model: STCN, name: str) -> tuple[torch.Tensor, ...]:
    """Example inputs (2 objects, a 64x96 frame) for tracing part ``name`` of ``model``."""
    images = torch.zeros(1, 3, 64, 96)
    with torch.no_grad():
        feats = model.encode_key(images)
    if name == "encode_key":
        return (images,)
    if name == "encode_value":
        rows = 2
        mask = torch.rand(rows, 1, 64, 96, generator=torch.Generator().manual_seed(0))
        return (images.expand(rows, -1, -1, -1), feats.f16.expand(rows, -1, -1, -1), mask, 1 - mask)
    readout = torch.zeros(2, model.config.value_dim, *feats.key.shape[-2:])
    return (readout, feats.thin, feats.f8, feats.f4)


def export_part(model: STCN, name: str) -> bytes:
    """Part ``name`` (``encode_key``, ``encode_value``, ``decode``) of an STCN network in eval
    mode, as the bytes of an ONNX model with dynamic frame size and row count."""
    wrapper, inputs, outputs, axes = _PARTS[name]
    module = wrapper(model).eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            module,
            _examples(model, name),
            buffer,  # type: ignore[arg-type]
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )
    return buffer.getvalue()


def export_onnx(model: VOSModel, out: str | Path, exact: bool = False) -> list[Path]:
    """Write ``model``'s per-frame networks to ``out``/<name>.onnx (``exact``: the network as
    it is; else STCN's fast inference copy, BatchNorm folded) and ``out``/onnx.json naming
    their inputs and outputs. Returns the files written. UserError for a model other than
    STCN or without the onnx extra."""
    _require_onnx()
    stcn = _check_model(model)
    network = stcn if exact else stcn.fast_copy()
    network = network.to("cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in _PARTS:
        path = folder / f"{name}.onnx"
        with atomic_open(path, "wb") as handle:
            handle.write(export_part(network, name))
        written.append(path)
    manifest = {
        "model": model.kind,
        "opset": OPSET,
        "fast_copy": not exact,
        "parts": {name: {"inputs": p[1], "outputs": p[2]} for name, p in _PARTS.items()},
    }
    write_json(folder / "onnx.json", manifest)
    return [*written, folder / "onnx.json"]


class OnnxRuntimeWrap:
    """A :data:`~twoshot.model.interface.Wrap` running STCN's networks with ONNX Runtime.

    ``wrap(fn, name)`` exports the network ``fn`` is bound to (its ``__self__``) for part
    ``name`` and returns a callable with ``fn``'s signature and results, computed by an
    ``InferenceSession`` on the CPU with ``threads`` intra-op threads (torch's count when None).
    """

    def __init__(self, threads: int | None = None) -> None:
        self._ort = _require_onnx()
        self.threads = threads

    def _session(self, model: bytes) -> Any:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads or torch.get_num_threads()
        return self._ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])

    def __call__(self, fn: Callable[..., Any], name: str) -> Callable[..., Any]:
        network = _check_model(getattr(fn, "__self__", None))
        if name not in _PARTS:
            raise ValueError(f"{name}: not one of STCN's exported parts {sorted(_PARTS)}")
        session = self._session(export_part(network, name))
        if name == "encode_key":
            return _key_encoder(session)
        if name == "encode_value":
            return _value_encoder(session)
        return _decoder(session)


def _run(session: Any, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The session's outputs (float32 torch tensors on the CPU) for torch inputs."""
    arrays = {k: np.ascontiguousarray(v.detach().float().cpu().numpy()) for k, v in feeds.items()}
    return [torch.from_numpy(out) for out in session.run(None, arrays)]


def _key_encoder(session: Any) -> Callable[[torch.Tensor], KeyFeatures]:
    def encode_key(images: torch.Tensor) -> KeyFeatures:
        return KeyFeatures(*_run(session, {"images": images}))

    return encode_key


def _value_encoder(session: Any) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    def encode_value(images: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        # As STCN.encode_value: one row per object, "others" the sum of the other objects' masks.
        batch, objects, height, width = masks.shape
        if objects > 1:
            index = torch.tensor([[j for j in range(objects) if j != i] for i in range(objects)])
            others = masks[:, index].sum(dim=2)
        else:
            others = torch.zeros_like(masks)
        feeds = {
            "images": images.unsqueeze(1).expand(-1, objects, -1, -1, -1).reshape(-1, 3, height, width),
            "key_f16": key_f16.unsqueeze(1).expand(-1, objects, -1, -1, -1).flatten(0, 1),
            "mask": masks.reshape(-1, 1, height, width),
            "others": others.reshape(-1, 1, height, width),
        }
        (values,) = _run(session, feeds)
        return values.view(batch, objects, *values.shape[1:])

    return encode_value


def _decoder(session: Any) -> Callable[[torch.Tensor, KeyFeatures], torch.Tensor]:
    def decode(readout_values: torch.Tensor, query: KeyFeatures) -> torch.Tensor:
        batch, objects = readout_values.shape[:2]
        feeds = {"readout": readout_values.flatten(0, 1), "thin": query.thin, "f8": query.f8, "f4": query.f4}
        (logits,) = _run(session, feeds)
        return logits.view(batch, objects, *logits.shape[2:])

    return decode


def runtime_manifest(folder: str | Path) -> dict[str, Any]:
    """The onnx.json of an export folder (for tools that load the files themselves)."""
    return dict(json.loads((Path(folder) / "onnx.json").read_text()))
