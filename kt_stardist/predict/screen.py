"""Where can spots be? A conservative difference-of-Gaussians screen of the normalised spot channel.

It only decides which blocks reach the network (:mod:`kt_stardist.predict.blocks`), so it errs on
the side of keeping. The DoG (spot-sized minus 4× larger Gaussian) runs on ``bin_yx`` × ``bin_yx``
y-x means; a voxel is a candidate when the DoG exceeds ``max(k × robust noise, floor)``
(normalised units; robust noise: :func:`_screen_threshold`). Frames too large for memory are screened chunk by chunk with a halo
(:func:`screen_lazy`, equal to the in-memory screen). Axis order z, y, x; sizes µm or px as named.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.settings import ScreenSettings

__all__ = ["screen", "screen_lazy", "dog"]


def screen(volume, voxel_size_um=VOXEL_SIZE_UM, settings: ScreenSettings = ScreenSettings(), sparse=False):
    """Boolean ``(Z, Y, X)`` mask of where spots can be in the normalised spot channel
    ``volume`` (module docstring); with ``sparse``, the same mask as a
    :class:`kt_stardist.outofcore.SparseMask` (what :func:`~kt_stardist.predict.blocks.plan_blocks`
    needs, without a dense full-size mask).

    The DoG is thresholded on its ``bin_yx`` × ``bin_yx`` grid and the bins above the threshold
    are repeated back to ``volume``'s px: the same mask as thresholding :func:`dog` (whose values
    are those bins repeated), and the noise sample is read at the same voxels.
    """
    from kt_stardist.outofcore import SparseMask

    s = settings
    v = np.asarray(volume, np.float32)
    shape = v.shape
    b = s.bin_yx
    d = _dog_binned(v, voxel_size_um, s.spot_sigma_um, b)
    del v
    # the noise sample of the full-size DoG (_noise_sample), read off the bins those voxels fall in
    zs, ys, xs = (np.arange(n)[sl] for n, sl in zip(shape, _noise_sample(shape)))
    sub = d[np.ix_(zs, ys // b, xs // b)]
    hit = d > _screen_threshold(sub, s.k, s.floor)
    del d
    if not sparse:
        return np.repeat(np.repeat(hit, b, axis=1), b, axis=2)[:, : shape[1], : shape[2]]
    return SparseMask(shape, _unbin_coords(np.argwhere(hit), b, shape))


def _unbin_coords(coords, b, shape):
    """The ``(N, 3)`` px coordinates (z, y, x; lexicographic order, inside ``shape``) of the voxels
    covered by the y-x bins ``coords`` (``b`` × ``b`` px each)."""
    if b == 1 or len(coords) == 0:
        return coords
    off = np.array([(0, i, j) for i in range(b) for j in range(b)])
    c = (coords * np.array([1, b, b]))[:, None, :] + off[None]
    c = c.reshape(-1, 3)
    c = c[(c[:, 1] < shape[1]) & (c[:, 2] < shape[2])]
    return c[np.lexsort((c[:, 2], c[:, 1], c[:, 0]))]


def dog(v, voxel_size_um, spot_sigma_um, b=2):
    """DoG of ``v`` (Z, Y, X) computed on b × b y-x means (edges repeated to whole bins) and
    repeated back to ``v``'s shape; a chunk whose y-x start is a multiple of b, read with the
    halo of :func:`_dog_radius`, gives the whole volume's values."""
    Z, Y, X = v.shape
    out = _dog_binned(v, voxel_size_um, spot_sigma_um, b)
    if b > 1:
        out = np.repeat(np.repeat(out, b, axis=1), b, axis=2)[:, :Y, :X]
    return out


#: volumes of more voxels than this are screened in two halves (along y) on two threads
THREAD_VOXELS = 8_000_000


