"""Classical spot detectors to compare kt-stardist with (same inputs, same points tables).

- :func:`log_detect`: anisotropic Laplacian of Gaussian + local maxima on the normalised volume
  (:func:`kt_stardist.normalize.normalize`), threshold tuned on training volumes with
  :func:`tune_log_threshold`; positions refined like the model's (:func:`kt_stardist.predict.refine.refine_points`).
- :func:`bigfish_detect`: Big-FISH ``detect_spots`` with its automatic threshold (optional
  dependency ``big-fish``).

Axis order z, y, x; positions in px (float), voxel sizes in µm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import ndimage

from kt_stardist.defaults import SPOT_SIGMA_UM, VOXEL_SIZE_UM
from kt_stardist.normalize import normalize


#: default LoG threshold (normalised units), from :func:`tune_log_threshold` on simulated volumes
LOG_THRESHOLD = 0.1


def log_response(volume, voxel_size_um=VOXEL_SIZE_UM, sigma_um=SPOT_SIGMA_UM, normalized=False):
    """Scale-normalised negative LoG of a ``(Z, Y, X)`` volume (bright spots → positive peaks)."""
    v = np.asarray(volume, np.float32)
    if not normalized:
        v = normalize(v, voxel_size_um=voxel_size_um)
    s = np.asarray(sigma_um) / np.asarray(voxel_size_um)
    return -ndimage.gaussian_laplace(v, s, mode="nearest") * float(np.mean(s ** 2))


def log_candidates(response, voxel_size_um=VOXEL_SIZE_UM, min_distance_um=0.25):
    """Local maxima of a LoG response: (positions (N, 3) int px, values (N,)), best first."""
    r = np.asarray(response)
    size = tuple(max(1, 2 * int(round(min_distance_um / v)) + 1) for v in voxel_size_um)
    peak = (r == ndimage.maximum_filter(r, size=size, mode="nearest")) & (r > 0)
    pos = np.argwhere(peak)
    val = r[peak]
    order = np.argsort(-val, kind="stable")
    return pos[order], val[order]


def log_detect(volume, voxel_size_um=VOXEL_SIZE_UM, threshold=LOG_THRESHOLD, sigma_um=SPOT_SIGMA_UM,
               refine="gauss", normalized=False):
    """Spots of a ``(Z, Y, X)`` volume by LoG: DataFrame ``z, y, x`` (px), ``prob`` (LoG value).

    ``threshold`` is in normalised-intensity units (see :func:`tune_log_threshold`).
    """
    from kt_stardist.predict.refine import refine_points
    from kt_stardist.settings import RefineSettings

    vol = np.asarray(volume, np.float32)
    if vol.ndim != 3:
        raise ValueError(f"log_detect needs a (Z, Y, X) volume, got shape {vol.shape}")
    pos, val = log_candidates(log_response(vol, voxel_size_um, sigma_um, normalized), voxel_size_um)
    keep = val > threshold
    pts = refine_points(vol, pos[keep].astype(np.float64), voxel_size_um, RefineSettings(method=refine))
    df = pd.DataFrame(pts, columns=["z", "y", "x"])
    df["prob"] = val[keep]
    return df


def tune_log_threshold(volumes, points, voxel_size_um=VOXEL_SIZE_UM, sigma_um=SPOT_SIGMA_UM,
                       cutoff_um=0.5, thresholds=None):
    """LoG threshold with the best summed-count F1 on training ``volumes`` (list of ZYX) with
    ground truth ``points`` (list of (N, 3) px). Returns (threshold, f1)."""
    from kt_stardist.evaluate import score_thresholds

    cands = [log_candidates(log_response(v, voxel_size_um, sigma_um), voxel_size_um) for v in volumes]
    if thresholds is None:
        allv = np.concatenate([c[1] for c in cands]) if cands else np.zeros(1)
        thresholds = np.unique(np.quantile(allv, np.linspace(0.5, 0.9995, 120)))
    table = score_thresholds(cands, points, voxel_size_um, thresholds, cutoff_um, inclusive=False)
    best = table.loc[table.f1.idxmax()]  # the first of equal maxima, as before
    return float(best.threshold), float(best.f1)


def bigfish_detect(volume, voxel_size_um=VOXEL_SIZE_UM, spot_radius_nm=(350, 150, 150)):
    """Big-FISH ``detect_spots`` (automatic threshold) on a ``(Z, Y, X)`` volume.

    ``voxel_size`` and ``spot_radius`` are passed in nm (z, y, x). Returns a DataFrame
    ``z, y, x`` (integer px as Big-FISH gives them) and the threshold it chose in ``df.attrs``.
    """
    from bigfish.detection import detect_spots

    vol = np.asarray(volume)
    if vol.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        vol = vol.astype(np.float32)
    vs_nm = tuple(float(v) * 1000 for v in voxel_size_um)
    spots, thr = detect_spots(vol, return_threshold=True, voxel_size=vs_nm, spot_radius=tuple(spot_radius_nm))
    df = pd.DataFrame(np.asarray(spots, np.float64).reshape(-1, 3), columns=["z", "y", "x"])
    df.attrs["threshold"] = float(thr)
    return df
