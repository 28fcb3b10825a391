"""Cutie as a twoshot model plugin (see :mod:`twoshot.model.spec`): its own config sections
(``model.cutie``: :class:`CutieSizes`; ``static.cutie`` / ``main.cutie``:
:class:`CutieTrainSettings`), their checks, presets and checkpoint recognition."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twoshot.errors import UserError
from twoshot.model.spec import ModelSpec, section_of

if TYPE_CHECKING:
    from twoshot.config import InferenceConfig, ModelConfig, TrainConfig


@dataclass
class CutieSizes:
    """Sizes only Cutie has (``model.cutie``; refused with an STCN model unless at the defaults).

    The defaults are Cutie-base.

    Cutie's pixel / mask encoders, ``key_dim``, ``value_dim`` and its mask decoder's widths
    (``decoder_dims``, the first equal to ``embed_dim``) come from :class:`ModelConfig`.
    """

    pixel_dim: int = 256  # pixel features and the key projection's input
    sensory_dim: int = 256  # per-object recurrent (sensory) state
    embed_dim: int = 256  # object transformer width; equals pixel_dim
    num_queries: int = 16  # object queries = object summaries (half fore-, half background)
    num_heads: int = 8
    ff_dim: int = 2048
    num_blocks: int = 3  # object transformer blocks
    pe_scale: float = 32.0  # sine positional encoding: coordinates scaled to [0, pe_scale]
    pe_temperature: float = 128.0


@dataclass
class CutieTrainSettings:
    """Training settings only Cutie uses (``static.cutie`` / ``main.cutie``; refused with STCN).

    Defaults are the reference's main training (``train_config.yaml``); its pre-training
    samples 8192 points and reads 2 reference frames.
    """

    num_points: int = 12544  # loss points per frame (PointRend-style uncertainty sampling)
    oversample_ratio: float = 3.0  # candidate points per loss point
    importance_ratio: float = 0.75  # share of the loss points picked by uncertainty
    sensory_aux_weight: float = 0.01  # aux loss on the sensory memory's logits
    query_aux_weight: float = 0.01  # aux loss on the object transformer's logits (every level)
    backbone_lr_ratio: float = 0.1  # pixel encoder learning rate = lr x this
    embed_weight_decay: float = 0.0  # weight decay of the query embeddings
    num_ref_frames: int = 3  # memory frames a training frame reads
    deep_update_prob: float = 0.2  # chance that encoding a predicted mask updates the sensory memory
    grad_scale: float = 8192.0  # initial AMP loss scale


def cutie_sizes(model: ModelConfig) -> CutieSizes:
    """The ``model.cutie`` section of ``model``."""
    return section_of(model, "cutie", CutieSizes)


def cutie_train_settings(cfg: TrainConfig) -> CutieTrainSettings:
    """The ``<stage>.cutie`` section of a stage's TrainConfig."""
    return section_of(cfg, "cutie", CutieTrainSettings)


def check_cutie_model(model: ModelConfig) -> None:
    """Raise UserError naming the key if the Cutie sizes of ``model`` build no network."""
    sizes = cutie_sizes(model)
    for name in ("pixel_dim", "sensory_dim", "embed_dim", "num_queries", "num_heads", "ff_dim", "num_blocks"):
        if getattr(sizes, name) < 1:
            raise UserError(
                f"config key 'model.cutie.{name}': must be at least 1, got {getattr(sizes, name)}"
            )
    if model.output_stride != 16:
        raise UserError(
            "config key 'model.output_stride': cutie needs 16 (its decoder upsamples "
            f"1/16 -> 1/8 -> 1/4), got {model.output_stride}"
        )
    if len(model.decoder_dims) != 3 or model.decoder_dims[0] != sizes.embed_dim:
        raise UserError(
            f"config key 'model.decoder_dims': cutie's mask decoder needs 3 widths, the "
            f"first equal to model.cutie.embed_dim ({sizes.embed_dim}), got {model.decoder_dims}"
        )
    if sizes.pixel_dim != sizes.embed_dim:
        raise UserError(
            f"config key 'model.cutie.pixel_dim': must equal model.cutie.embed_dim "
            f"({sizes.embed_dim}; the sensory auxiliary head multiplies them), got {sizes.pixel_dim}"
        )
    if sizes.embed_dim % 4 or sizes.embed_dim % sizes.num_heads:
        raise UserError(
            f"config key 'model.cutie.embed_dim': must be a multiple of 4 (positional "
            f"encoding) and of model.cutie.num_heads ({sizes.num_heads}), got {sizes.embed_dim}"
        )
    if sizes.num_queries % 2:
        raise UserError(
            f"config key 'model.cutie.num_queries': must be even (half foreground, half "
            f"background), got {sizes.num_queries}"
        )


def check_cutie_train(cfg: TrainConfig, stage: str) -> None:
    """Raise UserError naming the key if ``<stage>.cutie`` is out of range."""
    cutie = cutie_train_settings(cfg)
    checks = [
        (cutie.num_points >= 1, "num_points", "must be >= 1"),
        (cutie.oversample_ratio >= 1.0, "oversample_ratio", "must be >= 1"),
        (0.0 <= cutie.importance_ratio <= 1.0, "importance_ratio", "must be in [0, 1]"),
        (cutie.num_ref_frames >= 1, "num_ref_frames", "must be >= 1"),
        (0.0 <= cutie.deep_update_prob <= 1.0, "deep_update_prob", "must be in [0, 1]"),
        (cutie.grad_scale > 0, "grad_scale", "must be > 0"),
    ]
    for ok, key, what in checks:
        if not ok:
            raise UserError(f"config {stage}.cutie.{key} {what} (got {getattr(cutie, key)!r})")


def check_cutie_inference(config: InferenceConfig) -> None:
    """Raise UserError naming the key if Cutie cannot propagate under ``config``."""
    if config.include_last:
        raise UserError(
            "config key 'inference.include_last': cutie has no temporary memory frame "
            "(its sensory memory carries the previous frame); set it to false"
        )
    frames = config.max_memory_frames
    if frames is not None and frames < 2:
        raise UserError(
            f"config key 'inference.max_memory_frames': cutie's long-term memory needs at "
            f"least 2 working frames, got {frames}"
        )


SPEC = ModelSpec(
    kind="cutie",
    network="twoshot.model.cutie.network:Cutie",
    objective="twoshot.train.objectives:CutieObjective",
    checkpoint_prefixes=("pixel_encoder.", "mask_encoder."),
    upgrade_state="twoshot.model.cutie.weights:expand_single_object",
    presets=("cutie-base", "cutie-small", "cutie-tiny"),
    sizes=CutieSizes,
    train_settings=CutieTrainSettings,
    check_model=check_cutie_model,
    check_train=check_cutie_train,
    check_inference=check_cutie_inference,
    demo_preset="cutie-tiny",
)
