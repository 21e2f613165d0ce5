"""Statistics of volumes that do not fit in memory, read chunk by chunk, exactly as in memory.

The out-of-core prediction (:func:`kt_stardist.predict.predict_volume` with a frame larger than
``max_in_memory_gb``) needs the same normalisation and screen as the in-memory flow. Here the
whole-volume steps of :mod:`kt_stardist.normalize` are redone on chunks read one at a time:

* filters (Gaussian, DoG) run per chunk with a halo covering the kernel radius, clipped at the
  volume (or region) edge, so every output voxel sees exactly the input it sees in memory;
* medians and percentiles are *exact*: order statistics are selected in two passes over the
  float32 values (a 65536-bin histogram of the upper 16 bits of an order-preserving integer key,
  then of the lower 16 bits inside the bucket holding the rank), and interpolated as
  :func:`numpy.percentile` (``method="linear"``) and :func:`numpy.median` do.

Memory: one chunk (with halo) and a few 65536-bin histograms; nothing proportional to the volume
except the (1, 4, 4)-binned first channel of :func:`signal_region` (1/16 of the volume).

Volumes are ``(Z, Y, X, C)`` array-likes (dask arrays, h5py/zarr datasets, memmaps); axis order
z, y, x, channel last.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.normalize import PMAX, PMIN, region_from_binned

#: chunk (core) size read at a time, px (z, y, x)
CHUNK_PX = (64, 256, 256)


def is_lazy(a) -> bool:
    """True for dask arrays (anything with ``compute``)."""
    return hasattr(a, "compute") and hasattr(a, "shape")


def as_lazy(volume, chunk_px=CHUNK_PX):
    """A dask array over ``volume`` (dask arrays are returned as they are; other array-likes,
    e.g. h5py/zarr datasets or memmaps, are wrapped without reading them)."""
    import dask.array as da

    if is_lazy(volume):
        return volume
    chunks = tuple(int(c) for c in chunk_px) + (-1,) * (len(volume.shape) - 3)
    return da.from_array(volume, chunks=chunks, asarray=True)


def read(volume, slices) -> np.ndarray:
    """``volume[slices]`` as a numpy array (dask: computed here, single-threaded)."""
    part = volume[tuple(slices)]
    if is_lazy(part):
        part = part.compute(scheduler="synchronous")
    return np.asarray(part)


def chunks(shape, chunk_px=CHUNK_PX, depth=(0, 0, 0)):
    """Cover a ``(Z, Y, X)`` shape with chunks: yields ``(core, read, inner)`` where ``core`` and
    ``read`` (core + ``depth`` px halo, clipped at the edges) are slices into the volume and
    ``inner`` the core's slices inside the read region."""
    axes = []
    for n, c, d in zip(shape, chunk_px, depth):
        c = max(1, int(c))
        axes.append([(a, min(a + c, n), max(0, a - d), min(n, a + c + d)) for a in range(0, n, c)])
    for parts in itertools.product(*axes):
        core = tuple(slice(a, b) for a, b, _, _ in parts)
        rd = tuple(slice(ra, rb) for _, _, ra, rb in parts)
        inner = tuple(slice(a - ra, b - ra) for a, b, ra, _ in parts)
        yield core, rd, inner


def _offset(slices, origin):
    return tuple(slice(o + s.start, o + s.stop) for s, o in zip(slices, origin))


# --------------------------------------------------------------------------------------------
# exact order statistics of streamed float32 values
# --------------------------------------------------------------------------------------------

def _keys(v):
    """Order-preserving uint32 keys of float32 values."""
    u = np.ascontiguousarray(v, np.float32).ravel().view(np.uint32)
    return np.where(u >> 31, ~u, u | np.uint32(0x80000000))


def _value(key):
    k = np.uint32(key)
    u = k & np.uint32(0x7FFFFFFF) if k >> 31 else ~k
    return np.array([u], np.uint32).view(np.float32)[0]


