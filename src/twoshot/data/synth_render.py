"""Procedural scenes for generated videos: rendering frames + labels of a scene sampled by
:mod:`twoshot.data.synth_scene`.

Rendering works on each actor's bounding box only, with OpenCV (``fillPoly`` for the
anti-aliased outline, ``remap`` for the texture, ``warpAffine`` for the camera), so a
96x96 frame with a few actors takes a few milliseconds. All randomness comes from the
``numpy.random.Generator`` passed in, so a scene is a pure function of its seed and arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from twoshot.data.synth_config import SynthConfig
from twoshot.data.synth_scene import MAX_WIGGLE, Actor, PlacementError, Scene, sample_scene


@dataclass
class RenderedVideo:
    """Frames, labels and per-object visibility counts of a rendered scene.

    frames: uint8 [T, H, W, 3]; labels: uint8 [T, H, W] (0 background, 1..n objects).
    area: [T, n] pixels of each object's full (unclipped, unoccluded) mask.
    in_frame: [T, n] of those inside the frame; visible: [T, n] left after occlusion.
    """

    frames: np.ndarray
    labels: np.ndarray
    area: np.ndarray
    in_frame: np.ndarray
    visible: np.ndarray


def _intersect(
    x0: int, y0: int, w: int, h: int, width: int, height: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Overlap of a box (x0, y0, w, h) with the frame: (frame slices, box slices) or None."""
    fx0, fy0 = max(0, x0), max(0, y0)
    fx1, fy1 = min(width, x0 + w), min(height, y0 + h)
    if fx0 >= fx1 or fy0 >= fy1:
        return None
    return ((slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - y0, fy1 - y0), slice(fx0 - x0, fx1 - x0)))


def _warp(
    q_u: np.ndarray, q_v: np.ndarray, actor: Actor, t: int, sign: float
) -> tuple[np.ndarray, np.ndarray]:
    """Add (sign=+1) or approximately remove (sign=-1) the actor's smooth non-rigid warp.

    The warp bends shape and texture together (a limb that flexes, cloth that ripples),
    so the object deforms instead of sliding a rigid texture under a changing outline.
    """
    if actor.wobble <= 0:
        return q_u, q_v
    ph = actor.wobble_phase[t]
    amp = np.float32(sign * actor.wobble)
    return (
        q_u + amp * np.sin(np.float32(actor.wobble_freq[0]) * q_v + np.float32(ph[0])),
        q_v + amp * np.sin(np.float32(actor.wobble_freq[1]) * q_u + np.float32(ph[1])),
    )


def _draw_actor(
    actor: Actor, t: int, scene: Scene, with_rgb: bool = True
) -> tuple[int, int, np.ndarray, np.ndarray | None]:
    """Rasterise an actor at frame ``t`` over its whole (unclipped) bounding box.

    Each part's contour is sampled as a polygon in local units, warped, stretched, rotated
    and scaled to pixels, and filled anti-aliased with OpenCV (sub-pixel vertices): far
    cheaper than testing every pixel against the Fourier contour. The texture is sampled
    with ``remap`` through the inverse of the same transform.

    Returns (x0, y0, alpha float32 [h, w], rgb float32 [h, w, 3] or None without ``with_rgb``).
    """
    cx, cy = actor.centers[t]
    px = actor.radius * actor.scale[t]  # pixels per local unit before stretch
    sx, sy = actor.stretch[t]
    ext = (float(actor.reach_t[t]) + actor.wobble) * px * max(sx, sy) + 2.0
    x0, y0 = int(math.floor(cx - ext)), int(math.floor(cy - ext))
    n = int(math.ceil(2 * ext)) + 1
    ca, sa = math.cos(actor.angle[t]), math.sin(actor.angle[t])
    ox, oy = cx - x0, cy - y0  # actor centre in box pixels
    canvas = np.zeros((n, n), np.uint8)
    for part in actor.parts:
        perimeter = 2 * np.pi * part.size * px * max(sx, sy) * (1 + MAX_WIGGLE)
        count = int(np.clip(perimeter / 1.5, 24, 512))
        phi = np.linspace(0.0, 2 * np.pi, count, endpoint=False)
        k = np.arange(1, part.coeffs.shape[1] + 1)
        radius = part.size * (1.0 + (np.exp(1j * np.outer(phi, k)) @ part.coeffs[t]).real)
        q_u, q_v = _warp(
            part.offset[t, 0] + radius * np.cos(phi), part.offset[t, 1] + radius * np.sin(phi), actor, t, +1.0
        )
        d_u, d_v = q_u * (px * sx), q_v * (px * sy)
        xs = ox + ca * d_u - sa * d_v
        ys = oy + sa * d_u + ca * d_v
        # 4 fractional bits: 1/16-pixel vertices, so slow motion is smooth, not jumpy.
        pts = np.round(np.stack([xs, ys], axis=1) * 16).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 255, lineType=cv2.LINE_AA, shift=4)
    alpha = canvas.astype(np.float32) * np.float32(1 / 255)
    if not with_rgb:
        return x0, y0, alpha, None
    grid = np.arange(n, dtype=np.float32)
    dx = (grid - np.float32(ox))[None, :]
    dy = (grid - np.float32(oy))[:, None]
    u = np.float32(ca / (px * sx)) * dx + np.float32(sa / (px * sx)) * dy
    v = np.float32(-sa / (px * sy)) * dx + np.float32(ca / (px * sy)) * dy
    q_u, q_v = _warp(u, v, actor, t, -1.0)
    tex = (
        actor.tex_a
        if actor.morph[t] < 1e-3
        else actor.tex_a * np.float32(1 - actor.morph[t]) + actor.tex_b * np.float32(actor.morph[t])
    )
    scale_tex = np.float32((tex.shape[0] - 1) / (2 * actor.reach))
    map_x = (q_u + np.float32(actor.reach)) * scale_tex
    map_y = (q_v + np.float32(actor.reach)) * scale_tex
    rgb = cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    # OpenCV for the per-channel products: numpy broadcasting over a last axis of 3 is
    # several times slower, and this is the inner loop of the generator.
    gain = tuple(float(g) for g in actor.gain[t]) + (0.0,)
    if scene.shading > 0:
        # Darker rim (box-blurred coverage < 1 near the outline) and a lit side: reads as
        # a rounded solid, not a flat cut-out.
        rim_size = 2 * max(1, int(0.3 * px)) + 1
        rim = cv2.blur(alpha, (rim_size, rim_size))
        lx, ly = actor.light
        shade = (
            1.0
            - 0.8 * scene.shading * (1.0 - rim)
            + np.float32(0.3 * scene.shading / actor.reach) * (lx * u + ly * v)
        )
        rgb = cv2.multiply(rgb, cv2.cvtColor(shade, cv2.COLOR_GRAY2RGB))
    rgb = cv2.multiply(rgb, gain)  # a 4-tuple is OpenCV's per-channel scalar
    return x0, y0, alpha, rgb


