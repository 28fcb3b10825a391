"""Does a trained SAM 2 read its memory? One clip of a DAVIS-layout video through the training
forward, with every object of frame 0 as its own track, per object and frame:

- the object score, the three masks' predicted IoUs and their actual IoUs with the object's
  ground truth, and the IoU of the chosen mask (highest predicted IoU);
- how much the memory-conditioned features of frame 1 differ between two objects (relative
  norm of the difference): the only place where one object's track can differ from another's.

A model that tracks gives different masks to different objects; one whose outputs are the
same for every object ignores its memory, whatever its training loss.

    python benchmarks/sam2_memory_probe.py WEIGHTS DATA VIDEO [--frames 0,1,2,5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from twoshot.data.masks import read_frame, read_mask
from twoshot.model.checkpoint import load_model
from twoshot.model.preprocess import normalize_images
from twoshot.model.sam2 import Sam2
from twoshot.model.sam2.train_forward import track_objects


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm().clamp_min(1e-12))


def probe(weights: Path, data: Path, video: str, frames: list[int]) -> None:
    """Print the per-object figures described in the module docstring."""
    model = load_model(weights, kind="sam2").eval()
    assert isinstance(model, Sam2)
    images = sorted((data / "JPEGImages" / "480p" / video).iterdir())
    annotations = sorted((data / "Annotations" / "480p" / video).iterdir())
    rgb = normalize_images(
        torch.stack([torch.from_numpy(read_frame(images[f])).permute(2, 0, 1) for f in frames])
    )[None]
    labels = [read_mask(annotations[f])[0] for f in frames]
    ids = [int(i) for i in np.unique(labels[0]) if i != 0]
    first = torch.stack([torch.from_numpy(labels[0] == i).float() for i in ids])[None]
    conditioned: list[torch.Tensor] = []
    attend = model.attend_memory

    def recording(*args: torch.Tensor | int) -> torch.Tensor:
        out = attend(*args)  # type: ignore[arg-type]
        conditioned.append(out)
        return out

    model.attend_memory = recording  # type: ignore[method-assign]
    with torch.no_grad():
        outputs, objects = track_objects(model, rgb, first, torch.ones(1, len(ids)))
    if len(ids) > 1:
        spread = _relative(conditioned[0][0], conditioned[0][1])
        print(f"frame {frames[1]}: conditioned features differ by {spread:.4f} between objects 1 and 2")
    size = labels[0].shape
    for t, out in enumerate(outputs):
        # Masks come at the model's input size; the IoUs are taken at the frame size.
        multimasks, chosen = _at(out.multimasks, size), _at(out.chosen, size)
        for row, (_, slot) in enumerate(objects):
            truth = torch.from_numpy(labels[t] == ids[slot])
            actual = [_iou(multimasks[row, j] > 0, truth) for j in range(multimasks.size(1))]
            print(
                f"frame {frames[t]} object {ids[slot]}: score {out.scores[row].item():+.2f} "
                f"predicted IoU {[round(v, 2) for v in out.ious[row].tolist()]} "
                f"actual {[round(v, 2) for v in actual]} chosen {_iou(chosen[row, 0] > 0, truth):.2f}"
            )


def _at(logits: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Mask logits [N, M, S, S] resized (bilinear) to ``size`` (H, W) when they differ."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def _iou(mask: torch.Tensor, truth: torch.Tensor) -> float:
    return float((mask & truth).sum() / (mask | truth).sum().clamp_min(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", type=Path)
    parser.add_argument("data", type=Path, help="DAVIS-layout folder")
    parser.add_argument("video")
    parser.add_argument("--frames", default="0,1,2,5", help="frame indices of the clip (first: given)")
    args = parser.parse_args()
    probe(args.weights, args.data, args.video, [int(f) for f in args.frames.split(",")])


if __name__ == "__main__":
    main()
