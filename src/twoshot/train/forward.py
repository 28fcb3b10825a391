"""The training forward pass over a batch of clips, for any model.

Frame 0's ground-truth masks (target and second object, K = 2) start each clip; the model's
:meth:`~twoshot.model.interface.VOSModel.clip_forward` segments frames 1..T-1 (STCN's
recurrence is in :mod:`twoshot.model.network`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from twoshot.model.interface import VOSModel


@dataclass
class ClipOutput:
    """Predictions for frames 1..T-1 of a clip (frame 0 is given).

    logits: [B, T-1, K+1, H, W] soft-aggregated logits, background first (the loss input).
    probs:  [B, T-1, K+1, H, W] softmax of ``logits``.
    aux:    the model's auxiliary logits for its loss (:meth:`VOSModel.training_forward`;
            empty for STCN and for teacher passes).
    """

    logits: torch.Tensor
    probs: torch.Tensor
    aux: dict[str, torch.Tensor] = field(default_factory=dict)

    def detach(self) -> ClipOutput:
        """The same predictions without their autograd graph."""
        return ClipOutput(
            self.logits.detach(), self.probs.detach(), {k: v.detach() for k, v in self.aux.items()}
        )


class ClipModel(nn.Module):
    """Wraps a model so that the whole clip forward is one ``forward`` call.

    DistributedDataParallel synchronises gradients only for work done inside the wrapped
    module's ``forward``; the model's own methods are called from here.
    """

    def __init__(self, model: VOSModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """See :meth:`VOSModel.training_forward`: (logits, probs, aux), logits and probs
        [B, T-1, K+1, H, W]."""
        return self.model.training_forward(rgb, first_masks, selector)


def first_frame_masks(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Frame 0's masks of a training batch: [B, 2, H, W] = (target, second object).

    batch["gt"], batch["sec_gt"]: [B,T,1,H,W]. The second object's mask is all zeros when
    the clip has none (its selector entry is 0).
    """
    return torch.cat([batch["gt"][:, 0], batch["sec_gt"][:, 0]], dim=1).float()


def forward_batch(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> ClipOutput:
    """Run the clip forward on a training batch (a dict as the clip datasets give).

    model: a VOSModel (predictions only, e.g. the teacher), or a :class:`ClipModel` (possibly
    wrapped in DDP) around one (predictions and the auxiliary logits the loss needs).
    Returns the :class:`ClipOutput` of frames 1..T-1.
    """
    masks = first_frame_masks(batch)
    selector = batch["selector"].float()
    if isinstance(model, VOSModel):
        logits, probs = model.clip_forward(batch["rgb"], masks, selector)
        return ClipOutput(logits, probs)
    logits, probs, aux = model(batch["rgb"], masks, selector)
    return ClipOutput(logits, probs, aux)
