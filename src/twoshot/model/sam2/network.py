"""The SAM 2.1 network (Ravi et al., 2024) with the reference's parameter names, so that the
published ``sam2.1_hiera_*.pt`` state dicts load unchanged.

:class:`Sam2` holds the parts and their per-frame operations; which memories a frame reads
and how objects are tracked is :mod:`twoshot.model.sam2.propagator`'s business. Every
operation works on one object's batch (B = 1 in tracking, as the reference's video
predictor runs each object separately).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from twoshot.config import InferenceConfig, ModelConfig
from twoshot.errors import UserError
from twoshot.model.interface import Propagator, VOSModel, Wrap, no_wrap
from twoshot.model.sam2.heads import MaskDecoder, PromptEncoder
from twoshot.model.sam2.hiera import ImageEncoder
from twoshot.model.sam2.layers import MLP, sine_1d
from twoshot.model.sam2.memory import MemoryAttention, MemoryEncoder
from twoshot.model.sam2.sizes import HIDDEN_DIM, MEMORY_DIM, NUM_MASKMEM, SIZES, Sam2Size

NO_OBJECT_SCORE = -1024.0  # mask logits of an object predicted absent
MASK_SCALE, MASK_BIAS = 20.0, -10.0  # masks -> logits for memory and for given masks
MULTIMASK_MAX_POINTS = 1  # the published configs' multimask_max_pt_num (min 0)


@dataclass
class Sam2Features:
    """One or more frames' image features (the engine's per-frame cache).

    high_res: the stride-4 and stride-8 maps through the decoder's conv_s0 / conv_s1,
    [B, 32, 4h, 4w] and [B, 64, 2h, 2w] ([] without ``use_high_res_features_in_sam``);
    features: the stride-16 map [B, 256, h, w];
    positions: its sine position encoding [B, 256, h, w].
    """

    high_res: list[torch.Tensor]
    features: torch.Tensor
    positions: torch.Tensor

    def index(self, item: int | slice | torch.Tensor) -> Sam2Features:
        """The features of batch entries ``item`` (an int keeps a batch of one)."""
        sel = slice(item, item + 1) if isinstance(item, int) else item
        return Sam2Features([x[sel] for x in self.high_res], self.features[sel], self.positions[sel])

    def clone(self) -> Sam2Features:
        """A copy that owns its storage."""
        return Sam2Features([x.clone() for x in self.high_res], self.features.clone(), self.positions.clone())

    def to(self, device: torch.device) -> Sam2Features:
        """The features on ``device`` (self where they already are)."""
        if self.features.device == device:
            return self
        return Sam2Features(
            [x.to(device) for x in self.high_res], self.features.to(device), self.positions.to(device)
        )


@dataclass
class SamOutput:
    """What SAM's heads give for one object (batch B).

    low_res: chosen mask logits [B, 1, S/4, S/4] (float32); high_res: the same at the input
    size [B, 1, S, S]; obj_ptr: the object pointer [B, 256]; object_score: [B, 1] logits
    (> 0: the object is visible).
    """

    low_res: torch.Tensor
    high_res: torch.Tensor
    obj_ptr: torch.Tensor
    object_score: torch.Tensor


def sequence_first(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [HW, B, C] (a view, as the reference lays out its tokens)."""
    return x.flatten(2).permute(2, 0, 1)


