"""Helpers shared by test modules (imported as ``from helpers import ...``; pytest puts this
folder on the path): loading benchmark scripts, the tiny in-memory clip dataset and training
config, straightforward re-implementations of STCN's inference, and tiny videos on disk.
No test module imports another; what two of them need lives here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from twoshot.config import Config, load_config
from twoshot.data.augment import Jitter
from twoshot.data.batch import ClipBatch
from twoshot.data.layout import VideoSequence
from twoshot.data.masks import write_frame, write_mask
from twoshot.data.readers import open_dataset
from twoshot.errors import UserError
from twoshot.inference.bank_quality import score_bank_folder
from twoshot.model import STCN
from twoshot.model.aggregate import aggregate
from twoshot.model.preprocess import normalize_images, pad_divide_by, unpad

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` as the module ``name`` (registered in ``sys.modules``,
    where its dataclasses look their module up)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------
# From test_train.py


class ToyClips(Dataset):
    """Clips of moving squares on noise, drawn from the *global* NumPy generator (which the
    trainer seeds per sample); every even sample has a second object."""

    def __init__(
        self,
        n: int = 6,
        size: int = 32,
        frames: int = 3,
        prefix: str = "v",
        fail_on: int | None = None,
        labeled_frames: int | None = None,
    ) -> None:
        self.n, self.size, self.frames, self.prefix, self.fail_on = n, size, frames, prefix, fail_on
        # Frames from this index on are unlabeled (cls_gt -1, labeled False), as phase-1 clips.
        self.labeled_frames = labeled_frames
        self.epoch, self.max_skip = 0, 5
        self.seen: list[tuple[int, int, int]] = []  # (epoch, max_skip, index), main process

    def __len__(self) -> int:
        return self.n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_max_skip(self, max_skip: int) -> None:
        self.max_skip = max_skip

    def __getitem__(self, index: int) -> ClipBatch:
        if index == self.fail_on:
            raise UserError(f"video {self.prefix}{index}: no object in any annotation mask")
        self.seen.append((self.epoch, self.max_skip, index))
        s, steps = self.size, self.frames
        rgb = torch.from_numpy(np.random.rand(steps, 3, s, s).astype(np.float32))
        cls = torch.zeros(steps, s, s, dtype=torch.int64)
        second = index % 2 == 0
        for t in range(steps):
            y, x = np.random.randint(0, s // 2, 2)
            cls[t, y : y + s // 3, x : x + s // 3] = 1
            if second:
                cls[t, s - s // 4 :, : s // 4] = 2
            rgb[t, 0] += (cls[t] == 1).float()
            rgb[t, 1] += (cls[t] == 2).float()
        labeled = torch.ones(steps, dtype=torch.bool)
        first = torch.stack([cls[0] == 1, cls[0] == 2]).float()  # frame 0 is always labeled
        if self.labeled_frames is not None:
            labeled[self.labeled_frames :] = False
            cls[self.labeled_frames :] = -1
        return ClipBatch.single(
            rgb=rgb,
            first_masks=first,
            cls_gt=cls,
            selector=torch.tensor([1.0, 1.0 if second else 0.0]),
            labeled=labeled,
            name=f"{self.prefix}{index}",
            frames=range(steps),
        )


# Both toy configurations: 6 iterations of batch 2 in the main process, BatchNorm frozen,
# checkpoints and images every 3, logs every 2, lr 1e-3 dropped at 4.
_TOY_MAIN = (
    "main.iterations=6",
    "main.batch_size=2",
    "main.num_workers=0",
    "main.save_every=3",
    "main.freeze_bn=true",
    "main.log_every=2",
    "main.image_every=3",
    "main.lr=1e-3",
    "main.lr_steps=[4]",
)


def toy_config(*overrides: str) -> Config:
    """The tiny preset, shrunk to a few CPU iterations on 32 px clips, BatchNorm frozen and
    the loss bootstrapped (to 15% of the pixels) as STCN, learning rate 1e-3."""
    bootstrapped = ("main.loss_top_p=0.15", "main.loss_start_warm=2", "main.loss_end_warm=5")
    return load_config("tiny", overrides=[*_TOY_MAIN, *bootstrapped, *overrides])


def cutie_toy_config(*overrides: str) -> Config:
    """The cutie-tiny preset shrunk as :func:`toy_config` (BatchNorm frozen, 6 iterations of
    batch 2 on 32 px clips), scoring 256 loss points per frame."""
    return load_config("cutie-tiny", overrides=[*_TOY_MAIN, "main.cutie.num_points=256", *overrides])


# ------------------------------------------------------------------------------------------
# From test_inference.py


@contextlib.contextmanager
def batch_invariant_convolutions() -> Iterator[None]:
    """oneDNN may pick another convolution algorithm for a batch of 8 frames than for one
    (results then differ by ~1e-6); the native kernels compute each frame alike."""
    previous = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = previous


def _prepare(frames: np.ndarray, size: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    images = normalize_images(torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous())
    if size != -1:
        h, w = frames.shape[1:3]
        new = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
        images = F.interpolate(images, size=new, mode="bilinear", align_corners=False, antialias=True)
    return pad_divide_by(images, 16)


def _onehot(labels: np.ndarray, ids: list[int], shape: tuple[int, int]) -> torch.Tensor:
    x = torch.from_numpy(labels)
    if tuple(x.shape) != shape:
        x = F.interpolate(x[None, None].float(), size=shape, mode="nearest")[0, 0]
    return pad_divide_by(torch.stack([(x == o).float() for o in ids]), 16)[0]


def _to_labels(
    prob: torch.Tensor, pad: tuple[int, int, int, int], size: tuple[int, int], ids: list[int]
) -> np.ndarray:
    p = unpad(prob, pad)
    p = F.interpolate(p[:, None], size, mode="bilinear", align_corners=False)[:, 0]
    return torch.tensor([0, *ids], dtype=torch.uint8)[p.argmax(0)].numpy()


def reference_davis(
    model: STCN,
    frames: np.ndarray,
    first_mask: np.ndarray,
    *,
    mem_every: int = 5,
    top_k: int = 20,
    include_last: bool = False,
    size: int = -1,
) -> np.ndarray:
    """STCN's InferenceCore: objects of frame 0, forward, memory every mem_every-th frame."""
    ids = [int(o) for o in np.unique(first_mask) if o]
    with torch.inference_mode():
        images, pad = _prepare(frames, size)
        processed = unpad(images, pad).shape[-2:]
        num = len(frames)
        prob = torch.zeros(len(ids) + 1, num, *images.shape[-2:])
        prob[0] = 1e-7
        prob[:, 0] = aggregate(_onehot(first_mask, ids, tuple(processed))[None], dim=1)[0]
        feats = model.encode_key(images[0:1])
        mem_k = feats.key.flatten(2)
        mem_v = model.encode_value(images[0:1], feats.f16, prob[None, 1:, 0]).flatten(3)
        temp = None
        for t in range(1, num):
            feats = model.encode_key(images[t : t + 1])
            mk, mv = mem_k, mem_v
            if temp is not None:
                mk, mv = torch.cat([mk, temp[0]], 2), torch.cat([mv, temp[1]], 3)
            _, out = model.segment(feats, mk, mv, top_k)
            prob[:, t] = out[0]
            if t != num - 1:
                is_mem = t % mem_every == 0
                if include_last or is_mem:
                    value = model.encode_value(images[t : t + 1], feats.f16, out[:, 1:]).flatten(3)
                    if is_mem:
                        mem_k = torch.cat([mem_k, feats.key.flatten(2)], 2)
                        mem_v = torch.cat([mem_v, value], 3)
                        temp = None
                    else:
                        temp = (feats.key.flatten(2), value)
        return np.stack([_to_labels(prob[:, t], pad, frames.shape[1:3], ids) for t in range(num)])


