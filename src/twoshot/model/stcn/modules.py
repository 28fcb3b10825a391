"""STCN's building blocks: pre-activation ResBlock, CBAM, the value fuser and the decoder.

Attribute names follow STCN so its state dicts load unchanged (see
``shared/reference/stcn_state_dict_keys.tsv``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.model.resnet import ResNetTrunk


def per_object_rows(per_frame: torch.Tensor, rows: int) -> torch.Tensor:
    """Frame features [B, ...] repeated for each of the frame's objects: [rows = B*K, ...]."""
    objects = rows // per_frame.shape[0]
    return (
        per_frame
        if objects == 1
        else per_frame.unsqueeze(1).expand(-1, objects, *per_frame.shape[1:]).flatten(0, 1)
    )


class ResBlock(nn.Module):
    """Pre-activation residual block: downsample(x) + conv2(relu(conv1(relu(x)))).

    The 3x3 ``downsample`` convolution exists only when the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.downsample = (
            nn.Conv2d(in_channels, out_channels, 3, padding=1) if in_channels != out_channels else None
        )
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv2(F.relu(self.conv1(F.relu(x))))
        return (x if self.downsample is None else self.downsample(x)) + r


def concat_block(block: nn.Module, per_object: torch.Tensor, per_frame: torch.Tensor) -> torch.Tensor:
    """``block`` on concat(per_object [B*K, Ca, h, w], per_frame [B, Cb, h, w] repeated per object).

    A :class:`ResBlock` takes the concatenation; an inference rewrite of it
    (:class:`~twoshot.model.fast_inference.SharedInputResBlock`) takes both halves.
    """
    if isinstance(block, ResBlock):
        return block(torch.cat([per_object, per_object_rows(per_frame, per_object.shape[0])], dim=1))
    return block(per_object, per_frame)


class ChannelGate(nn.Module):
    """CBAM channel attention: one MLP on the average- and max-pooled features, summed."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        # Index 0 is a Flatten so the Linear layers are mlp.1 / mlp.3, as in STCN.
        self.mlp = nn.Sequential(
            nn.Flatten(), nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # avg_pool2d over the whole map, as STCN: x.mean() sums in another order, and that
        # one-ulp difference was the largest source of the float64 training gap to the paper's
        # code (docs/training.md).
        if torch.onnx.is_in_onnx_export():
            average = x.mean(dim=(2, 3))  # the exporter needs a fixed pooling kernel
        else:
            size = (x.shape[2], x.shape[3])
            average = F.avg_pool2d(x, size, stride=size).flatten(1)
        attention = self.mlp(average) + self.mlp(x.amax(dim=(2, 3)))
        return x * torch.sigmoid(attention)[:, :, None, None]


class _SpatialConv(nn.Module):
    """Holds the 7x7 conv under the name ``conv`` (STCN's ``spatial.conv``)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: 7x7 conv over [max over channels, mean over channels]."""

    def __init__(self) -> None:
        super().__init__()
        self.spatial = _SpatialConv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(pooled))


class CBAM(nn.Module):
    """Convolutional block attention: channel gate then spatial gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.ChannelGate = ChannelGate(channels)  # noqa: N815 - STCN's parameter names
        self.SpatialGate = SpatialGate()  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.SpatialGate(self.ChannelGate(x))


class FeatureFusionBlock(nn.Module):
    """Fuses the value encoder's f16 with the key encoder's f16 into the memory value."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        # A ResBlock; a fast inference copy swaps in a SharedInputResBlock (same function).
        self.block1: nn.Module = ResBlock(in_channels, out_channels)
        self.attention = CBAM(out_channels)
        self.block2 = ResBlock(out_channels, out_channels)

    def forward(self, value_f16: torch.Tensor, key_f16: torch.Tensor) -> torch.Tensor:
        """value_f16 [B*K,Cv16,h,w] (K objects per frame, batch-major), key_f16 [B,C16,h,w]
        (one per frame) -> memory values [B*K,value_dim,h,w]."""
        x = concat_block(self.block1, value_f16, key_f16)
        x = x + self.attention(x)
        return self.block2(x)


