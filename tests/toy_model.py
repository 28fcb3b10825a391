"""A third model that lives only in the tests: a one-convolution memory reader.

It proves that a model is a plugin: :data:`SPEC` registered at run time is enough for the
configuration (its own ``model.toy`` / ``main.toy`` sections and checks), checkpoint
recognition, training and the command line; no shared file names it.

Frames are encoded by one 4x4 convolution of stride 4 into unit-length keys; a frame's object
probabilities are the memory frames' masks read out with a softmax over key similarity
(scaled by a learned temperature), upsampled x4 and soft-aggregated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.config import InferenceConfig, ModelConfig, TrainConfig
from twoshot.data.batch import ClipBatch
from twoshot.errors import UserError
from twoshot.model.aggregate import aggregate, aggregate_logits
from twoshot.model.interface import Propagator, VOSModel, Wrap, no_wrap
from twoshot.model.spec import ModelSpec, section_of
from twoshot.train.forward import ClipOutput
from twoshot.train.loss import LossResult, clip_loss

STRIDE = 4


@dataclass
class ToySizes:
    """``model.toy``."""

    channels: int = 8


@dataclass
class ToyTrainSettings:
    """``static.toy`` / ``main.toy``."""

    lr_scale: float = 1.0


def check_toy_model(model: ModelConfig) -> None:
    """``model.toy.channels`` must be at least 1."""
    channels = section_of(model, "toy", ToySizes).channels
    if channels < 1:
        raise UserError(f"config key 'model.toy.channels': must be at least 1, got {channels}")


def check_toy_train(cfg: TrainConfig, stage: str) -> None:
    """``<stage>.toy.lr_scale`` must be above 0."""
    scale = section_of(cfg, "toy", ToyTrainSettings).lr_scale
    if not scale > 0:
        raise UserError(f"config key '{stage}.toy.lr_scale': must be above 0, got {scale}")


class ToyFeatures:
    """Unit-length keys [B, C, Hp/4, Wp/4]."""

    def __init__(self, key: torch.Tensor) -> None:
        self.key = key

    def index(self, item: int | slice | torch.Tensor) -> ToyFeatures:
        return ToyFeatures(self.key[item : item + 1] if isinstance(item, int) else self.key[item])

    def clone(self) -> ToyFeatures:
        return ToyFeatures(self.key.clone())


class ToyMemory:
    """Keys [C, N] and object masks [K_then, N] of each memory frame."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.objects = 0

    @property
    def num_objects(self) -> int:
        return self.objects

    @property
    def peak_frames(self) -> int:
        return len(self.keys)

    def add_objects(self, count: int) -> None:
        self.objects += count


class ToyVOS(VOSModel):
    """The test-only model (see the module docstring)."""

    kind = "toy"

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        channels = section_of(config, "toy", ToySizes).channels
        self.toy_encoder = nn.Conv2d(3, channels, kernel_size=STRIDE, stride=STRIDE)
        self.toy_temperature = nn.Parameter(torch.tensor(4.0))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Keys of frames [B, 3, H, W] -> [B, C, H/4, W/4]."""
        return F.normalize(self.toy_encoder(images), dim=1)

    def read(self, keys: torch.Tensor, values: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
        """Memory keys [B, C, N], masks [B, K, N], query keys [B, C, M] -> [B, K, M]."""
        affinity = torch.softmax(self.toy_temperature * keys.transpose(1, 2) @ query, dim=1)
        return values @ affinity

    def propagator(self, config: InferenceConfig, wrap: Wrap = no_wrap) -> Propagator:
        return ToyPropagator(self, config)

    def clip_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, frames, _, height, width = rgb.shape
        keys = self.encode(rgb.flatten(0, 1)).unflatten(0, (batch, frames))
        memory_keys = [keys[:, 0].flatten(2)]
        memory_values = [F.avg_pool2d(first_masks.float(), STRIDE).flatten(2)]
        logits, probs = [], []
        for t in range(1, frames):
            read = self.read(torch.cat(memory_keys, 2), torch.cat(memory_values, 2), keys[:, t].flatten(2))
            objects = F.interpolate(read.unflatten(2, keys.shape[-2:]), size=(height, width), mode="bilinear")
            frame_logits = aggregate_logits(objects * selector[:, :, None, None], dim=1)
            frame_probs = torch.softmax(frame_logits, dim=1)
            memory_keys.append(keys[:, t].flatten(2))
            memory_values.append(F.avg_pool2d(frame_probs[:, 1:], STRIDE).flatten(2))
            logits.append(frame_logits)
            probs.append(frame_probs)
        return torch.stack(logits, 1), torch.stack(probs, 1)


class ToyPropagator(Propagator):
    """Inference: every memory frame is kept; objects enabled later read zeros in older frames."""

    def __init__(self, model: ToyVOS, config: InferenceConfig) -> None:
        super().__init__(config)
        self.model = model

    def encode_frames(self, images: torch.Tensor) -> ToyFeatures:
        return ToyFeatures(self.model.encode(images))

    def new_memory(self) -> ToyMemory:
        return ToyMemory()

    def segment(self, memory: Any, image: torch.Tensor, features: Any) -> torch.Tensor:
        objects = memory.num_objects
        values = [F.pad(v, (0, 0, 0, objects - v.shape[0])) for v in memory.values]
        read = self.model.read(
            torch.cat(memory.keys, 1)[None], torch.cat(values, 1)[None], features.key.flatten(2)
        )
        read = F.interpolate(
            read.unflatten(2, features.key.shape[-2:]), size=image.shape[-2:], mode="bilinear"
        )
        return aggregate(read, dim=1).float()

    def memorize(
        self,
        memory: Any,
        image: torch.Tensor,
        features: Any,
        prob: torch.Tensor,
        lifetime: str | None,
        *,
        pinned: bool = False,
    ) -> None:
        if lifetime is None:
            return
        memory.keys.append(features.key[0].flatten(1))
        memory.values.append(F.avg_pool2d(prob[:, 1:], STRIDE)[0].flatten(1))


class ToyObjective:
    """Bootstrapped CE (the shared loss) and Adam at ``lr x toy.lr_scale``."""

    grad_scale = 1024.0

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.settings = section_of(cfg, "toy", ToyTrainSettings)

    def configure(self, model: nn.Module) -> None:
        """Nothing to hand over."""

    def optimizer(self, model: nn.Module, use_amp: bool) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr * self.settings.lr_scale)

    def loss(self, output: ClipOutput, batch: ClipBatch, it: int) -> LossResult:
        return clip_loss(output.logits, batch.cls_gt, batch.selector, it, self.cfg)


SPEC = ModelSpec(
    kind="toy",
    network="toy_model:ToyVOS",
    objective="toy_model:ToyObjective",
    checkpoint_prefixes=("toy_encoder.",),
    presets=("toy-tiny",),
    preset_dir=Path(__file__).parent / "data",
    sizes=ToySizes,
    train_settings=ToyTrainSettings,
    check_model=check_toy_model,
    check_train=check_toy_train,
)
