"""SAM 2.1 (Ravi et al., 2024; facebookresearch/sam2), the third VOS model behind twoshot's
model interface.

Modules: :mod:`.sizes` (the published sizes and a toy one), :mod:`.network` (the
:class:`Sam2` network with the reference's parameter names), :mod:`.hiera` (image encoder),
:mod:`.memory` (memory attention and encoder), :mod:`.heads` (SAM's prompt encoder and mask
decoder), :mod:`.layers` (shared blocks), :mod:`.propagator` (semi-supervised tracking from
masks), :mod:`.postprocess` (hole filling), :mod:`.weights` (checkpoints).

What a model registry needs: the model class :class:`Sam2` (``kind`` "sam2"), its size type
:class:`Sam2Size` (validated when built) and presets :data:`SIZES` (``toy``, ``tiny``,
``small``, ``base_plus``, ``large``), checkpoint recognition (:func:`is_sam2_state`,
:func:`detect_size`, :func:`check_sam2_state`) and loading (:func:`load_sam2`).
"""

from twoshot.model.sam2.network import Sam2, Sam2Features, SamOutput
from twoshot.model.sam2.postprocess import FILL_HOLE_AREA, connected_components, fill_holes
from twoshot.model.sam2.propagator import Sam2Propagator, Sam2RunMemory, probabilities
from twoshot.model.sam2.sizes import CHECKPOINT_FILES, SIZES, Sam2Size, size_named
from twoshot.model.sam2.weights import check_sam2_state, detect_size, is_sam2_state, load_sam2, read_state

__all__ = [
    "CHECKPOINT_FILES",
    "FILL_HOLE_AREA",
    "SIZES",
    "Sam2",
    "Sam2Features",
    "Sam2Propagator",
    "Sam2RunMemory",
    "Sam2Size",
    "SamOutput",
    "check_sam2_state",
    "connected_components",
    "detect_size",
    "fill_holes",
    "is_sam2_state",
    "load_sam2",
    "probabilities",
    "read_state",
    "size_named",
]
