"""SAM 2's semi-supervised video tracking behind the model-agnostic
:class:`~twoshot.model.interface.Propagator`.

Each object is tracked on its own, as the reference's ``SAM2VideoPredictor`` does
(``add_new_mask`` on the frames where the object is given, then ``propagate_in_video``):

- a frame where the object is given is a *conditioning frame* for it: its mask becomes the
  output (logits +-10, SAM's heads prompted with the mask give the object pointer) and its
  memory is encoded from that output, binarised; conditioning frames stay in memory;
- every other frame reads the memory: all conditioning frames and the 6 frames before it
  (``num_maskmem`` 7), each with its temporal position embedding, plus up to 15 object
  pointers (the conditioning frames' and those of the 15 frames before it, as 4 tokens
  each, with a sine encoding of their distance); SAM's decoder, run without a prompt,
  chooses among three masks by predicted IoU; the frame's memory is encoded from the
  sigmoid of its own mask logits (not from the engine's combined probabilities);
- small holes in each object's low-resolution mask are filled (:mod:`.postprocess`;
  ``fill_hole_area`` 0 skips it, as the reference does without its CUDA extension).

Distances are counted in frames of the run in its own direction, so forward and backward
runs are the reference's ``propagate_in_video(reverse=False / True)``. Objects are combined
into probabilities as the reference's separate-object VOS evaluation combines them: a pixel
is background unless some object's logit is positive, and then the object with the highest
logit. Every frame is memorised (``inference.mem_every`` and the memory lifetimes are not used);
only the frames still readable are kept, so memory is bounded at any video length.

Several given frames in one run: the engine hands every later given frame of an object
over as soon as the object is enabled (:meth:`Sam2Propagator.condition_ahead`), so that, as
in the reference (``add_new_mask`` on each, then ``propagate_in_video``), every frame reads
all of the object's conditioning frames, later ones included (their pointers only once
passed), and a given frame is not tracked again when the run reaches it.

Long videos: ``inference.max_memory_frames`` N caps the conditioning frames an object reads
at N - 6 (the reference's ``max_cond_frames_in_attn``; N >= 8, checked by the spec): the
nearest before and after the current frame, then the nearest others; those not chosen are
read as tracked frames while among the last 6 (memories) or 15 (pointers) frames, as the
reference reads them. A passed conditioning frame with N - 6 newer passed ones is never
chosen again and is kept as a tracked frame only (dropped when too old), so an object holds
at most N - 6 passed given frames, its later ones and 15 tracked frames. ``inference.offload`` keeps the
cached frame features and the memories in CPU memory (the reference's
``offload_video_to_cpu`` / ``offload_state_to_cpu``) and moves each to the device when it is
read: the same values, device memory independent of the features waiting in the cache.

Precision: with ``inference.amp`` the work runs under autocast to ``inference.amp_dtype`` on
any device (SAM 2's native mode, bfloat16, on a CPU too) and memories are stored in bfloat16
as the reference stores them; without it everything is float32 (twoshot's own mode).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from twoshot.config import InferenceConfig
from twoshot.model.interface import FrameFeatures, FramePreparation, Propagator, RunMemory, Wrap, no_wrap
from twoshot.model.preprocess import IMAGENET_MEAN, IMAGENET_STD
from twoshot.model.sam2.network import Sam2, Sam2Features, SamOutput
from twoshot.model.sam2.postprocess import FILL_HOLE_AREA, fill_holes
from twoshot.model.sam2.sizes import MAX_OBJECT_POINTERS, NUM_MASKMEM

HARD = 1e-6  # the engine's overlaid masks are within ~1e-7 of 0 or 1 everywhere


@dataclass
class FrameMemory:
    """One object's memory of one frame: features / positions [1, 64, h, w], pointer [1, 256]."""

    features: torch.Tensor
    positions: torch.Tensor
    pointer: torch.Tensor


@dataclass
class ObjectTrack:
    """One object's state in a run: conditioning frames (run step -> memory, in the order they
    were given), the recent tracked frames, and the current frame's own prediction."""

    conditioning: dict[int, FrameMemory] = field(default_factory=dict)
    recent: dict[int, FrameMemory] = field(default_factory=dict)
    prediction: SamOutput | None = None
    predicted_at: int = -1
    predicted_mask: torch.Tensor | None = None  # bool [Hp, Wp]: its logits > 0

    @property
    def frames(self) -> int:
        """Memory frames held."""
        return len(self.conditioning) + len(self.recent)


