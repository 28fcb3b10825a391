"""Segment a list of videos with a model and write the masks: the body of ``twoshot infer``
and of the pipeline's validation step.

Each frame's PNG is written as soon as the engine yields it, so nothing per frame is kept.
A video whose frames would take more than :data:`STREAM_MIN_BYTES` in memory is also read
frame by frame when the engine asks for it (:class:`LazyFrames`); shorter videos are read
whole first. Both give the same files (``tests/test_long_video.py``), and either way a
video's folder appears complete or not at all (``twoshot.fsutil.atomic_dir``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from twoshot.config import InferenceConfig
from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.key_cache import FramesOnDemand, FrameSource
from twoshot.model.interface import VOSModel

STREAM_MIN_BYTES = 512 * 2**20
"""Videos whose RGB frames (T x H x W x 3 bytes) exceed this are streamed (``stream=None``)."""


@dataclass
class PredictionSummary:
    """Counts and speed of one :func:`predict_sequences` call."""

    videos: int
    frames: int
    objects: int
    seconds: float

    @property
    def frames_per_second(self) -> float:
        """Frames segmented per second of wall time."""
        return self.frames / max(self.seconds, 1e-9)


def predict_sequences(
    model: VOSModel | PropagationEngine,
    sequences: Sequence[VideoSequence],
    out: str | os.PathLike[str],
    config: InferenceConfig | None = None,
    *,
    youtube: bool = False,
    all_frames: bool = False,
    backward: bool = False,
    overlay: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    stream: bool | None = None,
) -> PredictionSummary:
    """Propagate each video's first-appearance masks and write the predicted masks.

    model: a VOSModel (wrapped in a PropagationEngine with ``config`` on ``device``) or an engine.
    sequences: videos from :func:`twoshot.data.readers.open_dataset`. out: output root;
    DAVIS layout ``out/<video>/<frame>.png`` or, with ``youtube``, the YouTube-VOS submission
    layout (only ``frames_to_save`` unless ``all_frames``). backward: propagate from the
    annotated frames in both directions. overlay: also write ``out/overlays/<video>/``.
    stream: read image-folder frames on demand (True), read the whole video first (False), or
    decide per video (None: on demand when its frames exceed :data:`STREAM_MIN_BYTES`);
    video files are decoded whole. The files are the same either way.
    Each video's folder is written atomically. Returns a :class:`PredictionSummary`.
    """
    from tqdm import tqdm

    from twoshot.data.readers import load_frames, reference_annotations

    engine = model if isinstance(model, PropagationEngine) else PropagationEngine(model, config, device)
    out = Path(out)
    start = time.perf_counter()
    frames_done = objects = 0
    with tqdm(
        total=sum(seq.num_frames for seq in sequences), unit="frame", dynamic_ncols=True, disable=not progress
    ) as bar:
        for seq in sequences:
            bar.set_postfix_str(seq.name)
            given, palette, first = reference_annotations(seq)
            if not given:
                raise UserError(f"video {seq.name}: no annotation PNG shows an object")
            subset = youtube and not all_frames and seq.frames_to_save is not None
            lazy = _should_stream(seq, stream) and seq.video_file is None
            frames: FrameSource = LazyFrames(seq) if lazy else load_frames(seq)
            _write_video(
                engine,
                seq,
                frames,
                out,
                given,
                palette,
                youtube=youtube,
                subset=subset,
                backward=backward,
                overlay=overlay,
                progress=lambda: bar.update(1),
            )
            frames_done += seq.num_frames
            objects += len(first)
    return PredictionSummary(len(sequences), frames_done, objects, time.perf_counter() - start)


def _should_stream(seq: VideoSequence, stream: bool | None) -> bool:
    """Whether ``seq`` is streamed: as asked, or (None) when its frames are large in memory."""
    if stream is not None:
        return stream
    from twoshot.data.readers import frame_size

    height, width = frame_size(seq)
    return seq.num_frames * height * width * 3 > STREAM_MIN_BYTES


class LazyFrames(FramesOnDemand):
    """The frames of an image-folder video, read from disk each time one is asked for.

    ``frames[t]`` -> uint8 [H, W, 3]. The engine's key cache asks for each frame about once
    (twice with ``--overlay``), so only about ``key_batch`` frames are in memory at a time.
    A frame whose size differs from the first frame's raises the same UserError as
    :func:`twoshot.data.readers.load_frames`.
    """

    def __init__(self, seq: VideoSequence) -> None:
        from twoshot.data.readers import frame_size

        if seq.video_file is not None:
            raise ValueError(f"video {seq.name}: LazyFrames reads image folders, not video files")
        self.seq = seq
        self.size = frame_size(seq, 0)

    def __len__(self) -> int:
        return self.seq.num_frames

    def frame(self, index: int) -> np.ndarray:
        """Frame ``index`` read from its image file (uint8 [H, W, 3])."""
        from twoshot.data.masks import read_frame

        paths = self.seq.frame_paths
        rgb = read_frame(paths[index])
        if rgb.shape[:2] != self.size:
            raise UserError(
                f"{paths[index]}: frame is {rgb.shape[1]}x{rgb.shape[0]} but "
                f"{paths[0].name} is {self.size[1]}x{self.size[0]}; all frames of a "
                "video must have the same size"
            )
        return rgb


def _write_video(
    engine: PropagationEngine,
    seq: VideoSequence,
    frames: FrameSource,
    out: Path,
    given: dict[int, np.ndarray],
    palette: bytes | None,
    *,
    youtube: bool,
    subset: bool,
    backward: bool,
    overlay: bool,
    progress: Callable[[], None],
) -> None:
    """Propagate one video and write each frame's PNG (and overlay) as soon as it is final.

    Masks go to ``out/<video>/`` (YouTube-VOS: ``out/Annotations/<video>/``, only
    ``frames_to_save`` when ``subset``), overlays to ``out/overlays/<video>/``, at the
    frames' size with the annotations' palette; each folder is built in a temporary folder
    that takes its name only when the whole video is done.
    """
    from twoshot.data.masks import write_frame, write_mask
    from twoshot.data.readers import frame_size
    from twoshot.data.writers import overlay as overlay_image
    from twoshot.data.writers import resize_labels
    from twoshot.fsutil import atomic_dir

    names = seq.frame_names
    target = frame_size(seq)
    folder = out / "Annotations" / seq.name if youtube else out / seq.name
    wanted = set(seq.frames_to_save) if subset and seq.frames_to_save is not None else None
    written: set[int] = set()
    propagation = engine.frames(
        frames,
        given,
        direction="bidirectional" if backward else "forward",
        output_frames=sorted(wanted) if wanted is not None else None,
    )
    with contextlib.ExitStack() as stack:
        # Entered first, committed last: the masks' folder takes its name before the overlays'.
        overlays = stack.enter_context(atomic_dir(out / "overlays" / seq.name)) if overlay else None
        masks_dir = stack.enter_context(atomic_dir(folder))
        for result in propagation:
            frame = result.frame
            if wanted is None or frame in wanted:
                write_mask(masks_dir / f"{names[frame]}.png", resize_labels(result.labels, target), palette)
                written.add(frame)
            if overlays is not None:
                write_frame(
                    overlays / f"{names[frame]}.png",
                    overlay_image(np.asarray(frames[frame]), result.labels, palette),
                )
            progress()
        missing = sorted((wanted if wanted is not None else set(range(seq.num_frames))) - written)
        if missing:  # cannot happen when the engine covers every output frame; never half-write
            raise ValueError(
                f"video {seq.name}: no mask for frame(s) {', '.join(names[i] for i in missing[:5])}"
            )
