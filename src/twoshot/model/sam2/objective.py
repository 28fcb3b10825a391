"""SAM 2's training recipe: none yet. Building it refuses the stage, so that ``twoshot
train`` / ``pipeline`` stop at their configuration check, before any file is written."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twoshot.errors import UserError

if TYPE_CHECKING:
    from twoshot.config import TrainConfig

TRAINING_REFUSED = (
    "training SAM 2 (model.kind: sam2) is not supported yet; it arrives in a later release. "
    "SAM 2 runs with twoshot infer and twoshot pseudo-label (as the teacher of an STCN or "
    "Cutie model: train that one with --stage phase2 --bank)"
)


class Sam2Objective:
    """Refuses: UserError :data:`TRAINING_REFUSED` when built for any stage settings."""

    def __init__(self, cfg: TrainConfig) -> None:
        raise UserError(TRAINING_REFUSED)
