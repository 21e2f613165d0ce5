"""Camera defects: pixel columns that are hot (or dead) in every z plane, found and repaired.

A hot camera pixel is hot at the same (y, x) in *every* plane of a z-stack: a bright column
through z that a detector takes for a spot (and many of them take over the normalisation
percentiles). A real spot is neither one pixel wide nor elevated in every plane (its PSF spans
about ±1 µm in z: ~7 of 61 planes, or half of an 8-plane stack). So, per (y, x) column:

1. the good planes (not all-zero / saturated, :func:`kt_stardist.normalize.bad_planes`) are
   averaged, all together (``mean``) and in :data:`Z_BLOCKS` consecutive z-blocks (``blocks``);
2. each is compared with the median of the column's 8 lateral neighbours (the smallest ring of
   non-defective in-image pixels): ``contrast = mean - median(neighbours' mean)``, and the same
   per block;
3. a column is **hot** when

   * its contrast exceeds ``t = max(K_NOISE × σ, K_SPREAD × s)``: σ is the per-voxel noise
     (robust sd of plane-to-plane differences / √2, :func:`~kt_stardist.normalize.robust_stats`),
     s the spread of the contrast over all columns (1.4826 × MAD: the residual noise of the mean
     and the offset spread of sCMOS pixels, so only "warm" pixels far out of it count);
   * it is *flat in z*: every block's contrast lies within [:data:`FLAT_Z`, 1 / FLAT_Z] × the
     mean's. A spot is contiguous in z and at most about half the stack, so it leaves some
     block (nearly) clean;
   * it is *one pixel wide*: it also stands out by more than ``t`` from the ring 2 px away, and
     its contrast is ≥ :data:`SHARPNESS` × that elevation (a spot's neighbour is still ≥ ~0.5 ×
     its peak at 0.13 µm px, so the contrast of a spot is ~0.6 × its elevation).

   **Dead** columns are the mirror image. Columns next to a new defect are re-tested with it
   left out of their neighbours, without the one-pixel-wide test (defect clusters).

Limits: a hot pixel under a spot much brighter than itself is not flat in z and is missed; a
column covered by spots in every z-block (spots stacked in z, 0.2 µm px, 8–12 planes) can pass
for a hot pixel.

Repair replaces each defective column, plane by plane, by the median of its non-defective 8
neighbours (the next ring out when all 8 are defective). Frames too large for memory:
:func:`find_defects_lazy` (y-x tiles through full z, the same :class:`Defects`) and
:class:`kt_stardist.outofcore.RepairedView` (repair on read, with a halo).

Arrays are ``(Z, Y, X)`` raw counts in the image's own pixel grid; positions ``(y, x)`` px.
Multi-channel ``(Z, Y, X, C)``: defects per channel (two cameras have different defects):
:func:`find_defects` returns one :class:`Defects` per channel, :func:`repair_defects` takes
that list.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from kt_stardist.errors import InputError
from kt_stardist.normalize import SD_PER_MAD, bad_planes, robust_stats

__all__ = ["Defects", "find_defects", "find_defects_lazy", "repair_defects", "repair_block", "bad_planes",
           "summary_line", "K_NOISE", "K_SPREAD"]

#: a defect stands out from its neighbours by more than this many per-voxel noise sd ...
K_NOISE = 3.0
#: ... and by more than this many sd of the contrast over all columns (order-statistic noise of
#: thin stacks, sCMOS offset spread); 5.5 sd: no false column in 10^6 under normal noise
K_SPREAD = 5.5
#: the good planes are cut into this many consecutive z-blocks
Z_BLOCKS = 4
#: fewer good planes than this: hot pixels and spots cannot be told apart, nothing is flagged
MIN_PLANES = 4
#: flat in z: contrast of the lowest block mean ≥ this × contrast of the highest
FLAT_Z = 0.5
#: one pixel wide: contrast against the 8 neighbours ≥ this × elevation over the ring 2 px out
SHARPNESS = 0.75
#: the noise and contrast spread are measured on every this-many-th px in y and x
SAMPLE_STRIDE_PX = 4
#: re-test rounds for columns next to newly found defects
MAX_ROUNDS = 16


@dataclass(eq=False)
class Defects:
    """Camera-defect columns of one channel.

    ``hot`` / ``dead``: ``(N, 2)`` int arrays of ``(y, x)`` px; ``mask``: ``(Y, X)`` bool, True
    at every defect; ``noise_sd``: the per-voxel noise estimate and ``threshold`` the contrast a
    column needed (counts).
    ``len()`` counts both kinds; equality compares positions.
    """

    hot: np.ndarray
    dead: np.ndarray
    mask: np.ndarray
    noise_sd: float = 0.0
    threshold: float = 0.0
    _halo: int | None = field(default=None, repr=False)

    @classmethod
    def none(cls, shape_yx, noise_sd=0.0):
        """No defects on a ``(Y, X)`` grid."""
        e = np.zeros((0, 2), np.int64)
        return cls(e, e.copy(), np.zeros(tuple(int(s) for s in shape_yx), bool), float(noise_sd))

    def __len__(self):
        return len(self.hot) + len(self.dead)

    def __eq__(self, other):
        return (isinstance(other, Defects) and np.array_equal(self.hot, other.hot)
                and np.array_equal(self.dead, other.dead) and np.array_equal(self.mask, other.mask))

    @property
    def halo_px(self) -> int:
        """Lateral halo (px) a block needs to be repaired as in the whole frame: the largest
        chessboard distance from a defect to a non-defective pixel (0: none, or all defective)."""
        if self._halo is None:
            m = self.mask
            self._halo = 0 if not m.any() or m.all() else int(
                ndimage.distance_transform_cdt(m, metric="chessboard").max())
        return self._halo

    def summary(self) -> str:
        """One line, e.g. '12 hot and 3 dead pixel columns repaired (camera defects)'."""
        h, d = len(self.hot), len(self.dead)
        if not h + d:
            return "no camera defects"
        kinds = " and ".join(p for p in ((f"{h} hot" if h else ""), (f"{d} dead" if d else "")) if p)
        return f"{kinds} pixel column{'s' if h + d > 1 else ''} repaired (camera defects)"


def summary_line(defects=None, info=None) -> str:
    """The one-line warning for the user: defects (a :class:`Defects` or one per channel) and the
    planes :func:`kt_stardist.normalize.normalize` left out (its ``NormalizationInfo``), e.g.
    '12 hot and 3 dead pixel columns repaired (camera defects); 2 saturated planes ignored'.
    '' when there is nothing to report."""
    parts = []
    ds = [defects] if isinstance(defects, Defects) else list(defects or [])
    for c, d in enumerate(ds):
        if d is not None and len(d):
            parts.append(d.summary() + (f" (channel {c})" if len(ds) > 1 else ""))
    if info is not None and info.summary():
        parts.append(info.summary())
    return "; ".join(parts)


# --------------------------------------------------------------------------------------------
# per-column statistics (shared by the in-memory and tiled paths: same values per column)
# --------------------------------------------------------------------------------------------

def _good_planes(volume_zyx, bad_z=None):
    bad = bad_planes(volume_zyx) if bad_z is None else np.asarray(bad_z, bool)
    return np.nonzero(~bad)[0]


def column_means(tile, good):
    """``(blocks, mean)`` of each column of a ``(Z, y, x)`` tile, float64 counts: the means of
    the good planes (``good``, indices) cut into :data:`Z_BLOCKS` consecutive z-blocks,
    ``(K, y, x)``, and the mean of all of them, ``(y, x)``. Fixed summation order per column, so
    a tile gives the frame's values."""
    sums, n = [], []
    for block in np.array_split(np.asarray(good), min(Z_BLOCKS, len(good))):
        acc = np.zeros(tile.shape[1:], np.float64)
        for z in block:
            acc += tile[z]
        sums.append(acc)
        n.append(len(block))
    total = sums[0].copy()
    for a in sums[1:]:
        total += a
    return np.stack([a / k for a, k in zip(sums, n)]), total / sum(n)