def token_map(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] viewed through the reference's token layout and back: the same values,
    but the strides the reference's maps have. The trunk's maps are channels-last in memory,
    and convolutions round differently depending on the strides of their input."""
    b, c, h, w = x.shape
    return sequence_first(x).permute(1, 2, 0).view(b, c, h, w)


def memory_mask(mask_logits: torch.Tensor, binarize: bool) -> torch.Tensor:
    """Mask logits [B, 1, S, S] -> the mask a memory is encoded from: logits > 0 as 0 / 1
    (given masks) or their sigmoid (tracked frames)."""
    return (mask_logits > 0).float() if binarize else torch.sigmoid(mask_logits)


def size_of_config(config: ModelConfig) -> Sam2Size:
    """The :class:`Sam2Size` a ModelConfig's ``model.sam2`` section names (its ``size`` at its
    ``image_size``, when set)."""
    from twoshot.model.sam2.spec import sam2_sizes

    sizes = sam2_sizes(config)
    if sizes.size not in SIZES:
        raise UserError(f"config key 'model.sam2.size': {sizes.size!r} is not one of {', '.join(SIZES)}")
    preset = SIZES[sizes.size]
    return preset if sizes.image_size is None else preset.with_image_size(sizes.image_size)


class Sam2(VOSModel):
    """SAM 2.1 of size ``size``: a :class:`Sam2Size`, a preset name of :data:`SIZES`, or a
    ModelConfig of kind "sam2" (its ``model.sam2`` section names the size and input size; how
    the registry builds it).

    ``config``: the model section it belongs to (``kind`` "sam2"; the STCN / Cutie fields
    are unused).
    """

    kind: ClassVar[str] = "sam2"
    # Training: recompute each frame's image features and tracking step in the backward pass
    # instead of keeping their activations (set from ``<stage>.sam2.gradient_checkpointing``).
    gradient_checkpointing: bool = False
    reference_autocasts_on_cpu: ClassVar[bool] = True  # its predictor runs under bf16 autocast

    def __init__(
        self, size: Sam2Size | str | ModelConfig = "tiny", config: ModelConfig | None = None
    ) -> None:
        super().__init__()
        if isinstance(size, ModelConfig):
            config, size = size, size_of_config(size)
        self.size = SIZES[size] if isinstance(size, str) and size in SIZES else size
        if not isinstance(self.size, Sam2Size):
            raise UserError(f"unknown SAM 2 size {size!r}: choose one of {', '.join(SIZES)}")
        self.config = config or ModelConfig(kind="sam2")
        self.image_size = self.size.image_size
        from twoshot.model.sam2.spec import check_sam2_model, sam2_sizes

        check_sam2_model(self.config)
        switches = sam2_sizes(self.config)
        self.use_high_res_features = switches.use_high_res_features_in_sam
        self.multimask_output_in_sam = switches.multimask_output_in_sam
        self.multimask_output_for_tracking = switches.multimask_output_for_tracking
        # Registered in the reference's order: its state dicts list them so.
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(NUM_MASKMEM, 1, 1, MEMORY_DIM))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, HIDDEN_DIM))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, HIDDEN_DIM))
        self.no_obj_ptr = nn.Parameter(torch.zeros(1, HIDDEN_DIM))
        self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, MEMORY_DIM))
        for parameter in (
            self.maskmem_tpos_enc,
            self.no_mem_embed,
            self.no_mem_pos_enc,
            self.no_obj_ptr,
            self.no_obj_embed_spatial,
        ):
            nn.init.trunc_normal_(parameter, std=0.02)
        self.image_encoder = ImageEncoder(self.size)
        self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(self.size.memory_layers)
        self.memory_encoder = MemoryEncoder()
        self.sam_prompt_encoder = PromptEncoder(HIDDEN_DIM, self.size.feature_size, self.image_size)
        self.sam_mask_decoder = MaskDecoder(
            HIDDEN_DIM, self.use_high_res_features, switches.dynamic_multimask_via_stability
        )
        self.obj_ptr_proj = MLP(HIDDEN_DIM, HIDDEN_DIM, HIDDEN_DIM, 3)
        self.obj_ptr_tpos_proj = nn.Linear(HIDDEN_DIM, MEMORY_DIM)

    # -- the model interface -------------------------------------------------------------

    def propagator(self, config: InferenceConfig, wrap: Wrap = no_wrap) -> Propagator:
        """SAM 2's video tracking under ``config`` (see
        :class:`~twoshot.model.sam2.propagator.Sam2Propagator`)."""
        from twoshot.model.sam2.propagator import Sam2Propagator

        return Sam2Propagator(self, config, wrap)

    def clip_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, probs) [B, T-1, K+1, H, W] of frames 1..T-1 from frame 0's masks (see
        :func:`twoshot.model.sam2.train_forward.training_forward`)."""
        logits, probs, _ = self.training_forward(rgb, first_masks, selector)
        return logits, probs

    def training_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """SAM 2's training forward (the reference's ``SAM2Train`` with a mask prompt on frame
        0): :func:`twoshot.model.sam2.train_forward.training_forward`."""
        from twoshot.model.sam2.train_forward import training_forward

        return training_forward(self, rgb, first_masks, selector)

    def use_multimask(self, initial: bool, num_points: int) -> bool:
        """Whether SAM's heads output three masks (the best predicted IoU kept) on a frame:
        ``initial``: a frame prompted without memory (clicks), else a tracked frame;
        num_points: its prompt points (a box counts two; 0 when tracking). The reference's
        ``_use_multimask`` with the published configs' 0..1 points."""
        return (
            self.multimask_output_in_sam
            and (initial or self.multimask_output_for_tracking)
            and num_points <= MULTIMASK_MAX_POINTS
        )

    # -- per-frame operations ------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> Sam2Features:
        """Features of normalised square frames [B, 3, S, S] (S = ``image_size``)."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"SAM 2 input must be {self.image_size}x{self.image_size}, got {tuple(images.shape)}"
            )
        features, positions = self.image_encoder(images)
        if not self.use_high_res_features:
            return Sam2Features([], features[2], positions[2])
        high_res = [self.sam_mask_decoder.conv_s0(features[0]), self.sam_mask_decoder.conv_s1(features[1])]
        # The reference reads the decoder's skip maps back from its token layout (see token_map).
        return Sam2Features([token_map(x) for x in high_res], features[2], positions[2])

    def sam_heads(
        self,
        image: torch.Tensor,
        high_res: list[torch.Tensor],
        mask_input: torch.Tensor | None = None,
        points: tuple[torch.Tensor, torch.Tensor] | None = None,
        multimask: bool = False,
    ) -> SamOutput:
        """SAM's prompt encoder and mask decoder on (memory-conditioned) features.

        image [B, 256, h, w]; mask_input: mask logits [B, 1, 4h, 4w] or None; points:
        (coords [B, N, 2] in input pixels, labels [B, N] int, 1 / 0 positive / negative,
        2 / 3 box corners) or None; multimask: choose among three masks by predicted IoU.
        """
        b = image.size(0)
        if points is None:
            points = (
                torch.zeros(b, 1, 2, device=image.device),
                -torch.ones(b, 1, dtype=torch.int32, device=image.device),
            )
        sparse, dense = self.sam_prompt_encoder(points, mask_input)
        masks, ious, tokens, score = self.sam_mask_decoder(
            image, self.sam_prompt_encoder.dense_positions(), sparse, dense, multimask, high_res
        )
        visible = score > 0
        masks = torch.where(visible[:, None, None], masks, NO_OBJECT_SCORE).float()
        high = F.interpolate(
            masks, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
        )
        token = tokens[:, 0]
        if multimask:
            best = torch.argmax(ious, dim=-1)
            batch = torch.arange(b, device=image.device)
            masks, high = masks[batch, best].unsqueeze(1), high[batch, best].unsqueeze(1)
            if tokens.size(1) > 1:
                token = tokens[batch, best]
        pointer = self.obj_ptr_proj(token)
        weight = visible.float()
        pointer = weight * pointer
        pointer = pointer + (1 - weight) * self.no_obj_ptr
        return SamOutput(masks, high, pointer, score)

    def track_heads(self, image: torch.Tensor, high_res: list[torch.Tensor]) -> SamOutput:
        """SAM's heads on a tracked frame's memory-conditioned features [B, 256, h, w]: no
        prompt; the best of three masks by predicted IoU when :meth:`use_multimask` says so."""
        return self.sam_heads(image, high_res, multimask=self.use_multimask(initial=False, num_points=0))

    def mask_as_output(
        self, image: torch.Tensor, high_res: list[torch.Tensor], mask: torch.Tensor
    ) -> SamOutput:
        """A given binary mask [B, 1, S, S] as the frame's output (SAM 2's conditioning frames):
        logits +-10, the object pointer from SAM's heads prompted with the mask."""
        low, high = self.given_mask_logits(mask)
        pointer, score = self.given_mask_pointer(image, high_res, mask)
        return SamOutput(low, high, pointer, score)

    def given_mask_logits(self, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A given binary mask [B, 1, S, S] as mask logits +-10: (low [B, 1, S/4, S/4]
        (antialiased bilinear), high [B, 1, S, S])."""
        high = mask.float() * MASK_SCALE + MASK_BIAS
        low = F.interpolate(
            high,
            size=(high.size(-2) // 4, high.size(-1) // 4),
            align_corners=False,
            mode="bilinear",
            antialias=True,
        )
        return low, high

    def given_mask_pointer(
        self, image: torch.Tensor, high_res: list[torch.Tensor], mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The object pointer [B, 256] and object score [B, 1] of a given binary mask
        [B, 1, S, S] on stride-16 features [B, 256, h, w]: SAM's heads prompted with the
        mask; an empty mask gives the no-object pointer and score -10."""
        mask = mask.float()
        pointer = self.sam_heads(token_map(image), high_res, mask_input=self.mask_downsample(mask)).obj_ptr
        weight = torch.any(mask.flatten(1).float() > 0.0, dim=1)[..., None].float()
        score = MASK_SCALE * weight + MASK_BIAS
        pointer = weight * pointer
        pointer = pointer + (1 - weight) * self.no_obj_ptr
        return pointer, score

    def encode_memory(
        self, features: torch.Tensor, mask_logits: torch.Tensor, object_score: torch.Tensor, binarize: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A frame's memory: features [B, 256, h, w], mask logits [B, 1, S, S], object score
        [B, 1]; binarize: encode the mask as logits > 0 (given masks) rather than its sigmoid.
        Returns (memory [B, 64, h, w], position encoding [B, 64, h, w])."""
        return self.encode_memory_of_mask(features, memory_mask(mask_logits, binarize), object_score)

    def encode_memory_of_mask(
        self, features: torch.Tensor, mask: torch.Tensor, object_score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode_memory` of a mask already in [0, 1] (:func:`memory_mask`), [B, 1, S, S]."""
        mask = mask * MASK_SCALE
        mask = mask + MASK_BIAS
        memory, positions = self.memory_encoder(token_map(features), mask)
        visible = (object_score > 0).float()
        memory += (1 - visible[..., None, None]) * self.no_obj_embed_spatial[..., None, None].expand(
            *memory.shape
        )
        return memory, positions

    def pointer_tokens(
        self, pointers: list[tuple[int, torch.Tensor]], readable: int, batch: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Object pointers as memory tokens: ``pointers`` [(temporal distance, pointer [batch,
        HIDDEN_DIM])], distances scaled by ``readable`` - 1 -> (tokens, positions), each
        [P * HIDDEN_DIM / MEMORY_DIM, batch, MEMORY_DIM] (each pointer split in
        MEMORY_DIM-wide tokens, as the reference's memory attention reads them)."""
        stacked = torch.stack([p for _, p in pointers], dim=0)
        distances = torch.tensor([d for d, _ in pointers], device=stacked.device)
        pointer_pos = self.obj_ptr_tpos_proj(sine_1d(distances / (readable - 1), HIDDEN_DIM))
        pointer_pos = pointer_pos.unsqueeze(1).expand(-1, batch, MEMORY_DIM)
        split = HIDDEN_DIM // MEMORY_DIM
        stacked = stacked.reshape(-1, batch, split, MEMORY_DIM).permute(0, 2, 1, 3).flatten(0, 1)
        return stacked, pointer_pos.repeat_interleave(split, dim=0)

    def attend_memory(
        self,
        features: torch.Tensor,
        positions: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        num_pointer_tokens: int,
    ) -> torch.Tensor:
        """Stride-16 features [B, 256, h, w] conditioned on memory tokens [M, B, 64] (the last
        ``num_pointer_tokens`` object pointers) -> [B, 256, h, w]."""
        b, c, h, w = features.shape
        out = self.memory_attention(
            sequence_first(features), sequence_first(positions), memory, memory_pos, num_pointer_tokens
        )
        return out.permute(1, 2, 0).view(b, c, h, w)

    def without_memory(self, features: torch.Tensor) -> torch.Tensor:
        """Features [B, 256, h, w] of a first frame prompted without a mask (no memory yet)."""
        b, c, h, w = features.shape
        return (sequence_first(features) + self.no_mem_embed).permute(1, 2, 0).view(b, c, h, w)
