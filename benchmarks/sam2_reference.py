"""SAM 2.1: twoshot's network and propagator against the reference video predictor.

Builds the reference ``SAM2VideoPredictor`` (facebookresearch/sam2, from a checkout the user
gives with ``--reference``) from its config (``configs/sam2.1/sam2.1_hiera_t.yaml`` by
default) with the overrides its ``build_sam2_video_predictor`` applies (dynamic multimask,
binarised memory of given masks, ``fill_hole_area`` 8) and a small ``image_size`` (``--size
toy``: that config with twoshot's ``sam2-toy`` trunk, see below), and
twoshot's :class:`~twoshot.model.sam2.Sam2` with the same weights: random ones (seeded,
twoshot's state dict loaded into the reference with ``strict=True``; the object-score head's
last bias raised so that objects are seen and the masks are not empty), or a published
checkpoint with ``--checkpoint``. Both run on a generated video at ``image_size`` x
``image_size`` (no resizing anywhere), its frames read from the same JPEG files, under
``torch.autocast("cpu", dtype=torch.bfloat16)`` as SAM 2 is meant to run.

Cases (each object tracked on its own, as SAM 2 does):

- ``forward``: objects 1 and 2 given on frame 0, object 3 entering (given) on frame
  ``--enter``. Reference: ``tools/vos_inference.py``'s per-object protocol: per object,
  ``reset_state``, ``add_new_mask`` on its first frame, ``propagate_in_video`` from there;
  the objects' logits combined by ``_apply_non_overlapping_constraints`` and > 0.
  twoshot: ``PropagationEngine.frames`` in the ``forward`` direction.
- ``bidirectional``: all objects given on two labeled frames, each other frame from its
  nearest labeled frame (twoshot's pseudo-label scheme). Reference: per labeled frame and
  object, a fresh state, ``add_new_mask`` there, ``propagate_in_video(start_frame_idx=...,
  reverse=False)`` and, in another fresh state, ``reverse=True``. twoshot: the engine in
  ``bidirectional`` direction; each frame compared with the reference run of its source frame and
  direction.
- ``multi``: objects 1 and 2 given on frame 0 and again on frame ``--second`` in one forward
  run. Reference: per object, ``add_new_mask`` on both frames, then ``propagate_in_video``
  (every frame reads both conditioning frames, also the later one). twoshot: the engine in
  ``forward`` mode with both frames annotated.
- ``non-square``: the ``forward`` case's objects 1 and 2 on a video of ``--non-square``
  (H, W) pixels (default 3/4 x 5/4 of ``image_size``, multiples of 16: no padding), which
  both sides resize to ``image_size`` x ``image_size``: the reference's JPEG loader with
  PIL's ``resize`` (bicubic on the uint8 frame), twoshot as its propagator does.

``clicks`` (``--sections clicks``): click-to-segment, as ``twoshot annotate`` does it, against
the reference's ``add_new_points_or_box`` on a frame not tracked yet (an initial
conditioning frame: no memory, the frame segmented from its prompts alone), with the
prompts added one call at a time (``clear_old_points=False`` after the first, so each call
feeds the previous call's logits back as the mask prompt). Frames of a generated video that
are not square (3/4 x 5/4 of ``image_size``), so that coordinates are normalised by the
frame's width and height and the masks come back at the frame's size. The reference resizes
frames with PIL where twoshot resizes tensors; to compare the prompt path itself, the
reference's loaded frames are replaced by twoshot's network input (``prepare_image``).
Prompt chains per frame: a positive click on an object, a negative one on it, a positive
one on the background; a box around another object, a negative click in it, a positive one;
a lone negative click. Every step's mask at the frame's size is compared.

Each case runs with the reference's hole filling (its compiled connected-components
extension replaced, in this process only, by twoshot's CPU one) and without it (the
extension absent, as on any CPU install: the reference warns and skips the step; twoshot
with ``fill_hole_area`` 0). Printed per case: the share of compared pixels with equal
labels (annotated frames excluded) and the frames that are bit-identical; with ``--fp32``,
also twoshot's float32 mode against the same bfloat16 reference.

The reference needs only PyYAML, PIL, numpy, tqdm and torch (all twoshot dependencies):
its package ``__init__`` (Hydra) is bypassed, ``iopath`` is stubbed and the config's
``_target_`` entries are instantiated here. Nothing of it is installed or imported by twoshot.

``--size toy`` builds twoshot's ``sam2-toy`` in the reference: the tiny config with the toy
trunk and one memory-attention layer, and windows that cover the whole map where the toy
has global attention on a block that starts a stage (the reference's Hiera cannot run
global attention there; a window over the whole map is the same computation).

    python benchmarks/sam2_reference.py --reference /path/to/sam2 [--frames 10] [--image-size 256]
    python benchmarks/sam2_reference.py --reference /path/to/sam2 --sections clicks --size toy
    python benchmarks/sam2_reference.py --reference /path/to/sam2 --cases multi non-square
    python benchmarks/sam2_reference.py --reference /path/to/sam2 --size toy --switches-off

``run(reference, ...) -> dict`` returns the figures.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image

from twoshot.config import InferenceConfig, ModelConfig
from twoshot.data.fixtures import random_video
from twoshot.inference import PropagationEngine
from twoshot.model.sam2 import SIZES, Sam2, Sam2Propagator, connected_components, load_sam2
from twoshot.model.sam2.prompt import NEGATIVE, POSITIVE, PromptSegmenter, prepare_image, prompt_sequence
from twoshot.model.sam2.spec import sam2_sizes

CASES: tuple[str, ...] = ("forward", "bidirectional", "multi", "non-square")
SECTIONS: tuple[str, ...] = ("propagation", "clicks")
CONFIGS = {"toy": "t", "tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
OBJECT_SCORE_BIAS = "sam_mask_decoder.pred_obj_score_head.layers.2.bias"
_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def import_reference(path: Path, fill_holes: bool) -> Any:
    """The reference's ``sam2`` package from a checkout at ``path`` (its ``__init__`` skipped);
    its CUDA connected-components extension replaced by twoshot's CPU one when ``fill_holes``,
    absent otherwise."""
    package = path / "sam2"
    if not (package / "sam2_video_predictor.py").is_file():
        raise SystemExit(f"{path}: not a facebookresearch/sam2 checkout (no sam2/sam2_video_predictor.py)")
    for name in [m for m in sys.modules if m == "sam2" or m.startswith("sam2.")]:
        del sys.modules[name]
    root = types.ModuleType("sam2")
    root.__path__ = [str(package)]
    sys.modules["sam2"] = root
    if "iopath" not in sys.modules:
        for name in ("iopath", "iopath.common", "iopath.common.file_io"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["iopath.common.file_io"].g_pathmgr = None  # type: ignore[attr-defined]
    if fill_holes:
        extension = types.ModuleType("sam2._C")

        def get_connected_componnets(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return connected_components(mask)

        extension.get_connected_componnets = get_connected_componnets  # type: ignore[attr-defined]
        sys.modules["sam2._C"] = extension
    module = importlib.import_module("sam2.sam2_video_predictor")
    setattr(module, "tqdm", lambda items, **kwargs: items)  # noqa: B010 - no progress bars
    return module


def _numbers(node: Any) -> Any:
    """YAML 1.1 reads ``1e-6`` as a string: such strings become floats (as OmegaConf reads them)."""
    if isinstance(node, dict):
        return {k: _numbers(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_numbers(v) for v in node]
    if isinstance(node, str) and _FLOAT.match(node):
        return float(node)
    return node


def instantiate(node: Any) -> Any:
    """Build a Hydra-style config node: dicts with ``_target_`` become objects, recursively."""
    if isinstance(node, list):
        return [instantiate(v) for v in node]
    if not isinstance(node, dict):
        return node
    kwargs = {k: instantiate(v) for k, v in node.items() if k != "_target_"}
    if "_target_" not in node:
        return kwargs
    module, _, name = node["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)(**kwargs)


def build_reference(
    path: Path, size: str, image_size: int, state: dict[str, torch.Tensor], model_like: Sam2 | None = None
) -> Any:
    """The reference ``SAM2VideoPredictor`` of ``size`` at ``image_size`` with weights ``state``
    (``toy``: the tiny config with ``sam2-toy``'s trunk and memory attention depth), with the
    SAM heads' switches of ``model_like`` (None: the published configs')."""
    config_file = path / "sam2" / "configs" / "sam2.1" / f"sam2.1_hiera_{CONFIGS[size]}.yaml"
    model = _numbers(yaml.safe_load(config_file.read_text()))["model"]
    model["_target_"] = "sam2.sam2_video_predictor.SAM2VideoPredictor"
    model["image_size"] = image_size
    if size == "toy":  # twoshot's own size: the tiny config with the toy trunk and one memory layer
        toy = SIZES["toy"]
        # The toy's global-attention blocks 2 and 3 start a stage (query pooling), which the
        # reference's Hiera cannot run (its window arithmetic divides by zero there). A block
        # takes the window of the stage before it; windows that cover the whole map (16 and 8
        # tokens for blocks 2 and 3 at a 128-pixel input) are global attention.
        model["image_encoder"]["trunk"].update(
            embed_dim=toy.embed_dim,
            num_heads=toy.num_heads,
            stages=list(toy.stages),
            global_att_blocks=[],
            window_spec=[toy.window_spec[0], image_size // 8, image_size // 16, toy.window_spec[3]],
            window_pos_embed_bkg_spatial_size=list(toy.pos_embed_size),
        )
        model["image_encoder"]["neck"]["backbone_channel_list"] = toy.channel_list
        model["memory_attention"]["num_layers"] = toy.memory_layers
    # build_sam2_video_predictor's post-processing overrides
    dynamic = True
    if model_like is not None:
        model["use_high_res_features_in_sam"] = model_like.use_high_res_features
        model["multimask_output_in_sam"] = model_like.multimask_output_in_sam
        model["multimask_output_for_tracking"] = model_like.multimask_output_for_tracking
        dynamic = model_like.sam_mask_decoder.dynamic_multimask
    model["sam_mask_decoder_extra_args"] = {
        "dynamic_multimask_via_stability": dynamic,
        "dynamic_multimask_stability_delta": 0.05,
        "dynamic_multimask_stability_thresh": 0.98,
    }
    model["binarize_mask_from_pts_for_mem_enc"] = True
    model["fill_hole_area"] = 8
    predictor = instantiate(model)
    predictor.load_state_dict(state, strict=True)
    return predictor.eval()


def write_jpegs(frames: np.ndarray, folder: Path) -> np.ndarray:
    """Write frames as ``00000.jpg``... and return them as decoded (what both sides read)."""
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
    return np.stack(
        [np.array(Image.open(folder / f"{i:05d}.jpg").convert("RGB")) for i in range(len(frames))]
    )


def reference_run(
    predictor: Any, state: Any, masks: dict[int, np.ndarray], start: int, reverse: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """One object's reference run: ``masks`` {frame: bool [H, W]} given, propagated from
    ``start``; yields (frame, float32 [H, W] logits at video resolution)."""
    predictor.reset_state(state)
    for frame, mask in masks.items():
        predictor.add_new_mask(state, frame, 1, mask)
    for frame, _, logits in predictor.propagate_in_video(state, start_frame_idx=start, reverse=reverse):
        yield frame, logits[0, 0].float().numpy()


def combine(logits: list[np.ndarray | None], ids: list[int], shape: tuple[int, int]) -> np.ndarray:
    """Per-object logits (None: not tracked on this frame) -> uint8 ids, as the reference's
    per-object evaluation combines them: the highest logit keeps a pixel, if positive."""
    stack = np.stack([np.full(shape, -1024.0, np.float32) if x is None else x for x in logits])
    best = stack.argmax(0)
    labels = np.asarray(ids, np.uint8)[best]
    return np.where(stack.max(0) > 0, labels, 0).astype(np.uint8)


def reference_forward(
    predictor: Any, state: Any, labels: np.ndarray, given: dict[int, np.ndarray]
) -> dict[int, np.ndarray]:
    """The ``forward`` case with the reference: {frame: uint8 ids} for every frame."""
    ids = sorted({int(o) for m in given.values() for o in np.unique(m) if o})
    first = {obj: min(f for f, m in given.items() if (m == obj).any()) for obj in ids}
    per_object: dict[int, dict[int, np.ndarray]] = {}
    for obj in ids:
        start = first[obj]
        per_object[obj] = dict(reference_run(predictor, state, {start: given[start] == obj}, start, False))
    shape = labels.shape[1:]
    return {f: combine([per_object[o].get(f) for o in ids], ids, shape) for f in range(len(labels))}


def reference_bidirectional(
    predictor: Any, state: Any, labels: np.ndarray, labeled: list[int]
) -> dict[tuple[int, int], np.ndarray]:
    """The ``bidirectional`` case with the reference: {(source, frame): uint8 ids} for every
    frame each labeled frame's forward and backward runs reach."""
    out: dict[tuple[int, int], np.ndarray] = {}
    for source in labeled:
        ids = [int(o) for o in np.unique(labels[source]) if o]
        for reverse in (False, True):
            runs = {
                obj: dict(reference_run(predictor, state, {source: labels[source] == obj}, source, reverse))
                for obj in ids
            }
            for frame in runs[ids[0]]:
                out[(source, frame)] = combine([runs[o].get(frame) for o in ids], ids, labels.shape[1:])
    return out


