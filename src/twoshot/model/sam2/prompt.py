"""Click-to-segment with SAM 2: clicks and a box on one frame give that frame's mask of an object.

This is what the reference's ``SAM2VideoPredictor.add_new_points_or_box`` does on a frame that
has not been tracked yet (an *initial conditioning frame*: no memory is read, the frame is
segmented as SAM segments an image):

- the frame's features come from the image encoder once (:meth:`PromptSegmenter.features`);
  the caller keeps them for further clicks on the frame;
- prompts are points in frame pixels, in the order given: a box first (its two corners,
  labels 2 and 3), then clicks (label 1 positive, 0 negative). Coordinates are divided by
  the frame's (width, height) and multiplied by the model's square input size, as the
  reference does (:func:`point_inputs`);
- the features get SAM 2's "no memory" embedding; SAM's prompt encoder and mask decoder run
  on them with all the points so far and, as the mask prompt, the previous step's
  low-resolution logits clamped to +-32 (:meth:`PromptSegmenter.step`); with a single
  point the decoder's three multimask outputs are made and the one with the best predicted
  IoU is kept, with more points (or ``model.sam2.multimask_output_in_sam`` off) the
  single-mask output (replaced by the best multimask one where it is unstable);
- small holes of the low-resolution logits are filled (as the propagator does,
  :mod:`.postprocess`), and these filled logits are both the next step's mask prompt and,
  upsampled bilinearly to the frame, the result (foreground where > 0).

A chain of prompts (box and/or clicks, added one at a time) is therefore a chain of steps,
each fed with the previous one's logits: :meth:`PromptSegmenter.segment` runs the steps a
cached chain does not already hold.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from twoshot.config import InferenceConfig
from twoshot.model.preprocess import normalize_images
from twoshot.model.sam2.network import Sam2, Sam2Features
from twoshot.model.sam2.postprocess import FILL_HOLE_AREA, fill_holes

POSITIVE, NEGATIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT = 1, 0, 2, 3  # SAM's point labels
PREVIOUS_LOGIT_CLAMP = 32.0  # the reference clamps a step's logits before feeding them back

Click = tuple[float, float, int]  # (x, y, label) in frame pixels
Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) in frame pixels


def prompt_sequence(box: Box | None, clicks: Sequence[Click]) -> list[Click]:
    """The prompt points in SAM's order: the box's corners (labels 2, 3) first, then the clicks."""
    corners: list[Click] = []
    if box is not None:
        corners = [(box[0], box[1], BOX_TOP_LEFT), (box[2], box[3], BOX_BOTTOM_RIGHT)]
    return corners + [(float(x), float(y), int(label)) for x, y, label in clicks]


def point_inputs(
    points: Sequence[Click], frame_size: tuple[int, int], image_size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt points in frame pixels -> SAM's inputs: (coords float32 [1, N, 2] in the model's
    input pixels, labels int32 [1, N]). frame_size: (height, width) of the frame; a point
    (x, y) becomes (x / width * S, y / height * S), S = ``image_size``."""
    height, width = frame_size
    coords = torch.tensor([[x, y] for x, y, _ in points], dtype=torch.float32).reshape(1, -1, 2)
    labels = torch.tensor([label for _, _, label in points], dtype=torch.int32).reshape(1, -1)
    coords = coords / torch.tensor([width, height])
    coords = coords * image_size
    return coords.to(device), labels.to(device)


def prepare_image(rgb: np.ndarray, image_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A frame uint8 [H, W, 3] -> the network input float32 [1, 3, S, S]: ImageNet-normalised,
    then resized to the square input (bilinear, antialiased) unless it is that size."""
    x = torch.as_tensor(np.ascontiguousarray(rgb)).to(device).permute(2, 0, 1)[None]
    x = normalize_images(x)
    if x.shape[-2:] != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return x.contiguous()


@dataclass
class Step:
    """One step of a prompt chain: the points so far and the filled low-resolution logits
    [1, 1, S/4, S/4] (float32) they gave."""

    points: tuple[Click, ...]
    low_res: torch.Tensor


class PromptSegmenter:
    """SAM 2's click path for one model (see the module docstring).

    config: the inference settings the app propagates with (``amp`` / ``amp_dtype``: autocast,
    bfloat16 on a CPU as the reference runs; ``device``); fill_hole_area: as the propagator
    (0: none, the reference without its compiled extension).
    """

    def __init__(
        self,
        model: Sam2,
        config: InferenceConfig,
        device: torch.device | str = "cpu",
        fill_hole_area: int = FILL_HOLE_AREA,
    ) -> None:
        from twoshot.model.sam2.propagator import Sam2Propagator

        self.model = model
        self.device = torch.device(device)
        self.fill_hole_area = fill_hole_area
        self._encoder = Sam2Propagator(model, config)  # its autocast and square input

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """The propagator's autocast on this device (a no-op without ``amp``)."""
        return self._encoder.autocast(torch.empty(0, device=self.device))

    @torch.inference_mode()
    def features(self, rgb: np.ndarray) -> Sam2Features:
        """The image features of a frame uint8 [H, W, 3] (batch of one, on the device)."""
        return self._encoder.encode_frames(prepare_image(rgb, self.model.image_size, self.device))

    @torch.inference_mode()
    def step(
        self,
        features: Sam2Features,
        points: Sequence[Click],
        frame_size: tuple[int, int],
        previous: Step | None,
    ) -> Step:
        """One decoder step: all ``points`` so far (box corners first), the previous step's
        logits as the mask prompt (None on the first step) -> the new :class:`Step`."""
        model = self.model
        coords, labels = point_inputs(points, frame_size, model.image_size, self.device)
        mask_input = None
        if previous is not None:
            mask_input = torch.clamp(previous.low_res, -PREVIOUS_LOGIT_CLAMP, PREVIOUS_LOGIT_CLAMP)
        with self.autocast():
            output = model.sam_heads(
                model.without_memory(features.features),
                features.high_res,
                mask_input=mask_input,
                points=(coords, labels),
                multimask=model.use_multimask(initial=True, num_points=len(points)),
            )
        return Step(tuple(points), fill_holes(output.low_res, self.fill_hole_area))

    def segment(
        self,
        features: Sam2Features,
        points: Sequence[Click],
        frame_size: tuple[int, int],
        chain: list[Step] | None = None,
    ) -> tuple[torch.Tensor, list[Step]]:
        """The frame's mask logits for the prompt ``points`` (box corners first, then clicks,
        as :func:`prompt_sequence` orders them), added one at a time (the box's two corners
        together).

        chain: steps of an earlier call on the same frame and object; the longest prefix
        that matches ``points`` is reused. Returns (logits float32 [H, W] at the frame's
        size, foreground where > 0; the chain for ``points``). ValueError without points.
        """
        if not points:
            raise ValueError("at least one click or a box is needed")
        ends = _step_ends(points)
        steps: list[Step] = []
        for step in chain or []:
            if len(steps) < len(ends) and step.points == tuple(points[: ends[len(steps)]]):
                steps.append(step)
            else:
                break
        for end in ends[len(steps) :]:
            steps.append(self.step(features, points[:end], frame_size, steps[-1] if steps else None))
        logits = F.interpolate(steps[-1].low_res, size=frame_size, mode="bilinear", align_corners=False)
        return logits[0, 0], steps


def _step_ends(points: Sequence[Click]) -> list[int]:
    """Where each step's points end: a box's two corners make one step, each click another."""
    start = 2 if len(points) >= 2 and points[0][2] == BOX_TOP_LEFT and points[1][2] == BOX_BOTTOM_RIGHT else 1
    return list(range(start, len(points) + 1))
