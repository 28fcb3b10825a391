"""Writing results: DAVIS-layout masks, YouTube-VOS submissions, overlays and videos.

Every writer is atomic (``twoshot.fsutil``): one video's masks are built in a temporary
folder that takes the final name only when complete (``atomic_dir``), so an interrupted run
never leaves a half-written video folder. Masks are indexed PNGs with the input's palette
(DAVIS's when there is none) at the original frame size (DESIGN.md section 5).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from twoshot.data.layout import VideoSequence
from twoshot.data.masks import DAVIS_PALETTE, write_frame, write_mask
from twoshot.data.readers import frame_size
from twoshot.fsutil import atomic_dir, atomic_path

PathLike = str | os.PathLike[str]
Masks = Mapping[int, np.ndarray] | np.ndarray


def _as_mapping(masks: Masks, num_frames: int | None = None) -> dict[int, np.ndarray]:
    """{frame_index: labels [H, W]} from a mapping or a [T, H, W] array (index = position)."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"masks array must be [T, H, W], got shape {masks.shape}")
        if num_frames is not None and masks.shape[0] != num_frames:
            raise ValueError(f"masks array has {masks.shape[0]} frames, the video {num_frames}")
        return {i: masks[i] for i in range(masks.shape[0])}
    return {int(k): np.asarray(v) for k, v in masks.items()}


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize labels uint8 [h, w] to ``size`` (H, W) with nearest neighbour (ids stay ids)."""
    if labels.shape == tuple(size):
        return labels.astype(np.uint8, copy=False)
    image = Image.fromarray(np.ascontiguousarray(labels.astype(np.uint8)), mode="L")
    return np.asarray(image.resize((size[1], size[0]), Image.Resampling.NEAREST), dtype=np.uint8)


def write_davis_masks(
    out_root: PathLike,
    seq: VideoSequence,
    masks: Masks,
    palette: bytes | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write one video's masks as ``<out_root>/<video>/<frame_name>.png``, atomically per video.

    masks: {frame_index: uint8 [h, w]} or uint8 [T, h, w]; masks of another size are resized
    (nearest) to ``size`` (H, W), by default the size of the video's frames. palette: the
    input's palette (DAVIS's if None). An existing video folder is replaced as a whole.
    Returns the video folder.
    """
    by_frame = _as_mapping(masks, seq.num_frames if isinstance(masks, np.ndarray) else None)
    target = (size[0], size[1]) if size is not None else frame_size(seq)
    final = Path(out_root) / seq.name
    with atomic_dir(final) as tmp:
        for index, labels in sorted(by_frame.items()):
            write_mask(tmp / f"{seq.frame_names[index]}.png", resize_labels(labels, target), palette)
    return final


def write_youtube_submission(
    out_root: PathLike,
    seq: VideoSequence,
    masks: Masks,
    palette: bytes | None = None,
    *,
    all_frames: bool = False,
    size: tuple[int, int] | None = None,
) -> Path:
    """Write ``<out_root>/Annotations/<video>/<frame_name>.png`` for a YouTube-VOS submission.

    Only ``seq.frames_to_save`` are written (every frame when it is None or ``all_frames``);
    each of them must be in ``masks`` (ValueError otherwise). Same conventions as
    :func:`write_davis_masks`. Returns the video folder.
    """
    by_frame = _as_mapping(masks, seq.num_frames if isinstance(masks, np.ndarray) else None)
    frames = range(seq.num_frames) if all_frames or seq.frames_to_save is None else seq.frames_to_save
    missing = [seq.frame_names[i] for i in frames if i not in by_frame]
    if missing:
        raise ValueError(
            f"video {seq.name}: no mask for frame(s) {', '.join(missing[:5])}"
            + (" ..." if len(missing) > 5 else "")
        )
    return write_davis_masks(
        Path(out_root) / "Annotations", seq, {i: by_frame[i] for i in frames}, palette, size=size
    )


# --------------------------------------------------------------------------------------------
# Overlays


def palette_colors(palette: bytes | None = None) -> np.ndarray:
    """Palette as uint8 [256, 3]; a short palette is completed with DAVIS colours."""
    full = bytearray(DAVIS_PALETTE)
    if palette is not None:
        full[: min(len(palette), 768)] = palette[:768]
    return np.frombuffer(bytes(full), dtype=np.uint8).reshape(256, 3)