def order_statistics(stream, ranks):
    """Exact order statistics of the float32 values yielded by ``stream()`` (called twice).

    ``ranks(n)`` gives the 0-based ranks wanted once the count ``n`` is known. Returns
    ``(n, {rank: np.float32})``.
    """
    hist = np.zeros(1 << 16, np.int64)
    for v in stream():
        hist += np.bincount(_keys(v) >> 16, minlength=1 << 16)
    cum = np.cumsum(hist)
    n = int(cum[-1])
    want = sorted(set(int(r) for r in ranks(n))) if n else []
    top = {r: int(np.searchsorted(cum, r, side="right")) for r in want}
    low = {b: np.zeros(1 << 16, np.int64) for b in set(top.values())}
    if low:
        for v in stream():
            k = _keys(v)
            hi = k >> 16
            for b, h in low.items():
                h += np.bincount(k[hi == b] & np.uint32(0xFFFF), minlength=1 << 16)
    out = {}
    for r, b in top.items():
        within = r - (int(cum[b - 1]) if b else 0)
        lo = int(np.searchsorted(np.cumsum(low[b]), within, side="right"))
        out[r] = _value((b << 16) | lo)
    return n, out


def percentile(stream, q, min_count=1):
    """``np.percentile(values, q)`` (linear) of streamed float32 values, exactly; np.float32.
    None when there are fewer than ``min_count`` values."""
    def ranks(n):
        if n < max(1, min_count):
            return []
        v = (n - 1) * (q / 100)
        i = int(np.floor(v))
        return [i, min(i + 1, n - 1)]

    n, st = order_statistics(stream, ranks)
    if n < max(1, min_count):
        return None
    v = (n - 1) * (q / 100)
    i = int(np.floor(v))
    a, b = st[i], st[min(i + 1, n - 1)]
    g = float(v - i)
    d = b - a
    return b - d * (1 - g) if g >= 0.5 else a + d * g


