"""Procedural scenes for generated videos: sampling the actors of a scene (rendered by
:mod:`twoshot.data.synth_render`).

A scene is a textured background seen by a moving camera plus *actors*: the annotated
objects (label 1..n) and distractors (label 0, drawn like objects from the same texture
families). Every actor is a union of "parts" (1-3 by default), each a blob whose radius
is a Fourier series of the angle; all of an actor's changes over the video are smooth
curves of time: path (through key points, possibly off the frame and back), scale,
rotation, squash and stretch, articulation of its parts, contour harmonics, a sinusoidal
warp of shape and texture, texture blending towards a second crop, colour gain and depth.
All randomness comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from twoshot.data.synth_config import SynthConfig
from twoshot.data.synth_textures import TextureFamily, random_family, texture_patch

# Contour harmonics are scaled so that sum |c_k| stays below this: the radius never drops
# under (1 - MAX_WIGGLE) of a part's size, so a part never pinches into pieces.
MAX_WIGGLE = 0.7


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
    coeffs = coeffs * np.minimum(1.0, MAX_WIGGLE / np.maximum(total, 1e-9))
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
