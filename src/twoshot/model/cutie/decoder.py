"""Cutie's mask decoder: per-object features at 1/16 -> 1/8 -> 1/4 with the pixel encoder's
skips, one logit per object at 1/4, and the sensory-memory update from all three scales.

As the reference (hkchengrex/Cutie ``big_modules.py`` ``MaskDecoder``): the final 3x3
convolution and the sensory update run in float32 even under autocast; the logit joins the
1/4 features as an extra channel of the sensory update.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.model.cutie.blocks import DecoderFeatureProcessor, MaskUpsampleBlock, SensoryUpdater


class MaskDecoder(nn.Module):
    """Decoder of per-object readouts. ms_dims: pixel encoder channels (C16, C8, C4);
    up_dims: widths at 1/16, 1/8 and 1/4 (the first equals the readout's, embed_dim)."""

    def __init__(self, sensory_dim: int, ms_dims: tuple[int, int, int], up_dims: list[int]) -> None:
        super().__init__()
        self.sensory_update = SensoryUpdater(
            [up_dims[0], up_dims[1], up_dims[2] + 1], sensory_dim, sensory_dim
        )
        self.decoder_feat_proc = DecoderFeatureProcessor(list(ms_dims[1:]), up_dims[:-1])
        self.up_16_8 = MaskUpsampleBlock(up_dims[0], up_dims[1])
        self.up_8_4 = MaskUpsampleBlock(up_dims[1], up_dims[2])
        self.pred = nn.Conv2d(up_dims[-1], 1, kernel_size=3, padding=1)

    def forward(
        self,
        f8: torch.Tensor,
        f4: torch.Tensor,
        readout: torch.Tensor,
        sensory: torch.Tensor,
        update_sensory: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f8 [B, C8, H/8, W/8], f4 [B, C4, H/4, W/4] (pixel encoder); readout [B, K, C_e, H/16, W/16];
        sensory [B, K, C_s, H/16, W/16].
        Returns (sensory, updated only with ``update_sensory``; logits [B, K, H/4, W/4])."""
        batch, objects = readout.shape[:2]
        skip8, skip4 = self.decoder_feat_proc([f8, f4])
        p8 = self.up_16_8(readout, skip8)
        p4 = self.up_8_4(p8, skip4)
        with torch.autocast(p4.device.type, enabled=False):
            logits = self.pred(F.relu(p4.flatten(0, 1).float()))
        logits = logits.view(batch, objects, 1, *logits.shape[-2:])
        if update_sensory:
            sensory = self.sensory_update([readout, p8, torch.cat([p4, logits], dim=2)], sensory)
        return sensory, logits[:, :, 0]
