"""SAM 2.1 model sizes: the Hiera trunk and input size of each published model, and a toy one.

The published models (``configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml`` of facebookresearch/sam2)
differ only in their Hiera image trunk; the FPN neck (256 channels), the memory attention,
the memory encoder (64-channel memories) and SAM's prompt encoder and mask decoder are the
same in all of them. ``toy`` keeps those shared parts (so every code path runs) with a
one-block-per-stage trunk, a single memory attention layer and a 128-pixel input, for tests
on a CPU; ``toy_wide`` is the same with a trunk twice as wide (32 channels), for the demo.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from twoshot.errors import UserError

HIDDEN_DIM = 256  # FPN / SAM head channels, all published sizes
MEMORY_DIM = 64  # memory encoder output channels
NUM_MASKMEM = 7  # memory frames read: the conditioning frames + 6 previous frames
MAX_OBJECT_POINTERS = 16  # object pointers read (as tokens), conditioning ones included
BACKBONE_STRIDE = 16


@dataclass(frozen=True)
class Sam2Size:
    """One SAM 2.1 architecture.

    embed_dim / num_heads: the trunk's first-stage channels and heads (doubled per stage);
    stages: blocks per stage (four stages, strides 4, 8, 16, 32); global_att_blocks: blocks
    with global attention (the others attend within windows of ``window_spec[stage]``);
    pos_embed_size: the background positional embedding's grid (interpolated to the input);
    image_size: the square network input (frames are resized to it); memory_layers: memory
    attention layers (4 in every published model).
    """

    name: str
    embed_dim: int
    num_heads: int
    stages: tuple[int, ...]
    global_att_blocks: tuple[int, ...]
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    pos_embed_size: tuple[int, int] = (14, 14)
    image_size: int = 1024
    memory_layers: int = 4

    def __post_init__(self) -> None:
        self.validate()

    @property
    def depth(self) -> int:
        """Trunk blocks in all."""
        return sum(self.stages)

    @property
    def channel_list(self) -> list[int]:
        """The trunk's output channels per stage, deepest first (the neck's input order)."""
        return [self.embed_dim * 2**i for i in range(len(self.stages))][::-1]

    @property
    def feature_size(self) -> int:
        """Side of the stride-16 feature map the memory attention and SAM heads work on."""
        return self.image_size // BACKBONE_STRIDE

    def validate(self) -> None:
        """Raise UserError naming the field if this size cannot be built."""
        where = f"SAM 2 size {self.name!r}"
        if len(self.stages) != 4 or len(self.window_spec) != 4:
            raise UserError(f"{where}: stages and window_spec need 4 entries (Hiera's four stages)")
        if min(self.stages) < 1 or min(self.window_spec) < 1:
            raise UserError(f"{where}: every stage needs at least one block and a window of at least 1")
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise UserError(f"{where}: embed_dim {self.embed_dim} must be a positive multiple of num_heads")
        bad = [b for b in self.global_att_blocks if not 0 <= b < self.depth]
        if bad:
            raise UserError(f"{where}: global_att_blocks {bad} outside blocks 0..{self.depth - 1}")
        if self.image_size < 32 or self.image_size % 32:
            raise UserError(f"{where}: image_size {self.image_size} must be a positive multiple of 32")
        if (self.image_size // 4) % self.window_spec[0]:
            raise UserError(
                f"{where}: image_size / 4 = {self.image_size // 4} must be a multiple of the "
                f"first window size {self.window_spec[0]} (the windowed positional embedding tiles it)"
            )
        if self.memory_layers < 1:
            raise UserError(f"{where}: memory_layers must be at least 1")

    def with_image_size(self, image_size: int) -> Sam2Size:
        """The same architecture at another input size (the weights fit any size)."""
        return replace(self, image_size=image_size)


SIZES: dict[str, Sam2Size] = {
    "toy": Sam2Size("toy", 16, 1, (1, 1, 1, 1), (2, 3), (8, 4, 4, 2), (7, 7), 128, 1),
    # The toy with a trunk twice as wide: `twoshot demo --model sam2` trains it, as its static
    # stage learns to track in 3 of 3 seeds where the toy's did in 1 of 3 (docs/results.md).
    "toy_wide": Sam2Size("toy_wide", 32, 1, (1, 1, 1, 1), (2, 3), (8, 4, 4, 2), (7, 7), 128, 1),
    "tiny": Sam2Size("tiny", 96, 1, (1, 2, 7, 2), (5, 7, 9), pos_embed_size=(7, 7)),
    "small": Sam2Size("small", 96, 1, (1, 2, 11, 2), (7, 10, 13), pos_embed_size=(7, 7)),
    "base_plus": Sam2Size("base_plus", 112, 2, (2, 3, 16, 3), (12, 16, 20)),
    "large": Sam2Size("large", 144, 2, (2, 6, 36, 4), (23, 33, 43), (8, 4, 16, 8), (7, 7)),
}
"""The presets: ``tiny`` / ``small`` / ``base_plus`` / ``large`` are the published SAM 2.1
models (``sam2.1_hiera_*.pt``); ``toy`` and ``toy_wide`` are twoshot's own, for CPU tests and
the demo."""

CHECKPOINT_FILES = {name: f"sam2.1_hiera_{name}.pt" for name in ("tiny", "small", "base_plus", "large")}


def size_named(name: str) -> Sam2Size:
    """The preset called ``name`` (``sam2-``/``sam2.1-`` prefixes accepted); UserError otherwise."""
    key = name.lower().removeprefix("sam2.1-").removeprefix("sam2-").replace("+", "_plus").replace("-", "_")
    key = {"t": "tiny", "s": "small", "b_plus": "base_plus", "l": "large"}.get(key, key)
    if key not in SIZES:
        raise UserError(f"unknown SAM 2 size {name!r}: choose one of {', '.join(SIZES)}")
    return SIZES[key]