class KeyEncoder(nn.Module):
    """ResNet to layer3 on RGB; STCN names its layer1 ``res2``. Returns (f16, f8, f4)."""

    def __init__(self, block: str, layers: list[int], width: int, output_stride: int = 16) -> None:
        super().__init__()
        trunk = ResNetTrunk(block, layers, width, in_channels=3, conv_bias=False, output_stride=output_stride)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.res2, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.channels = trunk.channels

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """images [B,3,H,W] -> f16 [B,C16,H/s,W/s], f8 [B,C8,H/8,W/8], f4 [B,C4,H/4,W/4].

        s is the output stride (16; 8 in models built with ``output_stride=8``, where the
        "f16" features are at 1/8 and keep STCN's name).
        """
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        f4 = self.res2(x)
        f8 = self.layer2(f4)
        f16 = self.layer3(f8)
        return f16, f8, f4


class ValueEncoder(nn.Module):
    """ResNet (convs with bias) on RGB + mask + other objects' masks, fused with key f16."""

    def __init__(
        self,
        block: str,
        layers: list[int],
        width: int,
        key_f16_channels: int,
        value_dim: int,
        output_stride: int = 16,
    ) -> None:
        super().__init__()
        trunk = ResNetTrunk(block, layers, width, in_channels=5, conv_bias=True, output_stride=output_stride)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3 = trunk.layer1, trunk.layer2, trunk.layer3
        self.fuser = FeatureFusionBlock(trunk.channels[2] + key_f16_channels, value_dim)

    def forward(
        self, images: torch.Tensor, key_f16: torch.Tensor, masks: torch.Tensor, others: torch.Tensor
    ) -> torch.Tensor:
        """images [B*K,3,H,W], key_f16 [B,C16,h,w] (one per frame; K objects per frame,
        batch-major), masks/others [B*K,1,H,W] -> value [B*K,Cv,h,w]."""
        x = torch.cat([images, masks, others], dim=1)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fuser(x, key_f16)


class KeyProjection(nn.Module):
    """3x3 conv to the key space; orthogonal weights and zero bias at initialisation."""

    def __init__(self, in_channels: int, key_dim: int) -> None:
        super().__init__()
        self.key_proj = nn.Conv2d(in_channels, key_dim, 3, padding=1)
        nn.init.orthogonal_(self.key_proj.weight.data)
        assert self.key_proj.bias is not None
        nn.init.zeros_(self.key_proj.bias.data)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.key_proj(x)


class UpsampleBlock(nn.Module):
    """skip 3x3 conv + the coarser features bilinearly upsampled to the skip's size, then a ResBlock.

    Upsampling to the skip's size is x2 in STCN and x1 (the identity) for the 1/8 -> 1/8
    step of a model with output stride 8.
    """

    def __init__(self, skip_channels: int, up_channels: int, out_channels: int) -> None:
        super().__init__()
        self.skip_conv = nn.Conv2d(skip_channels, up_channels, 3, padding=1)
        self.out_conv = ResBlock(up_channels, out_channels)

    def forward(self, skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """skip [B, Cs, H, W]; up [B*K, Cu, h, w] (K objects per skip, batch-major) -> [B*K, Cout, H, W].

        The skip convolution runs once per frame and is shared by the frame's K objects: its
        input does not depend on the object (STCN computes it once per frame too).
        """
        if up.shape[-2:] != skip.shape[-2:]:
            up = F.interpolate(up, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.out_conv(per_object_rows(self.skip_conv(skip), up.shape[0]) + up)


class Decoder(nn.Module):
    """Memory readout + key_comp (1/16) -> 1/8 -> 1/4 -> one logit map at full resolution."""

    def __init__(self, in_channels: int, key_channels: tuple[int, int, int], dims: list[int]) -> None:
        super().__init__()
        c4, c8, _ = key_channels
        # A ResBlock; a fast inference copy swaps in a SharedInputResBlock (same function).
        self.compress: nn.Module = ResBlock(in_channels, dims[0])
        self.up_16_8 = UpsampleBlock(c8, dims[0], dims[1])
        self.up_8_4 = UpsampleBlock(c4, dims[1], dims[2])
        self.pred = nn.Conv2d(dims[2], 1, 3, padding=1)

    def forward(
        self, readout: torch.Tensor, query: torch.Tensor, f8: torch.Tensor, f4: torch.Tensor
    ) -> torch.Tensor:
        """Logits of K objects per frame.

        readout [B*K,Cv,h,w] (1/16, or 1/8; K objects per frame, batch-major); query [B,Cq,h,w]
        (the frame's key_comp features, shared by its objects); f8 [B,C8,H/8,W/8] and
        f4 [B,C4,H/4,W/4] (one per frame) -> logits [B*K,1,H,W].
        """
        x = concat_block(self.compress, readout, query)
        x = self.up_16_8(f8, x)
        x = self.up_8_4(f4, x)
        x = self.pred(F.relu(x))
        return F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
