"""The in-memory description of a video dataset that every reader produces.

Readers (DAVIS, YouTube-VOS, generic folders, video files) turn a layout on disk into
:class:`VideoSequence` objects; training, inference and pseudo-labelling consume only these.
Frames are identified by their index in the sorted frame list and by a name (the file stem,
e.g. ``"00030"``) that is also used for output files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class VideoSequence:
    """One video: its frames in order and the annotation files that exist for it.

    name: video name (folder name).
    frame_paths: image files in temporal order (empty for a video file source).
    frame_names: output name stem per frame, e.g. "00000"; same length as the frames.
    mask_paths: frame index -> annotation PNG, only for the frames that have one.
    video_file: set for a video-file source (mp4 ...), whose frames are decoded with PyAV.
    object_first_frame: object id -> index of the frame where it first appears, when the
        layout says so (YouTube-VOS meta.json); otherwise derived from the masks.
    frames_to_save: frame indices a submission must contain (YouTube-VOS valid); None = all.
    """

    name: str
    frame_paths: list[Path]
    frame_names: list[str]
    mask_paths: dict[int, Path] = field(default_factory=dict)
    video_file: Path | None = None
    object_first_frame: dict[int, int] | None = None
    frames_to_save: list[int] | None = None

    @property
    def num_frames(self) -> int:
        """Number of frames in the video."""
        return len(self.frame_names)
