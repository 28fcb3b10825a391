"""Two-shot intermediate inference: dense pseudo labels from a few labeled frames per video.

For every video, each labeled frame is propagated backward and forward, every direction
holding only its own labeled frame and the frames it predicted in memory; each unlabeled
frame takes the direction of its nearest labeled frame (ties to the later one, DESIGN.md
section 2) and labeled frames keep their ground truth. The reference implementation runs
the model four times per video over the whole video; here each frame's key features are
computed once and shared by every direction, and each direction stops at the last frame
assigned to it (propagation is causal, so the masks are the same).

:func:`build_bank` writes the result as a bank (:mod:`twoshot.bank`), resumable,
and shards videos over ``torchrun`` processes.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from twoshot.bank import BankIdentity, BankStore, budget_sha256, file_sha256, weights_sha256
from twoshot.config import InferenceConfig
from twoshot.config_checks import check_inference_settings
from twoshot.data.budget import Budget, apply_budget, load_budget
from twoshot.data.layout import VideoSequence
from twoshot.data.readers import load_annotations, load_frames
from twoshot.errors import UserError
from twoshot.inference.engine import Propagation, PropagationEngine
from twoshot.inference.frames import FrameOutput
from twoshot.model.interface import VOSModel

PathLike = str | os.PathLike[str]


@dataclass
class BankSummary:
    """What :func:`build_bank` did on this process.

    videos: videos in the (budgeted) dataset; written: written now; skipped: already done
    (resume) or another rank's; frames: frames written now; seconds: wall time;
    manifest: the final manifest (rank 0 only, else None).
    """

    videos: int
    written: int
    skipped: int
    frames: int
    seconds: float
    out: Path
    manifest: dict | None = None

    @property
    def frames_per_second(self) -> float:
        """Frames written per second of wall time."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def pseudo_label_frames(
    engine: PropagationEngine, seq: VideoSequence, *, confidence: bool = False
) -> tuple[Propagation, list[int], bytes | None]:
    """Pseudo labels of one budget-restricted video (its ``mask_paths`` = labeled frames).

    Reads only the labeled frames' PNGs now; the frames are read as the returned
    propagation is iterated (labeled frames come first, as given). Returns (the
    propagation, the labeled frame indices, the labels' palette). UserError for a video
    without labeled frames or a labeled frame showing no object.
    """
    labeled_masks, palette = load_annotations(seq)
    if not labeled_masks:
        raise UserError(f"video {seq.name}: no labeled frame")
    for index, labels in labeled_masks.items():
        if not labels.any():
            raise UserError(f"{seq.mask_paths[index]}: labeled frame shows no object")
    propagation = engine.frames(
        load_frames(seq), labeled_masks, direction="bidirectional", confidence=confidence
    )
    return propagation, sorted(labeled_masks), palette


def build_bank(
    model: VOSModel,
    sequences: Sequence[VideoSequence],
    budget: Budget | PathLike,
    out: PathLike,
    config: InferenceConfig | None = None,
    *,
    checkpoint: PathLike | None = None,
    confidence: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> BankSummary:
    """Write the pseudo-label bank of ``sequences`` under ``out``.

    model: the phase-1 network; sequences: the training videos (all annotation PNGs listed;
    only the budgeted ones are opened); budget: ``{video: [labeled frame files]}`` or a
    budget JSON path; config: inference settings (STCN's defaults if None); checkpoint: the
    file the weights came from (recorded with its sha256; None = hash of the weights);
    confidence: also write max-probability maps; device: overrides ``config.device``;
    progress: show a tqdm bar (rank 0 only).

    Resumable: videos recorded as done are skipped; a bank from another checkpoint, budget or
    settings is refused (UserError). Under ``torchrun`` (``WORLD_SIZE`` > 1, or an initialised
    process group) rank r takes videos r::world and rank 0 writes the manifest after all are
    done. Returns this process's :class:`BankSummary`.
    """
    start = time.perf_counter()
    config = dataclasses.replace(config) if config is not None else InferenceConfig()
    check_inference_settings(config, model.kind)  # before the bank folder is touched
    budget_info: dict[str, str | None]
    if isinstance(budget, (str, os.PathLike)):
        budget_info = {"path": str(budget), "sha256": file_sha256(budget)}
        budget = load_budget(budget)
    else:
        budget_info = {"path": None, "sha256": budget_sha256(budget)}
    labeled_sequences = apply_budget(sequences, budget)
    if not labeled_sequences:
        raise UserError("the budget labels none of the dataset's videos")
    checkpoint_info = (
        {"path": str(checkpoint), "sha256": file_sha256(checkpoint)}
        if checkpoint
        else {"path": None, "sha256": weights_sha256(model.state_dict())}
    )
    settings = {
        "mem_every": config.mem_every,
        "top_k": config.top_k,
        "size": config.size,
        "include_last": config.include_last,
        "max_memory_frames": config.max_memory_frames,
        "confidence_maps": confidence,
    }
    # Recorded only when not the default, so that banks made before these settings existed
    # keep their identity (and stay resumable).
    defaults = InferenceConfig()
    for name in ("merge", "flip", "scales", "exact"):
        if getattr(config, name) != getattr(defaults, name):
            settings[name] = getattr(config, name)
    identity = BankIdentity(checkpoint_info, budget_info, settings)

    rank, world, created_group = _distributed()
    if world > 1 and not isinstance(device, torch.device):
        device = _rank_device(device or config.device, world)
    store = BankStore(out, identity, confidence=confidence, rank=rank, world=world)
    try:
        store.check()  # every rank refuses a mismatching bank the same way
        if rank == 0:
            store.start()
        _barrier(world)
        done = store.done()
        mine = labeled_sequences[rank::world]
        todo = [seq for seq in mine if seq.name not in done]
        engine = PropagationEngine(model, config, device)
        bar = _progress_bar(sum(seq.num_frames for seq in todo), progress and rank == 0)
        frames_written = 0
        for seq in todo:
            if bar is not None:
                bar.set_postfix_str(seq.name)
            propagation, labeled, palette = pseudo_label_frames(engine, seq, confidence=confidence)
            store.write_video(
                seq.name,
                seq.frame_names,
                labeled,
                propagation.object_ids,
                _counted(propagation, bar),
                palette,
            )
            frames_written += seq.num_frames
        if bar is not None:
            bar.close()
        _barrier(world)
        manifest = store.finish([seq.name for seq in labeled_sequences]) if rank == 0 else None
        return BankSummary(
            len(labeled_sequences),
            len(todo),
            len(labeled_sequences) - len(todo),
            frames_written,
            time.perf_counter() - start,
            Path(out),
            manifest,
        )
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _counted(frames: Iterable[FrameOutput], bar: Any) -> Iterator[FrameOutput]:
    """``frames``, advancing the progress ``bar`` (or None) by one per frame."""
    for out in frames:
        yield out
        if bar is not None:
            bar.update(1)


def _distributed() -> tuple[int, int, bool]:
    """(rank, world size, whether this call created the process group).

    Uses an initialised process group; otherwise starts a gloo group when torchrun's
    ``WORLD_SIZE`` is above 1; otherwise a single process. The bank's only collectives are
    barriers, and gloo (unlike NCCL) lets several processes share one GPU.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_available():
        raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), True


def _rank_device(name: str, world: int) -> str:
    """One GPU per process under torchrun (``cuda:LOCAL_RANK``, wrapping around when there are
    more processes than GPUs, so that several share one); other devices unchanged."""
    if world > 1 and torch.cuda.is_available() and name in ("auto", "cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % torch.cuda.device_count()}"
    return name


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc="pseudo labels", dynamic_ncols=True)