def noise_sample(tile, good, y0=0, x0=0):
    """Plane-to-plane differences (float32, counts) of the good planes at the columns of a
    ``(Z, y, x)`` tile (starting at ``(y0, x0)`` px of the frame) on the frame's
    :data:`SAMPLE_STRIDE_PX` grid."""
    s = SAMPLE_STRIDE_PX
    sub = np.asarray(tile[:, (-y0) % s::s, (-x0) % s::s], np.float32)[np.asarray(good)]
    return (sub[1:] - sub[:-1]).ravel()


# --------------------------------------------------------------------------------------------
# rings of neighbours
# --------------------------------------------------------------------------------------------

def _ring_offsets(d):
    r = np.arange(-d, d + 1)
    oy, ox = np.meshgrid(r, r, indexing="ij")
    on = np.maximum(np.abs(oy), np.abs(ox)) == d
    return oy[on], ox[on]


def _ring(ys, xs, mask, d):
    """Positions (clipped) and validity (in the image, not defective) of the chessboard ring at
    distance ``d`` around each ``(ys, xs)``: ``(yy, xx, valid)``, each ``(N, 8d)``."""
    oy, ox = _ring_offsets(d)
    yy, xx = ys[:, None] + oy, xs[:, None] + ox
    Y, X = mask.shape
    inside = (yy >= 0) & (yy < Y) & (xx >= 0) & (xx < X)
    yy, xx = np.clip(yy, 0, Y - 1), np.clip(xx, 0, X - 1)
    return yy, xx, inside & ~mask[yy, xx]


