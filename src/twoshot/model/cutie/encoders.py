"""Cutie's encoders: the pixel encoder and key projection (image only), the mask encoder
(image + masks -> memory values, with the deep sensory update), and the pixel feature fuser
(memory readout + sensory memory + last mask -> per-object pixel features).

As the reference (hkchengrex/Cutie ``big_modules.py``): the pixel encoder is a ResNet to
layer3 whose layer1 is named ``res2``; the mask encoder is a ResNet on RGB + mask + the
other objects' masks whose stem runs conv1 -> bn1 -> maxpool -> relu; only the stride-16
features reach the mask encoder's fuser.
"""

from __future__ import annotations

import torch
from torch import nn

from twoshot.model.cutie.blocks import ObjectConv2d, ObjectFeatureFusion, SensoryDeepUpdater
from twoshot.model.resnet import ResNetTrunk


class PixelEncoder(nn.Module):
    """ResNet to layer3 on normalised RGB. ``channels`` = (C4, C8, C16) of layer1..layer3."""

    def __init__(self, block: str, layers: list[int], width: int) -> None:
        super().__init__()
        trunk = ResNetTrunk(block, layers, width, in_channels=3)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.res2, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.channels = trunk.channels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] -> (f16 [B, C16, H/16, W/16], f8 [B, C8, H/8, W/8], f4 [B, C4, H/4, W/4])."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        return self.layer3(f8), f8, f4


class KeyProjection(nn.Module):
    """Key, shrinkage and selection of a frame's stride-16 features (XMem's anisotropic L2).

    key: 3x3 conv (orthogonal weights, zero bias at initialisation); shrinkage = d^2 + 1 >= 1;
    selection = sigmoid(e) in (0, 1) per key channel.
    """

    def __init__(self, in_dim: int, mid_dim: int, key_dim: int) -> None:
        super().__init__()
        self.pix_feat_proj = nn.Conv2d(in_dim, mid_dim, kernel_size=1)
        self.key_proj = nn.Conv2d(mid_dim, key_dim, kernel_size=3, padding=1)
        self.d_proj = nn.Conv2d(mid_dim, 1, kernel_size=3, padding=1)
        self.e_proj = nn.Conv2d(mid_dim, key_dim, kernel_size=3, padding=1)
        assert self.key_proj.bias is not None
        nn.init.orthogonal_(self.key_proj.weight.data)
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """f16 [B, C16, h, w] -> (key [B, Ck, h, w], shrinkage [B, 1, h, w], selection [B, Ck, h, w])."""
        x = self.pix_feat_proj(f16)
        shrinkage = self.d_proj(x) ** 2 + 1
        selection = torch.sigmoid(self.e_proj(x))
        return self.key_proj(x), shrinkage, selection


def other_objects(masks: torch.Tensor) -> torch.Tensor:
    """For each object, the union of the other objects' masks: (sum - own) clamped to [0, 1].

    masks [B, K, H, W] -> [B, K, H, W].
    """
    return (masks.sum(dim=1, keepdim=True) - masks).clamp(0, 1)


class MaskEncoder(nn.Module):
    """Memory values of each object from the image, its mask and the other objects' masks.

    A ResNet (no conv biases) on 5 channels to layer3, fused with the frame's pixel features,
    then (optionally) the deep update of the sensory memory from the new values.
    """

    def __init__(
        self, block: str, layers: list[int], width: int, pixel_dim: int, value_dim: int, sensory_dim: int
    ) -> None:
        super().__init__()
        trunk = ResNetTrunk(block, layers, width, in_channels=5)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.fuser = ObjectFeatureFusion(pixel_dim, trunk.channels[2], value_dim)
        self.sensory_update = SensoryDeepUpdater(value_dim, sensory_dim)

    def forward(
        self,
        images: torch.Tensor,
        pix_feat: torch.Tensor,
        sensory: torch.Tensor,
        masks: torch.Tensor,
        others: torch.Tensor,
        deep_update: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W]; pix_feat [B, C_p, h, w]; sensory [B, K, C_s, h, w];
        masks, others [B, K, H, W]. Returns (values [B, K, C_v, h, w], sensory [B, K, C_s, h, w]),
        the input sensory unchanged when not ``deep_update``."""
        batch, objects = masks.shape[:2]
        x = torch.cat(
            [images.unsqueeze(1).expand(-1, objects, -1, -1, -1), torch.stack([masks, others], dim=2)], dim=2
        ).flatten(0, 1)
        # The reference pools before the ReLU; the two commute, the order is kept anyway.
        x = self.relu(self.maxpool(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        # Contiguous as the reference's (it concatenates object chunks): the summarizer's
        # float results depend on the layout of the values it reads.
        values = self.fuser(pix_feat, x.view(batch, objects, *x.shape[1:])).contiguous()
        if deep_update:
            sensory = self.sensory_update(values, sensory)
        return values, sensory


class PixelFeatureFuser(nn.Module):
    """Per-object pixel features: memory readout + compressed (sensory, last mask, others),
    fused with the frame's pixel features."""

    def __init__(self, pixel_dim: int, value_dim: int, sensory_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.fuser = ObjectFeatureFusion(pixel_dim, value_dim, embed_dim)
        self.sensory_compress = ObjectConv2d(sensory_dim + 2, value_dim, kernel_size=1)

    def forward(
        self,
        pix_feat: torch.Tensor,
        readout: torch.Tensor,
        sensory: torch.Tensor,
        last_mask: torch.Tensor,
        last_others: torch.Tensor,
    ) -> torch.Tensor:
        """pix_feat [B, C_p, h, w]; readout [B, K, C_v, h, w]; sensory [B, K, C_s, h, w];
        last_mask, last_others [B, K, h, w] -> [B, K, C_e, h, w]."""
        extra = torch.stack([last_mask, last_others], dim=2)
        compressed = self.sensory_compress(torch.cat([sensory, extra], dim=2))
        return self.fuser(pix_feat, readout + compressed).contiguous()