def _compose(
    scene: Scene, t: int, with_rgb: bool = True
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """Draw frame ``t`` before lighting and noise.

    Returns (image float32 [H, W, 3] or None without ``with_rgb``, labels uint8 [H, W],
    area [n], in_frame [n]): pixels of each object's full mask and of its part in the frame.
    """
    h, w = scene.height, scene.width
    image = None
    if with_rgb:
        image = cv2.warpAffine(
            scene.canvas,
            scene.camera[t],
            (w, h),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REFLECT,
        )
    labels = np.zeros((h, w), np.uint8)
    area = np.zeros(scene.num_objects, np.int64)
    in_frame = np.zeros(scene.num_objects, np.int64)
    order = sorted(range(len(scene.actors)), key=lambda i: (scene.actors[i].depth[t], i))
    for index in order:
        actor = scene.actors[index]
        x0, y0, alpha, rgb = _draw_actor(actor, t, scene, with_rgb)
        n = alpha.shape[0]
        inside = alpha >= 0.5
        if actor.label:
            area[actor.label - 1] = int(np.count_nonzero(inside))
        if image is not None and scene.shadow > 0:
            # A soft drop shadow below-right of the actor grounds it in the scene.
            off = max(1, int(round(0.12 * actor.radius * actor.scale[t])))
            pad = off + 3
            k = 2 * max(1, int(0.8 * off)) + 1
            soft = cv2.blur(
                cv2.copyMakeBorder(alpha, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0), (k, k)
            )
            box = _intersect(x0 - pad + off, y0 - pad + off, n + 2 * pad, n + 2 * pad, w, h)
            if box is not None:
                frame_sl, box_sl = box
                dark = 1.0 - np.float32(scene.shadow) * soft[box_sl]
                image[frame_sl] = cv2.multiply(image[frame_sl], cv2.cvtColor(dark, cv2.COLOR_GRAY2RGB))
        box = _intersect(x0, y0, n, n, w, h)
        if box is None:
            continue
        frame_sl, box_sl = box
        if image is not None and rgb is not None:
            a3 = cv2.cvtColor(np.ascontiguousarray(alpha[box_sl]), cv2.COLOR_GRAY2RGB)
            region = image[frame_sl]
            region += (rgb[box_sl] - region) * a3  # type: ignore[arg-type]  # float32 region
        # The nearest actor owns a pixel: a distractor in front erases the label (0).
        labels[frame_sl][inside[box_sl]] = actor.label
        if actor.label:
            in_frame[actor.label - 1] = int(np.count_nonzero(inside[box_sl]))
    return image, labels, area, in_frame


def scene_noise(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene's sensor-noise field in gray levels, float32 [H', W', 3], drawn once from ``rng``."""
    if scene.noise_bank is None:
        h, w = scene.height, scene.width
        if scene.frames > 1:
            h, w = h + max(16, h // 2), w + max(16, w // 2)
        scene.noise_bank = rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(255.0 * scene.noise)
    return scene.noise_bank


def _finish(scene: Scene, t: int, image: np.ndarray, noise_rng: np.random.Generator | None) -> np.ndarray:
    """Apply frame ``t``'s lighting and sensor noise to a composed image -> uint8 [H, W, 3]."""
    h, w = scene.height, scene.width
    yy = (np.arange(h, dtype=np.float32) / h - 0.5)[:, None]
    xx = (np.arange(w, dtype=np.float32) / w - 0.5)[None, :]
    pa, pb = scene.light_plane[t]
    plane = np.maximum(0.2, 1.0 + np.float32(pa) * xx + np.float32(pb) * yy)
    gain = tuple(255.0 * float(g) for g in scene.light_gain[t]) + (0.0,)
    # OpenCV types its result as any numeric array; the product of float32 images is float32
    # (asarray neither copies nor converts it), which the in-place float additions below need.
    lit = cv2.multiply(cv2.multiply(image, cv2.cvtColor(plane, cv2.COLOR_GRAY2RGB)), gain)
    image = np.asarray(lit, dtype=np.float32)
    if noise_rng is not None and scene.noise > 0:
        # A shifted window of one noise field per video: drawing fresh Gaussian noise for
        # every frame was the single most expensive step, and grain this faint shows no
        # repetition.
        bank = scene_noise(scene, noise_rng)
        oy = int(noise_rng.integers(bank.shape[0] - h + 1))
        ox = int(noise_rng.integers(bank.shape[1] - w + 1))
        image += bank[oy : oy + h, ox : ox + w]
    image += 0.5  # round, not truncate
    np.clip(image, 0, 255, out=image)
    return image.astype(np.uint8)


def render_frame(
    scene: Scene, t: int, noise_rng: np.random.Generator | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Render frame ``t``. Returns (rgb uint8 [H, W, 3], labels uint8 [H, W], area, in_frame).

    area / in_frame: [n] pixels of each object's full mask and of its part inside the frame.
    ``noise_rng`` draws the sensor noise (None: no noise).
    """
    image, labels, area, in_frame = _compose(scene, t)
    assert image is not None
    return _finish(scene, t, image, noise_rng), labels, area, in_frame


def first_frame_ok(scene: Scene, min_share: float, min_pixels: int) -> bool:
    """True if every object shows at least ``min_share`` of its mask (and ``min_pixels``) in frame 0."""
    _, labels, area, _ = _compose(scene, 0, with_rgb=False)
    visible = np.bincount(labels.ravel(), minlength=scene.num_objects + 1)[1:]
    return bool(np.all(visible >= np.maximum(min_pixels, min_share * area)))


def render_video(scene: Scene) -> RenderedVideo:
    """Render every frame of a scene with its labels and visibility counts."""
    t_count, n = scene.frames, scene.num_objects
    frames = np.zeros((t_count, scene.height, scene.width, 3), np.uint8)
    labels = np.zeros((t_count, scene.height, scene.width), np.uint8)
    area = np.zeros((t_count, n), np.int64)
    in_frame = np.zeros((t_count, n), np.int64)
    visible = np.zeros((t_count, n), np.int64)
    noise_rng = np.random.default_rng(scene.noise_seed)
    for t in range(t_count):
        frames[t], labels[t], area[t], in_frame[t] = render_frame(scene, t, noise_rng)
        visible[t] = np.bincount(labels[t].ravel(), minlength=n + 1)[1 : n + 1]
    return RenderedVideo(frames, labels, area, in_frame, visible)


def make_video(
    rng: np.random.Generator,
    frames: int,
    height: int,
    width: int,
    num_objects: int,
    cfg: SynthConfig,
    attempts: int = 40,
) -> RenderedVideo:
    """Sample scenes until frame 0 shows every object well enough, then render all frames.

    The visibility demanded of frame 0 relaxes over the attempts (from
    ``cfg.first_frame_visible`` of each object's mask down to a few pixels), so crowded
    settings still succeed; raises :class:`PlacementError` if none does.
    """
    min_pixels = max(9, int(0.001 * height * width))
    for attempt in range(attempts):
        scene = sample_scene(rng, frames, height, width, num_objects, cfg)
        share = cfg.first_frame_visible * (1.0 - attempt / attempts)
        if first_frame_ok(scene, share, min_pixels):
            return render_video(scene)
    raise PlacementError(
        f"could not place {num_objects} objects visibly in a {height}x{width} frame in {attempts} tries"
    )
