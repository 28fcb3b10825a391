"""Throughput of the VOS clip augmentation with OpenCV, albumentations and kornia, side by side.

Each candidate runs the same pipeline (STCN's: shared flip, random resized crop 0.36-1,
colour jitter 0.1/0.03/0.03, grayscale 5%; per frame affine +-15 deg / shear 10 with nearest
masks, jitter 0.01; ImageNet normalisation to a [3, 3, S, S] tensor) on the same three
480x854 frames and label masks, in this one process with one thread (like one DataLoader
worker), for each crop size. The candidates take turns for several rounds (a shared machine's
load then hits them alike) and the median round is reported, in clips per second, as a
Markdown table.

    python benchmarks/augment_throughput.py                 # 96 and 384 crops, ~40 s in all
    python benchmarks/augment_throughput.py --seconds 3 --rounds 5 --sizes 96 384

Candidates whose library is not installed are reported as such (pip install albumentations
kornia to compare).
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable

import cv2
import numpy as np
import torch

from twoshot.data.augment import IMAGENET_MEAN, IMAGENET_STD, ClipAugment, to_normalized_tensor

Clip = tuple[list[np.ndarray], list[np.ndarray]]
Runner = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def make_inputs(height: int, width: int, seed: int = 0) -> Clip:
    """Three frames (uint8 [H, W, 3]) of textured background with two moving ellipses, and
    their label maps (uint8 [H, W], objects 1 and 2)."""
    rng = np.random.default_rng(seed)
    background = cv2.GaussianBlur(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), (0, 0), 3)
    frames, masks = [], []
    for t in range(3):
        image = background.copy()
        labels = np.zeros((height, width), dtype=np.uint8)
        for obj, (cx, cy, color) in enumerate(((0.3, 0.5, (220, 40, 40)), (0.65, 0.4, (40, 200, 60))), 1):
            center = (int(width * cx) + 12 * t, int(height * cy) + 5 * t)
            axes = (width // 8, height // 6)
            cv2.ellipse(image, center, axes, 15 * t, 0, 360, color, -1)
            cv2.ellipse(labels, center, axes, 15 * t, 0, 360, obj, -1)
        frames.append(image)
        masks.append(labels)
    return frames, masks


def opencv_runner(inputs: Clip, size: int) -> Runner:
    """twoshot.data.augment.ClipAugment (plain OpenCV + numpy)."""
    augment = ClipAugment(size)
    rng = np.random.default_rng(1)
    frames, masks = inputs

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        pixels, labels = augment(rng, frames, masks)
        return to_normalized_tensor(pixels), torch.from_numpy(np.stack(labels))

    return run


def albumentations_runner(inputs: Clip, size: int) -> Runner:
    """albumentations 2.x: a shared Compose over the three frames (additional targets), then a
    per-frame Compose; normalisation to a tensor as in the OpenCV path."""
    import albumentations as A

    targets = {"image1": "image", "image2": "image", "mask1": "mask", "mask2": "mask"}
    shared = A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.RandomResizedCrop(
                (size, size),
                scale=(0.36, 1.0),
                interpolation=cv2.INTER_CUBIC,
                mask_interpolation=cv2.INTER_NEAREST,
                area_for_downscale="image",
            ),
            A.ColorJitter(brightness=0.1, contrast=0.03, saturation=0.03, hue=0.0, p=1.0),
            A.ToGray(p=0.05),
        ],
        additional_targets=targets,
        seed=1,
    )
    fill = tuple(round(255 * m) for m in IMAGENET_MEAN)
    per_frame = A.Compose(
        [
            A.Affine(
                rotate=(-15, 15),
                shear={"x": (-10, 10), "y": (0, 0)},
                interpolation=cv2.INTER_CUBIC,
                mask_interpolation=cv2.INTER_NEAREST,
                fill=fill,
                fill_mask=0,
                p=1.0,
            ),
            A.ColorJitter(brightness=0.01, contrast=0.01, saturation=0.01, hue=0.0, p=1.0),
            A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        ],
        seed=2,
    )
    frames, masks = inputs

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        out = shared(
            image=frames[0], image1=frames[1], image2=frames[2], mask=masks[0], mask1=masks[1], mask2=masks[2]
        )
        images, labels = [], []
        for image_key, mask_key in (("image", "mask"), ("image1", "mask1"), ("image2", "mask2")):
            frame = per_frame(image=out[image_key], mask=out[mask_key])
            images.append(frame["image"])
            labels.append(frame["mask"])
        rgb = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))
        return rgb, torch.from_numpy(np.stack(labels))

    return run


def kornia_runner(inputs: Clip, size: int) -> Runner:
    """kornia: one AugmentationSequential with the clip as a batch of 3 (same_on_batch for the
    shared part), images and masks as data keys (masks resampled nearest)."""
    import kornia.augmentation as K

    mean = torch.tensor(IMAGENET_MEAN)
    shared = K.AugmentationSequential(
        K.RandomHorizontalFlip(p=0.5, same_on_batch=True),
        K.RandomResizedCrop((size, size), scale=(0.36, 1.0), resample="BICUBIC", same_on_batch=True),
        K.ColorJitter(0.1, 0.03, 0.03, 0.0, p=1.0, same_on_batch=True),
        K.RandomGrayscale(p=0.05, same_on_batch=True),
        data_keys=["input", "mask"],
    )
    per_frame = K.AugmentationSequential(
        K.RandomAffine(
            degrees=15, shear=(-10, 10), resample="BICUBIC", padding_mode="fill", fill_value=mean, p=1.0
        ),
        K.ColorJitter(0.01, 0.01, 0.01, 0.0, p=1.0),
        K.Normalize(mean=torch.tensor(IMAGENET_MEAN), std=torch.tensor(IMAGENET_STD)),
        data_keys=["input", "mask"],
    )
    frames, masks = inputs
    torch.manual_seed(1)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float().div_(255)
        labels = torch.from_numpy(np.stack(masks))[:, None].float()
        images, labels = shared(images, labels)
        images, labels = per_frame(images, labels)
        return images, labels[:, 0].to(torch.uint8)

    return run


CANDIDATES: dict[str, Callable[[Clip, int], Runner]] = {
    "opencv (twoshot.data.augment)": opencv_runner,
    "albumentations": albumentations_runner,
    "kornia": kornia_runner,
}


def _version(name: str) -> str:
    try:
        module = __import__(name)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "?"))


def measure(run: Runner, seconds: float, warmup: int = 3) -> float:
    """Clips per second of ``run`` over about ``seconds`` after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    count, start = 0, time.perf_counter()
    while True:
        rgb, labels = run()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count / elapsed


