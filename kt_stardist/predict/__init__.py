"""Prediction: from raw volumes and movies to kinetochore points.

Modules, in the order a volume goes through them:

- :mod:`~kt_stardist.predict.preprocess` — camera-defect repair, rescaling to the model's voxel
  size, normalisation (shared with training);
- :mod:`~kt_stardist.predict.screen` — where can spots be (DoG screen);
- :mod:`~kt_stardist.predict.blocks` — blocks around the screen's candidates, read with a halo;
- :mod:`~kt_stardist.predict.detect` — **the** detection function :func:`detect` (network,
  NMS, ownership, threshold, refinement, sister search → points table);
- :mod:`~kt_stardist.predict.refine` — sub-voxel Gaussian fits, close-sister search;
- :mod:`~kt_stardist.predict.frames` — frames of an image (channel layout, lazy frames).

TensorFlow is imported only when a model is loaded.
"""

from kt_stardist.predict.blocks import Block, block_geometry, owns, plan_blocks
from kt_stardist.predict.detect import (Candidates, Detection, adaptive_threshold, calibration_warning, candidate_floor,
                                        detect, finish, network_candidates, points_frame, texture_warning,
                                        thresholds_of)
from kt_stardist.predict.frames import (check_image_for_model, detect_frame, detect_image, frame_input,
                                       iter_detect_image, label_image)
from kt_stardist.predict.preprocess import (Prepared, exceeds_memory, points_to_image_px, prepare, rescale_volume,
                                            zoom_factors)
from kt_stardist.predict.refine import refine_and_split, refine_points
from kt_stardist.predict.screen import screen, screen_lazy

__all__ = [
    "detect", "Detection", "Candidates", "network_candidates", "finish", "thresholds_of", "adaptive_threshold", "candidate_floor", "calibration_warning", "texture_warning",
    "points_frame", "detect_frame", "detect_image", "iter_detect_image", "frame_input", "check_image_for_model", "label_image",
    "prepare", "Prepared", "exceeds_memory", "zoom_factors", "rescale_volume", "points_to_image_px",
    "screen", "screen_lazy", "plan_blocks", "block_geometry", "owns", "Block", "refine_points",
    "refine_and_split", "load",
]


def load(path=None):
    """A model folder (None: the shipped default); see :func:`kt_stardist.model.load_model`."""
    from kt_stardist.model import load_model

    return load_model(path)
