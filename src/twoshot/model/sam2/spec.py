"""SAM 2.1 as a twoshot model plugin (see :mod:`twoshot.model.spec`): its size section
(``model.sam2``: :class:`Sam2Sizes`), its training settings (``static.sam2`` / ``main.sam2``:
:class:`Sam2TrainSettings`), presets and checkpoint recognition.

Its training recipe is :class:`twoshot.model.sam2.objective.Sam2Objective` (the reference's
``SAM2Train`` forward, ``MultiStepMultiMasksAndIous`` loss and optimiser).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twoshot.errors import UserError
from twoshot.model.sam2.sizes import NUM_MASKMEM
from twoshot.model.spec import ModelSpec, section_of

if TYPE_CHECKING:
    from twoshot.config import InferenceConfig, ModelConfig, TrainConfig

MIN_MEMORY_FRAMES = NUM_MASKMEM - 1 + 2
"""The smallest ``inference.max_memory_frames`` SAM 2 takes: 6 previous + 2 given frames."""

SWITCHES: tuple[str, ...] = (
    "use_high_res_features_in_sam",
    "multimask_output_in_sam",
    "multimask_output_for_tracking",
    "dynamic_multimask_via_stability",
)
"""The boolean keys of ``model.sam2`` (the reference's options of the same names)."""

SIZE_NAMES: tuple[str, ...] = ("toy", "toy_wide", "tiny", "small", "base_plus", "large")
"""The names ``model.sam2.size`` takes (:data:`twoshot.model.sam2.sizes.SIZES`)."""


@dataclass
class Sam2Sizes:
    """Sizes only SAM 2 has (``model.sam2``; refused with another model unless at the defaults).

    size: the architecture, one of :data:`SIZE_NAMES` (the four published SAM 2.1 models and
    twoshot's ``toy``); image_size: the square network input, None = the size's own (1024 for
    the published ones, 128 for ``toy``); any multiple of 32 fits the same weights. The
    ModelConfig's STCN / Cutie fields are unused.

    The SAM heads' switches, under the reference's ``SAM2Base`` names and at the values every
    published SAM 2.1 config sets (the constructor's own defaults are all false):
    use_high_res_features_in_sam: the mask decoder adds the image encoder's stride-4 / 8 maps
    (through its ``conv_s0`` / ``conv_s1``) while upscaling; off, those convolutions do not
    exist and the masks come from the memory-conditioned stride-16 features alone.
    multimask_output_in_sam: a frame prompted with at most one click (a box counts as two)
    gets the decoder's three masks and keeps the best predicted IoU; off, always one mask.
    multimask_output_for_tracking: tracked frames (no prompt) do the same; only read when
    multimask_output_in_sam is on, as in the reference. dynamic_multimask_via_stability (the
    reference's mask-decoder option): in inference, a single mask that is unstable under a
    +-0.05 change of threshold is replaced by the best of the three multimask outputs.
    """

    size: str = "base_plus"
    image_size: int | None = None
    use_high_res_features_in_sam: bool = True
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    dynamic_multimask_via_stability: bool = True


@dataclass
class Sam2TrainSettings:
    """Training settings only SAM 2 reads (``static.sam2`` / ``main.sam2``). Defaults are the
    reference's fine-tuning config (``sam2.1_hiera_b+_MOSE_finetune.yaml``); the stage's
    ``lr`` (its base_lr), ``weight_decay`` and ``grad_clip`` are the shared keys."""

    mask_weight: float = 20.0  # focal loss
    dice_weight: float = 1.0
    iou_weight: float = 1.0  # L1 between predicted and actual IoU
    class_weight: float = 1.0  # object score
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    image_encoder_lr_ratio: float = 0.6  # image encoder lr = lr x this (vision_lr 3e-6 / 5e-6)
    layer_decay: float = 0.9  # per Hiera block, from the last block down
    end_lr_ratio: float = 0.1  # cosine schedule from lr to lr x this
    freeze_image_encoder: bool = False  # train the memory, heads and pointers only
    gradient_checkpointing: bool = False  # recompute activations per frame in the backward pass


def sam2_train_settings(cfg: TrainConfig) -> Sam2TrainSettings:
    """The ``<stage>.sam2`` section of a stage's TrainConfig."""
    return section_of(cfg, "sam2", Sam2TrainSettings)


def check_sam2_train(cfg: TrainConfig, stage: str) -> None:
    """Raise UserError naming the key if ``<stage>.sam2`` is out of range."""
    settings = sam2_train_settings(cfg)
    for key in ("mask_weight", "dice_weight", "iou_weight", "class_weight", "focal_gamma"):
        if getattr(settings, key) < 0:
            raise UserError(f"config key '{stage}.sam2.{key}': must be >= 0, got {getattr(settings, key)}")
    for key in ("image_encoder_lr_ratio", "layer_decay", "end_lr_ratio"):
        if not getattr(settings, key) > 0:
            raise UserError(f"config key '{stage}.sam2.{key}': must be above 0, got {getattr(settings, key)}")
    if cfg.num_frames < 2:
        raise UserError(f"config key '{stage}.num_frames': SAM 2 trains on clips of at least 2 frames")


def sam2_sizes(model: ModelConfig) -> Sam2Sizes:
    """The ``model.sam2`` section of ``model``."""
    return section_of(model, "sam2", Sam2Sizes)


def check_sam2_model(model: ModelConfig) -> None:
    """Raise UserError naming the key if the SAM 2 sizes of ``model`` build no network."""
    sizes = sam2_sizes(model)
    if sizes.size not in SIZE_NAMES:
        raise UserError(
            f"config key 'model.sam2.size': {sizes.size!r} is not a SAM 2 size; choose one of: "
            f"{', '.join(SIZE_NAMES)}"
        )
    image_size = sizes.image_size
    if image_size is not None and (image_size < 32 or image_size % 32):
        raise UserError(
            f"config key 'model.sam2.image_size': must be a positive multiple of 32 or null, got {image_size}"
        )
    for key in SWITCHES:
        if not isinstance(getattr(sizes, key), bool):
            raise UserError(
                f"config key 'model.sam2.{key}': must be true or false, got {getattr(sizes, key)!r}"
            )


def check_sam2_inference(config: InferenceConfig) -> None:
    """Raise UserError naming the key if SAM 2 cannot run under ``config``.

    ``inference.max_memory_frames`` N is, for SAM 2, the most memory frames an object reads:
    its 6 previous frames and the N - 6 conditioning (given) frames nearest in time (the
    reference's ``max_cond_frames_in_attn``, which needs at least 2); so N >= 8 or null (every
    conditioning frame, the reference's default).
    """
    cap = config.max_memory_frames
    if cap is not None and cap < MIN_MEMORY_FRAMES:
        raise UserError(
            f"config key 'inference.max_memory_frames': SAM 2 reads its {NUM_MASKMEM - 1} previous "
            f"frames and at least 2 given frames, so it takes at least {MIN_MEMORY_FRAMES} (or null: "
            f"every given frame), got {cap}"
        )


SPEC = ModelSpec(
    kind="sam2",
    network="twoshot.model.sam2.network:Sam2",
    objective="twoshot.model.sam2.objective:Sam2Objective",
    checkpoint_prefixes=("image_encoder.trunk.", "memory_attention.", "sam_mask_decoder."),
    presets=("sam2-toy", "sam2.1-tiny", "sam2.1-small", "sam2.1-base-plus", "sam2.1-large"),
    sizes=Sam2Sizes,
    train_settings=Sam2TrainSettings,
    check_model=check_sam2_model,
    check_inference=check_sam2_inference,
    offload=True,
    check_train=check_sam2_train,
    demo_preset="sam2-toy",
    # From random weights the toy reads its memory only without the decoder's high-resolution
    # skips and with one mask per frame (it otherwise segments from features that carry no
    # memory); the single mask is kept in inference as in training (the untrained multimask
    # outputs replaced 44 % of it); focal weight 1 (20 drives it to background) and a lower
    # video-stage rate (1e-3 undid what static pretraining learned; from 1e-4 to 3e-4 a
    # higher rate moves phase 1, hence its bank, further from the static model, and naive
    # 2-shot, trained on two frames per video, further than phase 2). The trunk twice as wide
    # with static pretraining at 5e-4 learns to track in 3 of 3 seeds, the toy at 1e-3 in 1
    # of 3. Static clips whose frames are shifted (translate 0.15) make it track by appearance
    # instead of reading its memory at the same place, and an input of 192 (SAM 2 resizes the
    # 96x96 frames itself) gives 12x12 memory cells, whose masks can follow the objects'
    # outlines (6x6 cells of 16 px cap J&F near 51): docs/results.md, "The demo with SAM 2".
    demo_overrides=(
        "model.sam2.size=toy_wide",
        "static.lr=5e-4",
        "model.sam2.image_size=192",
        "static.translate=0.15",
        "model.sam2.use_high_res_features_in_sam=false",
        "model.sam2.multimask_output_in_sam=false",
        "model.sam2.dynamic_multimask_via_stability=false",
        "static.sam2.mask_weight=1",
        "main.sam2.mask_weight=1",
        "main.lr=3e-4",
        "main.num_objects=1",
    ),
)