def median(stream):
    """``np.median(values)`` of streamed float32 values, exactly; np.float32."""
    n, st = order_statistics(stream, lambda n: [(n - 1) // 2, n // 2])
    a, b = st[(n - 1) // 2], st[n // 2]
    return a if n % 2 else np.float32((a + b) / np.float32(2))


# --------------------------------------------------------------------------------------------
# normalisation (kt_stardist.normalize) of a lazy volume
# --------------------------------------------------------------------------------------------

def signal_region(volume, voxel_size_um=VOXEL_SIZE_UM, margin_um=4.0, bin_px=(1, 4, 4), k_mad=8.0,
                  chunk_px=CHUNK_PX):
    """:func:`kt_stardist.normalize.signal_region` of channel 0 of a lazy ``(Z, Y, X, C)`` volume.

    The (1, 4, 4)-binned channel is built chunk by chunk (chunks aligned to the bins) and held;
    the rest is the in-memory code on it.
    """
    shape = tuple(int(s) for s in volume.shape[:3])
    bins = tuple(max(1, min(int(b), s)) for b, s in zip(bin_px, shape))
    crop = tuple(s - s % b for s, b in zip(shape, bins))
    step = tuple(max(b, (int(c) // b) * b) for c, b in zip(chunk_px, bins))
    binned = np.empty(tuple(c // b for c, b in zip(crop, bins)), np.float32)
    for core, _, _ in chunks(crop, step):
        v = read(volume, core + (0,)).astype(np.float32, copy=False)
        s = v.shape
        out = tuple(slice(c.start // b, c.stop // b) for c, b in zip(core, bins))
        binned[out] = v.reshape(s[0] // bins[0], bins[0], s[1] // bins[1], bins[1], s[2] // bins[2],
                                bins[2]).mean(axis=(1, 3, 5))
    return region_from_binned(binned, bins, shape, voxel_size_um, margin_um, k_mad)


def intensity_range(volume, region, channel, pmin=PMIN, pmax=PMAX, k_mad=8.0, chunk_px=CHUNK_PX):
    """:func:`kt_stardist.normalize.intensity_range` of ``volume[region + (channel,)]``, read by
    chunks (Gaussian σ = 1 px with a 4 px halo, clipped at the region's edge as in memory)."""
    shape = tuple(s.stop - s.start for s in region)
    origin = tuple(s.start for s in region)

    def raw():
        for core, _, _ in chunks(shape, chunk_px):
            yield read(volume, _offset(core, origin) + (channel,)).astype(np.float32, copy=False)

    def pairs():  # (raw core, smoothed core)
        for core, rd, inner in chunks(shape, chunk_px, depth=(4, 4, 4)):  # truncate 4 × σ 1
            v = read(volume, _offset(rd, origin) + (channel,)).astype(np.float32, copy=False)
            yield v[inner], ndimage.gaussian_filter(v, 1.0)[inner]

    lo = float(percentile(raw, pmin))
    med = median(lambda: (s for _, s in pairs()))
    mad = 1.4826 * median(lambda: (np.abs(s - med) for _, s in pairs()))
    thr = med + k_mad * max(mad, 1e-12)

    def bright():
        for r, s in pairs():
            yield r[s > thr]

    hi = percentile(bright, pmax, min_count=20)  # too few bright voxels: the whole region's
    hi = float(percentile(raw, pmax) if hi is None else hi)
    return lo, hi


def normalization(volume, voxel_size_um=VOXEL_SIZE_UM, pmin=PMIN, pmax=PMAX, k_mad=8.0, chunk_px=CHUNK_PX):
    """Per-channel ``(low, high)`` of :func:`kt_stardist.normalize.normalize` for a lazy
    ``(Z, Y, X, C)`` volume (statistics in its signal region), exactly as in memory."""
    region = signal_region(volume, voxel_size_um=voxel_size_um, k_mad=k_mad, chunk_px=chunk_px)
    return [intensity_range(volume, region, c, pmin, pmax, k_mad, chunk_px) for c in range(volume.shape[-1])]


class NormalizedView:
    """``(x - low) / (high - low)`` per channel, float32, of a lazy ``(Z, Y, X, C)`` volume,
    computed for each slice read (as :func:`kt_stardist.normalize.normalize` does in memory)."""

    def __init__(self, volume, ranges, eps=1e-20):
        self.volume, self.ranges, self.eps = volume, list(ranges), eps
        self.shape = tuple(int(s) for s in volume.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    def __getitem__(self, slices):
        slices = tuple(slices) if isinstance(slices, tuple) else (slices,)
        if len(slices) > 3:
            raise IndexError("NormalizedView: index z, y, x only")
        raw = read(self.volume, slices + (slice(None),))
        out = np.empty(raw.shape, np.float32)
        for c, (lo, hi) in enumerate(self.ranges):
            out[..., c] = (raw[..., c].astype(np.float32) - lo) / max(hi - lo, self.eps)
        return out


class SparseMask:
    """A boolean ``(Z, Y, X)`` mask held as the coordinates of its True voxels; slicing with
    3 slices gives the dense sub-mask."""

    def __init__(self, shape, coords):
        self.shape = tuple(int(s) for s in shape)
        self.coords = np.asarray(coords, np.int64).reshape(-1, 3)

    def __getitem__(self, slices):
        sl = [s.indices(n) for s, n in zip(slices, self.shape)]
        out = np.zeros(tuple(b - a for a, b, _ in sl), bool)
        c = self.coords
        keep = np.ones(len(c), bool)
        for ax, (a, b, _) in enumerate(sl):
            keep &= (c[:, ax] >= a) & (c[:, ax] < b)
        sel = c[keep] - np.array([a for a, _, _ in sl])
        out[tuple(sel.T)] = True
        return out

    def sum(self):
        return len(self.coords)
