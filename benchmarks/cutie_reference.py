"""Cutie: twoshot's network and propagator against the reference implementation.

Builds the reference ``CUTIE`` (hkchengrex/Cutie, from a checkout the user gives with
``--reference``) and twoshot's :class:`~twoshot.model.cutie.Cutie` with the same random
weights (twoshot's state dict loaded into the reference with ``strict=True``), runs the
reference ``InferenceCore`` with its evaluation defaults (``eval_config.yaml``) and
twoshot's propagator on a generated video, and prints the share of pixels whose argmax
label agrees, and the largest probability difference.

The video (``twoshot.data.fixtures.random_video``): rectangles moving over a blocky
background, objects 1 and 2 annotated on frame 0 and object 3 entering (and annotated) on
frame ``--enter``. Cases:

- ``native``: frames at 128x176 (``--native-size``; a multiple of 16: no padding), FIFO
  working memory;
- ``resized``: 150x230 frames resized (bilinear, antialiased) to shorter side 100 and padded
  to 112x160, outputs upsampled back to 150x230 before the argmax (as the reference's
  evaluation does), FIFO working memory;
- ``long-term``: native size with the reference's long-term memory (``use_long_term``,
  min 5 / max 10 frames, 128 prototypes) and a memory frame every 2 frames, its long-term
  cap lowered to ``--max-tokens`` (and ``--buffer-tokens``) so that the least-used
  prototypes are dropped too.

twoshot runs its own ``PropagationEngine`` (``twoshot infer``'s code path) on the original
frames and masks: it prepares frames as the reference does for Cutie (resize in [0, 1],
pad with black, normalise), plans the memory frames, overlays the annotations and maps the
outputs back to the original size. The reference needs ``omegaconf`` (``pip install
omegaconf``); ``torchvision`` is stubbed when missing (no reference module used here needs
it); its ImageNet downloads are skipped (the weights are replaced anyway).

    python benchmarks/cutie_reference.py --reference /path/to/Cutie               # small, ~1 min
    python benchmarks/cutie_reference.py --reference /path/to/Cutie --model base  # ~70 s
    python benchmarks/cutie_reference.py --reference /path/to/Cutie --default-path  # twoshot infer's path

``run(reference, ...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from twoshot.config import InferenceConfig, load_config
from twoshot.data.fixtures import random_video
from twoshot.inference import PropagationEngine
from twoshot.model.cutie import Cutie, CutiePropagator, MemorySettings

CASES: tuple[str, ...] = ("native", "resized", "long-term")
NATIVE = (128, 176)
ORIGINAL = (150, 230)
RESIZED_SHORT_SIDE = 100


def import_reference(path: Path) -> dict[str, Any]:
    """The reference's CUTIE, InferenceCore and OmegaConf, imported from a checkout at ``path``."""
    if not (path / "cutie" / "model" / "cutie.py").is_file():
        raise SystemExit(f"{path}: not a Cutie checkout (no cutie/model/cutie.py)")
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - a broken torchvision is as good as none here
        sys.modules["torchvision"] = types.ModuleType("torchvision")
    from omegaconf import OmegaConf

    sys.path.insert(0, str(path))
    from cutie.model.utils import resnet

    # Random weights replace everything: skip the ImageNet download of the reference's ResNets.
    resnet.model_zoo = types.SimpleNamespace(load_url=lambda *args, **kwargs: {})
    resnet.load_weights_add_extra_dim = lambda *args, **kwargs: None
    from cutie.inference.inference_core import InferenceCore
    from cutie.model.cutie import CUTIE

    return {"CUTIE": CUTIE, "InferenceCore": InferenceCore, "OmegaConf": OmegaConf}


def reference_config(
    ref: dict[str, Any],
    path: Path,
    model: str,
    *,
    mem_every: int,
    long_term: bool,
    max_tokens: int,
    buffer_tokens: int,
) -> Any:
    """The reference's evaluation config: eval_config.yaml defaults with model ``base`` or ``small``."""
    conf = ref["OmegaConf"]
    model_cfg = conf.load(path / "cutie" / "config" / "model" / "base.yaml")
    if model == "small":
        small = conf.load(path / "cutie" / "config" / "model" / "small.yaml")
        small.pop("defaults", None)
        model_cfg = conf.merge(model_cfg, small)
    evaluation = conf.load(path / "cutie" / "config" / "eval_config.yaml")
    for key in ("defaults", "hydra", "datasets"):
        evaluation.pop(key, None)
    cfg = conf.merge(evaluation, {"model": model_cfg})
    cfg.mem_every = mem_every
    cfg.use_long_term = long_term
    cfg.long_term.max_num_tokens = max_tokens
    cfg.long_term.buffer_tokens = buffer_tokens
    return cfg


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Random weights beyond the initialisation: BatchNorm statistics and affine terms too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 * torch.randn(module.bias.shape, generator=generator))
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
                module.running_var.copy_(
                    0.5 + 1.5 * torch.rand(module.running_var.shape, generator=generator)
                )


