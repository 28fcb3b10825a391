"""Published Cutie weights: single-object checkpoints expanded to the multi-object network.

Cutie's single-object networks (e.g. after static-image pretraining) have no "other objects"
input: their mask encoder's first convolution takes 4 channels (RGB + mask) instead of 5 and
their sensory compression takes the sensory memory + 1 mask channel instead of + 2. As the
reference's ``CUTIE.load_weights`` does, the missing input channel is added, orthogonally
initialised (or zero).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

MASK_CONV = "mask_encoder.conv1.weight"
SENSORY_COMPRESS = "pixel_fuser.sensory_compress.weight"
_SENSORY_TRANSFORM = "mask_encoder.sensory_update.transform.weight"


def is_single_object(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` is a single-object Cutie state dict (4-channel mask encoder input)."""
    return MASK_CONV in state and state[MASK_CONV].shape[1] == 4


def expand_single_object(state: Mapping[str, torch.Tensor], zero: bool = False) -> dict[str, torch.Tensor]:
    """A multi-object copy of a Cutie state dict; multi-object ones come back unchanged.

    ``mask_encoder.conv1.weight`` [C, 4, 7, 7] gets a fifth input channel and
    ``pixel_fuser.sensory_compress.weight`` [C_v, C_s + 1, 1, 1] a last one (C_s read from
    the sensory updater's weights), orthogonally initialised, or zero with ``zero``.
    Returns a new dict (the tensors not expanded are shared with ``state``).
    """
    out = dict(state)
    if MASK_CONV in out and out[MASK_CONV].shape[1] == 4:
        out[MASK_CONV] = _add_input_channel(out[MASK_CONV], zero)
    if SENSORY_COMPRESS in out and _SENSORY_TRANSFORM in out:
        sensory_dim = out[_SENSORY_TRANSFORM].shape[0] // 3
        if out[SENSORY_COMPRESS].shape[1] == sensory_dim + 1:
            out[SENSORY_COMPRESS] = _add_input_channel(out[SENSORY_COMPRESS], zero)
    return out


def _add_input_channel(weight: torch.Tensor, zero: bool) -> torch.Tensor:
    """weight [C_out, C_in, kh, kw] -> [C_out, C_in + 1, kh, kw], the new channel last."""
    pad = torch.zeros((weight.shape[0], 1, *weight.shape[2:]), device=weight.device, dtype=weight.dtype)
    if not zero:
        nn.init.orthogonal_(pad)
    return torch.cat([weight, pad], dim=1)
