"""Cutie's per-frame networks as exportable modules, and the engine-side calls that feed them.

Four parts, the calls :class:`~twoshot.model.cutie.propagator.CutiePropagator` makes through
its ``wrap``: ``encode_image`` (pixel encoder and key projection), ``encode_mask`` (mask
encoder with the deep sensory update and the object summaries), ``object_readout`` (pixel
fuser and object transformer, for the objects of one memory bucket) and ``decode`` (mask
decoder with the sensory update, soft aggregation, upsampling). The memory (keys, values,
the top-k read, summaries' running sums, buckets) stays in Python, in the propagator.

Unlike STCN's, these graphs have fixed shapes: the exporter cannot write Cutie's area
downsampling (adaptive pooling) or its positional encodings for a frame size that is not
known when tracing. So a part is exported for the frame size and object count of a call
(``parts_for`` keeps one exported network per set of input shapes; a video needs a few: one
frame size, the object counts it sees). Area downsampling by a whole factor is exported as
average pooling (:func:`area_as_average_pool`), which computes the same means.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.inference.onnx_stcn import Run
from twoshot.model.cutie.network import Cutie, CutieFeatures

ExportRun = Callable[[str, tuple[torch.Tensor, ...]], Run]
"""(part name, example inputs) -> a :data:`Run` of that part exported for those inputs' shapes."""


class _ImageEncoder(nn.Module):
    """images [B, 3, H, W] -> f8, f4, pix_feat, key, shrinkage, selection (CutieFeatures' order)."""

    def __init__(self, model: Cutie) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.model.encode_image(images)
        return f.f8, f.f4, f.pix_feat, f.key, f.shrinkage, f.selection


class _MaskEncoder(nn.Module):
    """images [1, 3, H, W], pix_feat, sensory [1, K, C_s, h, w], masks [1, K, H, W] ->
    values [1, K, C_v, h, w], sensory (deep update), summaries [1, K, Q, C_e + 1]."""

    def __init__(self, model: Cutie) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, pix_feat: torch.Tensor, sensory: torch.Tensor, masks: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.encode_mask(images, pix_feat, sensory, masks, deep_update=True)


class _ObjectReadout(nn.Module):
    """pix_feat, visual [1, K, C_v, h, w], sensory, last_mask [1, K, H, W], summaries
    [1, K, 1, Q, C_e + 1] -> readout [1, K, C_e, h, w]."""

    def __init__(self, model: Cutie) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        pix_feat: torch.Tensor,
        visual: torch.Tensor,
        sensory: torch.Tensor,
        last_mask: torch.Tensor,
        summaries: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.object_readout(pix_feat, visual, sensory, last_mask, summaries)[0]


class _Decoder(nn.Module):
    """f8, f4, readout [1, K, C_e, h, w], sensory -> sensory (updated), logits and prob
    [1, K + 1, H, W]."""

    def __init__(self, model: Cutie) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, f8: torch.Tensor, f4: torch.Tensor, readout: torch.Tensor, sensory: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.model.segment(f8, f4, readout, sensory, update_sensory=True)


# name -> (wrapper, input names, output names)
PARTS: dict[str, tuple[type[nn.Module], list[str], list[str]]] = {
    "encode_image": (
        _ImageEncoder,
        ["images"],
        ["f8", "f4", "pix_feat", "key", "shrinkage", "selection"],
    ),
    "encode_mask": (
        _MaskEncoder,
        ["images", "pix_feat", "sensory", "masks"],
        ["values", "sensory_out", "summaries"],
    ),
    "object_readout": (
        _ObjectReadout,
        ["pix_feat", "visual", "sensory", "last_mask", "summaries"],
        ["readout"],
    ),
    "decode": (_Decoder, ["f8", "f4", "readout", "sensory"], ["sensory_out", "logits", "prob"]),
}