class Sam2RunMemory:
    """Everything one SAM 2 run remembers: an :class:`ObjectTrack` per enabled object and the
    index in the run of the frame being processed."""

    def __init__(self) -> None:
        self.tracks: list[ObjectTrack] = []
        self.frame = 0
        self._peak = 0

    @property
    def num_objects(self) -> int:
        """Objects enabled so far."""
        return len(self.tracks)

    @property
    def peak_frames(self) -> int:
        """Most memory frames any object held at once."""
        return self._peak

    def add_objects(self, count: int) -> None:
        """Enable ``count`` new objects; their given masks become conditioning frames when the
        frame is memorised."""
        self.tracks.extend(ObjectTrack() for _ in range(max(0, count)))

    def note_peak(self) -> None:
        """Update :attr:`peak_frames` from the tracks."""
        self._peak = max([self._peak] + [t.frames for t in self.tracks])


class Sam2Propagator(Propagator):
    """SAM 2 tracking under ``config`` (see the module docstring).

    fill_hole_area: holes filled in the low-resolution masks (8 as the reference's video
    predictor; 0: none). num_frames: the video's length when known; the reference scales
    object-pointer distances by ``min(num_frames, 16) - 1``, so videos shorter than 16 frames
    need it for equality (None: 16 frames or more).
    """

    segments_every_frame = True
    reads_ahead = True
    # The reference resizes the frame, then normalises; no upscaling by the engine, and no
    # padding: every frame is resized to the square input here, and masks come back at the
    # frame's own size as the reference's do.
    preparation = FramePreparation(normalize_first=False, upscale=False, pad_to=1)

    def __init__(
        self,
        model: Sam2,
        config: InferenceConfig,
        wrap: Wrap = no_wrap,
        fill_hole_area: int = FILL_HOLE_AREA,
        num_frames: int | None = None,
    ) -> None:
        super().__init__(config)
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.num_frames = num_frames
        cap = config.max_memory_frames
        self.max_conditioning = None if cap is None else cap - (NUM_MASKMEM - 1)
        self._encode_image = wrap(model.encode_image, "encode_image")
        self._attend_memory = wrap(model.attend_memory, "attend_memory")

    def autocast(self, tensor: torch.Tensor) -> contextlib.AbstractContextManager[object]:
        """Autocast to ``inference.amp_dtype`` on ``tensor``'s device (CPU included) with
        ``inference.amp``; a no-op otherwise."""
        if not self.config.amp:
            return contextlib.nullcontext()
        return torch.autocast(tensor.device.type, dtype=self.dtype)

    @property
    def storage_device(self) -> torch.device | None:
        """Where features and memories are kept between uses: the CPU with
        ``inference.offload``, else None (where they were computed)."""
        return torch.device("cpu") if self.config.offload else None

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` on :attr:`storage_device`."""
        device = self.storage_device
        return tensor if device is None else tensor.to(device)

    @property
    def storage_dtype(self) -> torch.dtype:
        """Memories are kept in bfloat16 under AMP (as the reference keeps them), else float32."""
        return torch.bfloat16 if self.config.amp else torch.float32

    def encode_frames(self, images: torch.Tensor) -> Sam2Features:
        """Features of normalised frames [B, 3, H, W], resized to the model's square input
        when they are not already that size: with ``inference.exact`` as the reference's
        video loader resizes (:func:`resize_as_reference`), else bilinear, antialiased."""
        size = self.model.image_size
        if images.shape[-2:] != (size, size):
            if self.config.exact:
                images = resize_as_reference(images, size)
            else:
                images = F.interpolate(
                    images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
                )
        with self.autocast(images):
            features: Sam2Features = self._encode_image(images)
        device = self.storage_device
        return features if device is None else features.to(device)

    def new_memory(self) -> Sam2RunMemory:
        """An empty memory for a new run."""
        return Sam2RunMemory()

    def segment(self, memory: RunMemory, image: torch.Tensor, features: FrameFeatures) -> torch.Tensor:
        """Track every enabled object into this frame -> float32 [1, 1+K, Hp, Wp]: background
        ``sigmoid(-max_k logit_k)`` and objects ``sigmoid(logit_k)``, normalised to sum to one
        (argmax: background unless a logit is positive, else the highest logit)."""
        assert isinstance(memory, Sam2RunMemory) and isinstance(features, Sam2Features)
        if not memory.tracks:
            raise RuntimeError("segment before any object was given")
        features = features.to(image.device)
        logits = []
        with self.autocast(image):
            for track in memory.tracks:
                output = self._track(memory, track, features)
                track.prediction, track.predicted_at = output, memory.frame
                low = fill_holes(output.low_res, self.fill_hole_area)
                frame_logits = F.interpolate(low, size=image.shape[-2:], mode="bilinear", align_corners=False)
                track.predicted_mask = frame_logits[0, 0] > 0
                logits.append(frame_logits[0, 0])
        return probabilities(torch.stack(logits))[None]

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
        """Add this frame to every object's memory: as a conditioning frame for the objects
        given here, as a tracked frame (from the object's own prediction) for the others.

        prob [1, 1+K, Hp, Wp] after the engine's annotation overlay. An object counts as given
        here when it has no prediction for this frame (new, or the annotation replaced every
        prediction) or, on an annotated frame (``pinned``), when its channel is a hard mask
        (every value within 1e-6 of 0 or 1, some foreground) that differs from its own
        prediction. ``lifetime`` is not used: SAM 2 keeps every frame.
        """
        assert isinstance(memory, Sam2RunMemory) and isinstance(features, Sam2Features)
        if prob.shape[1] - 1 != memory.num_objects:
            raise ValueError(f"probabilities for {prob.shape[1] - 1} objects, {memory.num_objects} enabled")
        step = memory.frame
        features = features.to(image.device)
        with self.autocast(image):
            for k, track in enumerate(memory.tracks):
                channel = prob[0, 1 + k]
                if step in track.conditioning:
                    pass  # given here and taken ahead (condition_ahead): the same memory
                elif track.predicted_at != step or (pinned and _given(channel, track.predicted_mask)):
                    self._condition(track, step, features, channel > 0.5)
                else:
                    self._remember(track, step, features)
                self._retire_conditioning(track, step)
        memory.note_peak()
        memory.frame += 1

    def start_video(self, num_frames: int) -> None:
        """Take the video's length (the reference scales pointer distances of videos under
        16 frames by it)."""
        self.num_frames = num_frames

    def condition_ahead(
        self, memory: RunMemory, step: int, features: FrameFeatures, masks: torch.Tensor
    ) -> None:
        """Make run step ``step`` (not reached yet) a conditioning frame of each object whose
        mask in ``masks`` (bool [K, H, W], the enabled objects) has foreground."""
        assert isinstance(memory, Sam2RunMemory) and isinstance(features, Sam2Features)
        features = features.to(masks.device)
        with self.autocast(masks):
            for track, mask in zip(memory.tracks, masks):
                if bool(mask.any()):
                    self._condition(track, step, features, mask)
        memory.note_peak()

    # -- internals --------------------------------------------------------------------------

    def _condition(self, track: ObjectTrack, step: int, features: Sam2Features, mask: torch.Tensor) -> None:
        """Make ``step`` a conditioning frame of ``track`` with the binary mask [Hp, Wp]."""
        size = self.model.image_size
        given = mask[None, None].float()
        if given.shape[-2:] != (size, size):
            given = F.interpolate(
                given, size=(size, size), align_corners=False, mode="bilinear", antialias=True
            )
            given = (given >= 0.5).float()
        output = self.model.mask_as_output(features.features, features.high_res, given)
        low = fill_holes(output.low_res, self.fill_hole_area)
        high = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
        track.recent.pop(step, None)
        track.conditioning[step] = self._frame_memory(features, high, output, binarize=True)

    def _retire_conditioning(self, track: ObjectTrack, step: int) -> None:
        """Under a cap of C conditioning frames, keep a passed one (<= ``step``) with C newer
        passed ones as a tracked frame only: no later frame can choose it."""
        cap = self.max_conditioning
        if cap is None:
            return
        passed = sorted((s for s in track.conditioning if s <= step), reverse=True)
        for old in passed[cap:]:
            track.recent[old] = track.conditioning.pop(old)

    def _chosen_conditioning(self, track: ObjectTrack, step: int) -> list[int]:
        """The conditioning steps read at ``step``: all, or under a cap of C the nearest
        before and at-or-after it, then the nearest others (the reference's choice, in run
        steps: a backward run's "before" is later in its frames)."""
        steps = list(track.conditioning)
        cap = self.max_conditioning
        if cap is None or len(steps) <= cap:
            return steps
        before = max((s for s in steps if s < step), default=None)
        after = min((s for s in steps if s >= step), default=None)
        chosen = [s for s in (before, after) if s is not None]
        others = sorted((s for s in steps if s not in chosen), key=lambda s: abs(s - step))
        return chosen + others[: cap - len(chosen)]

    def _remember(self, track: ObjectTrack, step: int, features: Sam2Features) -> None:
        """Keep ``step`` as a tracked frame of ``track``, from its own prediction."""
        assert track.prediction is not None
        track.recent[step] = self._frame_memory(features, track.prediction.high_res, track.prediction, False)
        # the next frame reads memories up to 6 and pointers up to 15 frames back
        oldest = step + 1 - (max(NUM_MASKMEM, MAX_OBJECT_POINTERS) - 1)
        for old in [s for s in track.recent if s < oldest]:
            del track.recent[old]

    def _frame_memory(
        self, features: Sam2Features, high_res: torch.Tensor, output: SamOutput, binarize: bool
    ) -> FrameMemory:
        """The memory of a frame whose mask logits at the input size are ``high_res``."""
        encoded, positions = self.model.encode_memory(
            features.features, high_res, output.object_score, binarize
        )
        stored = self._stored
        return FrameMemory(stored(encoded.to(self.storage_dtype)), stored(positions), stored(output.obj_ptr))

    def _track(self, memory: Sam2RunMemory, track: ObjectTrack, features: Sam2Features) -> SamOutput:
        """One object's prediction on the current frame from its memory."""
        step = memory.frame
        model = self.model
        device = features.features.device
        chosen = self._chosen_conditioning(track, step)
        unchosen = {s: m for s, m in track.conditioning.items() if s not in chosen}
        spatial: list[tuple[int, FrameMemory]] = [(0, track.conditioning[s]) for s in chosen]
        for t_pos in range(1, NUM_MASKMEM):
            back = step - (NUM_MASKMEM - t_pos)
            previous = track.recent.get(back, unchosen.get(back))
            if previous is not None:
                spatial.append((t_pos, previous))
        tokens, token_pos = [], []
        for t_pos, m in spatial:
            tokens.append(m.features.to(device).flatten(2).permute(2, 0, 1))
            pos = m.positions.to(device).flatten(2).permute(2, 0, 1)
            token_pos.append(pos + model.maskmem_tpos_enc[NUM_MASKMEM - t_pos - 1])
        readable = (
            MAX_OBJECT_POINTERS if self.num_frames is None else min(self.num_frames, MAX_OBJECT_POINTERS)
        )
        pointers = [(step - s, track.conditioning[s].pointer) for s in chosen if s <= step]
        for distance in range(1, readable):
            if step - distance < 0:
                break
            previous = track.recent.get(step - distance, unchosen.get(step - distance))
            if previous is not None:
                pointers.append((distance, previous.pointer))
        num_pointer_tokens = 0
        if pointers:
            stacked, pointer_pos = model.pointer_tokens([(d, p.to(device)) for d, p in pointers], readable, 1)
            tokens.append(stacked)
            token_pos.append(pointer_pos)
            num_pointer_tokens = stacked.shape[0]
        conditioned = self._attend_memory(
            features.features,
            features.positions,
            torch.cat(tokens, dim=0),
            torch.cat(token_pos, dim=0),
            num_pointer_tokens,
        )
        return model.sam_heads(
            conditioned, features.high_res, multimask=model.use_multimask(initial=False, num_points=0)
        )


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Per-object mask logits [K, H, W] -> float32 [1+K, H, W] summing to one (within a
    rounding): background ``sigmoid(-max logit)``, object k ``sigmoid(logit_k)``, normalised.

    Their argmax is exactly the reference's decision: background unless a logit is positive,
    else the highest logit (ties to the first object). Logits a few ulps apart can round to
    equal probabilities; there the winner is raised by one ulp above the others.
    """
    logits = logits.float()
    top, best = logits.max(dim=0, keepdim=True).values, logits.argmax(dim=0, keepdim=True)
    scores = torch.cat([torch.sigmoid(-top), torch.sigmoid(logits)])
    prob = scores / scores.sum(dim=0, keepdim=True)
    winner = torch.where(top > 0, best + 1, 0)
    won = prob.gather(0, winner)
    others = prob.scatter(0, winner, -1.0).max(dim=0, keepdim=True).values
    return prob.scatter(
        0, winner, torch.where(won > others, won, torch.nextafter(others, torch.ones_like(others)))
    )


def resize_as_reference(images: torch.Tensor, size: int) -> torch.Tensor:
    """Normalised frames [B, 3, H, W] -> [B, 3, size, size] as the reference's JPEG video
    loader makes them: the uint8 frame resized by PIL (its default filter, bicubic), divided
    by 255 in float64, then normalised in float32. The uint8 values are recovered exactly from
    the engine's normalised float32 frames (within 1e-4 of an integer); the resize runs on
    the CPU."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    rgb = ((images * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
    resized = []
    for frame in rgb.permute(0, 2, 3, 1).cpu().numpy():
        pixels = np.asarray(Image.fromarray(frame).resize((size, size))) / 255.0
        resized.append(torch.from_numpy(pixels).permute(2, 0, 1).float())
    out = torch.stack(resized).to(images.device)
    out -= mean
    out /= std
    return out


def _given(channel: torch.Tensor, predicted: torch.Tensor | None) -> bool:
    """Whether an annotated frame's channel [Hp, Wp] is a given mask rather than the object's
    own prediction (bool [Hp, Wp]): hard, with some foreground, and different from it."""
    hard = bool(((channel < HARD) | (channel > 1 - HARD)).all())
    mask = channel > 0.5
    if not hard or not bool(mask.any()):
        return False
    return predicted is None or not torch.equal(mask, predicted)