def main() -> None:
    """Run every candidate at every crop size and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[96, 384], help="crop sizes")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (median kept)")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    args = parser.parse_args()

    torch.set_num_threads(1)  # one DataLoader worker's share
    cv2.setNumThreads(1)
    inputs = make_inputs(args.height, args.width)
    print(
        f"inputs: 3 frames {args.width}x{args.height}; 1 process, 1 thread; "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"opencv {cv2.__version__}, albumentations {_version('albumentations')}, "
        f"kornia {_version('kornia')}; {platform.processor() or platform.machine()}"
    )
    print()
    cells: dict[str, list[str]] = {name: [] for name in CANDIDATES}
    for size in args.sizes:
        runners: dict[str, Runner] = {}
        for name, factory in CANDIDATES.items():
            try:
                runners[name] = factory(inputs, size)
            except ImportError as exc:
                cells[name].append(f"n/a ({exc.name} not installed)")
                continue
            rgb, labels = runners[name]()
            # Same output for every candidate: normalised frames and label maps at the crop.
            assert tuple(rgb.shape) == (3, 3, size, size) and rgb.dtype == torch.float32, name
            assert tuple(labels.shape) == (3, size, size), name
        rates: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                rates[name].append(measure(run, args.seconds))
        for name, values in rates.items():
            cells[name].append(f"{float(np.median(values)):.1f}")
    print("| candidate | " + " | ".join(f"{s}x{s} clips/s" for s in args.sizes) + " |")
    print("|---|" + "---:|" * len(args.sizes))
    for name, row in cells.items():
        print(f"| {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
