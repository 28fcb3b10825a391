"""Click-to-segment in the app: SAM 2's prompt path on the frame shown, with cached features.

A request names the video, the frame, the object, an optional box and the clicks so far; the
answer is the object's mask on that frame (:class:`~twoshot.model.sam2.prompt.PromptSegmenter`,
the reference video predictor's ``add_new_points_or_box`` on an untracked frame). The page
puts the mask into the frame's labels and saves them through the ordinary mask save, so the
storage and its checks are the same as for every other tool.

The image features of the most recently clicked frames are kept (a bounded LRU, so a long
video never fills memory): the first click on a frame runs the image encoder, further
clicks only SAM's prompt encoder and mask decoder. Each (frame, object) also keeps the chain
of decoder steps of its latest request, so a click added to the previous ones costs one
decoder step; any other prompt list is recomputed from its first step, so the answer
depends only on the request. Requests run one at a time (a lock), independently of the
propagation jobs.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from twoshot.annotate.storage import AnnotationStore, RequestError
from twoshot.config import InferenceConfig
from twoshot.model.interface import VOSModel

DEFAULT_CACHED_FRAMES = 8  # image features kept (about 20 MB a frame for the 1024-pixel models)
MAX_CLICKS = 100  # a request recomputes at most this many decoder steps


def unavailable_reason(model: VOSModel | None) -> str | None:
    """Why the app cannot segment with clicks (None: it can)."""
    if model is None:
        return (
            "click-to-segment needs a SAM 2 checkpoint: start twoshot annotate with "
            "--checkpoint sam2.1_hiera_*.pt"
        )
    if model.kind != "sam2":
        return f"click-to-segment needs a SAM 2 checkpoint; the loaded checkpoint is a {model.kind} model"
    return None


class ClickSegmenter:
    """Masks from clicks for the app's SAM 2 model: ``segment`` with features of up to
    ``cached_frames`` frames kept. model / config / device: the propagation engine's."""

    def __init__(
        self,
        store: AnnotationStore,
        model: VOSModel,
        config: InferenceConfig,
        device: torch.device | str,
        cached_frames: int = DEFAULT_CACHED_FRAMES,
    ) -> None:
        from twoshot.model.sam2.network import Sam2
        from twoshot.model.sam2.prompt import PromptSegmenter

        assert isinstance(model, Sam2)
        self.store = store
        self.segmenter = PromptSegmenter(model, config, device)
        self.cached_frames = max(1, cached_frames)
        self._features: OrderedDict[tuple[str, int], Any] = OrderedDict()
        self._chains: dict[tuple[str, int, int], Any] = {}
        self._lock = threading.Lock()
        self.encodes = 0  # image encoder runs (tests, benchmarks)

    def segment(self, video: str, index: int, payload: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """The mask of ``payload``'s prompts on frame ``index`` of ``video``.

        payload: ``{"object": id, "box": [x0, y0, x1, y1] or null, "points": [[x, y, label],
        ...]}`` in frame pixels (label 1 positive, 0 negative; at least a box or a click).
        Returns (uint8 [H, W], 1 = the object; timing {"encoded": bool, "seconds": float}).
        RequestError 400 for a malformed prompt, a non-finite or out-of-frame coordinate or
        an object the video does not have.
        """
        from twoshot.model.sam2.prompt import prompt_sequence

        height, width = self.store.frame_size(video)
        obj = payload.get("object")
        if not isinstance(obj, int) or isinstance(obj, bool):
            raise RequestError(400, f'expected "object": an object id, got {obj!r}')
        known = self.store.object_ids(video)
        if obj not in known:
            raise RequestError(
                400,
                f"object {obj}: {video} has no such object (its objects: "
                f"{', '.join(map(str, sorted(known))) or 'none'}); add the object first",
            )
        box = _box(payload.get("box"), (height, width))
        clicks = _clicks(payload.get("points"), (height, width))
        if box is None and not clicks:
            raise RequestError(400, "no prompt: give at least one click or a box")
        points = prompt_sequence(box, clicks)
        started = time.perf_counter()
        with self._lock:
            features, encoded = self._frame_features(video, index)
            chain_key = (video, index, obj)
            logits, chain = self.segmenter.segment(
                features, points, (height, width), self._chains.get(chain_key)
            )
            self._chains[chain_key] = chain
        mask = (logits > 0).cpu().numpy().astype(np.uint8)
        return mask, {"encoded": encoded, "seconds": time.perf_counter() - started}

    def _frame_features(self, video: str, index: int) -> tuple[Any, bool]:
        """(the frame's features, whether they were computed now); the least recently used
        frame (and its chains) is dropped past ``cached_frames``."""
        key = (video, index)
        if key in self._features:
            self._features.move_to_end(key)
            return self._features[key], False
        features = self.segmenter.features(self.store.frame_rgb(video, index))
        self.encodes += 1
        self._features[key] = features
        while len(self._features) > self.cached_frames:
            old, _ = self._features.popitem(last=False)
            for chain_key in [k for k in self._chains if k[:2] == old]:
                del self._chains[chain_key]
        return features, True

    @property
    def cached(self) -> list[tuple[str, int]]:
        """The frames whose features are kept, least recently used first."""
        return list(self._features)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _inside(x: float, y: float, size: tuple[int, int], what: str) -> None:
    height, width = size
    if not (math.isfinite(x) and math.isfinite(y)):
        raise RequestError(400, f"{what} ({x}, {y}): coordinates must be finite numbers")
    if not (0 <= x <= width and 0 <= y <= height):
        raise RequestError(400, f"{what} ({x}, {y}) is outside the {width}x{height} frame")


def _box(value: Any, size: tuple[int, int]) -> tuple[float, float, float, float] | None:
    """A checked box [x0, y0, x1, y1] (corners sorted: top left first) or None."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 4 and all(_number(v) for v in value)):
        raise RequestError(400, f'expected "box": [x0, y0, x1, y1] in image pixels or null, got {value!r}')
    _inside(value[0], value[1], size, "box corner")
    _inside(value[2], value[3], size, "box corner")
    x0, x1 = sorted((float(value[0]), float(value[2])))
    y0, y1 = sorted((float(value[1]), float(value[3])))
    return x0, y0, x1, y1


def _clicks(value: Any, size: tuple[int, int]) -> list[tuple[float, float, int]]:
    """Checked clicks [[x, y, label], ...] (label 1 positive, 0 negative)."""
    if value is None:
        return []
    shape = 'expected "points": [[x, y, label], ...] in image pixels, label 1 (positive) or 0 (negative)'
    if not isinstance(value, list):
        raise RequestError(400, f"{shape}, got {value!r}")
    if len(value) > MAX_CLICKS:
        raise RequestError(400, f"{len(value)} clicks: at most {MAX_CLICKS} per object and frame")
    clicks = []
    for point in value:
        if not (
            isinstance(point, list)
            and len(point) == 3
            and _number(point[0])
            and _number(point[1])
            and point[2] in (0, 1)
            and not isinstance(point[2], bool)
        ):
            raise RequestError(400, f"{shape}, got {point!r}")
        _inside(point[0], point[1], size, "click")
        clicks.append((float(point[0]), float(point[1]), int(point[2])))
    return clicks
