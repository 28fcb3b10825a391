"""Procedural scenes for generated videos: sampling actors and rendering frames + labels.

A scene is a textured background seen by a moving camera plus *actors*: the annotated
objects (label 1..n) and distractors (label 0, drawn like objects from the same texture
families). Every actor is a union of "parts" (1-3 by default), each a blob whose radius
is a Fourier series of the angle; all of an actor's changes over the video are smooth
curves of time: path (through key points, possibly off the frame and back), scale,
rotation, squash and stretch, articulation of its parts, contour harmonics, a sinusoidal
warp of shape and texture, texture blending towards a second crop, colour gain and depth.

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
from twoshot.data.synth_textures import TextureFamily, random_family, texture_patch

# Contour harmonics are scaled so that sum |c_k| stays below this: the radius never drops
# under (1 - _MAX_WIGGLE) of a part's size, so a part never pinches into pieces.
_MAX_WIGGLE = 0.7


class PlacementError(RuntimeError):
    """No layout put every object visibly into the first frame (too many / too big objects)."""


@dataclass
class Part:
    """One blob of an actor, in the actor's local units (1 = the actor's base radius).

    offset: [T, 2] centre of the part relative to the actor centre.
    size: radius of the part.
    coeffs: [T, K] complex contour harmonics; radius(phi) = size * (1 + Re sum c_k e^{ik phi}).
    """

    offset: np.ndarray
    size: float
    coeffs: np.ndarray


@dataclass
class Actor:
    """An object (label >= 1) or a distractor (label 0) with all its per-frame parameters."""

    label: int
    radius: float  # base radius in pixels
    centers: np.ndarray  # [T, 2] x, y in pixels
    scale: np.ndarray  # [T]
    angle: np.ndarray  # [T] radians
    stretch: np.ndarray  # [T, 2] squash and stretch along local x, y
    depth: np.ndarray  # [T] larger = nearer the camera
    wobble: float  # amplitude of the sinusoidal warp, local units
    wobble_freq: tuple[float, float]
    wobble_phase: np.ndarray  # [T, 2]
    parts: list[Part]
    reach: float  # bound on |local point| inside the actor over the whole video
    reach_t: np.ndarray  # [T] the same bound per frame (tighter: smaller boxes to draw)
    tex_a: np.ndarray  # [S, S, 3] texture at the start
    tex_b: np.ndarray  # [S, S, 3] texture it blends towards
    morph: np.ndarray  # [T] blend weight of tex_b
    gain: np.ndarray  # [T, 3] colour gain (appearance drift)
    light: tuple[float, float]  # direction of the shading highlight, local axes


@dataclass
class Scene:
    """Everything needed to render a video; see :func:`sample_scene`."""

    height: int
    width: int
    frames: int
    num_objects: int
    canvas: np.ndarray  # [C, C, 3] background texture
    camera: np.ndarray  # [T, 2, 3] frame pixel -> canvas pixel affine maps
    light_gain: np.ndarray  # [T, 3] global lighting gain
    light_plane: np.ndarray  # [T, 2] a, b of the light gradient 1 + a*x + b*y (x, y in -0.5..0.5)
    actors: list[Actor]
    noise: float  # sensor noise std, 0..1 units
    shading: float
    shadow: float
    noise_seed: int
    noise_bank: np.ndarray | None = None  # made on first use by scene_noise()


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


def _curve(rng: np.random.Generator, s: np.ndarray, trend: float = 1.0) -> np.ndarray:
    """A smooth random curve over normalised time ``s`` (0..1), values within about -1..1.

    A random linear trend (persistent drift, weight ``trend``) plus two slow sinusoids
    (wandering), so a quantity both drifts away from its start and wobbles.
    """
    out = trend * rng.uniform(-1, 1) * (s - 0.5) * 2.0
    for _ in range(2):
        freq = rng.uniform(0.3, 1.3)
        out = out + 0.5 * rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * s + rng.uniform(0, 2 * np.pi))
    return out / (trend + 1.0)


def _catmull_rom(keys: np.ndarray, frames: int) -> np.ndarray:
    """Interpolate key points [K, 2] spread evenly over ``frames`` frames -> [frames, 2], C1."""
    if len(keys) == 1 or frames == 1:
        return np.repeat(keys[:1], frames, axis=0)
    pts = np.concatenate([2 * keys[:1] - keys[1:2], keys, 2 * keys[-1:] - keys[-2:-1]])
    pos = np.linspace(0.0, len(keys) - 1, frames)
    seg = np.minimum(pos.astype(np.int64), len(keys) - 2)
    u = (pos - seg)[:, None]
    p0, p1, p2, p3 = pts[seg], pts[seg + 1], pts[seg + 2], pts[seg + 3]
    return 0.5 * (
        (2 * p1)
        + (-p0 + p2) * u
        + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2
        + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3
    )


def _path(
    rng: np.random.Generator,
    start: np.ndarray,
    frames: int,
    height: int,
    width: int,
    extent: float,
    cfg: SynthConfig,
    leaves: bool,
) -> np.ndarray:
    """Centre path [T, 2] through random key points; with ``leaves`` one key is off-frame.

    Key points come every ``cfg.keyframe_every`` frames, a random step of about
    ``cfg.motion`` x frame size per frame apart, kept inside the frame by reflection. An
    off-frame key sits ``extent`` (the actor's full reach) beyond the nearest border, so the
    actor fully leaves; it is never the first key (frame 0 must show every object) and,
    when there is a later key, not the last one either, so it usually comes back.
    """
    n_keys = max(2, math.ceil((frames - 1) / max(1, cfg.keyframe_every)) + 1) if frames > 1 else 1
    keys = np.zeros((n_keys, 2))
    keys[0] = start
    frames_per_key = (frames - 1) / max(1, n_keys - 1)
    step = cfg.motion * max(height, width) * frames_per_key
    lo = np.array([0.0, 0.0]) + 0.3 * extent
    hi = np.array([width, height], float) - 0.3 * extent
    hi = np.maximum(hi, lo + 1.0)
    for k in range(1, n_keys):
        theta = rng.uniform(0, 2 * np.pi)
        p = keys[k - 1] + step * rng.uniform(0.5, 1.5) * np.array([np.cos(theta), np.sin(theta)])
        # Reflect at the borders so the walk stays in frame without sticking to the edge.
        p = np.where(p < lo, 2 * lo - p, p)
        p = np.where(p > hi, 2 * hi - p, p)
        keys[k] = np.clip(p, lo, hi)
    if leaves and n_keys >= 2:
        k = int(rng.integers(1, n_keys - 1)) if n_keys > 2 else 1
        prev = keys[k - 1]
        # Leave through the border nearest the previous key: the shortest believable exit.
        dists = [prev[0], width - prev[0], prev[1], height - prev[1]]
        side = int(np.argmin(dists))
        p = keys[k].copy()
        p[side // 2] = -extent * 1.05 if side % 2 == 0 else (width, height)[side // 2] + extent * 1.05
        keys[k] = p
    return _catmull_rom(keys, frames)


def _contour(rng: np.random.Generator, s: np.ndarray, cfg: SynthConfig, spin: np.ndarray) -> np.ndarray:
    """Per-frame Fourier contour harmonics [T, K] for one part (see :class:`Part`)."""
    k = np.arange(1, cfg.shape_harmonics + 1)
    decay = 1.0 / k**1.2  # low harmonics dominate: blobby, not spiky
    base = (
        cfg.shape_irregularity
        * decay
        * rng.uniform(0.2, 1.0, k.size)
        * np.exp(1j * rng.uniform(0, 2 * np.pi, k.size))
    )
    drift = cfg.deformation * decay * rng.uniform(0.3, 1.0, k.size)
    freq = rng.uniform(0.5, 2.0, k.size)
    phase = rng.uniform(0, 2 * np.pi, k.size)
    coeffs = base[None, :] + drift[None, :] * np.exp(
        1j * (2 * np.pi * freq[None, :] * s[:, None] + phase[None, :])
    )
    total = np.abs(coeffs).sum(axis=1, keepdims=True)
    coeffs = coeffs * np.minimum(1.0, _MAX_WIGGLE / np.maximum(total, 1e-9))
    # A spinning part: rotating the contour by a multiplies harmonic k by e^{-ik a}.
    return (coeffs * np.exp(-1j * k[None, :] * spin[:, None])).astype(np.complex64)


def _actor(
    rng: np.random.Generator,
    label: int,
    family: TextureFamily,
    start: np.ndarray,
    radius: float,
    frames: int,
    height: int,
    width: int,
    cfg: SynthConfig,
) -> Actor:
    """Sample one actor's shape, texture and motion over the video."""
    s = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    parts = [Part(np.zeros((frames, 2)), 1.0, _contour(rng, s, cfg, 0.2 * _curve(rng, s)))]
    n_parts = int(rng.integers(cfg.parts[0], cfg.parts[1] + 1))
    for _ in range(n_parts - 1):
        # Limbs attached to the body, swinging about their attachment angle (articulation).
        dist = rng.uniform(0.55, 0.9)
        angle = rng.uniform(0, 2 * np.pi) + cfg.articulation * _curve(rng, s, trend=0.3)
        offset = dist * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        parts.append(Part(offset, float(rng.uniform(0.35, 0.65)), _contour(rng, s, cfg, angle)))
    wobble = 0.6 * cfg.deformation
    reach_t = (
        np.max(
            [np.linalg.norm(p.offset, axis=1) + p.size * (1 + np.abs(p.coeffs).sum(axis=1)) for p in parts],
            axis=0,
        )
        + wobble
    )
    reach = float(reach_t.max())
    # Relative to frame 0 (whose placement assumed the sampled radius), and clipped so the
    # size stays within exp(+-scale_change) of it: without the clip a video could double it.
    log_scale = _curve(rng, s)
    scale = np.exp(cfg.scale_change * np.clip(log_scale - log_scale[0], -1.0, 1.0))
    stretch = np.exp(0.6 * cfg.deformation * np.stack([_curve(rng, s), _curve(rng, s)], axis=1))
    angle = rng.uniform(0, 2 * np.pi) + np.deg2rad(cfg.rotation) * _curve(rng, s, trend=2.0)
    extent = reach * radius * float(scale.max() * stretch.max())
    leaves = frames > 1 and rng.random() < cfg.exit_prob
    centers = _path(rng, start, frames, height, width, extent, cfg, leaves)
    depth = rng.uniform(0, 1) + cfg.depth_change * _curve(rng, s, trend=2.0)
    tex_size = int(np.clip(math.ceil(2 * extent), 16, 512))
    tex_a = texture_patch(family, rng, tex_size)
    tex_b = texture_patch(family, rng, tex_size)
    center = rng.uniform(0.2, 0.8)
    width_s = rng.uniform(0.08, 0.25)
    morph = cfg.texture_change / (1.0 + np.exp(-(s - center) / width_s))
    gain = np.exp(cfg.color_drift * np.stack([_curve(rng, s, trend=2.0) for _ in range(3)], axis=1))
    theta = rng.uniform(0, 2 * np.pi)
    return Actor(
        label=label,
        radius=radius,
        centers=centers,
        scale=scale,
        angle=angle,
        stretch=stretch,
        depth=depth,
        wobble=wobble,
        wobble_freq=(float(rng.uniform(2, 4)), float(rng.uniform(2, 4))),
        wobble_phase=np.stack(
            [
                rng.uniform(0, 6.3) + 2 * np.pi * rng.uniform(0.5, 1.5) * s,
                rng.uniform(0, 6.3) + 2 * np.pi * rng.uniform(0.5, 1.5) * s,
            ],
            axis=1,
        ),
        parts=parts,
        reach=reach,
        reach_t=reach_t,
        tex_a=tex_a,
        tex_b=tex_b,
        morph=morph,
        gain=gain,
        light=(math.cos(theta), math.sin(theta)),
    )


def sample_scene(
    rng: np.random.Generator, frames: int, height: int, width: int, num_objects: int, cfg: SynthConfig
) -> Scene:
    """Sample a scene with ``num_objects`` annotated objects and the configured distractors."""
    side = min(height, width)
    s = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    photo_share = cfg.photo_share if cfg.photo_textures else 0.0

    # Background camera: pan along a gently curved line, zoom and roll; the canvas is big
    # enough that the frame never samples past its edge at the widest zoom.
    zoom = np.exp(cfg.camera_zoom * _curve(rng, s))
    roll = np.deg2rad(cfg.camera_rotation) * _curve(rng, s)
    pan = cfg.camera_pan * max(height, width)
    direction = rng.uniform(0, 2 * np.pi)
    along = pan * (s - 0.5) + 0.1 * pan * _curve(rng, s, trend=0.0)
    across = 0.2 * pan * _curve(rng, s, trend=0.0)
    dx, dy = math.cos(direction), math.sin(direction)
    half_diag = 0.5 * math.hypot(height, width)
    canvas_size = int(math.ceil(2 * (half_diag / float(zoom.min()) + 0.6 * pan + 0.6 * 0.2 * pan) + 4))
    bg_family = random_family(rng, photo_share, cfg.photo_textures)
    canvas = texture_patch(bg_family, rng, canvas_size, crop=(0.5, 1.0))
    camera = np.zeros((frames, 2, 3))
    c = canvas_size / 2.0
    for t in range(frames):
        a = (
            np.array([[math.cos(roll[t]), -math.sin(roll[t])], [math.sin(roll[t]), math.cos(roll[t])]])
            / zoom[t]
        )
        centre = np.array([c + along[t] * dx - across[t] * dy, c + along[t] * dy + across[t] * dx])
        camera[t, :, :2] = a
        camera[t, :, 2] = centre - a @ np.array([width / 2.0, height / 2.0])

    light_gain = np.exp(
        cfg.lighting_drift
        * (_curve(rng, s, trend=2.0)[:, None] + 0.4 * np.stack([_curve(rng, s) for _ in range(3)], axis=1))
    )
    beta = rng.uniform(0, 2 * np.pi) + 2.0 * _curve(rng, s)
    light_plane = cfg.lighting_drift * np.stack([np.cos(beta), np.sin(beta)], axis=1)

    families = [random_family(rng, photo_share, cfg.photo_textures) for _ in range(num_objects)]
    actors = []
    starts: list[np.ndarray] = []
    for i in range(num_objects):
        radius = rng.uniform(*cfg.object_size) * side
        margin = 0.9 * radius
        # Best of a few candidates, farthest from the objects already placed: spreads
        # objects out in frame 0 so that each one starts clearly visible.
        cands = np.stack(
            [
                rng.uniform(margin, max(margin + 1, width - margin), 8),
                rng.uniform(margin, max(margin + 1, height - margin), 8),
            ],
            axis=1,
        )
        if starts:
            dist = np.min(np.linalg.norm(cands[:, None] - np.stack(starts)[None], axis=2), axis=1)
            start = cands[int(np.argmax(dist))]
        else:
            start = cands[0]
        starts.append(start)
        actors.append(_actor(rng, i + 1, families[i], start, radius, frames, height, width, cfg))
    n_distractors = int(rng.integers(cfg.distractors[0], cfg.distractors[1] + 1))
    for _ in range(n_distractors):
        if num_objects and rng.random() < cfg.distractor_similarity:
            family = families[int(rng.integers(num_objects))]  # a look-alike of a target
        else:
            family = random_family(rng, photo_share, cfg.photo_textures)
        radius = rng.uniform(*cfg.object_size) * side
        start = np.array([rng.uniform(0, width), rng.uniform(0, height)])
        actors.append(_actor(rng, 0, family, start, radius, frames, height, width, cfg))
    return Scene(
        height=height,
        width=width,
        frames=frames,
        num_objects=num_objects,
        canvas=canvas,
        camera=camera,
        light_gain=light_gain,
        light_plane=light_plane,
        actors=actors,
        noise=cfg.noise / 255.0,
        shading=cfg.shading,
        shadow=cfg.shadow,
        noise_seed=int(rng.integers(2**31)),
    )


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
        perimeter = 2 * np.pi * part.size * px * max(sx, sy) * (1 + _MAX_WIGGLE)
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
