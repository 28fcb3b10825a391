"""Segment a list of videos with a model and write the masks: the body of ``twoshot infer``
and of the pipeline's validation step."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from twoshot.config import InferenceConfig
from twoshot.data.layout import VideoSequence
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.model.network import STCN


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


def predict_sequences(model: STCN | PropagationEngine, sequences: Sequence[VideoSequence],
                      out: str | os.PathLike[str], config: InferenceConfig | None = None, *,
                      youtube: bool = False, all_frames: bool = False, backward: bool = False,
                      overlay: bool = False, device: str | torch.device | None = None,
                      progress: bool = True) -> PredictionSummary:
    """Propagate each video's first-appearance masks and write the predicted masks.

    model: an STCN (wrapped in a PropagationEngine with ``config`` on ``device``) or an engine.
    sequences: videos from :func:`twoshot.data.readers.open_dataset`. out: output root;
    DAVIS layout ``out/<video>/<frame>.png`` or, with ``youtube``, the YouTube-VOS submission
    layout (only ``frames_to_save`` unless ``all_frames``). backward: propagate from the
    annotated frames in both directions. overlay: also write ``out/overlays/<video>/``.
    Each video's folder is written atomically. Returns a :class:`PredictionSummary`.
    """
    from tqdm import tqdm

    from twoshot.data.readers import load_frames, reference_annotations
    from twoshot.data.writers import write_davis_masks, write_overlay_pngs, write_youtube_submission

    engine = model if isinstance(model, PropagationEngine) else PropagationEngine(model, config, device)
    out = Path(out)
    start = time.perf_counter()
    frames_done = objects = 0
    with tqdm(total=sum(seq.num_frames for seq in sequences), unit="frame", dynamic_ncols=True,
              disable=not progress) as bar:
        for seq in sequences:
            bar.set_postfix_str(seq.name)
            given, palette, first = reference_annotations(seq)
            if not given:
                raise UserError(f"video {seq.name}: no annotation PNG shows an object")
            frames = load_frames(seq)
            subset = youtube and not all_frames and seq.frames_to_save is not None
            result = engine.propagate(frames, given, mode="bidirectional" if backward else "forward",
                                      output_frames=seq.frames_to_save if subset else None,
                                      progress=lambda _: bar.update(1))
            if youtube:
                write_youtube_submission(out, seq, result.masks, palette, all_frames=not subset)
            else:
                write_davis_masks(out, seq, result.masks, palette)
            if overlay:
                write_overlay_pngs(out / "overlays" / seq.name, frames, result.masks, palette,
                                   names=seq.frame_names)
            frames_done += seq.num_frames
            objects += len(first)
    return PredictionSummary(len(sequences), frames_done, objects, time.perf_counter() - start)
