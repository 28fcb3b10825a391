"""SAM 2's per-frame networks as exportable modules, and the engine-side calls that feed them.

Five parts, the calls :class:`~twoshot.model.sam2.propagator.Sam2Propagator` makes through
its ``wrap`` (S: the model's square input, h = w = S / 16; one object, batch 1, as the
propagator tracks each object on its own):

- ``encode_image``: frames [1, 3, S, S] -> ``high_res_s0`` [1, 32, S/4, S/4], ``high_res_s1``
  [1, 64, S/8, S/8] (the decoder's conv_s0 / conv_s1 projections), ``features`` and
  ``positions`` [1, 256, h, w] (Hiera trunk and FPN neck);
- ``attend_memory``: ``features``, ``positions``, memory tokens ``memory`` / ``memory_pos``
  [M, 1, 64] and the keys' rotations ``key_cos`` / ``key_sin`` [M, 128] -> ``conditioned``
  [1, 256, h, w]; M (spatial memories, then object-pointer tokens) is a dynamic axis;
- ``track_heads``: ``conditioned``, ``high_res_s0``, ``high_res_s1`` -> ``low_res`` [1, 1, S/4,
  S/4], ``high_res`` [1, 1, S, S], ``obj_ptr`` [1, 256], ``object_score`` [1, 1] (prompt
  encoder without a prompt, mask decoder choosing among three masks, object-pointer MLP);
- ``mask_as_output``: ``features`` and a given binary ``mask`` [1, 1, S, S] -> ``obj_ptr``,
  ``object_score`` (the heads prompted with the mask: the pointer comes from the decoder's
  tokens, so the skip maps are not inputs); the mask's own logits (+-10, antialiased to
  S/4) are computed beside it, in torch;
- ``encode_memory``: ``features``, ``mask`` [1, 1, S, S] in [0, 1] (the given mask, or the
  sigmoid of a tracked frame's logits, made in torch), ``object_score`` -> ``memory`` and
  ``memory_positions`` [1, 64, h, w].

The frame size is fixed because the model resizes every frame to S; the trunk's positional
embedding for that grid is a constant of the graph (see :class:`_ImageEncoder`). Which
memories and pointers a frame reads, their temporal encodings and the pointers'
position projection (one linear layer on at most 16 rows) stay in torch, in the propagator.

RoPE: the model rotates queries and keys as complex numbers, which the ONNX exporter cannot
write, and leaves the object-pointer tokens unrotated by slicing at a Python count. While
exporting, :func:`real_rope` rotates with real arithmetic instead (each pair (a, b) by an
angle: (a cos - b sin, a sin + b cos), the products and sums of the complex product), the
keys' rotations given as inputs: the spatial memories' angles tiled per memory frame, and
cos 1, sin 0 for the pointer tokens, which leaves them as they are. So one graph takes any
memory length.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from twoshot.errors import UserError
from twoshot.inference.onnx_stcn import Run
from twoshot.model.sam2.layers import RoPEAttention
from twoshot.model.sam2.memory import MemoryAttentionLayer
from twoshot.model.sam2.network import Sam2, Sam2Features, SamOutput, memory_mask
from twoshot.model.sam2.sizes import HIDDEN_DIM, MEMORY_DIM


def rotate_real(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, N, c] with each channel pair (2i, 2i + 1) rotated by the angle whose
    cosine and sine are cos / sin [N, c / 2] (the model's complex RoPE in real arithmetic)."""
    pairs = x.reshape(x.shape[0], x.shape[1], x.shape[2], -1, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(3)


def _real_forward(attention: RoPEAttention, key_cos: torch.Tensor, key_sin: torch.Tensor) -> Any:
    def forward(
        q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_k_exclude_rope: int = 0
    ) -> torch.Tensor:
        q, k, v = attention.project(q, k, v)
        freqs = attention.frequencies(q.shape[-2], q.device)
        cos, sin = freqs.real, freqs.imag
        k_cos, k_sin = (key_cos, key_sin) if attention.rope_k_repeat else (cos, sin)
        return attention.attend(rotate_real(q, cos, sin), rotate_real(k, k_cos, k_sin), v)

    return forward


@contextlib.contextmanager
def real_rope(model: Sam2, key_cos: torch.Tensor, key_sin: torch.Tensor) -> Iterator[None]:
    """While in the block, ``model``'s memory attention rotates queries and keys in real
    arithmetic (:func:`rotate_real`), the cross-attention's keys by ``key_cos`` / ``key_sin``
    [M, c / 2] (:func:`key_rotation`) whatever their count of pointer tokens."""
    attentions = [m for m in model.memory_attention.modules() if isinstance(m, RoPEAttention)]
    for attention in attentions:
        attention.forward = _real_forward(attention, key_cos, key_sin)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for attention in attentions:
            del attention.forward


def key_rotation(
    model: Sam2, memory_tokens: int, num_pointer_tokens: int, query_tokens: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [memory_tokens, c / 2] of the memory attention's keys: the query grid's
    rotations tiled over each spatial memory frame, then cos 1 and sin 0 (no rotation) for
    the last ``num_pointer_tokens`` tokens (object pointers)."""
    layer = model.memory_attention.layers[0]
    assert isinstance(layer, MemoryAttentionLayer)
    freqs = layer.cross_attn_image.frequencies(query_tokens, device)
    frames = (memory_tokens - num_pointer_tokens) // query_tokens
    half = freqs.shape[-1]
    cos = torch.cat([freqs.real.repeat(frames, 1), torch.ones(num_pointer_tokens, half, device=device)])
    sin = torch.cat([freqs.imag.repeat(frames, 1), torch.zeros(num_pointer_tokens, half, device=device)])
    return cos, sin


class _ImageEncoder(nn.Module):
    """The trunk's positional embedding (bicubic from the parameters, the same for every frame)
    is computed here by torch and exported as a constant: traced, OpenVINO spent 107-151 s
    folding its interpolation to the 256 x 256 grid of a 1024 input when compiling."""

    positions_table: torch.Tensor

    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.model = model
        trunk = model.image_encoder.trunk
        grid = model.image_size // trunk.patch_embed.proj.stride[0]
        with torch.no_grad():
            self.register_buffer("positions_table", trunk.positions((grid, grid)), persistent=False)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        trunk = self.model.image_encoder.trunk
        table = self.positions_table
        trunk.positions = lambda hw: table  # type: ignore[method-assign]
        try:
            f = self.model.encode_image(images)
        finally:
            del trunk.positions
        return f.high_res[0], f.high_res[1], f.features, f.positions


class _AttendMemory(nn.Module):
    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        key_cos: torch.Tensor,
        key_sin: torch.Tensor,
    ) -> torch.Tensor:
        with real_rope(self.model, key_cos, key_sin):
            return self.model.attend_memory(features, positions, memory, memory_pos, 0)


class _TrackHeads(nn.Module):
    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, conditioned: torch.Tensor, s0: torch.Tensor, s1: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.model.track_heads(conditioned, [s0, s1])
        return out.low_res, out.high_res, out.obj_ptr, out.object_score


class _GivenMaskPointer(nn.Module):
    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The pointer comes from the decoder's tokens, not its masks: the skip maps only
        # feed the masks, which the exporter prunes, so zeros stand in for them.
        b, _, h, w = features.shape
        s0 = features.new_zeros(b, HIDDEN_DIM // 8, 4 * h, 4 * w)
        s1 = features.new_zeros(b, HIDDEN_DIM // 4, 2 * h, 2 * w)
        return self.model.given_mask_pointer(features, [s0, s1], mask)


class _MemoryEncoder(nn.Module):
    def __init__(self, model: Sam2) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor, object_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_memory_of_mask(features, mask, object_score)


_MEMORY_AXES = {n: {0: "memory_tokens"} for n in ("memory", "memory_pos", "key_cos", "key_sin")}

# name -> (wrapper, input names, output names, dynamic axes)
PARTS: dict[str, tuple[type[nn.Module], list[str], list[str], dict[str, dict[int, str]]]] = {
    "encode_image": (
        _ImageEncoder,
        ["images"],
        ["high_res_s0", "high_res_s1", "features", "positions"],
        {},
    ),
    "attend_memory": (
        _AttendMemory,
        ["features", "positions", "memory", "memory_pos", "key_cos", "key_sin"],
        ["conditioned"],
        _MEMORY_AXES,
    ),
    "track_heads": (
        _TrackHeads,
        ["conditioned", "high_res_s0", "high_res_s1"],
        ["low_res", "high_res", "obj_ptr", "object_score"],
        {},
    ),
    "mask_as_output": (
        _GivenMaskPointer,
        ["features", "mask"],
        ["obj_ptr", "object_score"],
        {},
    ),
    "encode_memory": (
        _MemoryEncoder,
        ["features", "mask", "object_score"],
        ["memory", "memory_positions"],
        {},
    ),
}

EXAMPLE_MEMORY_FRAMES = 2  # spatial memories in the traced example (M is dynamic)
EXAMPLE_POINTERS = 2


def check_exportable(model: Sam2) -> None:
    """UserError unless ``model``'s networks have the exported form: the graphs carry the
    decoder's high-resolution features, which ``model.sam2.use_high_res_features_in_sam:
    false`` (the demo's sam2-toy) removes."""
    if not model.use_high_res_features:
        raise UserError(
            "inference.runtime / twoshot export: SAM 2 without model.sam2.use_high_res_features_in_sam "
            "is not exported; run it with inference.runtime torch"
        )


def examples(model: Sam2, name: str) -> tuple[torch.Tensor, ...]:
    """Example inputs of part ``name`` at the model's input size: a random frame, its
    features, a random mask, two memory frames and two object pointers."""
    check_exportable(model)
    generator = torch.Generator().manual_seed(0)
    size = model.image_size
    images = torch.randn(1, 3, size, size, generator=generator)
    if name == "encode_image":
        return (images,)
    with torch.no_grad():
        feats = model.encode_image(images)
    s0, s1 = feats.high_res
    mask = (torch.rand(1, 1, size, size, generator=generator) > 0.5).float()
    if name == "track_heads":
        return (feats.features, s0, s1)
    if name == "mask_as_output":
        return (feats.features, mask)
    if name == "encode_memory":
        return (feats.features, mask, torch.ones(1, 1))
    queries = feats.features.shape[-2] * feats.features.shape[-1]
    pointer_tokens = EXAMPLE_POINTERS * (feats.features.shape[1] // MEMORY_DIM)
    tokens = EXAMPLE_MEMORY_FRAMES * queries + pointer_tokens
    memory = torch.randn(tokens, 1, MEMORY_DIM, generator=generator)
    memory_pos = torch.randn(tokens, 1, MEMORY_DIM, generator=generator)
    cos, sin = key_rotation(model, tokens, pointer_tokens, queries, torch.device("cpu"))
    return (feats.features, feats.positions, memory, memory_pos, cos, sin)


class _ExportedOnFirstCall:
    """A :data:`Run` of one part, exported from the inputs of its first call (fed in the
    part's input order): no example needs computing, and the shapes are the run's own."""

    def __init__(self, export: Callable[[tuple[torch.Tensor, ...]], Run]) -> None:
        self.export = export
        self.run: Run | None = None

    def __call__(self, feeds: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        if self.run is None:
            self.run = self.export(tuple(t.detach().float().cpu() for t in feeds.values()))
        return self.run(feeds)


def call(name: str, model: Sam2, export: Callable[[tuple[torch.Tensor, ...]], Run]) -> Callable[..., Any]:
    """A callable with the signature and results of ``model``'s method behind part ``name``
    (as the propagator calls it), computed by the network ``export`` gives for the inputs of
    its first call."""
    check_exportable(model)
    run = _ExportedOnFirstCall(export)
    if name == "encode_image":

        def encode_image(images: torch.Tensor) -> Sam2Features:
            # The graph takes one frame; a batch runs frame by frame.
            outputs = [run({"images": images[i : i + 1]}) for i in range(images.shape[0])]
            s0, s1, features, positions = (torch.cat(list(parts)) for parts in zip(*outputs, strict=True))
            return Sam2Features([s0, s1], features, positions)

        return encode_image
    if name == "attend_memory":

        def attend_memory(
            features: torch.Tensor,
            positions: torch.Tensor,
            memory: torch.Tensor,
            memory_pos: torch.Tensor,
            num_pointer_tokens: int,
        ) -> torch.Tensor:
            queries = features.shape[-2] * features.shape[-1]
            cos, sin = key_rotation(model, memory.shape[0], num_pointer_tokens, queries, features.device)
            feeds = {"features": features, "positions": positions, "memory": memory, "memory_pos": memory_pos}
            (conditioned,) = run({**feeds, "key_cos": cos, "key_sin": sin})
            return conditioned

        return attend_memory
    if name == "track_heads":

        def track_heads(image: torch.Tensor, high_res: list[torch.Tensor]) -> SamOutput:
            feeds = {"conditioned": image, "high_res_s0": high_res[0], "high_res_s1": high_res[1]}
            return SamOutput(*run(feeds))

        return track_heads
    if name == "mask_as_output":

        def mask_as_output(
            image: torch.Tensor, high_res: list[torch.Tensor], mask: torch.Tensor
        ) -> SamOutput:
            low, high = model.given_mask_logits(mask)
            pointer, score = run({"features": image, "mask": mask})
            return SamOutput(low, high, pointer, score)

        return mask_as_output

    def encode_memory(
        features: torch.Tensor, mask_logits: torch.Tensor, object_score: torch.Tensor, binarize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = {
            "features": features,
            "mask": memory_mask(mask_logits, binarize),
            "object_score": object_score,
        }
        memory, positions = run(feeds)
        return memory, positions

    return encode_memory
