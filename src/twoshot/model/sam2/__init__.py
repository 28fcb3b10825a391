"""SAM 2.1 (Ravi et al., 2024; facebookresearch/sam2), the third VOS model behind twoshot's
model interface.

Modules: :mod:`.sizes` (the published sizes and a toy one), :mod:`.network` (the
:class:`Sam2` network with the reference's parameter names), :mod:`.hiera` (image encoder),
:mod:`.memory` (memory attention and encoder), :mod:`.heads` (SAM's prompt encoder and mask
decoder), :mod:`.layers` (shared blocks), :mod:`.propagator` (semi-supervised tracking from
masks), :mod:`.postprocess` (hole filling), :mod:`.weights` (checkpoints), :mod:`.spec` (the
model plugin: config section, presets, checkpoint prefixes), :mod:`.objective` (the training
recipe: optimiser groups and schedule), :mod:`.train_forward` (the training forward),
:mod:`.loss` (the training loss).

What a model registry needs: the model class :class:`Sam2` (``kind`` "sam2"), its size type
:class:`Sam2Size` (validated when built) and presets :data:`SIZES` (``toy``, ``tiny``,
``small``, ``base_plus``, ``large``), checkpoint recognition (:func:`is_sam2_state`,
:func:`detect_size`, :func:`check_sam2_state`) and loading (:func:`load_sam2`).
"""

from twoshot.lazy import lazy_exports

# Imported on first use: the configuration reads ``spec`` without importing torch.
_EXPORTS = {
    "CHECKPOINT_FILES": ".sizes",
    "FILL_HOLE_AREA": ".postprocess",
    "SIZES": ".sizes",
    "Sam2": ".network",
    "Sam2Features": ".network",
    "Sam2Propagator": ".propagator",
    "Sam2RunMemory": ".propagator",
    "Sam2Size": ".sizes",
    "SamOutput": ".network",
    "check_sam2_state": ".weights",
    "connected_components": ".postprocess",
    "detect_size": ".weights",
    "fill_holes": ".postprocess",
    "is_sam2_state": ".weights",
    "load_sam2": ".weights",
    "probabilities": ".propagator",
    "read_state": ".weights",
    "size_named": ".sizes",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