def _dog_binned(v, voxel_size_um, spot_sigma_um, b=2):
    """The DoG of :func:`dog` on its b × b y-x bins: ``(Z, ceil(Y / b), ceil(X / b))`` float32.

    A volume of more than :data:`THREAD_VOXELS` voxels is cut in two along y, each half read
    with a halo of the filters' radius (:func:`_dog_radius`) and filtered on its own thread
    (scipy's filters release the GIL): the same values as in one piece, bit for bit (each
    output bin sums the same inputs in the same order), in about half the time on 2 cores."""
    Yb = -(-v.shape[1] // b)
    halo = _dog_radius(voxel_size_um, spot_sigma_um, b)[1] // b  # bins
    if v.size <= THREAD_VOXELS or Yb < 4 * halo:
        return _dog_piece(v, voxel_size_um, spot_sigma_um, b)
    from concurrent.futures import ThreadPoolExecutor

    cut = Yb // 2
    Xb = -(-v.shape[2] // b)
    pieces = [(0, cut, 0, min(Yb, cut + halo)), (cut, Yb, max(0, cut - halo), Yb)]  # core and read, bins
    out = np.empty((v.shape[0], Yb, Xb), np.float32)
    # every large array is allocated here, not on the threads: memory a thread allocates stays
    # in its own malloc arena after it is freed (+0.3 GB resident on a 61 x 1000 x 1000 frame)
    bufs = [tuple(np.empty((v.shape[0], re - ra, Xb), np.float32) for _ in range(2)) for _, _, ra, re in pieces]

    def run(k):
        a, e, ra, re = pieces[k]
        d = _dog_piece(v[:, ra * b:re * b], voxel_size_um, spot_sigma_um, b, bufs[k])  # a last slab pads as the whole
        out[:, a:e] = d[:, a - ra:e - ra]

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(run, range(2)))
    return out


def _dog_piece(v, voxel_size_um, spot_sigma_um, b=2, buf=None):
    """:func:`_dog_binned` in one piece (or one slab of it, starting on a whole y bin);
    ``buf``: two (Z, Yb, Xb) float32 arrays to work in (the result is the second)."""
    Z, Y, X = v.shape
    shape = (Z, -(-Y // b), -(-X // b))
    buf = (np.empty(shape, np.float32), np.empty(shape, np.float32)) if buf is None else buf
    if b > 1:
        if Y % b or X % b:
            v = np.pad(v, ((0, 0), (0, -Y % b), (0, -X % b)), mode="edge")
        binned = buf[1]
        binned[...] = 0
        for i in range(b):
            for j in range(b):
                binned += v[:, i::b, j::b]
        v = np.divide(binned, b * b, out=binned)
    s1 = np.array(spot_sigma_um) / (np.array(voxel_size_um) * (1, b, b))
    small = ndimage.gaussian_filter(v, s1, mode="nearest", output=buf[0])
    out = ndimage.gaussian_filter(small, 4 * s1, mode="nearest", output=buf[1])
    np.subtract(small, out, out=out)
    return out


def _dog_radius(voxel_size_um, spot_sigma_um, b=2):
    """Halo (px, z, y, x; y-x multiples of b) that makes a per-chunk :func:`dog` equal to the
    whole-volume one."""
    s1 = np.array(spot_sigma_um) / (np.array(voxel_size_um) * (1, b, b))
    r = [int(4.0 * a + 0.5) + int(4.0 * 4 * a + 0.5) for a in s1]  # scipy's truncate=4 radii, in bins
    return (r[0], b * r[1], b * r[2])


def _noise_sample(shape):
    """Strided subsample (slices) the screen's noise level is estimated on."""
    return (slice(None, None, max(1, shape[0] // 16)), slice(None, None, 4), slice(None, None, 4))


def _screen_threshold(sub, k, floor):
    """``median + max(k × sd, floor)`` of a DoG sample, sd = 1.4826 × MAD. When most of the
    sample ties at the median (empty or zero-clipped regions, where the DoG is exactly 0), the
    MAD is taken over the other values: the noise where there is signal. The screen errs on the
    side of keeping, so the upper tail (spots) is never read as noise."""
    from kt_stardist.normalize import SD_PER_MAD

    sub = np.asarray(sub, np.float32).ravel()
    med = float(np.median(sub))
    vals = sub
    tied = sub == med
    if np.count_nonzero(tied) > 0.5 * sub.size and not tied.all():
        vals = sub[~tied]
    sd = SD_PER_MAD * float(np.median(np.abs(vals - med)))
    return med + max(k * sd, floor)


def screen_lazy(x, voxel_size_um=VOXEL_SIZE_UM, settings: ScreenSettings = ScreenSettings(), chunk_px=None,
                channel=0):
    """:func:`screen` of channel ``channel`` (the spot channel) of a normalised ``(Z, Y, X, C)`` array-like read by chunks
    (DoG with a halo of the kernels' radius: equal to the in-memory screen), as a
    :class:`kt_stardist.outofcore.SparseMask`. Two passes: the noise subsample, then the
    candidates; memory: one chunk, the subsample (≤ 1/16 of the volume) and the candidates."""
    from kt_stardist import outofcore as O

    shape = tuple(int(s) for s in x.shape[:3])
    chunk_px = O.CHUNK_PX if chunk_px is None else chunk_px
    s = settings
    b = s.bin_yx  # chunks start on whole y-x bins, so their DoG equals the whole volume's
    chunk_px = (chunk_px[0], -(-chunk_px[1] // b) * b, -(-chunk_px[2] // b) * b)
    depth = _dog_radius(voxel_size_um, s.spot_sigma_um, b)
    step = [sl.step for sl in _noise_sample(shape)]

    def dogs():
        for core, rd, inner in O.chunks(shape, chunk_px, depth):
            yield core, dog(x[rd][..., channel], voxel_size_um, s.spot_sigma_um, b)[inner]

    sub = []
    for core, d in dogs():
        first = tuple(slice((-c.start) % st, None, st) for c, st in zip(core, step))
        sub.append(d[first].ravel())
    thr = _screen_threshold(np.concatenate(sub), s.k, s.floor)
    del sub
    coords = [np.argwhere(d > thr) + np.array([c.start for c in core]) for core, d in dogs()]
    return O.SparseMask(shape, np.concatenate(coords) if coords else np.zeros((0, 3), int))
