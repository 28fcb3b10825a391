"""A small front door for segmenting videos from Python.

::

    from twoshot import Predictor
    predictor = Predictor.from_checkpoint("stcn.pth")              # preset guessed from the weights
    masks = predictor.propagate(frames, {0: first_mask})           # frames uint8 [T, H, W, 3]
    # masks: uint8 [T, H, W] with the ids of first_mask
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

import numpy as np
import torch

from twoshot.config import InferenceConfig, load_config
from twoshot.errors import UserError
from twoshot.inference.engine import PropagationEngine
from twoshot.inference.frames import PropagationResult
from twoshot.inference.key_cache import FrameSource
from twoshot.model.interface import VOSModel


class Predictor:
    """Segments the objects of given masks through videos with one model (STCN or Cutie).

    model: the network; config: inference settings (STCN's defaults if None); device:
    overrides ``config.device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | torch.device).
    """

    def __init__(
        self, model: VOSModel, config: InferenceConfig | None = None, device: str | torch.device | None = None
    ) -> None:
        config = dataclasses.replace(config) if config is not None else InferenceConfig()
        if isinstance(device, str):
            config.device = device
        resolved = device if isinstance(device, torch.device) else None
        self.engine = PropagationEngine(model, config, resolved)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        preset: str | None = None,
        config: InferenceConfig | None = None,
        device: str | torch.device | None = None,
        model: str | None = None,
    ) -> Predictor:
        """Load STCN or Cutie weights from ``path`` (raw state dict or training checkpoint).

        preset: model sizes (``stcn``, ``tiny``, ``cutie-base``, ...); None = the
        configuration ``twoshot train`` saved beside the weights, else the preset the
        weights fit. model: ``stcn`` | ``cutie`` to insist on one architecture (None:
        whatever the weights are).
        config: inference settings; None = that configuration's ``inference`` section.
        Raises UserError for an unreadable checkpoint or weights that do not fit.
        """
        network, saved = load_for_inference(path, preset, model)
        return cls(network, config if config is not None else saved, device)

    @property
    def config(self) -> InferenceConfig:
        """The inference settings in use."""
        return self.engine.config

    @property
    def device(self) -> torch.device:
        """The device the model runs on."""
        return self.engine.device

    def propagate(
        self, frames: FrameSource, masks_by_frame: Mapping[int, np.ndarray], *, backward: bool = False
    ) -> np.ndarray:
        """Segment a video. frames: uint8 [T, H, W, 3] (or a sequence of [H, W, 3]);
        masks_by_frame: {frame index: uint8 [H, W] object ids} on the frames where objects
        first appear. backward: also propagate backwards (every given mask then counts as
        a complete labeling of its frame; see ``PropagationEngine.propagate``).
        Returns uint8 [T, H, W] object ids.
        """
        return self.run(frames, masks_by_frame, backward=backward).masks

    def probabilities(
        self, frames: FrameSource, masks_by_frame: Mapping[int, np.ndarray], *, backward: bool = False
    ) -> tuple[np.ndarray, list[int]]:
        """Like :meth:`propagate` but returns (float32 [T, K+1, H, W] probabilities,
        background first, and the K object ids of channels 1..K)."""
        result = self.run(frames, masks_by_frame, backward=backward, probabilities=True)
        assert result.probabilities is not None
        return result.probabilities, result.object_ids

    def run(
        self,
        frames: FrameSource,
        masks_by_frame: Mapping[int, np.ndarray],
        *,
        backward: bool = False,
        probabilities: bool = False,
        confidence: bool = False,
    ) -> PropagationResult:
        """The full :class:`PropagationResult` (masks, sources, optional confidence and
        probabilities, work statistics)."""
        return self.engine.propagate(
            frames,
            masks_by_frame,
            direction="bidirectional" if backward else "forward",
            probabilities=probabilities,
            confidence=confidence,
        )


def load_for_inference(
    path: str | os.PathLike[str], preset: str | None = None, kind: str | None = None
) -> tuple[VOSModel, InferenceConfig]:
    """(model, inference settings) for weights ``path``.

    Both come from ``preset`` if given, else from the configuration ``twoshot train`` saved
    beside the weights; without either, the model fits the preset the weights match and the
    settings are that preset's. kind: the architecture the caller insists on (None: any).
    Raises UserError for unreadable or non-fitting weights, or a preset of another kind.
    """
    from twoshot.model.checkpoint import load_model, model_config_for

    run_config = model_config_for(path, preset)
    if kind is not None and preset is not None and run_config is not None and run_config.model.kind != kind:
        raise UserError(f"--preset {preset} is a {run_config.model.kind} model but --model {kind} was given")
    model = load_model(path, run_config.model if run_config is not None else None, kind)
    inference = run_config.inference if run_config is not None else _preset_inference(model)
    return model, inference


def _preset_inference(model: VOSModel) -> InferenceConfig:
    """The inference section of the preset whose model sizes equal ``model``'s, else defaults."""
    from twoshot.config import preset_names

    for name in preset_names():
        config = load_config(name)
        if config.model == model.config:  # model sections (model.cutie ...) included
            return config.inference
    return InferenceConfig()
