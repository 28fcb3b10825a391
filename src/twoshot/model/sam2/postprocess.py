"""SAM 2's video post-processing: small holes in each object's low-resolution mask are filled.

The reference's video predictor fills background regions (mask logits <= 0) of at most
``fill_hole_area`` (8) low-resolution pixels, 8-connected, with the logit 0.1, when its
compiled CUDA extension is present; without it (any CPU run) the step is skipped with a
warning. twoshot computes the same components on the CPU with OpenCV, so the step runs
everywhere; ``fill_hole_area = 0`` reproduces the reference's behaviour without it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

FILL_HOLE_AREA = 8  # the video predictor's setting (build_sam2_video_predictor)
HOLE_LOGIT = 0.1


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-connected components of binary masks [N, 1, H, W] (any dtype, nonzero = foreground).

    Returns (labels, areas), int32 [N, 1, H, W] on the mask's device: each foreground pixel's
    component label (1..) and that component's pixel count; 0 on background pixels.
    """
    planes = (mask != 0).to(torch.uint8).cpu().numpy()
    labels = np.zeros(planes.shape, np.int32)
    areas = np.zeros(planes.shape, np.int32)
    for i in range(planes.shape[0]):
        _, plane_labels, stats, _ = cv2.connectedComponentsWithStats(planes[i, 0], connectivity=8)
        sizes = stats[:, cv2.CC_STAT_AREA].astype(np.int32)
        sizes[0] = 0  # OpenCV's label 0 is the background
        labels[i, 0] = plane_labels
        areas[i, 0] = sizes[plane_labels]
    return torch.from_numpy(labels).to(mask.device), torch.from_numpy(areas).to(mask.device)


def fill_holes(logits: torch.Tensor, max_area: int = FILL_HOLE_AREA) -> torch.Tensor:
    """Mask logits [N, 1, h, w] with background components of at most ``max_area`` pixels set
    to 0.1 (foreground); unchanged for ``max_area`` <= 0."""
    if max_area <= 0:
        return logits
    labels, areas = connected_components(logits <= 0)
    holes = (labels > 0) & (areas <= max_area)
    return torch.where(holes, HOLE_LOGIT, logits)
