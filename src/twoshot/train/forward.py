"""The training forward pass over a batch of clips, for any model.

Frame 0's ground-truth masks of the clip's K object slots start each clip; the model's
:meth:`~twoshot.model.interface.VOSModel.clip_forward` segments frames 1..T-1 (STCN's
recurrence is in :mod:`twoshot.model.stcn.network`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from twoshot.data.batch import ClipBatch
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


def forward_batch(model: nn.Module, batch: ClipBatch) -> ClipOutput:
    """Run the clip forward on a training batch: frames ``batch.rgb`` from frame 0's
    ``batch.first_masks`` [B, K, S, S], absent slots masked by ``batch.selector`` [B, K].

    model: a VOSModel (predictions only, e.g. the teacher), or a :class:`ClipModel` (possibly
    wrapped in DDP) around one (predictions and the auxiliary logits the loss needs).
    Returns the :class:`ClipOutput` of frames 1..T-1 (K + 1 channels).
    """
    if isinstance(model, VOSModel):
        logits, probs = model.clip_forward(batch.rgb, batch.first_masks, batch.selector)
        return ClipOutput(logits, probs)
    logits, probs, aux = model(batch.rgb, batch.first_masks, batch.selector)
    return ClipOutput(logits, probs, aux)
