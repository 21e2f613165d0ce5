"""Intensity normalisation shared by training and prediction.

A whole 61 × 1000 × 1000 frame is mostly empty space; normalised by its own percentiles, a model
trained on crops sees spots far brighter than it learned (one trial: 173 detections for 79
spots, F1 0.60; normalised by the signal region instead: F1 0.96). So both flows normalise by
percentiles taken inside the *signal region*: the bounding box of the bright structures, padded
by a margin in µm. A training crop around a spot cluster is its own signal region, so crops and
whole frames are seen the same way.

Real microscopes (issue "Real microscopes"):

* background and noise levels come from :func:`robust_stats`, which holds on zero-clipped
  data (offset subtracted and clipped at 0: most values tie at 0, the MAD is 0);
* planes that are not fluorescence (:func:`plane_defects`: constant at 0, or constant at the
  saturation level) are left out of every statistic and set to 0 in the output;
* voxels at the maximum of an integer type (saturated) are left out of the percentiles.

Camera-defect columns (hot / dead pixels) are repaired before normalising
(:mod:`kt_stardist.defects`). Axis order z, y, x (channel last: ZYXC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError

__all__ = ["PMIN", "PMAX", "robust_stats", "plane_defects", "bad_planes", "signal_region", "region_from_binned",
           "bin_mean", "normalize", "normalization_info", "intensity_range", "apply_range", "saturation_level",
           "NormalizationInfo", "MIN_BRIGHT", "K_MIN_BRIGHT", "bright_threshold"]

#: default percentiles (as StarDist's examples)
PMIN, PMAX = 1.0, 99.8

#: at least this many bright voxels set ``high`` (:func:`bright_threshold`), found down to
#: :data:`K_MIN_BRIGHT` robust sd above the smoothed background
MIN_BRIGHT = 100
K_MIN_BRIGHT = 4.0

#: robust sd of a normal distribution per MAD
SD_PER_MAD = 1.4826

#: one-sided estimate: the 84.13th percentile is 1 sd above the median of a normal distribution
P_ONE_SD = 84.13

#: at least this fraction of the values tied at the minimum: the lower tail is clipped (e.g. an
#: offset subtracted and clipped at 0), so the MAD is biased low; the upper half is used instead
CLIPPED_FRACTION = 0.01

#: sd of white noise after the Gaussian (σ = 1 px, 3-D) smoothing of :func:`intensity_range`,
#: per sd before it: (Σ w²)^(3/2) of the 1-D kernel
SMOOTH_NOISE = float(np.sum(ndimage.gaussian_filter1d(np.eye(1, 41, 20)[0], 1.0) ** 2) ** 1.5)


# --------------------------------------------------------------------------------------------
# robust background and noise
# --------------------------------------------------------------------------------------------

class _Values:
    """The order statistics :func:`_robust` asks for, of an in-memory 1-D array (the out-of-core
    twin, :class:`kt_stardist.outofcore._Streamed`, computes the same numbers from chunks)."""

    def __init__(self, v):
        self.v = v
        self.n = v.size

    def extremes(self):
        """(min, number of values equal to it, max)."""
        lo = self.v.min()
        return lo, int(np.count_nonzero(self.v == lo)), self.v.max()

    def median(self):
        return np.median(self.v)

    def median_abs(self, c):
        return np.median(np.abs(self.v - c))

    def percentile(self, q):
        return np.percentile(self.v, q)

    def beyond(self, c, above=True):
        """(count, median) of the values above (below) ``c``; median None when there are none."""
        w = self.v[self.v > c] if above else self.v[self.v < c]
        return w.size, (np.median(w) if w.size else None)


def _robust(s):
    """(centre, sd) of the values behind ``s`` (:class:`_Values` or its streamed twin)."""
    med = s.median()
    lo, n_lo, hi = s.extremes()
    if lo == hi:
        return float(med), 0.0
    if med > lo and n_lo < CLIPPED_FRACTION * s.n:  # nothing clipped: the ordinary MAD
        mad = float(s.median_abs(med))
        if mad > 0:
            return float(med), SD_PER_MAD * mad
    one = float(s.percentile(P_ONE_SD)) - float(med)  # upper half only: untouched by clipping
    if one > 0:
        return float(med), one
    # ≥ 84 % of the values tie at the median: read the noise off the tail beyond it, as the tail
    # of a normal distribution (a fraction f beyond the median, half of it beyond their median)
    for above in (True, False):
        n, q = s.beyond(med, above)
        if n:
            f = n / s.n
            return float(med), abs(float(q) - float(med)) / float(special.ndtri(1 - f / 2) - special.ndtri(1 - f))
    return float(med), 0.0  # not reached: lo < hi leaves values on one side of the median


def robust_stats(values) -> tuple[float, float]:
    """Robust background level and noise of intensities: ``(centre, sd)`` as Python floats.

    Normally the median and 1.4826 × MAD (a normal distribution's mean and sd). With massive
    ties, as in zero-clipped data (offset subtracted and clipped at 0: the median is the minimum,
    the MAD is 0), the sd comes from the upper half instead, which clipping of the lower tail does
    not touch: P84.13 − median; when even that is 0 (≥ 84 % of the values at one level), from the
    tail beyond the median read as the tail of a normal distribution. The sd is 0 only for a
    constant input.

    Parameters
    ----------
    values : array-like of finite floats (any shape; counts or normalised units). Computed in
        float32 (float64 inputs in float64).

    Returns
    -------
    (centre, sd) in the units of ``values``.
    """
    a = np.asarray(values)
    v = a.astype(np.float64 if a.dtype == np.float64 else np.float32, copy=False).ravel()
    if v.size == 0:
        raise InputError("robust_stats: no values")
    return _robust(_Values(v))


# --------------------------------------------------------------------------------------------
# planes that are not fluorescence, saturation
# --------------------------------------------------------------------------------------------

def saturation_level(dtype):
    """The saturation level of an integer ``dtype`` (its maximum, counts); None for floats."""
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else None


def classify_planes(plane_min, plane_max, dtype):
    """``(zero, saturated)`` (Z,) bool from the per-plane minima and maxima of one channel: a
    plane is *zero* when constant at 0, *saturated* when constant at the channel's maximum (or at
    its integer type's maximum). Shared by the in-memory and out-of-core paths."""
    pmin, pmax = np.asarray(plane_min, np.float64), np.asarray(plane_max, np.float64)
    const = pmin == pmax
    sat = saturation_level(dtype)
    top = pmax == pmax.max() if pmax.size else pmax.astype(bool)
    if sat is not None:
        top |= pmax >= sat
    return const & (pmax == 0), const & ~(pmax == 0) & top


def plane_defects(volume):
    """``(zero, saturated)`` planes of a volume: bool (Z,) for (Z, Y, X), (Z, C) for (Z, Y, X, C).

    *Zero*: the whole plane is 0 (a dropped frame). *Saturated*: the whole plane sits at one value,
    the channel's maximum (or its integer type's maximum). Neither is fluorescence: they are left
    out of the normalisation statistics.
    """
    vol = np.asarray(volume)
    if vol.ndim not in (3, 4):
        raise InputError(f"plane_defects needs a (Z, Y, X[, C]) volume, got shape {vol.shape}")
    v = vol if vol.ndim == 4 else vol[..., None]
    pmin, pmax = v.min(axis=(1, 2)), v.max(axis=(1, 2))  # (Z, C)
    zs = [classify_planes(pmin[:, c], pmax[:, c], vol.dtype) for c in range(v.shape[-1])]
    zero, sat = np.stack([z for z, _ in zs], -1), np.stack([s for _, s in zs], -1)
    return (zero, sat) if vol.ndim == 4 else (zero[:, 0], sat[:, 0])


def bad_planes(volume):
    """Planes left out of the statistics (:func:`plane_defects`: all zero or saturated):
    bool (Z,) for (Z, Y, X), (Z, C) for (Z, Y, X, C)."""
    zero, sat = plane_defects(volume)
    return zero | sat


def _good(bad_z, n):
    """(Z,) bool of the planes the statistics use: all of them when all are bad (a constant
    volume: the result is then merely finite)."""
    good = np.ones(n, bool) if bad_z is None else ~np.asarray(bad_z, bool).reshape(n)
    return good if good.any() else np.ones(n, bool)


# --------------------------------------------------------------------------------------------
# signal region
# --------------------------------------------------------------------------------------------

def bin_mean(v, bins):
    """Block means (float32) of a ``(Z, Y, X)`` array whose shape is a multiple of ``bins``
    (z, y, x px). The sums run in a fixed order per output voxel, so a chunk aligned to the bins
    gives the same values as the whole volume. Integer counts that float32 holds exactly (8- and
    16-bit) are summed from the array itself, without a float32 copy of the whole volume (the
    same float32 additions, so the same values)."""
    v = np.asarray(v)
    if not np.can_cast(v.dtype, np.float32, "safe"):
        v = v.astype(np.float32)
    for ax, b in enumerate(bins):
        if b > 1:
            parts = [v[(slice(None),) * ax + (slice(i, None, b),)] for i in range(b)]
            acc = parts[0].astype(np.float32)
            for p in parts[1:]:
                np.add(acc, p, out=acc, dtype=np.float32)
            v = acc
    v = np.asarray(v, np.float32)
    return v / np.float32(np.prod(bins)) if np.prod(bins) > 1 else v


def signal_region(volume, voxel_size_um=VOXEL_SIZE_UM, margin_um=4.0, bin_px=(1, 4, 4), k_mad=8.0, bad_z=None):
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
        A binned voxel is bright when above ``centre + k_mad * sd`` (:func:`robust_stats`).
    bad_z : (Z,) bool or None
        Planes left out (None: :func:`bad_planes` of the first channel).

    Returns
    -------
    tuple of 3 slices (z, y, x) into the volume; the whole volume when nothing is bright.
    """
    vol = np.asarray(volume)
    if vol.ndim == 4:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise InputError(f"signal_region needs a (Z, Y, X[, C]) volume, got shape {vol.shape}")
    if bad_z is None:
        bad_z = bad_planes(vol)
    bins = tuple(max(1, min(int(b), s)) for b, s in zip(bin_px, vol.shape))
    crop = tuple(s - s % b for s, b in zip(vol.shape, bins))
    binned = bin_mean(vol[: crop[0], : crop[1], : crop[2]], bins)
    return region_from_binned(binned, bins, vol.shape, voxel_size_um, margin_um, k_mad, bad_z)


def region_from_binned(binned, bins, shape, voxel_size_um, margin_um, k_mad, bad_z=None):
    """The bounding box (3 slices into a volume of ``shape`` px) of the bright voxels of its
    block-mean binned copy ``binned`` (bins ``bins`` px), padded by ``margin_um``; the whole
    volume when nothing is bright. Binned z-slabs holding a bad plane (``bad_z``, (Z,) bool of
    the volume) are left out (filled with the others' median before smoothing). Shared by the
    in-memory and out-of-core signal regions."""
    nz = binned.shape[0]
    bad = np.zeros(nz, bool)
    if bad_z is not None:
        b = np.asarray(bad_z, bool)[: nz * bins[0]]
        bad = b.reshape(nz, bins[0]).any(axis=1)
    if bad.all():
        return tuple(slice(0, s) for s in shape)
    if bad.any():
        binned = binned.copy()
        binned[bad] = np.median(binned[~bad])
    binned = ndimage.uniform_filter(binned, size=3, mode="nearest")
    centre, sd = robust_stats(binned[~bad])
    bright = binned > centre + k_mad * max(sd, 1e-12)
    bright[bad] = False
    if not bright.any():
        return tuple(slice(0, s) for s in shape)
    idx = np.nonzero(bright)
    out = []
    for ax in range(3):
        lo = int(idx[ax].min()) * bins[ax]
        hi = (int(idx[ax].max()) + 1) * bins[ax]
        pad = int(np.ceil(margin_um / voxel_size_um[ax]))
        out.append(slice(max(0, lo - pad), min(shape[ax], hi + pad)))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# normalisation
# --------------------------------------------------------------------------------------------

@dataclass
class NormalizationInfo:
    """What :func:`normalize` found: per-channel ``ranges`` [(low, high)] (counts), the statistics
    ``region`` (3 slices z, y, x), and the ``zero`` / ``saturated`` planes, (Z, C) bool, left out
    of the statistics and set to 0 in the output."""

    ranges: list
    region: tuple
    zero: np.ndarray
    saturated: np.ndarray

    def summary(self) -> str:
        """One line for the user ('' when every plane was used)."""
        parts = []
        for name, m in (("all-zero", self.zero), ("saturated", self.saturated)):
            n = int(np.asarray(m).any(axis=-1).sum()) if np.asarray(m).ndim == 2 else int(np.sum(m))
            if n:
                parts.append(f"{n} {name} plane{'s' if n > 1 else ''} ignored")
        return "; ".join(parts)


def apply_range(src, lo, hi, eps=1e-20, out=None):
    """``(src - lo) / max(hi - lo, eps)`` in float32 (written into ``out`` when given): the one
    formula of :func:`normalize` and :class:`kt_stardist.outofcore.NormalizedView`."""
    out = np.empty(np.shape(src), np.float32) if out is None else out
    np.subtract(src, lo, out=out, dtype=np.float32, casting="unsafe")
    np.divide(out, max(hi - lo, eps), out=out)
    return out


def normalize(image, pmin=PMIN, pmax=PMAX, voxel_size_um=VOXEL_SIZE_UM, region=None, k_mad=8.0, eps=1e-20,
              return_info=False):
    """Normalise each channel to ``(x - low) / (high - low)``, float32.

    ``low`` is the ``pmin`` percentile of the signal region (background level); ``high`` is the
    ``pmax`` percentile of the *bright* voxels of that region (above centre + ``k_mad`` robust
    sd, :func:`robust_stats`, after light smoothing; for zero-clipped data at least the raw
    noise seen through the smoothing, :func:`bright_sd`; when fewer than :data:`MIN_BRIGHT` voxels
    are that bright, the :data:`MIN_BRIGHT` brightest, down to :data:`K_MIN_BRIGHT` sd:
    :func:`bright_threshold`). Taking ``high`` among bright voxels only
    makes it independent of how much empty space surrounds the spots, so a crop and the whole
    frame it came from are normalised alike. Channels without bright voxels fall back to the
    ``pmax`` percentile of the region's voxels above ``low``, then to its maximum (a volume of
    pure noise, with nothing :data:`K_MIN_BRIGHT` sd above its background).

    Planes that are all zero or saturated (:func:`plane_defects`) are left out of the statistics
    and set to 0 in the output; voxels at an integer type's maximum are left out of the
    percentiles (:func:`intensity_range`). A constant volume gives a finite (zero) output.
    Camera-defect columns should be repaired first (:func:`kt_stardist.defects.repair_defects`).
    The statistics alone: :func:`normalization_info` (what
    :class:`kt_stardist.outofcore.NormalizedView` applies block by block).

    Parameters
    ----------
    image : ndarray (Z, Y, X) or (Z, Y, X, C), raw intensities (counts).
    pmin, pmax : float
        Percentiles, 0–100.
    voxel_size_um : (z, y, x) µm
    region : tuple of 3 slices, "all" or None
        Where the statistics are computed; None: :func:`signal_region` of the image.
    return_info : also return a :class:`NormalizationInfo` (ranges, region, planes left out).

    Returns
    -------
    float32 array of the same shape (and the :class:`NormalizationInfo`).
    """
    img = np.asarray(image)
    squeeze = img.ndim == 3
    if squeeze:
        img = img[..., None]
    info = normalization_info(img, pmin, pmax, voxel_size_um, region, k_mad)
    out = np.empty(img.shape, np.float32)
    bad = info.zero | info.saturated
    for c, (lo, hi) in enumerate(info.ranges):
        apply_range(img[..., c], lo, hi, eps, out=out[..., c])
        out[bad[:, c], :, :, c] = 0.0
    out = out[..., 0] if squeeze else out
    if return_info:
        return out, info
    return out


def normalization_info(image, pmin=PMIN, pmax=PMAX, voxel_size_um=VOXEL_SIZE_UM, region=None,
                       k_mad=8.0) -> NormalizationInfo:
    """The statistics of :func:`normalize` (same arguments) without the normalised copy: per
    channel ``(low, high)`` counts, the region (3 slices z, y, x) and the planes left out, of a
    ``(Z, Y, X[, C])`` volume of raw intensities."""
    img = np.asarray(image)
    if img.ndim == 3:
        img = img[..., None]
    if img.ndim != 4:
        raise InputError(f"normalize needs (Z, Y, X[, C]), got shape {np.shape(image)}")
    zero, sat = plane_defects(img)
    bad = zero | sat
    if region is None:
        region = signal_region(img, voxel_size_um=voxel_size_um, k_mad=k_mad, bad_z=bad[:, 0])
    elif isinstance(region, str) and region == "all":
        region = tuple(slice(None) for _ in range(3))
    ranges = [intensity_range(img[region + (c,)], pmin, pmax, k_mad, bad_z=bad[region[0], c])
              for c in range(img.shape[-1])]
    return NormalizationInfo(ranges, region, zero, sat)


def intensity_range(volume, pmin=PMIN, pmax=PMAX, k_mad=8.0, bad_z=None):
    """(low, high) intensities (Python floats, counts) of one channel (Z, Y, X) used by
    :func:`normalize`.

    Only the planes not in ``bad_z`` ((Z,) bool; None: :func:`bad_planes` of ``volume``) count;
    bad planes are filled with ``low`` before the light smoothing (Gaussian σ = 1 px) that picks
    the bright voxels. Voxels at an integer type's maximum (saturated) are left out of the
    percentiles. Degenerate cases stay finite: ``high`` falls back to the maximum, then to
    ``low + 1``.
    """
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise InputError(f"intensity_range needs one (Z, Y, X) channel, got shape {vol.shape}")
    good = _good(bad_planes(vol) if bad_z is None else bad_z, vol.shape[0])
    ref = np.asarray(vol, np.float32)
    vals = ref if good.all() else ref[good]
    sat = saturation_level(vol.dtype)
    kept = vals
    if sat is not None and vals.max() >= sat:
        kept = vals[vals < sat]
        if kept.size == 0:
            kept = vals
    lo = float(np.percentile(kept, pmin))
    if not good.all():
        ref = ref.copy()
        ref[~good] = lo
    smooth = ndimage.gaussian_filter(ref, 1.0)
    s_good = smooth if good.all() else smooth[good]
    centre, sd = robust_stats(s_good)
    sd = bright_sd(sd, _Values(kept.ravel()))
    ok = (vals < sat) if kept is not vals else None
    cand = s_good if ok is None else s_good[ok]
    k = cand.size - MIN_BRIGHT  # the MIN_BRIGHT-th largest smoothed value (None: fewer voxels)
    top = np.partition(cand.ravel(), k)[k] if k >= 0 else None
    sel = s_good > bright_threshold(centre, sd, k_mad, top)
    if ok is not None:
        sel &= ok
    bright = vals[sel]
    if bright.size < 20:  # too few bright voxels: all of them, or when clipped the non-zero ones
        clipped = _Values(kept.ravel()).extremes()[1] >= CLIPPED_FRACTION * kept.size
        bright = kept[kept > lo] if clipped else kept
    hi = float(np.percentile(bright if bright.size else kept, pmax))
    return lo, _sane_high(lo, hi, lambda: float(vals.max()))


def bright_threshold(centre, sd, k_mad, top):
    """The smoothed intensity above which a voxel is *bright* (:func:`intensity_range`):
    ``centre + k_mad * sd``, lowered when fewer than :data:`MIN_BRIGHT` voxels lie above it to
    ``top`` (the :data:`MIN_BRIGHT`-th largest smoothed value; None: fewer voxels than that), but
    never below ``centre + K_MIN_BRIGHT * sd``. Without the lowering, ``high`` jumps between the
    few brightest voxels and the percentile of the whole region as a volume's spots cross
    ``k_mad`` sd: spots of one microscope came out at 0.4 or at 1.9 of ``high`` on two
    volumes alike."""
    sd = max(sd, 1e-12)
    thr = centre + k_mad * sd
    if top is None or top >= thr:
        return thr
    return max(float(top), centre + K_MIN_BRIGHT * sd)


def bright_sd(sd_smooth, raw):
    """The noise sd the bright-voxel threshold uses: that of the smoothed values, or, when the raw
    values (``raw``: :class:`_Values` or its streamed twin) are clipped (≥ :data:`CLIPPED_FRACTION`
    tied at their minimum), at least their robust sd × :data:`SMOOTH_NOISE`: smoothed clipped
    background (sparse counts on zeros) is so skewed that its MAD says almost nothing."""
    _, n_lo, _ = raw.extremes()
    if n_lo >= CLIPPED_FRACTION * raw.n:
        sd_smooth = max(sd_smooth, SMOOTH_NOISE * _robust(raw)[1])
    return sd_smooth


def _sane_high(lo, hi, vmax):
    """``hi``, or when it is not above ``lo`` the maximum ``vmax()``, or else ``lo + 1``."""
    if hi > lo:
        return hi
    m = vmax()
    return m if m > lo else lo + 1.0
