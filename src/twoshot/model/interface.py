"""What the propagation engine, the pseudo-label bank and the trainer need from a VOS model.

The two-shot method is model-agnostic: any memory-based VOS model can be its teacher and
student. The algorithms in :mod:`twoshot.inference` and :mod:`twoshot.train` talk only to
the names defined here; STCN (:mod:`twoshot.model.stcn.network`) and Cutie
(:mod:`twoshot.model.cutie`) implement them. A model provides

- :meth:`VOSModel.propagator`: its inference operations, bound to inference settings;
- :meth:`VOSModel.clip_forward`: the training forward pass over a clip.

A :class:`Propagator` encodes frames (once per frame and video, shared by every object and
direction), opens a fresh :class:`RunMemory` per propagation run, segments a frame from that
memory, and takes each frame's final probabilities back (memorising them when the engine's
schedule says so). The engine owns everything else: which frames each run visits, where
annotations overlay predictions, the object-id <-> channel map, output sizes and writing.

Shapes: K = objects enabled in the run (in the order they were enabled), (Hp, Wp) the padded
network input size (multiples of 16).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from twoshot.config import InferenceConfig, ModelConfig
from twoshot.devices import amp_dtype, inference_autocast

PERMANENT = "permanent"
TEMPORARY = "temporary"

Wrap = Callable[[Callable[..., Any], str], Callable[..., Any]]
"""``wrap(fn, name)``: how a propagator should run its heavy network calls (the engine passes
a ``torch.compile``-or-eager wrapper when asked to compile; the identity otherwise)."""


def inference_memory_format(config: InferenceConfig, model: VOSModel | None = None) -> torch.memory_format:
    """The layout inference runs ``model``'s convolutions in: channels-last when
    ``config.channels_last`` says so; when it is unset, channels-last unless ``config.exact``
    or ``model`` keeps the reference's layout on its fast path
    (:attr:`VOSModel.channels_last_when_fast` False); the default layout otherwise."""
    if config.channels_last is None and model is not None and not model.channels_last_when_fast:
        return torch.contiguous_format
    return torch.channels_last if config.uses_channels_last() else torch.contiguous_format


def no_wrap(fn: Callable[..., Any], name: str) -> Callable[..., Any]:
    """The identity :data:`Wrap`: run ``fn`` as it is."""
    return fn


class FrameFeatures(Protocol):
    """A model's per-frame encoder outputs for a batch of frames (any tensors it needs)."""

    def index(self, item: int | slice | torch.Tensor) -> FrameFeatures:
        """The features of batch entries ``item`` (an int keeps a batch of one)."""
        ...

    def clone(self) -> FrameFeatures:
        """A copy that owns its storage (no view of a larger batch's tensors)."""
        ...


class RunMemory(Protocol):
    """The memory of one propagation run: what has been memorised, and any recurrent state."""

    @property
    def num_objects(self) -> int:
        """Objects enabled so far."""
        ...

    @property
    def peak_frames(self) -> int:
        """Most memory frames held at once (for statistics)."""
        ...

    def add_objects(self, count: int) -> None:
        """Enable ``count`` new objects (channels K..K+count-1); they read memory added from now on."""
        ...


@dataclass(frozen=True)
class FramePreparation:
    """How a model's reference implementation turns frames into network input (the engine
    follows it, since the order of resizing, normalising and padding changes the bits).

    normalize_first: ImageNet-normalise, then resize and zero-pad (STCN's test datasets);
    False: resize the [0, 1] frames, pad them with black, then normalise (Cutie, which
    normalises inside the network). upscale: frames whose shorter side is below
    ``inference.size`` are enlarged to it (STCN); False: only larger frames are shrunk (Cutie).
    pad_to: the network input's sides are zero-padded to a multiple of this (16: the strides
    of STCN's and Cutie's encoders; 1: no padding, for a model that resizes every frame to
    its own input, as SAM 2).
    """

    normalize_first: bool = True
    upscale: bool = True
    pad_to: int = 16


