"""Intensity normalisation shared by training and prediction.

A whole 61 × 1000 × 1000 frame is mostly empty space; normalised by its own percentiles, a model
trained on crops sees spots far brighter than it learned (one trial: 173 detections for 79
spots, F1 0.60; normalised by the signal region instead: F1 0.96). So both flows normalise by
percentiles taken inside the *signal region*: the bounding box of the bright structures, padded
by a margin in µm. A training crop around a spot cluster is its own signal region, so crops and
whole frames are seen the same way.

Axis order z, y, x (channel last: ZYXC).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kt_stardist.defaults import VOXEL_SIZE_UM

#: default percentiles (as StarDist's examples)
PMIN, PMAX = 1.0, 99.8


def signal_region(volume, voxel_size_um=VOXEL_SIZE_UM, margin_um=4.0, bin_px=(1, 4, 4), k_mad=8.0):
    """Bounding box of the bright structures of a volume, padded by ``margin_um``.

    Parameters
    ----------
    volume : ndarray (Z, Y, X) or (Z, Y, X, C)
        Raw intensities; with channels, the first channel (EGFP) decides.
    voxel_size_um : (z, y, x) µm
    margin_um : float
        Padding around the bright voxels, µm (each axis converted with its voxel size).
    bin_px : (z, y, x) px
        Block-mean binning before thresholding (speed, and noise suppression).
    k_mad : float
        A binned voxel is bright when above ``median + k_mad * 1.4826 * MAD``.

    Returns
    -------
    tuple of 3 slices (z, y, x) into the volume; the whole volume when nothing is bright.
    """
    vol = np.asarray(volume)
    if vol.ndim == 4:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise ValueError(f"signal_region needs a (Z, Y, X[, C]) volume, got shape {vol.shape}")
    bins = tuple(max(1, min(int(b), s)) for b, s in zip(bin_px, vol.shape))
    crop = tuple(s - s % b for s, b in zip(vol.shape, bins))
    v = vol[: crop[0], : crop[1], : crop[2]].astype(np.float32, copy=False)
    binned = v.reshape(crop[0] // bins[0], bins[0], crop[1] // bins[1], bins[1], crop[2] // bins[2], bins[2]).mean(
        axis=(1, 3, 5)
    )
    return region_from_binned(binned, bins, vol.shape, voxel_size_um, margin_um, k_mad)


def region_from_binned(binned, bins, shape, voxel_size_um, margin_um, k_mad):
    """The bounding box (3 slices into a volume of ``shape`` px) of the bright voxels of its
    block-mean binned copy ``binned`` (bins ``bins`` px), padded by ``margin_um``; the whole
    volume when nothing is bright. Shared by the in-memory and out-of-core signal regions."""
    binned = ndimage.uniform_filter(binned, size=3, mode="nearest")
    med = np.median(binned)
    mad = 1.4826 * np.median(np.abs(binned - med))
    bright = binned > med + k_mad * max(mad, 1e-12)
    if not bright.any():
        return tuple(slice(0, s) for s in shape)
    idx = np.nonzero(bright)
    out = []
    for ax in range(3):
        lo = idx[ax].min() * bins[ax]
        hi = (idx[ax].max() + 1) * bins[ax]
        pad = int(np.ceil(margin_um / voxel_size_um[ax]))
        out.append(slice(max(0, lo - pad), min(shape[ax], hi + pad)))
    return tuple(out)


def normalize(image, pmin=PMIN, pmax=PMAX, voxel_size_um=VOXEL_SIZE_UM, region=None, k_mad=8.0, eps=1e-20):
    """Normalise each channel to ``(x - low) / (high - low)``, float32.

    ``low`` is the ``pmin`` percentile of the signal region (background level); ``high`` is the
    ``pmax`` percentile of the *bright* voxels of that region (above median + ``k_mad`` robust
    standard deviations, after light smoothing). Taking ``high`` among bright voxels only makes it
    independent of how much empty space surrounds the spots, so a crop and the whole frame it
    came from are normalised alike. Channels without bright voxels fall back to the ``pmax``
    percentile of the region.

    Parameters
    ----------
    image : ndarray (Z, Y, X) or (Z, Y, X, C)
    pmin, pmax : float
        Percentiles, 0–100.
    region : tuple of 3 slices, "all" or None
        Where the statistics are computed; None: :func:`signal_region` of the image.

    Returns
    -------
    float32 array of the same shape.
    """
    img = np.asarray(image)
    squeeze = img.ndim == 3
    if squeeze:
        img = img[..., None]
    if img.ndim != 4:
        raise ValueError(f"normalize needs (Z, Y, X[, C]), got shape {np.shape(image)}")
    if region is None:
        region = signal_region(img, voxel_size_um=voxel_size_um, k_mad=k_mad)
    elif isinstance(region, str) and region == "all":
        region = tuple(slice(None) for _ in range(3))
    out = np.empty(img.shape, np.float32)
    for c in range(img.shape[-1]):
        lo, hi = intensity_range(img[region + (c,)], pmin, pmax, k_mad)
        out[..., c] = (img[..., c].astype(np.float32) - lo) / max(hi - lo, eps)
    return out[..., 0] if squeeze else out


def intensity_range(volume, pmin=PMIN, pmax=PMAX, k_mad=8.0):
    """(low, high) intensities of one channel (Z, Y, X) used by :func:`normalize`."""
    ref = np.asarray(volume, np.float32)
    lo = float(np.percentile(ref, pmin))
    smooth = ndimage.gaussian_filter(ref, 1.0)
    med = np.median(smooth)
    mad = 1.4826 * np.median(np.abs(smooth - med))
    bright = ref[smooth > med + k_mad * max(mad, 1e-12)]
    hi = float(np.percentile(bright if bright.size >= 20 else ref, pmax))
    return lo, hi