def reference_multi(
    predictor: Any, state: Any, labels: np.ndarray, given: list[int]
) -> dict[int, np.ndarray]:
    """The ``multi`` case with the reference: {frame: uint8 ids}, every object given on every
    frame of ``given`` before one forward ``propagate_in_video``."""
    ids = [int(o) for o in np.unique(labels[given[0]]) if o]
    per_object = {
        obj: dict(reference_run(predictor, state, {f: labels[f] == obj for f in given}, given[0], False))
        for obj in ids
    }
    return {
        f: combine([per_object[o].get(f) for o in ids], ids, labels.shape[1:]) for f in range(len(labels))
    }


def twoshot_engine(model: Sam2, amp: bool, fill_hole_area: int, num_frames: int) -> PropagationEngine:
    """twoshot's engine for SAM 2: exact layouts, bfloat16 autocast with ``amp`` (else fp32)."""
    config = InferenceConfig(size=-1, exact=True, amp=amp, amp_dtype="bfloat16", device="cpu")
    engine = PropagationEngine(model, config, "cpu")
    assert isinstance(engine.propagator, Sam2Propagator)
    engine.propagator.fill_hole_area = fill_hole_area
    engine.propagator.num_frames = num_frames
    return engine


def agreement(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Share of equal pixels and of bit-identical frames over (twoshot, reference) label pairs,
    and the reference's share of object pixels (a check that the masks are not trivial)."""
    equal = sum(int((a == b).sum()) for a, b in pairs)
    total = sum(a.size for a, _ in pairs)
    same = sum(bool((a == b).all()) for a, b in pairs)
    foreground = sum(int((b > 0).sum()) for _, b in pairs)
    return {
        "pixels_equal": equal / total,
        "frames_identical": same,
        "frames": len(pairs),
        "reference_foreground": foreground / total,
    }


def benchmark_model(size: str, image_size: int, checkpoint: Path | None, switches_off: bool = False) -> Sam2:
    """twoshot's model: the published weights of ``checkpoint``, or random ones (from torch's
    current seed) whose object-score bias is raised so that objects are seen; switches_off:
    random weights with ``model.sam2``'s high-res features, multimask and dynamic multimask off."""
    if checkpoint is not None:
        model = load_sam2(checkpoint, size=size, image_size=image_size)
    elif switches_off:
        config = ModelConfig(kind="sam2")
        sizes = sam2_sizes(config)
        sizes.size, sizes.image_size = size, image_size
        sizes.use_high_res_features_in_sam = sizes.multimask_output_in_sam = False
        sizes.dynamic_multimask_via_stability = False
        model = Sam2(config)
        with torch.no_grad():
            model.state_dict()[OBJECT_SCORE_BIAS].fill_(4.0)
    else:
        model = Sam2(SIZES[size].with_image_size(image_size))
        with torch.no_grad():
            model.state_dict()[OBJECT_SCORE_BIAS].fill_(4.0)
    return model.eval()


def run(
    reference: Path,
    *,
    size: str = "tiny",
    image_size: int = 256,
    num_frames: int = 10,
    enter: int = 3,
    seed: int = 0,
    checkpoint: Path | None = None,
    fp32: bool = False,
    cases: tuple[str, ...] = CASES,
    second: int = 5,
    non_square: tuple[int, int] | None = None,
    switches_off: bool = False,
) -> dict[str, Any]:
    """``cases`` with and without hole filling; returns {case/mode: agreement figures}."""
    torch.manual_seed(seed)
    model = benchmark_model(size, image_size, checkpoint, switches_off)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    frames, labels = random_video(
        num_frames, (image_size, image_size), object_ids=(1, 2, 3), first_frames={3: enter}, seed=seed
    )
    first = labels[0].copy()
    first[first == 3] = 0
    given = {0: first, enter: np.where(labels[enter] == 3, 3, 0).astype(np.uint8)}
    labeled = [1, num_frames - 2]
    multi = [0, second]
    multi_labels = labels.copy()
    multi_labels[multi_labels == 3] = 0
    wide = non_square or (image_size * 3 // 4 // 16 * 16, image_size * 5 // 4 // 16 * 16)
    wide_frames, wide_labels = random_video(num_frames, wide, object_ids=(1, 2), seed=seed + 1)
    results: dict[str, Any] = {}
    reference_labels: dict[bool, dict[int, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as wide_tmp:
        frames = write_jpegs(frames, Path(tmp))
        wide_frames = write_jpegs(wide_frames, Path(wide_tmp))
        for fill in (True, False):
            import_reference(reference, fill)
            predictor = build_reference(reference, size, image_size, weights, model)
            with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
                warnings.simplefilter("ignore")
                started = time.perf_counter()
                state = predictor.init_state(tmp)
                ref_forward = reference_forward(predictor, state, labels, given) if "forward" in cases else {}
                ref_both = (
                    reference_bidirectional(predictor, state, labels, labeled)
                    if "bidirectional" in cases
                    else {}
                )
                ref_multi = reference_multi(predictor, state, multi_labels, multi) if "multi" in cases else {}
                ref_wide: dict[int, np.ndarray] = {}
                if "non-square" in cases:
                    wide_state = predictor.init_state(wide_tmp)
                    ref_wide = reference_forward(predictor, wide_state, wide_labels, {0: wide_labels[0]})
                ref_seconds = time.perf_counter() - started
            reference_labels[fill] = ref_forward
            modes = [("bf16", True)] + ([("fp32", False)] if fp32 else [])
            for mode, amp in modes:
                engine = twoshot_engine(model, amp, 8 if fill else 0, num_frames)
                started = time.perf_counter()
                tag = f"{'fill' if fill else 'no-fill'}/{mode}"
                if "forward" in cases:
                    outs = list(engine.frames(frames, given))  # forward
                    pairs = [(o.labels, ref_forward[o.frame]) for o in outs if o.frame not in given]
                    results[f"forward/{tag}"] = agreement(pairs)
                if "bidirectional" in cases:
                    both = list(
                        engine.frames(frames, {f: labels[f] for f in labeled}, direction="bidirectional")
                    )
                    both_pairs = [
                        (o.labels, ref_both[(o.source, o.frame)])
                        for o in both
                        if o.frame not in labeled and o.source is not None
                    ]
                    results[f"bidirectional/{tag}"] = agreement(both_pairs)
                if "multi" in cases:
                    outs = engine.frames(frames, {f: multi_labels[f] for f in multi})  # forward
                    by_frame = {o.frame: (o.labels, ref_multi[o.frame]) for o in outs if o.frame not in multi}
                    results[f"multi/{tag}"] = agreement(list(by_frame.values()))
                    before = [pair for f, pair in by_frame.items() if f < second]
                    results[f"multi, frames before {second}/{tag}"] = agreement(before)
                if "non-square" in cases:
                    outs = engine.frames(wide_frames, {0: wide_labels[0]})  # forward
                    wide_pairs = [(o.labels, ref_wide[o.frame]) for o in outs if o.frame != 0]
                    results[f"non-square {wide[0]}x{wide[1]}/{tag}"] = agreement(wide_pairs)
                seconds = time.perf_counter() - started
                results[f"seconds/{tag}"] = {"twoshot": seconds, "reference": ref_seconds}
    if "forward" in cases:
        changed = sum(
            int((reference_labels[True][f] != reference_labels[False][f]).sum()) for f in range(num_frames)
        )
        results["hole-filling changes (reference, forward case)"] = changed
    return results


def click_chains(labels: np.ndarray) -> list[tuple[tuple[float, float, float, float] | None, list[Any]]]:
    """Prompt chains on a frame with objects 1 and 2 (labels uint8 [H, W]): (box or None,
    clicks [(x, y, label)]), each click a further step."""

    def inside(obj: int, which: float) -> tuple[float, float]:
        ys, xs = np.nonzero(labels == obj)
        i = int(which * (len(xs) - 1))
        return float(xs[i]) + 0.5, float(ys[i]) + 0.5

    ys, xs = np.nonzero(labels == 0)
    background = (float(xs[len(xs) // 3]), float(ys[len(ys) // 3]))
    ys2, xs2 = np.nonzero(labels == 2)
    box = (float(xs2.min()) - 1.5, float(ys2.min()) - 1.5, float(xs2.max()) + 2.5, float(ys2.max()) + 2.5)
    height, width = labels.shape
    box = (max(0.0, box[0]), max(0.0, box[1]), min(float(width), box[2]), min(float(height), box[3]))
    return [
        (None, [(*inside(1, 0.5), POSITIVE), (*inside(1, 0.9), NEGATIVE), (*background, POSITIVE)]),
        (box, [(*inside(2, 0.2), NEGATIVE), (*inside(2, 0.7), POSITIVE)]),
        (None, [(*inside(1, 0.3), NEGATIVE)]),
    ]


def reference_clicks(
    predictor: Any, state: Any, frame: int, box: Any, clicks: list[Any]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """One chain with the reference: per step, (mask bool [H, W], logits float32 [H, W])."""
    predictor.reset_state(state)
    out = []
    calls: list[tuple[Any, list[Any]]] = ([(box, [])] if box is not None else []) + [
        (None, [c]) for c in clicks
    ]
    for n, (call_box, call_clicks) in enumerate(calls):
        points = [[x, y] for x, y, _ in call_clicks] or None
        point_labels = [label for _, _, label in call_clicks] or None
        _, _, logits = predictor.add_new_points_or_box(
            state, frame, 1, points=points, labels=point_labels, box=call_box, clear_old_points=n == 0
        )
        logits = logits[0, 0].float().numpy()
        out.append((logits > 0, logits))
    return out


def run_clicks(
    reference: Path, model: Sam2, size: str, image_size: int, frames_to_click: int = 2, seed: int = 0
) -> dict[str, Any]:
    """The ``clicks`` section, with and without hole filling: {mode: figures}."""
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    shape = (3 * image_size // 4, 5 * image_size // 4)
    frames, labels = random_video(frames_to_click, shape, object_ids=(1, 2), seed=seed)
    config = InferenceConfig(size=-1, exact=True, amp=True, amp_dtype="bfloat16", device="cpu")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        frames = write_jpegs(frames, Path(tmp))
        for fill in (True, False):
            import_reference(reference, fill)
            predictor = build_reference(reference, size, image_size, weights, model)
            segmenter = PromptSegmenter(model, config, "cpu", fill_hole_area=8 if fill else 0)
            equal = total = identical = steps = foreground = 0
            worst = 0.0
            with warnings.catch_warnings(), torch.autocast("cpu", dtype=torch.bfloat16):
                warnings.simplefilter("ignore")
                state = predictor.init_state(tmp)
                # The same network input on both sides (the reference's own frames come from PIL).
                state["images"] = torch.cat([prepare_image(f, image_size) for f in frames])
                state["cached_features"] = {}
                for frame in range(frames_to_click):
                    features = segmenter.features(frames[frame])
                    for box, clicks in click_chains(labels[frame]):
                        expected = reference_clicks(predictor, state, frame, box, clicks)
                        chain = None
                        for n, (ref_mask, ref_logits) in enumerate(expected):
                            count = n + (0 if box is not None else 1)
                            points = prompt_sequence(box, clicks[:count])
                            logits, chain = segmenter.segment(features, points, shape, chain)
                            mask = logits.numpy() > 0
                            equal += int((mask == ref_mask).sum())
                            total += mask.size
                            identical += bool((mask == ref_mask).all())
                            foreground += int(ref_mask.sum())
                            worst = max(worst, float(np.abs(logits.numpy() - ref_logits).max()))
                            steps += 1
            results[f"clicks/{'fill' if fill else 'no-fill'}"] = {
                "pixels_equal": equal / total,
                "steps_identical": identical,
                "steps": steps,
                "reference_foreground": foreground / total,
                "max_logit_difference": worst,
            }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of facebookresearch/sam2")
    parser.add_argument("--size", choices=list(CONFIGS), default="tiny")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--enter", type=int, default=3, help="frame where object 3 enters")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", type=Path, help="published weights instead of random ones")
    parser.add_argument("--fp32", action="store_true", help="also twoshot's float32 mode")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument(
        "--switches-off",
        action="store_true",
        help="random weights with high-res features, multimask and dynamic multimask off on both sides",
    )
    parser.add_argument("--second", type=int, default=5, help="multi: the second given frame")
    parser.add_argument(
        "--non-square", type=int, nargs=2, metavar=("H", "W"), help="non-square: the frame size"
    )
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    if set(sections) - set(SECTIONS):
        parser.error(f"--sections: expected some of {', '.join(SECTIONS)}")
    results: dict[str, Any] = {}
    if "propagation" in sections:
        results.update(
            run(
                args.reference,
                size=args.size,
                image_size=args.image_size,
                num_frames=args.frames,
                enter=args.enter,
                seed=args.seed,
                checkpoint=args.checkpoint,
                fp32=args.fp32,
                cases=tuple(args.cases),
                second=args.second,
                non_square=tuple(args.non_square) if args.non_square else None,
                switches_off=args.switches_off,
            )
        )
    if "clicks" in sections:
        torch.manual_seed(args.seed)
        model = benchmark_model(args.size, args.image_size, args.checkpoint, args.switches_off)
        started = time.perf_counter()
        results.update(run_clicks(args.reference, model, args.size, args.image_size, seed=args.seed))
        print(f"clicks: {time.perf_counter() - started:.1f} s")
    for key, value in results.items():
        if key.startswith("clicks/"):
            print(
                f"{key:28s} {100 * value['pixels_equal']:.4f}% pixels equal, "
                f"{value['steps_identical']}/{value['steps']} steps identical, largest logit "
                f"difference {value['max_logit_difference']:.3g} "
                f"(reference: {100 * value['reference_foreground']:.1f}% object pixels)"
            )
        elif isinstance(value, int):
            print(f"{key}: {value} pixels")
        elif key.startswith("seconds/"):
            print(f"{key:28s} twoshot {value['twoshot']:.1f} s, reference {value['reference']:.1f} s")
        else:
            print(
                f"{key:28s} {100 * value['pixels_equal']:.4f}% pixels equal, "
                f"{value['frames_identical']}/{value['frames']} frames identical "
                f"(reference: {100 * value['reference_foreground']:.1f}% object pixels)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