def boundaries(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: object pixels (label > 0) with a 4-neighbour of another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    diff_v = labels[1:, :] != labels[:-1, :]
    diff_h = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= diff_v
    edge[:-1, :] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge & (labels > 0)


def overlay(
    frame: np.ndarray,
    labels: np.ndarray,
    palette: bytes | None = None,
    alpha: float = 0.5,
    draw_boundaries: bool = True,
) -> np.ndarray:
    """Blend object colours into a frame: RGB uint8 [H, W, 3] + labels [H, W] -> RGB uint8.

    Object pixels become ``(1 - alpha) * frame + alpha * colour`` (colour from ``palette``,
    DAVIS's if None); object boundaries are drawn in the full colour; background is kept.
    """
    if frame.shape[:2] != labels.shape:
        labels = resize_labels(labels, frame.shape[:2])
    colors = palette_colors(palette)[labels].astype(np.float32)
    out = frame.astype(np.float32)
    inside = labels > 0
    out[inside] = (1.0 - alpha) * out[inside] + alpha * colors[inside]
    if draw_boundaries:
        edge = boundaries(labels)
        out[edge] = colors[edge]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _overlays(frames: np.ndarray, masks: Masks, palette: bytes | None, alpha: float) -> list[np.ndarray]:
    """Overlay of each frame with its mask (frames without one are left as they are)."""
    by_frame = _as_mapping(masks)
    return [
        overlay(frame, by_frame[i], palette, alpha) if i in by_frame else frame
        for i, frame in enumerate(frames)
    ]


def write_overlay_pngs(
    out_dir: PathLike,
    frames: np.ndarray,
    masks: Masks,
    palette: bytes | None = None,
    *,
    names: Sequence[str] | None = None,
    alpha: float = 0.5,
) -> Path:
    """Write overlays of frames uint8 [T, H, W, 3] and masks as ``<out_dir>/<name>.png``.

    names: one file stem per frame (``seq.frame_names``; default ``00000`` ...). The folder
    is written atomically as a whole. Returns ``out_dir``.
    """
    names = list(names) if names is not None else [f"{i:05d}" for i in range(len(frames))]
    if len(names) != len(frames):
        raise ValueError(f"{len(names)} names for {len(frames)} frames")
    final = Path(out_dir)
    with atomic_dir(final) as tmp:
        for name, image in zip(names, _overlays(frames, masks, palette, alpha)):
            write_frame(tmp / f"{name}.png", image)
    return final


def write_overlay_video(
    path: PathLike,
    frames: np.ndarray,
    masks: Masks,
    palette: bytes | None = None,
    *,
    fps: float = 24.0,
    alpha: float = 0.5,
) -> Path:
    """Write overlays of frames uint8 [T, H, W, 3] and masks as a video file (see write_video)."""
    return write_video(path, np.stack(_overlays(frames, masks, palette, alpha)), fps=fps)


def write_video(path: PathLike, frames: np.ndarray, fps: float = 24.0) -> Path:
    """Encode RGB frames uint8 [T, H, W, 3] into a video file (mp4, avi, mkv ...) with PyAV.

    Uses H.264 (libx264, yuv420p) and falls back to MPEG-4 part 2 when libx264 is not in
    the FFmpeg build. yuv420p needs even sizes, so an odd height/width is padded by one
    replicated row/column. Written atomically. Returns ``path``.
    """
    import av  # local: only video output needs PyAV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"frames must be a non-empty [T, H, W, 3] array, got {frames.shape}")
    height, width = frames.shape[1:3]
    pad = ((0, 0), (0, height % 2), (0, width % 2), (0, 0))
    if pad[1][1] or pad[2][1]:
        frames = np.pad(frames, pad, mode="edge")
    rate = Fraction(fps).limit_denominator(1001)
    target = Path(path)
    # The temporary name keeps the suffix, from which FFmpeg picks the container.
    with atomic_path(target) as tmp, av.open(str(tmp), mode="w") as container:
        stream = _add_video_stream(container, rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        for rgb in frames:
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb.astype(np.uint8)), format="rgb24")
            for packet in stream.encode(picture):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return target


def _add_video_stream(container: Any, rate: Fraction) -> Any:
    """An H.264 stream if libx264 is available, else MPEG-4 part 2 at a high bit rate."""
    import av

    try:
        av.codec.Codec("libx264", "w")
    except (av.FFmpegError, ValueError):
        stream = container.add_stream("mpeg4", rate=rate)
        stream.bit_rate = 8_000_000
        return stream
    stream = container.add_stream("libx264", rate=rate)
    stream.options = {"crf": "18", "preset": "veryfast"}
    return stream