# ------------------------------------------------------------------------------------------
# From test_clips.py


CROP = 32


RED, GREEN, BLUE_BG = (230, 30, 30), (30, 210, 40), (40, 60, 170)


def draw_frame(height: int, width: int, t: int, objects: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """A frame of two moving rectangles (red = object 1, green = object 2) on blue, and its labels."""
    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = BLUE_BG
    labels = np.zeros((height, width), dtype=np.uint8)
    boxes = [
        (height // 5, width // 8 + 2 * t, height // 2, width // 3),
        (height // 2, width // 2 - t, height // 3, width // 3),
    ]
    for obj, (top, left, h, w) in enumerate(boxes[:objects], 1):
        image[top : top + h, left : left + w] = RED if obj == 1 else GREEN
        labels[top : top + h, left : left + w] = obj
    return image, labels


def make_video(
    root: Path,
    name: str,
    num_frames: int = 8,
    size: tuple[int, int] = (40, 56),
    labeled: list[int] | None = None,
    objects: int = 2,
    suffix: str = ".jpg",
    empty_masks: bool = False,
) -> VideoSequence:
    """Write a tiny video (frames + a mask PNG for every frame) and return its VideoSequence
    with ``mask_paths`` for ``labeled`` (all frames if None)."""
    frame_dir, mask_dir = root / "JPEGImages" / name, root / "Annotations" / name
    frame_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    frame_paths, names, mask_paths = [], [], {}
    for t in range(num_frames):
        image, labels = draw_frame(size[0], size[1], t, objects)
        stem = f"{t:05d}"
        write_frame(frame_dir / f"{stem}{suffix}", image)
        write_mask(mask_dir / f"{stem}.png", labels * 0 if empty_masks else labels)
        frame_paths.append(frame_dir / f"{stem}{suffix}")
        names.append(stem)
        if labeled is None or t in labeled:
            mask_paths[t] = mask_dir / f"{stem}.png"
    return VideoSequence(name=name, frame_paths=frame_paths, frame_names=names, mask_paths=mask_paths)


NO_COLOUR = dict(clip_jitter=Jitter(), frame_jitter=Jitter(), grayscale_p=0.0)


def uniform_neighbourhood(labels: np.ndarray, radius: int = 2) -> np.ndarray:
    """True where every label in the (2r+1)^2 window around a pixel is the same."""
    padded = np.pad(labels, radius, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (2 * radius + 1,) * 2)
    return windows.min(axis=(-1, -2)) == windows.max(axis=(-1, -2))


def written_j_and_f(predictions: Path, data: Path, split: str = "val") -> float:
    """J&F of the label PNGs ``predictions/<video>/<frame>.png`` against the ground truth of a
    DAVIS-layout ``data`` split (frame 0 given), scored as the pipeline scores a model."""
    sequences = open_dataset("davis", data, split)
    first_frames = {seq.name: [seq.frame_names[0]] for seq in sequences}
    return score_bank_folder(predictions, sequences, first_frames).j_and_f
