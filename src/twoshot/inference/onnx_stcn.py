"""STCN's per-frame networks as exportable modules, and the engine-side calls that feed them.

Three parts (``stcn`` and ``tiny`` presets), each with dynamic frame size and row count:
``encode_key`` (the key encoder), ``encode_value`` (one row per object) and ``decode``.
:mod:`twoshot.inference.onnx_runtime` exports them and runs them in the engine; a ``Run``
(``run(feeds) -> outputs``) is how these calls reach the exported network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from twoshot.model.stcn.network import STCN, KeyFeatures

Run = Callable[[dict[str, torch.Tensor]], list[torch.Tensor]]
"""Runs one exported part: named float32 inputs -> its outputs in the part's order."""


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
PARTS: dict[str, tuple[type[nn.Module], list[str], list[str], dict[str, dict[int, str]]]] = {
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


def examples(model: STCN, name: str) -> tuple[torch.Tensor, ...]:
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


def call(name: str, run: Run) -> Callable[..., Any]:
    """A callable with the signature and results of STCN's method behind part ``name``
    (``encode_key``, ``encode_value``, ``decode``), computed by ``run``."""
    if name == "encode_key":
        return lambda images: KeyFeatures(*run({"images": images}))
    if name == "encode_value":
        return lambda images, key_f16, masks: _encode_value(run, images, key_f16, masks)
    return lambda readout_values, query: _decode(run, readout_values, query)


def _encode_value(run: Run, images: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
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
    (values,) = run(feeds)
    return values.view(batch, objects, *values.shape[1:])


def _decode(run: Run, readout_values: torch.Tensor, query: KeyFeatures) -> torch.Tensor:
    batch, objects = readout_values.shape[:2]
    feeds = {"readout": readout_values.flatten(0, 1), "thin": query.thin, "f8": query.f8, "f4": query.f4}
    (logits,) = run(feeds)
    return logits.view(batch, objects, *logits.shape[2:])
