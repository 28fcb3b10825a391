"""Published STCN weights: stage-0 (static pretraining) checkpoints expanded to the
multi-object network, as STCN's own loader does."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

VALUE_CONV1 = "value_encoder.conv1.weight"


def expand_value_conv1(weight: torch.Tensor) -> torch.Tensor:
    """Add the 'other objects' input channel to a stage-0 value encoder conv1.

    weight [C,4,7,7] -> [C,5,7,7]; the new channel is orthogonally initialised, as in STCN.
    """
    pad = torch.zeros((weight.shape[0], 1, *weight.shape[2:]), dtype=weight.dtype)
    nn.init.orthogonal_(pad)
    return torch.cat([weight, pad], dim=1)


def upgrade_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of an STCN state dict whose value encoder takes 5 input channels: a stage-0
    one (4 channels) gets :func:`expand_value_conv1`; others come back unchanged."""
    out = dict(state)
    weight = out.get(VALUE_CONV1)
    if weight is not None and weight.dim() == 4 and weight.shape[1] == 4:
        out[VALUE_CONV1] = expand_value_conv1(weight)
    return out
