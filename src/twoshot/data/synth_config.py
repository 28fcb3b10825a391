"""The generator's difficulty knobs (:class:`SynthConfig`) and its named difficulty presets.

Kept apart from :mod:`twoshot.data.synth` (which writes datasets),
:mod:`twoshot.data.synth_scene` (which samples scenes) and :mod:`twoshot.data.synth_render`
(which draws them) because they all read them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twoshot.errors import UserError


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the generator. Changes marked "over the video" span its whole length.

    Shapes and sizes:
      object_size: (min, max) object radius as a fraction of the frame's short side.
      parts: (min, max) blobs per object; extra blobs are limbs that swing (articulation).
      shape_harmonics: Fourier harmonics of each blob's contour.
      shape_irregularity: amplitude of those harmonics (0 = circles).
    Motion (screen space):
      motion: mean travel per frame as a fraction of the frame's long side.
      keyframe_every: frames between the key points the path is interpolated through.
      exit_prob: chance per object (and distractor) that it leaves the frame fully once;
        it comes back unless the exit falls on the last key point.
      camera_pan: background travel over the video, fraction of the frame's long side.
      camera_zoom: log-zoom amplitude of the background over the video.
      camera_rotation: background roll amplitude in degrees.
    Appearance change over the video (what two labeled frames do not show):
      scale_change: log-scale amplitude of each object's size.
      rotation: rotation amplitude in degrees.
      deformation: non-rigid change: contour drift, squash/stretch and a shape+texture warp.
      articulation: swing of the limbs in radians.
      texture_change: weight of the blend from an object's first texture to a second crop of
        its family (0 = the texture never changes).
      color_drift: log-gain amplitude of each object's per-channel colour.
      lighting_drift: global brightness/colour drift and a moving light gradient.
      depth_change: how much depth order wanders (objects swap who occludes whom).
    Clutter:
      distractors: (min, max) unannotated objects per video (label 0).
      distractor_similarity: chance a distractor copies a target's texture family.
    Rendering:
      photo_textures: use scikit-image's bundled photos (False: procedural textures only).
      photo_share: chance a texture family is a photo rather than procedural noise.
      shading, shadow: strength of object shading and drop shadows.
      noise: sensor noise standard deviation in gray levels.
      jpeg_quality: JPEG quality of the frames.
      first_frame_visible: share of each object's mask that must be visible in frame 0.
    """

    object_size: tuple[float, float] = (0.12, 0.24)
    parts: tuple[int, int] = (1, 3)
    shape_harmonics: int = 5
    shape_irregularity: float = 0.45
    motion: float = 0.025
    keyframe_every: int = 8
    exit_prob: float = 0.3
    camera_pan: float = 0.3
    camera_zoom: float = 0.2
    camera_rotation: float = 5.0
    scale_change: float = 0.3
    rotation: float = 90.0
    deformation: float = 0.25
    articulation: float = 0.6
    texture_change: float = 0.6
    color_drift: float = 0.3
    lighting_drift: float = 0.3
    depth_change: float = 0.5
    distractors: tuple[int, int] = (0, 2)
    distractor_similarity: float = 0.8
    photo_textures: bool = True
    photo_share: float = 0.7
    shading: float = 0.35
    shadow: float = 0.3
    noise: float = 2.0
    jpeg_quality: int = 90
    first_frame_visible: float = 0.7

    def validate(self) -> None:
        """Raise UserError naming the knob if any value is out of range."""

        def check(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise UserError(f"synth knob {name}={getattr(self, name)!r}: {what}")

        lo, hi = self.object_size
        check(0 < lo <= hi, "object_size", "needs 0 < min <= max")
        check(
            hi <= 0.5,
            "object_size",
            "objects larger than the frame (the radius is a fraction of the short side; at most 0.5)",
        )
        check(1 <= self.parts[0] <= self.parts[1] <= 6, "parts", "needs 1 <= min <= max <= 6")
        check(1 <= self.shape_harmonics <= 16, "shape_harmonics", "needs 1..16")
        check(self.keyframe_every >= 1, "keyframe_every", "needs >= 1")
        check(
            0 <= self.distractors[0] <= self.distractors[1] <= 50,
            "distractors",
            "needs 0 <= min <= max <= 50",
        )
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", "needs 1..100")
        for name in (
            "exit_prob",
            "distractor_similarity",
            "photo_share",
            "first_frame_visible",
            "shadow",
            "texture_change",
        ):
            check(0.0 <= getattr(self, name) <= 1.0, name, "needs a value in 0..1")
        for name in (
            "shape_irregularity",
            "motion",
            "camera_pan",
            "camera_zoom",
            "camera_rotation",
            "scale_change",
            "rotation",
            "deformation",
            "articulation",
            "color_drift",
            "lighting_drift",
            "depth_change",
            "shading",
            "noise",
        ):
            value = getattr(self, name)
            check(math.isfinite(value) and value >= 0.0, name, "needs a finite value >= 0")
        check(self.shading <= 1.0, "shading", "needs a value in 0..1")
        check(self.motion <= 0.5, "motion", "more than half the frame per frame is not video")

    def replace(self, **changes: Any) -> SynthConfig:
        """A copy with ``changes`` applied (the dataclass is frozen)."""
        return dataclasses.replace(self, **changes)

    def with_overrides(self, items: Sequence[str]) -> SynthConfig:
        """Apply ``KEY=VALUE`` strings (tuples as ``MIN,MAX``); UserError on a bad key or value."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip()
            if not sep or key not in fields:
                known = ", ".join(fields)
                raise UserError(f"synth override {item!r}: expected KEY=VALUE with KEY one of {known}")
            current = getattr(self, key)
            try:
                if isinstance(current, bool):
                    if text.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(text)
                    value: Any = text.strip().lower() in ("true", "1", "yes")
                elif isinstance(current, tuple):
                    parts = [p for p in text.replace(" ", "").split(",") if p]
                    element_type = type(current[0])
                    if len(parts) != 2:
                        raise ValueError(text)
                    value = (element_type(parts[0]), element_type(parts[1]))
                else:
                    value = type(current)(text)
            except ValueError:
                raise UserError(
                    f"synth override {item!r}: {text!r} is not a valid value for {key} (now {current!r})"
                ) from None
            changes[key] = value
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the knobs (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# Difficulty presets, a starting point for tuning: "easy" keeps appearance nearly constant
# (two labeled frames should then suffice), "hard" pushes every change further.
SYNTH_PRESETS: dict[str, SynthConfig] = {
    "easy": SynthConfig(
        exit_prob=0.0,
        scale_change=0.1,
        rotation=20.0,
        deformation=0.08,
        articulation=0.2,
        texture_change=0.0,
        color_drift=0.05,
        lighting_drift=0.05,
        depth_change=0.1,
        distractors=(0, 0),
        camera_pan=0.1,
        camera_zoom=0.05,
    ),
    "default": SynthConfig(),
    "hard": SynthConfig(
        exit_prob=0.5,
        scale_change=0.45,
        rotation=150.0,
        deformation=0.4,
        articulation=0.9,
        texture_change=0.9,
        color_drift=0.45,
        lighting_drift=0.45,
        depth_change=0.8,
        distractors=(1, 3),
        motion=0.035,
        noise=4.0,
    ),
}