def _masked_median(vals, valid):
    """Median over the last axis of ``vals`` (..., N, K) of the entries where ``valid`` (N, K);
    NaN where there are none. Fixed arithmetic (mean of the two middle values), in vals' dtype."""
    v = np.where(valid, vals, np.array(np.nan, vals.dtype))
    v = np.sort(v, axis=-1)
    k = valid.sum(axis=-1)
    a = np.take_along_axis(v, np.broadcast_to(np.maximum(k - 1, 0) // 2, v.shape[:-1])[..., None], -1)[..., 0]
    b = np.take_along_axis(v, np.broadcast_to(k // 2 - (k == 0), v.shape[:-1])[..., None], -1)[..., 0]
    out = (a + b) / np.array(2, vals.dtype)
    return np.where(k > 0, out, np.array(np.nan, vals.dtype))


def _neighbour_median(img, ys, xs, mask, ring=None):
    """Median of the non-defective neighbours of each ``(ys, xs)`` in a 2-D image: those of ring
    ``ring`` px (chessboard), or (None) of the smallest ring that has any. NaN when none."""
    out = np.full(len(ys), np.nan, img.dtype)
    todo = np.arange(len(ys))
    for d in ([ring] if ring else range(1, max(img.shape) + 1)):
        if not todo.size:
            break
        yy, xx, valid = _ring(ys[todo], xs[todo], mask, d)
        ok = valid.any(axis=1)
        out[todo[ok]] = _masked_median(img[yy[ok], xx[ok]], valid[ok])
        todo = todo[~ok]
    return out


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------

def _mad_sd(v):
    """1.4826 × MAD (0 when most values tie: then the per-voxel noise alone sets the bar)."""
    v = v[np.isfinite(v)]
    if not v.size:
        return 0.0
    return SD_PER_MAD * float(np.median(np.abs(v - np.median(v))))


def _test(blocks, mean, ys, xs, mask, t, sharp=True):
    """(hot, dead) bool per candidate ``(ys, xs)`` (module docstring, step 3); ``sharp``: also
    the one-pixel-wide test (off when re-testing the neighbours of defects: clusters)."""
    c1 = mean[ys, xs] - _neighbour_median(mean, ys, xs, mask)
    e2 = mean[ys, xs] - _neighbour_median(mean, ys, xs, mask, ring=2)
    cb = np.stack([b[ys, xs] - _neighbour_median(b, ys, xs, mask) for b in blocks])
    with np.errstate(invalid="ignore"):  # NaN (no ring 2 in the image): those tests pass
        flat = (cb.min(0) >= FLAT_Z * c1) & (cb.max(0) <= c1 / FLAT_Z)  # hot: c1 > 0
        flat_dead = (cb.max(0) <= FLAT_Z * c1) & (cb.min(0) >= c1 / FLAT_Z)  # dead: c1 < 0
        hot = (c1 > t) & flat & ~(e2 <= t) & (~(c1 < SHARPNESS * e2) | (not sharp))
        dead = (-c1 > t) & flat_dead & ~(-e2 <= t) & (~(-c1 < SHARPNESS * -e2) | (not sharp)) & ~hot
    return hot, dead


def detect(blocks, mean, diffs, k_noise=K_NOISE, k_spread=K_SPREAD) -> Defects:
    """:class:`Defects` from the column statistics of :func:`column_means` (``(K, Y, X)`` block
    means and the ``(Y, X)`` mean) and the plane-difference sample of :func:`noise_sample`
    (shared by :func:`find_defects` and :func:`find_defects_lazy`)."""
    Y, X = mean.shape
    sigma = robust_stats(diffs)[1] / np.sqrt(2.0) if diffs.size else 0.0
    gy, gx = np.meshgrid(np.arange(0, Y, SAMPLE_STRIDE_PX), np.arange(0, X, SAMPLE_STRIDE_PX), indexing="ij")
    gy, gx = gy.ravel(), gx.ravel()
    spread = _mad_sd(mean[gy, gx] - _neighbour_median(mean, gy, gx, np.zeros((Y, X), bool)))
    t = max(k_noise * sigma, k_spread * spread)
    # candidates: the contrast against the median of the neighbours is at most that against
    # their minimum (maximum for dead columns)
    ring8 = np.ones((3, 3), bool)
    ring8[1, 1] = False
    mn = ndimage.minimum_filter(mean, footprint=ring8, mode="constant", cval=np.inf)
    mx = ndimage.maximum_filter(mean, footprint=ring8, mode="constant", cval=-np.inf)
    ys, xs = np.nonzero((mean - mn > t) | (mx - mean > t))
    mask = np.zeros((Y, X), bool)
    hot_all, dead_all = [], []
    for rnd in range(MAX_ROUNDS):
        if not ys.size:
            break
        hot, dead = _test(blocks, mean, ys, xs, mask, t, sharp=rnd == 0)
        new = hot | dead
        if not new.any():
            break
        hot_all.append(np.stack([ys[hot], xs[hot]], 1))
        dead_all.append(np.stack([ys[dead], xs[dead]], 1))
        mask[ys[new], xs[new]] = True
        yy, xx, valid = _ring(ys[new], xs[new], mask, 1)  # re-test their neighbours without them
        flat = np.unique((yy[valid] * X + xx[valid]).ravel())
        ys, xs = flat // X, flat % X

    def rows(parts):
        a = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
        a = a.astype(np.int64).reshape(-1, 2)
        return a[np.lexsort((a[:, 1], a[:, 0]))]

    return Defects(rows(hot_all), rows(dead_all), mask, float(sigma), float(t))


def find_defects(volume, k_noise=K_NOISE, k_spread=K_SPREAD, bad_z=None):
    """Hot and dead pixel columns of a ``(Z, Y, X)`` volume (raw counts, image px).

    Parameters
    ----------
    volume : (Z, Y, X) array, or (Z, Y, X, C): then one :class:`Defects` per channel (a list).
    k_noise, k_spread : thresholds (module docstring): per-voxel noise sd, and sd of the column
        contrast over the frame.
    bad_z : (Z,) bool planes to leave out (None: :func:`kt_stardist.normalize.bad_planes`).

    Returns
    -------
    :class:`Defects` (nothing flagged when fewer than :data:`MIN_PLANES` good planes, or an
    image under 3 × 3 px).
    """
    vol = np.asarray(volume)
    if vol.ndim == 4:
        return [find_defects(vol[..., c], k_noise, k_spread, None if bad_z is None else np.asarray(bad_z)[:, c])
                for c in range(vol.shape[-1])]
    if vol.ndim != 3:
        raise InputError(f"find_defects needs a (Z, Y, X[, C]) volume, got shape {vol.shape}")
    good = _good_planes(vol, bad_z)
    if len(good) < MIN_PLANES or min(vol.shape[1:]) < 3:
        return Defects.none(vol.shape[1:])
    blocks, mean = column_means(vol, good)
    return detect(blocks, mean, noise_sample(vol, good), k_noise, k_spread)


def find_defects_lazy(volume, channel=0, chunk_px=None, k_noise=K_NOISE, k_spread=K_SPREAD, bad_z=None):
    """:func:`find_defects` of channel ``channel`` of a lazy ``(Z, Y, X[, C])`` volume (dask
    array, h5py/zarr dataset), read in y-x tiles through full z: the same :class:`Defects`.

    Memory: one tile and the ``(Y, X)`` column statistics (two float64 images). ``chunk_px``:
    (z, y, x) px, only y and x are used (default :data:`kt_stardist.outofcore.CHUNK_PX`).
    """
    from kt_stardist import outofcore as O

    shape = tuple(int(s) for s in volume.shape)
    if len(shape) not in (3, 4):
        raise InputError(f"find_defects_lazy needs a (Z, Y, X[, C]) volume, got shape {shape}")
    if not (0 <= int(channel) < (shape[3] if len(shape) == 4 else 1)):
        raise InputError(f"find_defects_lazy: channel {channel} out of range for shape {shape}")
    ch = (int(channel),) if len(shape) == 4 else ()
    Z, Y, X = shape[:3]
    if bad_z is None:
        zero, sat = O.plane_defects(volume, chunk_px=chunk_px or O.CHUNK_PX)
        bad_z = (zero | sat)[:, int(channel)] if len(shape) == 4 else zero | sat
    good = np.nonzero(~np.asarray(bad_z, bool))[0]
    if len(good) < MIN_PLANES or min(Y, X) < 3:
        return Defects.none((Y, X))
    cp = chunk_px or O.CHUNK_PX
    blocks, mean = np.empty((min(Z_BLOCKS, len(good)), Y, X)), np.empty((Y, X))
    diffs = []
    for core, _, _ in O.chunks((Z, Y, X), (Z, cp[1], cp[2])):
        tile = O.read(volume, core + ch)
        blocks[(slice(None),) + core[1:]], mean[core[1:]] = column_means(tile, good)
        diffs.append(noise_sample(tile, good, core[1].start, core[2].start))
    return detect(blocks, mean, np.concatenate(diffs), k_noise, k_spread)


# --------------------------------------------------------------------------------------------
# repair
# --------------------------------------------------------------------------------------------

def repair_block(block, mask):
    """Repair, in place, the defective columns ``mask`` ((Y', X') bool) of a float ``(Z, Y', X')``
    block: each by the per-plane median of its non-defective neighbours in the smallest ring
    (chessboard, in the block) that has any. A block read with a halo of
    :attr:`Defects.halo_px` px (clipped at the frame's edge) gives the frame's values inside."""
    ys, xs = np.nonzero(mask)
    if not ys.size or mask.all():
        return block
    todo = np.arange(ys.size)
    d = 1
    while todo.size and d <= max(mask.shape):
        yy, xx, valid = _ring(ys[todo], xs[todo], mask, d)
        ok = valid.any(axis=1)
        if ok.any():
            i = todo[ok]
            block[:, ys[i], xs[i]] = _masked_median(block[:, yy[ok], xx[ok]], valid[ok])
        todo = todo[~ok]
        d += 1
    return block


def repair_defects(volume, defects):
    """A copy of ``volume`` with each defective column replaced, plane by plane, by the median
    of its non-defective 8 neighbours (float32).

    ``volume`` (Z, Y, X) with a :class:`Defects`, or (Z, Y, X, C) with one per channel (a list;
    None entries: nothing to repair there). A volume without defects is returned as it is (the
    same object, its own dtype); otherwise the result is a float32 copy (all channels).
    """
    vol = np.asarray(volume)
    one = isinstance(defects, Defects)
    ds = [defects] if one else list(defects) if defects is not None and vol.ndim == 4 else []
    if vol.ndim not in (3, 4) or (vol.ndim == 3) != one or (vol.ndim == 4 and len(ds) != vol.shape[-1]):
        raise InputError(f"repair_defects needs a (Z, Y, X) volume with a Defects, or (Z, Y, X, C) with one "
                         f"per channel; got shape {vol.shape} and {type(defects).__name__}")
    for d in ds:
        if d is not None and d.mask.shape != vol.shape[1:3]:
            raise InputError(f"repair_defects: defect mask {d.mask.shape} does not fit the volume's y-x "
                             f"{vol.shape[1:3]}")
    if not any(d is not None and len(d) for d in ds):
        return volume
    out = np.array(vol, np.float32, copy=True)
    if vol.ndim == 3:
        return repair_block(out, defects.mask)
    for c, d in enumerate(ds):
        if d is not None and len(d):
            view = np.moveaxis(out, -1, 0)[c]  # (Z, Y, X) view of channel c
            repair_block(view, d.mask)
    return out