class Propagator(ABC):
    """A model's inference operations under one set of inference settings.

    ``segments_every_frame``: the model carries state from frame to frame (Cutie's sensory
    memory), so a run must segment every frame it passes, even ones nobody reads.
    ``preparation``: how frames become network input (:class:`FramePreparation`).
    """

    segments_every_frame: ClassVar[bool] = False
    preparation: ClassVar[FramePreparation] = FramePreparation()
    # The model reads a run's later annotated frames before it reaches them (SAM 2: every
    # given frame conditions every frame of its run); the engine then hands them over with
    # :meth:`condition_ahead` as soon as their objects are enabled.
    reads_ahead: ClassVar[bool] = False

    def start_video(self, num_frames: int) -> None:  # noqa: B027 - an optional hook
        """A new video of ``num_frames`` frames starts (SAM 2 scales its pointer distances by
        the length of videos under 16 frames); nothing by default."""

    def condition_ahead(
        self, memory: RunMemory, step: int, features: FrameFeatures, masks: torch.Tensor
    ) -> None:
        """Take the given masks of the frame at index ``step`` of the run (later than the
        current one) into ``memory``: masks bool [K, H, W] for the enabled objects, all-False
        for an object not given there. Only called when ``reads_ahead``."""
        raise NotImplementedError

    def __init__(self, config: InferenceConfig) -> None:
        self.config = config
        self.dtype = amp_dtype(config.amp_dtype)  # refuses a bad inference.amp_dtype

    def autocast(self, tensor: torch.Tensor) -> contextlib.AbstractContextManager[object]:
        """Autocast to ``inference.amp_dtype`` for work on ``tensor``'s device when
        ``inference.amp`` (CUDA: float16 or bfloat16; CPU: bfloat16 only, float16 runs fp32);
        a no-op otherwise."""
        return inference_autocast(self.config.amp, self.dtype, tensor.device)

    @abstractmethod
    def encode_frames(self, images: torch.Tensor) -> FrameFeatures:
        """Features of normalised, padded frames. images float [B, 3, Hp, Wp]."""

    @abstractmethod
    def new_memory(self) -> RunMemory:
        """An empty memory for a new propagation run."""

    @abstractmethod
    def segment(self, memory: RunMemory, image: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """Segment the enabled objects of one frame from ``memory``.

        image [1, 3, Hp, Wp]; features: that frame's (batch of one).
        Returns float32 [1, 1+K, Hp, Wp] probabilities summing to one over channels,
        background first, then the objects in enabling order.
        """

    @abstractmethod
    def memorize(
        self,
        memory: RunMemory,
        image: torch.Tensor,
        features: FrameFeatures,
        prob: torch.Tensor,
        lifetime: str | None,
        *,
        pinned: bool = False,
    ) -> None:
        """Take a frame's final probabilities (after any annotation overlay) into ``memory``.

        Called once for every frame a run processes, in order. prob float [1, 1+K, Hp, Wp]
        as :meth:`segment` returns; lifetime: :data:`PERMANENT` or :data:`TEMPORARY` to add
        the frame to memory, None to only update recurrent state (models without any
        ignore it); pinned: the frame is an annotation, never evicted from bounded memory.
        """


class VOSModel(nn.Module, ABC):
    """A memory-based VOS network the two-shot method can train and run.

    ``kind`` names the architecture (``model.kind`` in the configuration); ``config`` is the
    model section it was built from.
    """

    kind: ClassVar[str]
    config: ModelConfig
    # Whether the fast path (``inference.exact`` off, ``inference.channels_last`` unset) runs
    # convolutions channels-last. Off for a model whose masks move far more than the layout's
    # rounding when a float changes (a hard threshold inside the network, as Cutie's masked
    # attention): its fast path stays bit-identical to the exact one (docs/performance.md).
    channels_last_when_fast: ClassVar[bool] = True
    # Whether the reference implementation itself runs under bfloat16 autocast on a CPU (SAM 2's
    # video predictor does): then ``inference.exact`` with bfloat16 ``amp`` is its exact mode
    # rather than a contradiction (the references of STCN and Cutie compute in fp32 there).
    reference_autocasts_on_cpu: ClassVar[bool] = False

    @abstractmethod
    def propagator(self, config: InferenceConfig, wrap: Wrap = no_wrap) -> Propagator:
        """This model's inference operations under ``config``; heavy calls go through ``wrap``."""

    @abstractmethod
    def clip_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment frames 1..T-1 of each training clip from frame 0's masks.

        rgb [B, T, 3, H, W] normalised frames; first_masks [B, K, H, W] frame 0's object
        masks (0/1); selector [B, K] 1 for objects present in the clip.
        Returns (logits, probs), each [B, T-1, K+1, H, W], background first.
        """

    def training_forward(
        self, rgb: torch.Tensor, first_masks: torch.Tensor, selector: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`clip_forward` plus the auxiliary predictions the model's training loss uses.

        Returns (logits, probs, aux): aux maps a name to aggregated logits of frames 1..T-1,
        ``[B, T-1, K+1, ...]`` at any resolution (empty for models without auxiliary heads).
        Every parameter that trains must take part in the returned tensors (DDP needs it).
        """
        logits, probs = self.clip_forward(rgb, first_masks, selector)
        return logits, probs, {}