def make_video(size: tuple[int, int], frames: int, enter: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames uint8 [T, H, W, 3], labels uint8 [T, H, W]) with object 3 entering at ``enter``."""
    return random_video(frames, size, object_ids=(1, 2, 3), first_frames={3: enter}, seed=seed)


def annotations(labels: np.ndarray, enter: int) -> dict[int, np.ndarray]:
    """Frame 0's objects 1, 2 and frame ``enter``'s object 3 alone (YouTube-VOS style)."""
    first = labels[0].copy()
    first[first == 3] = 0
    later = np.where(labels[enter] == 3, 3, 0).astype(np.uint8)
    return {0: first, enter: later}


def prepare(
    frames: np.ndarray, masks: dict[int, np.ndarray], size: tuple[int, int] | None
) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Frames as float [T, 3, h, w] in [0, 1] and masks as long [h, w], resized to ``size``
    (bilinear antialiased / nearest) when given."""
    # Channels-first memory, as torchvision's ToTensor gives the reference's evaluation.
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float().contiguous() / 255
    if size is not None:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    out = {}
    for t, m in masks.items():
        y = torch.from_numpy(m.astype(np.int64))
        if size is not None:
            y = F.interpolate(y[None, None].float(), size=size, mode="nearest")[0, 0].long()
        out[t] = y
    return x, out


def processing_size(height: int, width: int, short: int) -> tuple[int, int]:
    """Shorter side ``short``, the longer one scaled and truncated (torchvision's Resize)."""
    if height <= width:
        return short, int(short * width / height)
    return int(short * height / width), short


def run_reference(
    ref: dict[str, Any],
    network: torch.nn.Module,
    cfg: Any,
    images: torch.Tensor,
    masks: dict[int, torch.Tensor],
) -> list[torch.Tensor]:
    """The reference InferenceCore over the frames: one [1+K, h, w] probability map per frame."""
    core = ref["InferenceCore"](network, cfg=cfg)
    outputs = []
    for t in range(images.shape[0]):
        mask = masks.get(t)
        objects = None if mask is None else [int(o) for o in torch.unique(mask) if o != 0]
        outputs.append(core.step(images[t], mask, objects, end=t == images.shape[0] - 1).clone())
    return outputs


def run_engine(
    model: Cutie,
    config: InferenceConfig,
    settings: MemorySettings | None,
    video: np.ndarray,
    masks: dict[int, np.ndarray],
) -> list[torch.Tensor]:
    """twoshot's PropagationEngine over the original frames (it resizes, pads and maps back
    itself); one float [1+K, H, W] probability map per frame at the original size, channels
    in object-id order (objects not yet annotated are zero)."""
    engine = PropagationEngine(model, config, "cpu")
    if settings is not None:  # the long-term case's lowered token cap
        engine.propagator = CutiePropagator(model, config, settings=settings)
    result = engine.propagate(video, masks, probabilities=True)
    assert result.probabilities is not None
    return [torch.from_numpy(p) for p in result.probabilities]


