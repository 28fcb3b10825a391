"""Training logs of the main process: TensorBoard scalars and images, ``log.jsonl``, a tqdm bar.

``log.jsonl`` holds one JSON object per logging step, ``{"it": completed iterations,
"<name>": value, ...}``, with the same scalar names as TensorBoard; reports read it. On resume
the lines after the resumed iteration are dropped (and TensorBoard purges them), so the logs
describe one consistent run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from twoshot.data.masks import DAVIS_PALETTE
from twoshot.fsutil import atomic_open
from twoshot.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

LOG_NAME = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"


class TrainLogger:
    """Logs of one training run in ``out_dir``; every method is a no-op when not ``enabled``.

    start_it: completed iterations at start (0, or the resumed checkpoint's); total: the
    run's iterations (for the bar's ETA); progress: show the tqdm bar.
    """

    def __init__(
        self, out_dir: Path, enabled: bool, start_it: int, total: int, progress: bool = True
    ) -> None:
        self.enabled = enabled
        self.writer: Any = None
        self.log_path = out_dir / LOG_NAME
        self.bar: tqdm | None = None
        if not enabled:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_log(self.log_path, start_it)
        from torch.utils.tensorboard import SummaryWriter  # imported here: ~0.5 s, main rank only

        self.writer = SummaryWriter(
            str(out_dir / TENSORBOARD_DIR), purge_step=start_it if start_it > 0 else None
        )
        self.bar = tqdm(
            total=total,
            initial=start_it,
            unit="it",
            dynamic_ncols=True,
            disable=not progress,
            desc="train",
            smoothing=0.1,
        )

    def step(self, loss: float | None = None) -> None:
        """Advance the bar by one iteration (postfix: the latest loss, when given)."""
        if self.bar is not None:
            self.bar.update(1)
            if loss is not None:
                self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def scalars(self, it: int, values: Mapping[str, float]) -> None:
        """Write scalars at iteration ``it`` to TensorBoard and as one ``log.jsonl`` line."""
        if not self.enabled:
            return
        for name, value in values.items():
            self.writer.add_scalar(name, value, it)
        record = {"it": it, **{k: (None if not math.isfinite(v) else v) for k, v in values.items()}}
        with open(self.log_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def image(self, it: int, tag: str, image: torch.Tensor) -> None:
        """Write an RGB image float [3,H,W] in 0..1 to TensorBoard."""
        if self.enabled:
            self.writer.add_image(tag, image, it)

    def message(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.enabled:
            tqdm.write(text)

    def close(self) -> None:
        """Flush and close the writer and the bar."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _truncate_log(path: Path, start_it: int) -> None:
    """Keep only the lines of iterations <= ``start_it`` (none for a fresh run), atomically."""
    if not path.exists():
        return
    kept = []
    if start_it > 0:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("it", math.inf) <= start_it:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in kept))


def _palette() -> torch.Tensor:
    colors = torch.tensor(list(DAVIS_PALETTE[: 3 * 8]), dtype=torch.float32).view(8, 3) / 255.0
    return colors


def colorize(labels: torch.Tensor) -> torch.Tensor:
    """Class map int [H,W] (0..7, -1 ignored) -> RGB float [3,H,W] (DAVIS colours, grey = -1)."""
    colors = _palette()
    rgb = colors[labels.clamp(min=0).long().cpu()].permute(2, 0, 1)
    return torch.where((labels < 0).cpu()[None], torch.full_like(rgb, 0.5), rgb)


def denormalize(rgb: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised [...,3,H,W] -> RGB in 0..1."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (rgb.detach().float().cpu() * std + mean).clamp(0, 1)


def clip_grid(
    rgb: torch.Tensor, targets: torch.Tensor, probs: torch.Tensor, max_samples: int = 2
) -> torch.Tensor:
    """Image grid of a batch: per sample three rows (frames, targets, predictions).

    rgb [B,T,3,H,W] normalised; targets int64 [B,T,H,W] (cls_gt, -1 grey); probs
    [B,T-1,K+1,H,W] predictions of frames 1..T-1 (frame 0's prediction column shows its
    target). Returns float [3, rows*H, T*W] in 0..1.
    """
    rows = []
    for b in range(min(max_samples, rgb.shape[0])):
        frames = [denormalize(rgb[b, t]) for t in range(rgb.shape[1])]
        truth = [colorize(targets[b, t]) for t in range(targets.shape[1])]
        pred = [truth[0]] + [colorize(probs[b, t].argmax(0)) for t in range(probs.shape[1])]
        rows += [torch.cat(frames, 2), torch.cat(truth, 2), torch.cat(pred, 2)]
    return torch.cat(rows, 1)


def accumulate_window(
    sums: dict[str, torch.Tensor], loss: Any, ious: dict[str, torch.Tensor], grad_norm: torch.Tensor | None
) -> None:
    """Add one iteration's loss terms (``loss``: a loss result with ``total``, ``frames`` and
    ``terms``), IoU counts and gradient norm to the logging window's sums (no host sync)."""
    items: dict[str, torch.Tensor] = {"loss": loss.total.detach().float()}
    for i, frame_loss in enumerate(loss.frames, start=1):
        items[f"loss_frame{i}"] = frame_loss.float()
    for name, term in loss.terms.items():
        items[f"loss_{name}"] = term.float()
    items.update(ious)
    if grad_norm is not None:
        items["grad_norm"] = grad_norm.detach().float()
    for name, value in items.items():
        sums[name] = sums[name] + value if name in sums else value.clone()
