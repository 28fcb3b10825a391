"""STCN's training forward pass over one clip (DESIGN.md §3).

Frame 0 and its ground-truth masks (target and second object, K = 2) become the memory;
frame 1 is segmented from it; frame 1's *predicted* masks are encoded into a second memory
frame; frame 2 is segmented from memory {0, 1}; and so on for longer clips. The key encoder
runs once on all frames of the clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from twoshot.model.network import STCN
from twoshot.model.preprocess import pad_divide_by, unpad


@dataclass
class ClipOutput:
    """Predictions for frames 1..T-1 of a clip (frame 0 is given).

    logits: [B, T-1, K+1, H, W] soft-aggregated logits, background first (the loss input).
    probs:  [B, T-1, K+1, H, W] softmax of ``logits``.
    """

    logits: torch.Tensor
    probs: torch.Tensor

    def detach(self) -> "ClipOutput":
        """The same predictions without their autograd graph."""
        return ClipOutput(self.logits.detach(), self.probs.detach())


def clip_forward(model: STCN, rgb: torch.Tensor, first_masks: torch.Tensor,
                 selector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Segment frames 1..T-1 of each clip from frame 0's masks, as STCN trains.

    model: an STCN (any ModelConfig). rgb [B,T,3,H,W] normalised frames, T >= 2;
    first_masks [B,K,H,W] the K objects' masks in frame 0 (0/1 floats); selector [B,K]
    1 for objects present in the clip (absent second objects are zeroed before aggregation).
    Frames whose size is not a multiple of 16 are zero-padded and the outputs cropped back.
    Returns (logits, probs), each [B, T-1, K+1, H, W], background first.
    """
    batch, frames = rgb.shape[:2]
    if frames < 2:
        raise ValueError(f"a training clip needs at least 2 frames, got {frames}")
    rgb, pad = pad_divide_by(rgb, 16)
    first_masks, _ = pad_divide_by(first_masks, 16)
    # One key-encoder call for every frame of every clip (the key never depends on masks).
    feats = model.encode_key(rgb.flatten(0, 1))                 # [B*T, ...], clip-major
    h, w = feats.key.shape[-2:]
    keys = feats.key.view(batch, frames, -1, h, w)

    def frame(t: int) -> Any:
        return feats.index(slice(t, None, frames))              # frame t of every clip

    values = [model.encode_value(rgb[:, 0], frame(0).f16, first_masks)]  # [B,K,Cv,h,w]
    all_logits, all_probs = [], []
    for t in range(1, frames):
        memory_keys = keys[:, :t].transpose(1, 2).flatten(2)     # [B,Ck,t*h*w], frame-major
        memory_values = torch.stack(values, dim=3).flatten(3)    # [B,K,Cv,t*h*w], same order
        logits, prob = model.segment(frame(t), memory_keys, memory_values, top_k=None,
                                     selector=selector)
        all_logits.append(logits)
        all_probs.append(prob)
        if t + 1 < frames:
            # STCN encodes the *predicted* (aggregated, soft) masks, so errors propagate
            # through the clip the way they do at inference.
            values.append(model.encode_value(rgb[:, t], frame(t).f16, prob[:, 1:]))
    logits = unpad(torch.stack(all_logits, dim=1), pad)
    probs = unpad(torch.stack(all_probs, dim=1), pad)
    return logits, probs


class ClipModel(nn.Module):
    """Wraps an STCN so that the whole clip forward is one ``forward`` call.

    DistributedDataParallel synchronises gradients only for work done inside the wrapped
    module's ``forward``; the STCN's own methods are called from here.
    """

    def __init__(self, model: STCN) -> None:
        super().__init__()
        self.model = model

    def forward(self, rgb: torch.Tensor, first_masks: torch.Tensor,
                selector: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`clip_forward`. Returns (logits, probs), each [B, T-1, K+1, H, W]."""
        return clip_forward(self.model, rgb, first_masks, selector)


def first_frame_masks(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Frame 0's masks of a training batch: [B, 2, H, W] = (target, second object).

    batch["gt"], batch["sec_gt"]: [B,T,1,H,W]. The second object's mask is all zeros when
    the clip has none (its selector entry is 0).
    """
    return torch.cat([batch["gt"][:, 0], batch["sec_gt"][:, 0]], dim=1).float()


def forward_batch(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> ClipOutput:
    """Run :func:`clip_forward` on a training batch (a dict as the clip datasets give).

    model: an STCN, or a :class:`ClipModel` (possibly wrapped in DDP) around one.
    Returns the :class:`ClipOutput` of frames 1..T-1.
    """
    masks = first_frame_masks(batch)
    selector = batch["selector"].float()
    if isinstance(model, STCN):
        logits, probs = clip_forward(model, batch["rgb"], masks, selector)
    else:
        logits, probs = model(batch["rgb"], masks, selector)
    return ClipOutput(logits, probs)