def compare(
    ours: Sequence[torch.Tensor], theirs: Sequence[torch.Tensor], original: tuple[int, int] | None
) -> dict[str, Any]:
    """Agreement of twoshot's outputs (original size, every object's channel) with the
    reference's (upsampled to ``original`` when given; channels of objects not enabled yet
    added as zeros)."""
    equal = total = 0
    max_diff = 0.0
    per_frame = []
    shares = np.zeros(4)
    for a, b in zip(ours, theirs):
        if original is not None:
            b = F.interpolate(b[None], size=original, mode="bilinear", align_corners=False)[0]
        if b.shape[0] < a.shape[0]:  # the reference's channels of objects enabled so far
            b = torch.cat([b, b.new_zeros((a.shape[0] - b.shape[0], *b.shape[1:]))])
        if a.shape != b.shape:
            raise AssertionError(f"output shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
        la, lb = a.argmax(0), b.argmax(0)
        equal += int((la == lb).sum())
        total += la.numel()
        per_frame.append(round(float((la == lb).float().mean()), 5))
        max_diff = max(max_diff, float((a - b).abs().max()))
        shares[: a.shape[0]] += np.bincount(lb.flatten().numpy(), minlength=a.shape[0])[:4]
    return {
        "equal_share": equal / total,
        "worst_frame_share": min(per_frame),
        "per_frame": per_frame,
        "pixels": total,
        "max_prob_diff": max_diff,
        "label_shares": (shares / shares.sum()).round(4).tolist(),
    }


def run(
    reference: str | Path,
    model: str = "small",
    frames: int = 30,
    long_frames: int = 60,
    enter: int = 8,
    seed: int = 0,
    max_tokens: int = 400,
    buffer_tokens: int = 100,
    cases: Sequence[str] = CASES,
    threads: int = 2,
    exact: bool = True,
    channels_last: bool | None = None,
    native: tuple[int, int] = NATIVE,
) -> dict[str, Any]:
    """Run the comparisons (twoshot's exact path, or its default path when not ``exact``,
    with ``inference.channels_last`` set to ``channels_last``);
    returns {case: compare(...) figures and seconds}."""
    torch.set_num_threads(threads)
    path = Path(reference).resolve()
    ref = import_reference(path)
    torch.manual_seed(seed)
    ours = Cutie(load_config(f"cutie-{model}").model).eval()
    randomise(ours, seed)
    results: dict[str, Any] = {"model": model}
    for case in cases:
        if case not in CASES:
            raise SystemExit(f"unknown case {case!r}; choose from {', '.join(CASES)}")
        long_term = case == "long-term"
        mem_every = 2 if long_term else 5
        cfg = reference_config(
            ref,
            path,
            model,
            mem_every=mem_every,
            long_term=long_term,
            max_tokens=max_tokens,
            buffer_tokens=buffer_tokens,
        )
        theirs = ref["CUTIE"](cfg).eval()
        theirs.load_state_dict(ours.state_dict(), strict=True)
        config = InferenceConfig(
            mem_every=mem_every,
            top_k=int(cfg.top_k),
            size=RESIZED_SHORT_SIDE if case == "resized" else -1,
            max_memory_frames=10 if long_term else None,
            device="cpu",
            exact=exact,
            channels_last=channels_last,
        )
        settings = None
        if long_term:
            lt = cfg.long_term
            settings = MemorySettings(
                max_mem_frames=lt.max_mem_frames,
                long_term=True,
                min_mem_frames=lt.min_mem_frames,
                num_prototypes=lt.num_prototypes,
                max_num_tokens=lt.max_num_tokens,
                buffer_tokens=lt.buffer_tokens,
                top_k=int(cfg.top_k),
            )
        size = ORIGINAL if case == "resized" else native
        video, labels = make_video(size, long_frames if long_term else frames, enter, seed)
        target = processing_size(*size, RESIZED_SHORT_SIDE) if case == "resized" else None
        given = annotations(labels, enter)
        images, masks = prepare(video, given, target)
        original = size if case == "resized" else None
        with torch.inference_mode():
            start = time.perf_counter()
            expected = run_reference(ref, theirs, cfg, images, masks)
        middle = time.perf_counter()
        got = run_engine(ours, config, settings, video, given)
        end = time.perf_counter()
        results[case] = {
            **compare(got, expected, original),
            "frames": len(got),
            "reference_s": round(middle - start, 1),
            "twoshot_s": round(end - middle, 1),
        }
    return results


def segment_folders(reference: str | Path, model: str, weights: Path, data: Path, out: Path) -> None:
    """Cutie's own inference over a generic-layout dataset, as its ``eval_vos.py`` loop does
    it for a DAVIS-style video (which needs Hydra and CUDA, so it is not run itself): the
    evaluation config of :func:`reference_config`, CUTIE with the state dict ``weights``,
    one ``InferenceCore`` per video; each JPEG of ``data/JPEGImages/<video>`` read with PIL as
    ``ToTensor`` gives it, the first frame's ``data/Annotations/<video>`` mask (ids 1..K)
    given on frame 0, every frame's argmax written to ``out/<video>/<frame>.png`` with that
    mask's palette. Frames must have a shorter side of 480 (the evaluation's size; no resize)."""
    from PIL import Image

    path = Path(reference).resolve()
    ref = import_reference(path)
    cfg = reference_config(
        ref, path, model, mem_every=5, long_term=False, max_tokens=10_000, buffer_tokens=2_000
    )
    network = ref["CUTIE"](cfg).eval()
    network.load_state_dict(torch.load(weights, map_location="cpu"), strict=True)
    for video in sorted(p.name for p in (data / "JPEGImages").iterdir()):
        frames = sorted((data / "JPEGImages" / video).glob("*.jpg"))
        annotation = Image.open(sorted((data / "Annotations" / video).glob("*.png"))[0])
        mask = torch.from_numpy(np.array(annotation, dtype=np.int64))
        objects = [int(o) for o in torch.unique(mask) if o != 0]
        if objects != list(range(1, len(objects) + 1)):
            raise SystemExit(f"{video}: object ids {objects}, expected 1..K")
        core = ref["InferenceCore"](network, cfg=cfg)
        (out / video).mkdir(parents=True, exist_ok=True)
        with torch.inference_mode():
            for t, frame in enumerate(frames):
                rgb = np.array(Image.open(frame).convert("RGB"), dtype=np.uint8)
                image = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().float().div(255)
                if min(image.shape[-2:]) != 480:
                    raise SystemExit(f"{frame}: shorter side {min(image.shape[-2:])}, expected 480")
                given = (mask, objects) if t == 0 else (None, None)
                prob = core.step(image, *given, end=t == len(frames) - 1)
                labels = Image.fromarray(prob.argmax(0).numpy().astype(np.uint8), mode="P")
                labels.putpalette(annotation.getpalette() or [])
                labels.save(out / video / f"{frame.stem}.png")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", required=True, help="path to a hkchengrex/Cutie checkout")
    parser.add_argument("--model", choices=("small", "base"), default="small")
    parser.add_argument("--frames", type=int, default=30, help="frames of the native and resized cases")
    parser.add_argument("--long-frames", type=int, default=60, help="frames of the long-term case")
    parser.add_argument("--enter", type=int, default=8, help="frame where object 3 appears")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-tokens", type=int, default=400, help="long-term memory cap of the long-term case"
    )
    parser.add_argument(
        "--buffer-tokens",
        type=int,
        default=100,
        help="room made below that cap when it is reached (long-term case)",
    )
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--native-size",
        type=int,
        nargs=2,
        default=NATIVE,
        metavar=("H", "W"),
        help="frame size of the native and long-term cases (multiples of 16)",
    )
    parser.add_argument(
        "--default-path",
        action="store_true",
        help="run twoshot's default path (what twoshot infer runs) instead of inference.exact",
    )
    parser.add_argument(
        "--channels-last",
        action="store_true",
        help="with --default-path: force channels-last convolutions (Cutie's default before issue 34)",
    )
    args = parser.parse_args(argv)
    results = run(
        args.reference,
        args.model,
        args.frames,
        args.long_frames,
        args.enter,
        args.seed,
        args.max_tokens,
        args.buffer_tokens,
        [c.strip() for c in args.cases.split(",") if c.strip()],
        args.threads,
        exact=not args.default_path,
        channels_last=True if args.default_path and args.channels_last else None,
        native=tuple(args.native_size),
    )
    from common import machine_info, machine_line

    print(machine_line(machine_info("cpu")))
    path = "default" if args.default_path else "exact"
    if args.default_path and args.channels_last:
        path += ", channels-last"
    print(f"Cutie-{results.pop('model')}: twoshot ({path} path) vs reference, same random weights")
    print(
        "| case | frames | equal pixels | worst frame | max abs prob diff | label shares (bg, 1, 2, 3) "
        "| reference s | twoshot s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case, r in results.items():
        share = r["equal_share"]
        print(
            f"| {case} | {r['frames']} | {100 * share:.4f}% "
            f"({r['pixels'] - round(share * r['pixels'])} differ) "
            f"| {100 * r['worst_frame_share']:.2f}% | {r['max_prob_diff']:.2e} | {r['label_shares']} "
            f"| {r.get('reference_s', '')} "
            f"| {r.get('twoshot_s', '')} |"
        )
    if not math.isfinite(min(r["max_prob_diff"] for r in results.values())):
        raise SystemExit("non-finite probabilities")


if __name__ == "__main__":
    main()