@contextlib.contextmanager
def area_as_average_pool() -> Iterator[None]:
    """While exporting: ``F.interpolate(mode="area")`` to a size that divides the input's
    evenly runs as ``F.avg_pool2d`` with that factor (the same windows and means), which the
    ONNX exporter writes as AveragePool; other calls are unchanged."""
    original = F.interpolate

    def interpolate(
        x: torch.Tensor, size: Any = None, scale_factor: Any = None, mode: str = "nearest", **kw: Any
    ) -> Any:
        if mode == "area" and x.dim() == 4:
            height, width = (int(v) for v in x.shape[-2:])
            if size is not None:
                out_h, out_w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
            else:
                sh, sw = (
                    (scale_factor, scale_factor) if isinstance(scale_factor, float | int) else scale_factor
                )
                out_h, out_w = math.floor(height * sh), math.floor(width * sw)
            if out_h and out_w and height % out_h == 0 and width % out_w == 0:
                return F.avg_pool2d(x, (height // out_h, width // out_w))
        return original(x, size=size, scale_factor=scale_factor, mode=mode, **kw)

    F.interpolate = interpolate  # type: ignore[assignment]
    try:
        yield
    finally:
        F.interpolate = original


def examples(model: Cutie, name: str, height: int, width: int, objects: int) -> tuple[torch.Tensor, ...]:
    """Example inputs of part ``name`` for padded ``height`` x ``width`` frames (multiples of
    16) and ``objects`` objects: a random frame and masks, a zero sensory memory."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, height, width, generator=generator)
    if name == "encode_image":
        return (images,)
    with torch.no_grad():
        feats = model.encode_image(images)
        sensory = torch.zeros(1, objects, model.sensory_dim, *feats.key.shape[-2:])
        masks = torch.rand(1, objects, height, width, generator=generator)
        if name == "encode_mask":
            return (images, feats.pix_feat, sensory, masks)
        values, _, summaries = model.encode_mask(images, feats.pix_feat, sensory, masks)
        readout_inputs = (feats.pix_feat, values, sensory, masks, summaries.unsqueeze(2))
        if name == "object_readout":
            return readout_inputs
        readout, _ = model.object_readout(*readout_inputs)
    return (feats.f8, feats.f4, readout, sensory)


class _PerShape:
    """Part ``name`` run for any input shapes: one exported network per set of shapes."""

    def __init__(self, name: str, export: ExportRun) -> None:
        self.name = name
        self.inputs = PARTS[name][1]
        self.export = export
        self.runs: dict[tuple[tuple[int, ...], ...], Run] = {}

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        key = tuple(tuple(t.shape) for t in inputs)
        if key not in self.runs:
            self.runs[key] = self.export(self.name, tuple(t.detach().float().cpu() for t in inputs))
        return self.runs[key](dict(zip(self.inputs, inputs, strict=True)))


def call(name: str, export: ExportRun) -> Callable[..., Any]:
    """A callable with the signature and results of Cutie's method behind part ``name`` (as the
    propagator calls it: no selector, no final auxiliary logits, the deep update on), computed
    by the networks ``export`` gives for each set of input shapes."""
    run = _PerShape(name, export)
    if name == "encode_image":
        return lambda images: CutieFeatures(*run(images))
    if name == "encode_mask":

        def encode_mask(
            images: Any, pix_feat: Any, sensory: Any, masks: Any, deep_update: bool = True
        ) -> Any:
            if not deep_update:
                raise ValueError("the exported mask encoder always takes the deep sensory update")
            return tuple(run(images, pix_feat, sensory, masks))

        return encode_mask
    if name == "object_readout":

        def object_readout(*inputs: Any, selector: Any = None, final_aux: bool = False) -> Any:
            if selector is not None or final_aux:
                raise ValueError("the exported object readout takes no selector and no final aux")
            (readout,) = run(*inputs)
            return readout, []

        return object_readout

    def segment(
        f8: Any, f4: Any, readout: Any, sensory: Any, update_sensory: bool = True, selector: Any = None
    ) -> Any:
        if selector is not None:
            raise ValueError("the exported decoder takes no selector")
        # The update does not change this frame's logits: computed always, kept when asked.
        updated, logits, prob = run(f8, f4, readout, sensory)
        return (updated if update_sensory else sensory), logits, prob

    return segment
