"""SAM 2.1 as a twoshot model plugin (see :mod:`twoshot.model.spec`): its size section
(``model.sam2``: :class:`Sam2Sizes`), its presets and checkpoint recognition.

SAM 2 runs for inference and as the pseudo-label teacher of other models; training it is
not supported yet, so its objective (:class:`twoshot.model.sam2.objective.Sam2Objective`)
refuses every training stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twoshot.errors import UserError
from twoshot.model.sam2.sizes import NUM_MASKMEM
from twoshot.model.spec import ModelSpec, section_of

if TYPE_CHECKING:
    from twoshot.config import InferenceConfig, ModelConfig

MIN_MEMORY_FRAMES = NUM_MASKMEM - 1 + 2
"""The smallest ``inference.max_memory_frames`` SAM 2 takes: 6 previous + 2 given frames."""

SIZE_NAMES: tuple[str, ...] = ("toy", "tiny", "small", "base_plus", "large")
"""The names ``model.sam2.size`` takes (:data:`twoshot.model.sam2.sizes.SIZES`)."""


@dataclass
class Sam2Sizes:
    """Sizes only SAM 2 has (``model.sam2``; refused with another model unless at the defaults).

    size: the architecture, one of :data:`SIZE_NAMES` (the four published SAM 2.1 models and
    twoshot's ``toy``); image_size: the square network input, None = the size's own (1024 for
    the published ones, 128 for ``toy``); any multiple of 32 fits the same weights. The
    ModelConfig's STCN / Cutie fields are unused.
    """

    size: str = "base_plus"
    image_size: int | None = None


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
    check_model=check_sam2_model,
    check_inference=check_sam2_inference,
    offload=True,
)
