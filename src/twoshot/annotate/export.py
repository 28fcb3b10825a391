"""Export of the app's work as a DAVIS 2017 dataset ready for ``twoshot pipeline``.

``OUT/JPEGImages/480p/<video>/<frame>.jpg``, ``OUT/Annotations/480p/<video>/<frame>.png``
(the propagated masks of every frame when the video's propagation is complete and no label
changed since, else its labeled frames only), ``OUT/ImageSets/2017/{train,val}.txt``,
``OUT/budget.json`` (the labeled frames of the training videos, reference format) and
``OUT/overlays/<video>.mp4``. The folder is written with ``atomic_dir``: it appears complete
or not at all.

Validation videos are held out: ``val.txt`` and ``train.txt`` never share a video, so that
``twoshot pipeline`` scores its models on videos they were not trained on. With a single
labeled video there is nothing to hold out: ``val.txt`` is not written and the result says
why.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twoshot.annotate.jobs import PropagationJobs
from twoshot.annotate.storage import AnnotationStore, RequestError
from twoshot.data.budget import save_budget
from twoshot.data.masks import write_frame, write_mask
from twoshot.data.readers import load_frames
from twoshot.data.writers import write_overlay_video
from twoshot.fsutil import atomic_dir

# The share of the labeled videos held out for validation when the request names none.
VAL_SHARE = 0.2


def export_dataset(
    store: AnnotationStore,
    jobs: PropagationJobs | None,
    out: str | os.PathLike[str],
    *,
    videos: bool = True,
    val: Sequence[str] | None = None,
) -> dict:
    """Write the export under ``out`` (replacing an earlier export there).

    store: the labels; jobs: the propagations (None without a checkpoint); videos: also write
    the overlay mp4s; val: the videos to hold out for validation (None:
    :func:`default_validation`). Returns {out, videos: [{name, frames, masks, dense, split}],
    train, val, note}; note says why no video is held out (else ""). RequestError 400 when
    no video has a labeled frame or ``val`` names an unlabeled video or every one, 409 when
    ``out`` holds the dataset or is a non-empty folder that is not an earlier export.
    """
    names = [name for name in store.videos if store.labeled[name]]
    if not names:
        raise RequestError(400, "nothing to export: no video has a labeled frame")
    held_out = default_validation(names) if val is None else list(dict.fromkeys(val))
    unknown = [name for name in held_out if name not in names]
    if unknown:
        raise RequestError(400, f"validation video(s) {', '.join(unknown)}: not among the labeled videos")
    train = [name for name in names if name not in held_out]
    if not train:
        raise RequestError(400, "every labeled video is held out for validation: none is left to train on")
    note = ""
    if not held_out:
        note = (
            "only one video has labels: none can be held out for validation, so val.txt is not "
            "written (label a second video, or point pipeline.val_split at other videos)"
            if len(names) == 1
            else "no video held out for validation: val.txt is not written"
        )
    report = []
    target = Path(out).absolute()
    _check_target(store, target)
    with store.lock:
        budget = {name: entries for name, entries in store.budget().items() if name in train}
    with atomic_dir(target) as tmp:
        for name in names:
            seq = store.video(name).seq
            masks, dense = _masks(store, jobs, name)
            palette = store.palette(name)
            images = tmp / "JPEGImages" / "480p" / name
            images.mkdir(parents=True)
            frames = load_frames(seq)
            for index, frame_name in enumerate(seq.frame_names):
                source = seq.frame_paths[index] if seq.frame_paths else None
                if source is not None and source.suffix.lower() in (".jpg", ".jpeg"):
                    shutil.copyfile(source, images / f"{frame_name}.jpg")
                else:
                    write_frame(images / f"{frame_name}.jpg", frames[index])
            for index, labels in masks.items():
                write_mask(
                    tmp / "Annotations" / "480p" / name / f"{seq.frame_names[index]}.png", labels, palette
                )
            if videos:
                write_overlay_video(tmp / "overlays" / f"{name}.mp4", frames, masks, palette)
            split = "val" if name in held_out else "train"
            report.append(
                {"name": name, "frames": seq.num_frames, "masks": len(masks), "dense": dense, "split": split}
            )
        sets = tmp / "ImageSets" / "2017"
        sets.mkdir(parents=True)
        for split, members in (("train", train), ("val", held_out)):
            if members:
                (sets / f"{split}.txt").write_text("".join(f"{name}\n" for name in members), encoding="utf-8")
        # The exported frames are all .jpg: the budget names them so.
        save_budget(
            tmp / "budget.json",
            {name: [f"{Path(entry).stem}.jpg" for entry in entries] for name, entries in budget.items()},
        )
    return {"out": str(target), "videos": report, "train": train, "val": held_out, "note": note}


def default_validation(names: Sequence[str]) -> list[str]:
    """The videos held out when the user names none: a fifth of ``names`` (rounded up, at
    least one when there are two or more, none with one), spread evenly over the list so
    that they do not all come from one end of it."""
    if len(names) < 2:
        return []
    count = min(len(names) - 1, math.ceil(VAL_SHARE * len(names)))
    step = len(names) / count
    return [names[int(step * i + step / 2)] for i in range(count)]


def _masks(
    store: AnnotationStore, jobs: PropagationJobs | None, name: str
) -> tuple[dict[int, np.ndarray], bool]:
    """({frame: labels}, dense): the finished, up-to-date propagation of every frame, else the
    labeled frames."""
    job = jobs.get(name) if jobs is not None else None
    complete = job is not None and len(job.results) == job.total  # a one-way job may not cover all
    if job is not None and complete and job.state == "done" and job.revision == store.revision[name]:
        return {index: labels for index, (labels, _) in sorted(job.results.items())}, True
    return {index: store.read_mask(name, index)[0] for index in sorted(store.labeled[name])}, False


def _check_target(store: AnnotationStore, target: Path) -> None:
    """Refuse to replace the dataset itself or a folder that is not an earlier export."""
    resolved = target.resolve()
    if resolved == store.root or resolved in store.root.parents:
        raise RequestError(409, f"export folder {target} holds the dataset {store.root}; choose another")
    if target.is_dir() and any(target.iterdir()) and not (target / "budget.json").is_file():
        raise RequestError(409, f"export folder {target} is not empty and is not an earlier export")
