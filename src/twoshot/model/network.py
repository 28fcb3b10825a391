"""The STCN network: key encoder, value encoder, memory read and decoder.

Shapes use B = batch, K = objects, N = memory positions (frames x h x w), (h, w) = 1/16 of the
padded input size (H, W), or 1/8 with ``model.output_stride: 8``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from twoshot.config import ModelConfig
from twoshot.model.aggregate import aggregate_logits
from twoshot.model.backbone_weights import load_backbone_weights
from twoshot.model.memory import memory_affinity, readout
from twoshot.model.modules import Decoder, KeyEncoder, KeyProjection, ValueEncoder


@dataclass
class KeyFeatures:
    """What the key encoder gives for a batch of frames."""

    key: torch.Tensor      # [B, key_dim, h, w]   memory / query key
    thin: torch.Tensor     # [B, value_dim, h, w] key_comp(f16), the decoder's query half
    f16: torch.Tensor      # [B, C16, h, w]       goes to the value encoder's fuser
    f8: torch.Tensor       # [B, C8, H/8, W/8]    decoder skip
    f4: torch.Tensor       # [B, C4, H/4, W/4]    decoder skip

    def index(self, item: slice | int | torch.Tensor) -> "KeyFeatures":
        """Select batch entries (e.g. frames) from every feature map."""
        def pick(t: torch.Tensor) -> torch.Tensor:
            return t[item:item + 1] if isinstance(item, int) else t[item]
        return KeyFeatures(pick(self.key), pick(self.thin), pick(self.f16), pick(self.f8), pick(self.f4))


class STCN(nn.Module):
    """Space-Time Correspondence Network with STCN's parameter names."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__()
        config = config or ModelConfig()
        self.config = config
        self.key_encoder = KeyEncoder(config.key_block, config.key_layers, config.key_width,
                                      config.output_stride)
        c4, c8, c16 = self.key_encoder.channels
        self.value_encoder = ValueEncoder(config.value_block, config.value_layers, config.value_width,
                                          c16, config.value_dim, config.output_stride)
        self.key_proj = KeyProjection(c16, config.key_dim)
        self.key_comp = nn.Conv2d(c16, config.value_dim, 3, padding=1)
        self.decoder = Decoder(2 * config.value_dim, (c4, c8, c16), config.decoder_dims)

    def encode_key(self, images: torch.Tensor) -> KeyFeatures:
        """Key features of normalised, padded frames. images [B,3,H,W] (H, W multiples of 16)."""
        f16, f8, f4 = self.key_encoder(images)
        return KeyFeatures(self.key_proj(f16), self.key_comp(f16), f16, f8, f4)

    def encode_value(self, images: torch.Tensor, key_f16: torch.Tensor,
                     masks: torch.Tensor) -> torch.Tensor:
        """Memory values of K objects per frame, in one batched encoder call.

        images [B,3,H,W]; key_f16 [B,C16,h,w]; masks [B,K,H,W] (probabilities or 0/1).
        Each object's "others" channel is the sum of the other objects' masks.
        Returns [B,K,value_dim,h,w].
        """
        batch, objects, height, width = masks.shape
        if objects > 1:
            # others[:, i] = sum of masks[:, j] for j != i, summed in index order like STCN.
            index = torch.tensor([[j for j in range(objects) if j != i] for i in range(objects)],
                                 device=masks.device)
            others = masks[:, index].sum(dim=2)
        else:
            others = torch.zeros_like(masks)
        flat_images = images.unsqueeze(1).expand(-1, objects, -1, -1, -1).reshape(-1, 3, height, width)
        flat_f16 = key_f16.unsqueeze(1).expand(-1, objects, -1, -1, -1).flatten(0, 1)
        values = self.value_encoder(flat_images, flat_f16, masks.reshape(-1, 1, height, width),
                                    others.reshape(-1, 1, height, width))
        return values.view(batch, objects, *values.shape[1:])

    def decode(self, readout_values: torch.Tensor, query: KeyFeatures) -> torch.Tensor:
        """Object logits from memory readouts. readout_values [B,K,Cv,h,w] -> [B,K,H,W]."""
        batch, objects = readout_values.shape[:2]

        def repeat(t: torch.Tensor) -> torch.Tensor:
            return t.unsqueeze(1).expand(-1, objects, -1, -1, -1).flatten(0, 1)

        x = torch.cat([readout_values.flatten(0, 1), repeat(query.thin)], dim=1)
        logits = self.decoder(x, repeat(query.f8), repeat(query.f4))
        return logits.view(batch, objects, *logits.shape[2:])

    def segment(self, query: KeyFeatures, memory_keys: torch.Tensor, memory_values: torch.Tensor,
                top_k: int | None = None,
                selector: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment K objects in one query frame per batch entry from memory.

        query: key features of one frame per batch entry ([B,...]).
        memory_keys [B,Ck,N]; memory_values [B,K,Cv,N]; top_k None = full softmax (training).
        selector [B,K]: 1 for objects that exist (training masks absent second objects).
        Returns (logits [B,K+1,H,W] after soft aggregation, prob [B,K+1,H,W] = softmax(logits)),
        background first.
        """
        batch, _, h, w = query.key.shape
        affinity = memory_affinity(memory_keys, query.key.flatten(2), top_k)
        values = readout(affinity, memory_values)
        values = values.view(*values.shape[:3], h, w)
        prob = torch.sigmoid(self.decode(values, query))
        if selector is not None:
            prob = prob * selector[:, :, None, None]
        logits = aggregate_logits(prob, dim=1)
        return logits, torch.softmax(logits, dim=1)


def build_model(config: ModelConfig | None = None) -> STCN:
    """A randomly initialised STCN with the sizes of ``config`` (published STCN if None).

    If ``config.backbone_weights`` names torchvision ImageNet files they are loaded into the
    encoders (see :func:`twoshot.model.backbone_weights.load_backbone_weights`).
    """
    model = STCN(config)
    if model.config.backbone_weights:
        load_backbone_weights(model, model.config.backbone_weights)
    return model
