"""Activation memory of SAM 2's training step, measured on a CPU, extrapolated to a GPU run.

Runs twoshot's SAM 2 training forward (random weights of a published size) on one clip of
``--frames`` frames with one object at a few input sizes and adds up the bytes of every tensor
autograd keeps for the backward pass (each storage counted once), with the image encoder
trained or frozen and with or without gradient checkpointing. Tensors that hold attention
probabilities ([.., queries, keys] with both sides a token count) are counted apart: the
CPU's attention keeps them, a GPU's fused attention kernels do not.

Activations grow with the number of pixels (the attention matrices with its square), so the
figure at the reference's 1024 px is extrapolated from two sizes: ``a x pixels`` fitted on
the largest measured size. Parameters, gradients and AdamW's two moments are added from the
parameter count (float32: 16 bytes per trained parameter, 4 per frozen one); bfloat16 AMP
keeps activations in 2 bytes instead of 4 for most tensors, reported as a range.

    python benchmarks/sam2_train_memory.py [--size base_plus] [--frames 8] [--pixels 128 256]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import torch

from twoshot.model.sam2 import SIZES, Sam2

GIB = 1024**3


def saved_bytes(model: Sam2, size: int, frames: int) -> tuple[int, int]:
    """(bytes of the saved activations without attention matrices, bytes of attention
    matrices) of one training forward on a ``size`` px clip of ``frames`` frames."""
    torch.manual_seed(0)
    rgb = torch.randn(1, frames, 3, size, size)
    first = torch.zeros(1, 1, size, size)
    first[..., size // 4 : size // 2, size // 4 : size // 2] = 1.0
    seen: set[tuple[int, int]] = set()
    totals = {"other": 0, "attention": 0}
    tokens = {(size // s) ** 2 for s in (4, 8, 16, 32)}

    def pack(tensor: torch.Tensor) -> Any:
        key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if key not in seen:
            seen.add(key)
            shape = tuple(tensor.shape)
            kind = (
                "attention" if len(shape) >= 2 and shape[-2] in tokens and shape[-1] >= shape[-2] else "other"
            )
            totals[kind] += key[1]
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.training_forward(rgb, first, torch.ones(1, 1))
    return totals["other"], totals["attention"]


def measure(size_name: str, frames: int, pixels: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of measured and extrapolated memory for each setting."""
    rows: list[dict[str, Any]] = []
    for frozen in (False, True):
        for recompute in (False, True):
            model = Sam2(SIZES[size_name].with_image_size(pixels[0])).eval()
            model.gradient_checkpointing = recompute
            if frozen:
                for name, param in model.named_parameters():
                    param.requires_grad_(not name.startswith("image_encoder."))
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            total = sum(p.numel() for p in model.parameters())
            measured = {}
            for px in pixels:
                model = _resized(model, px)
                start = time.perf_counter()
                other, attention = saved_bytes(model, px, frames)
                measured[px] = (other, attention, time.perf_counter() - start)
            px = max(pixels)
            other, attention, _ = measured[px]
            scale = (1024 / px) ** 2
            weights = trained * 16 + (total - trained) * 4
            if recompute:  # the backward pass rebuilds one frame's activations at a time
                plain = rows[-1]["activations_1024_gib"] * GIB / scale
                other += plain / frames
            rows.append(
                {
                    "frozen_image_encoder": frozen,
                    "checkpointing": recompute,
                    "measured": {p: (o / GIB, a / GIB, s) for p, (o, a, s) in measured.items()},
                    "activations_1024_gib": other * scale / GIB,
                    "attention_1024_gib_cpu_only": attention * scale * scale / GIB,
                    "weights_and_adamw_gib": weights / GIB,
                    "estimate_gpu_fp32_gib": (other * scale + weights) / GIB,
                    "estimate_gpu_bf16_gib": (other * scale / 2 + weights) / GIB,
                }
            )
    return rows


def _resized(model: Sam2, px: int) -> Sam2:
    """The same weights at input size ``px``."""
    if model.image_size == px:
        return model
    fresh = Sam2(model.size.with_image_size(px)).eval()
    fresh.load_state_dict(model.state_dict())
    fresh.gradient_checkpointing = model.gradient_checkpointing
    for (_, mine), (_, theirs) in zip(fresh.named_parameters(), model.named_parameters()):
        mine.requires_grad_(theirs.requires_grad)
    return fresh


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", default="base_plus", choices=tuple(SIZES))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--pixels", type=int, nargs="+", default=[384, 512])
    opts = parser.parse_args(argv)
    print(f"SAM 2.1 {opts.size}, {opts.frames}-frame clip, one object; GiB (measured: saved tensors)")
    print(
        "| image encoder | checkpointing | saved activations at "
        + " / ".join(f"{p} px" for p in opts.pixels)
        + " | activations at 1024 px | weights + AdamW | estimate fp32 | estimate bf16 AMP |"
    )
    print("|---|---|---|---:|---:|---:|---:|")
    for row in measure(opts.size, opts.frames, opts.pixels):
        measured = " / ".join(f"{o:.3f} (+{a:.3f} attn)" for o, a, _ in row["measured"].values())
        encoder = "frozen" if row["frozen_image_encoder"] else "trained"
        print(
            f"| {encoder} | {row['checkpointing']} | {measured} "
            f"| {row['activations_1024_gib']:.1f} | {row['weights_and_adamw_gib']:.2f} "
            f"| {row['estimate_gpu_fp32_gib']:.1f} | {row['estimate_gpu_bf16_gib']:.1f} |"
        )


if __name__ == "__main__":
    main()
