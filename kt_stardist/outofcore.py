"""Statistics of volumes that do not fit in memory, read chunk by chunk, exactly as in memory.

The out-of-core prediction (:func:`kt_stardist.predict.detect` with a frame larger than
``DetectSettings.max_in_memory_gb``) needs the same normalisation and screen as the in-memory flow. Here the
whole-volume steps of :mod:`kt_stardist.normalize` are redone on chunks read one at a time:

* filters (Gaussian, DoG) run per chunk with a halo covering the kernel radius, clipped at the
  volume (or region) edge, so every output voxel sees exactly the input it sees in memory;
* medians and percentiles are *exact*: order statistics are selected in two passes over the
  float32 values (a 65536-bin histogram of the upper 16 bits of an order-preserving integer key,
  then of the lower 16 bits inside the bucket holding the rank), and interpolated as
  :func:`numpy.percentile` (``method="linear"``) and :func:`numpy.median` do.

Memory: one chunk (with halo) and a few 65536-bin histograms; nothing proportional to the volume
except the (1, 4, 4)-binned first channel of :func:`signal_region` (1/16 of the volume).

Camera defects (:mod:`kt_stardist.defects`) are repaired on read (:class:`RepairedView`, a halo
of a few px), and planes that are all zero or saturated are left out of the statistics, both as
in memory.

Volumes are ``(Z, Y, X, C)`` array-likes (dask arrays, h5py/zarr datasets, memmaps); axis order
z, y, x, channel last.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage

from kt_stardist import defects as D
from kt_stardist import normalize as N
from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.normalize import PMAX, PMIN

#: chunk (core) size read at a time, px (z, y, x)
CHUNK_PX = (64, 256, 256)


def is_lazy(a) -> bool:
    """True for dask arrays (anything with ``compute``)."""
    return hasattr(a, "compute") and hasattr(a, "shape")


def as_lazy(volume, chunk_px=CHUNK_PX):
    """A dask array over ``volume`` (dask arrays are returned as they are; other array-likes,
    e.g. h5py/zarr datasets or memmaps, are wrapped without reading or copying them:
    :func:`kt_stardist.io.images.dask_view`)."""
    from kt_stardist.io.images import dask_view

    if is_lazy(volume):
        return volume
    chunks = tuple(int(c) for c in chunk_px) + (-1,) * (len(volume.shape) - 3)
    return dask_view(volume, chunks)


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
# robust statistics (kt_stardist.normalize.robust_stats) of streamed values
# --------------------------------------------------------------------------------------------

class _Streamed:
    """The order statistics :func:`kt_stardist.normalize._robust` asks for, of the float32 values
    yielded by ``stream()`` (called once per pass): the twin of ``normalize._Values``."""

    def __init__(self, stream):
        self.stream = stream
        lo = hi = None
        n = n_lo = 0
        for v in stream():
            if not v.size:
                continue
            a, b = v.min(), v.max()
            if lo is None or a < lo:
                lo, n_lo = a, 0
            if a == lo:
                n_lo += int(np.count_nonzero(v == lo))
            hi = b if hi is None or b > hi else hi
            n += v.size
        self.n, self._ext = n, (lo, n_lo, hi)

    def extremes(self):
        return self._ext

    def median(self):
        return median(self.stream)

    def median_abs(self, c):
        return median(lambda: (np.abs(v - c) for v in self.stream()))

    def percentile(self, q):
        return percentile(self.stream, q)

    def beyond(self, c, above=True):
        def part():
            for v in self.stream():
                yield v[v > c] if above else v[v < c]
        n = sum(w.size for w in part())
        return n, (median(part) if n else None)


def robust_stats(stream):
    """:func:`kt_stardist.normalize.robust_stats` of the float32 values yielded by ``stream()``
    (called several times), exactly; raises InputError when there are none."""
    from kt_stardist.errors import InputError

    s = _Streamed(stream)
    if not s.n:
        raise InputError("robust_stats: no values")
    return N._robust(s)


# --------------------------------------------------------------------------------------------
# bad planes, camera-defect repair on read
# --------------------------------------------------------------------------------------------

def plane_defects(volume, chunk_px=CHUNK_PX):
    """:func:`kt_stardist.normalize.plane_defects` of a lazy ``(Z, Y, X[, C])`` volume: ``(zero,
    saturated)`` bool, (Z, C) (or (Z,) for 3 axes), from per-plane minima and maxima by chunks."""
    shape = tuple(int(s) for s in volume.shape)
    nc = shape[3] if len(shape) == 4 else 1
    pmin = np.full((shape[0], nc), np.inf)
    pmax = np.full((shape[0], nc), -np.inf)
    for core, _, _ in chunks(shape[:3], chunk_px):
        v = read(volume, core + ((slice(None),) if len(shape) == 4 else ()))
        v = v if v.ndim == 4 else v[..., None]
        z = core[0]
        pmin[z] = np.minimum(pmin[z], v.min(axis=(1, 2)))
        pmax[z] = np.maximum(pmax[z], v.max(axis=(1, 2)))
    zs = [N.classify_planes(pmin[:, c], pmax[:, c], volume.dtype) for c in range(nc)]
    zero, sat = np.stack([a for a, _ in zs], -1), np.stack([b for _, b in zs], -1)
    return (zero, sat) if len(shape) == 4 else (zero[:, 0], sat[:, 0])


def _index(key, n):
    """(start, stop, step, squeeze) of an int or slice ``key`` on an axis of length ``n``."""
    if isinstance(key, (int, np.integer)):
        i = int(key) + n if key < 0 else int(key)
        if not 0 <= i < n:
            raise IndexError(f"index {key} out of range for an axis of {n}")
        return i, i + 1, 1, True
    if isinstance(key, slice):
        a, b, s = key.indices(n)
        if s < 1:
            raise IndexError("only positive slice steps")
        return a, max(a, b), s, False
    raise IndexError(f"only ints and slices index a lazy view, not {type(key).__name__}")


def _expand(key, ndim):
    key = key if isinstance(key, tuple) else (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (slice(None),) * (ndim - len(key) + 1) + key[i + 1:]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a {ndim}-d view")
    return key + (slice(None),) * (ndim - len(key))


def _has_defects(defects):
    from kt_stardist.defects import Defects

    ds = [defects] if isinstance(defects, Defects) else list(defects or [])
    return any(d is not None and len(d) for d in ds)


class RepairedView:
    """A lazy ``(Z, Y, X[, C])`` volume with its camera-defect columns repaired on read: each
    block is read with a lateral halo of :attr:`kt_stardist.defects.Defects.halo_px` px and
    repaired (:func:`kt_stardist.defects.repair_block`), so it equals the same region of
    :func:`kt_stardist.defects.repair_defects` of the whole volume (float32 when there is any
    defect, as there). ``defects``: one :class:`~kt_stardist.defects.Defects` per channel (None
    entries: none), or one Defects for a 3-axis volume.

    Indexing: ints and slices (positive steps) on z, y, x (and the channel); ``view[..., c]`` is a
    lazy single-channel view. ``compute()`` reads the whole volume.
    """

    def __init__(self, volume, defects, float32=None):
        from kt_stardist.defects import Defects

        self.volume = volume if is_lazy(volume) or isinstance(volume, np.ndarray) else as_lazy(volume)
        self.shape = tuple(int(s) for s in volume.shape)
        self.ndim = len(self.shape)
        ds = [defects] if isinstance(defects, Defects) else list(defects or [])
        nc = self.shape[3] if self.ndim == 4 else 1
        if self.ndim not in (3, 4) or len(ds) not in (0, nc):
            raise IndexError(f"RepairedView: {len(ds)} Defects for a volume of shape {self.shape}")
        self.defects = ds or [None] * nc
        self.float32 = _has_defects(ds) if float32 is None else float32
        self.dtype = np.dtype(np.float32) if self.float32 else np.dtype(volume.dtype)
        self.halo = max([d.halo_px for d in self.defects if d is not None and len(d)] or [0])

    def compute(self, **kwargs):
        return self[(slice(None),) * self.ndim]

    def __getitem__(self, key):
        key = _expand(key, self.ndim)
        if self.ndim == 4 and all(k == slice(None) for k in key[:3]) and isinstance(key[3], (int, np.integer)):
            c = int(key[3])
            return RepairedView(self.volume[..., c], [self.defects[c]], float32=self.float32)
        (za, zb, zs, zq), (ya, yb, ys, yq), (xa, xb, xs, xq) = (_index(k, n) for k, n in zip(key[:3], self.shape))
        h = self.halo
        ry, rx = (max(0, ya - h), min(self.shape[1], yb + h)), (max(0, xa - h), min(self.shape[2], xb + h))
        rest = (slice(None),) if self.ndim == 4 else ()
        block = read(self.volume, (slice(za, zb, zs), slice(*ry), slice(*rx)) + rest)
        if self.float32:
            block = np.array(block, np.float32, copy=True)
            b4 = block if self.ndim == 4 else block[..., None]
            for c, d in enumerate(self.defects):
                if d is not None and len(d) and block.size:
                    D.repair_block(np.moveaxis(b4, -1, 0)[c], d.mask[slice(*ry), slice(*rx)])
        out = block[:, ya - ry[0]:yb - ry[0]:ys, xa - rx[0]:xb - rx[0]:xs]
        if self.ndim == 4:
            out = out[..., key[3]]
        sq = tuple(ax for ax, q in enumerate((zq, yq, xq)) if q)
        return np.squeeze(out, axis=sq) if sq else out


# --------------------------------------------------------------------------------------------
# normalisation (kt_stardist.normalize) of a lazy volume
# --------------------------------------------------------------------------------------------

def signal_region(volume, voxel_size_um=VOXEL_SIZE_UM, margin_um=4.0, bin_px=(1, 4, 4), k_mad=8.0,
                  chunk_px=CHUNK_PX, bad_z=None):
    """:func:`kt_stardist.normalize.signal_region` of channel 0 of a lazy ``(Z, Y, X, C)`` volume.

    The (1, 4, 4)-binned channel is built chunk by chunk (chunks aligned to the bins) and held;
    the rest is the in-memory code on it. ``bad_z``: (Z,) bool planes left out (None: those of
    :func:`plane_defects`, channel 0).
    """
    shape = tuple(int(s) for s in volume.shape[:3])
    if bad_z is None:
        zero, sat = plane_defects(volume, chunk_px)
        bad_z = (zero | sat)[:, 0]
    bins = tuple(max(1, min(int(b), s)) for b, s in zip(bin_px, shape))
    crop = tuple(s - s % b for s, b in zip(shape, bins))
    step = tuple(max(b, (int(c) // b) * b) for c, b in zip(chunk_px, bins))
    binned = np.empty(tuple(c // b for c, b in zip(crop, bins)), np.float32)
    for core, _, _ in chunks(crop, step):
        out = tuple(slice(c.start // b, c.stop // b) for c, b in zip(core, bins))
        binned[out] = N.bin_mean(read(volume, core + (0,)), bins)
    return N.region_from_binned(binned, bins, shape, voxel_size_um, margin_um, k_mad, bad_z)


def intensity_range(volume, region, channel, pmin=PMIN, pmax=PMAX, k_mad=8.0, chunk_px=CHUNK_PX, bad_z=None):
    """:func:`kt_stardist.normalize.intensity_range` of ``volume[region + (channel,)]``, read by
    chunks (Gaussian σ = 1 px with a 4 px halo, clipped at the region's edge as in memory).
    ``bad_z``: (Z',) bool planes of the region left out (None: those of the region itself)."""
    shape = tuple(s.stop - s.start for s in region)
    origin = tuple(s.start for s in region)
    if bad_z is None:
        zero, sat = plane_defects(_Sub(volume, region, channel), chunk_px)
        bad_z = zero | sat
    good = N._good(bad_z, shape[0])
    sat = N.saturation_level(volume.dtype)

    def raw():
        for core, _, _ in chunks(shape, chunk_px):
            v = read(volume, _offset(core, origin) + (channel,)).astype(np.float32, copy=False)
            yield v[good[core[0]]]

    vmax = lambda: max(float(v.max()) for v in raw() if v.size)  # noqa: E731
    exclude = sat is not None and vmax() >= sat
    if exclude and not any(np.count_nonzero(v < sat) for v in raw()):
        exclude = False

    def kept():
        for v in raw():
            yield v[v < sat] if exclude else v

    lo = float(percentile(kept, pmin))

    def pairs():  # (raw core, smoothed core) of the good planes
        for core, rd, inner in chunks(shape, chunk_px, depth=(4, 4, 4)):  # truncate 4 × σ 1
            v = read(volume, _offset(rd, origin) + (channel,)).astype(np.float32, copy=True)
            v[~good[rd[0]]] = lo
            g = good[core[0]]
            yield v[inner][g], ndimage.gaussian_filter(v, 1.0)[inner][g]

    centre, sd = robust_stats(lambda: (s for _, s in pairs()))
    sd = N.bright_sd(sd, _Streamed(kept))
    thr = N.bright_threshold(centre, sd, k_mad, _top(((s[r < sat] if exclude else s) for r, s in pairs()),
                                                       N.MIN_BRIGHT))

    def bright():
        for r, s in pairs():
            sel = s > thr
            if exclude:
                sel &= r < sat
            yield r[sel]

    hi = percentile(bright, pmax, min_count=20)
    if hi is None:  # too few bright voxels: those above low (zero-clipped: the non-zero)
        def above():
            for v in kept():
                yield v[v > lo]
        hi = percentile(above, pmax)
        hi = percentile(kept, pmax) if hi is None else hi
    return lo, N._sane_high(lo, float(hi), vmax)


def _top(values, k):
    """The ``k``-th largest of the values of an iterable of arrays (None: fewer than ``k``), as
    ``np.partition`` of them all would give."""
    top = np.zeros(0, np.float32)
    for v in values:
        v = np.concatenate([top, np.asarray(v, np.float32).ravel()])
        top = v if v.size <= k else np.partition(v, v.size - k)[v.size - k:]
    return float(top.min()) if top.size >= k else None


class _Sub:
    """``volume[region + (channel,)]`` as a lazy (Z', Y', X') array-like (nothing read)."""

    def __init__(self, volume, region, channel):
        self.volume, self.region, self.channel = volume, region, channel
        self.shape = tuple(s.stop - s.start for s in region)
        self.dtype = volume.dtype

    def __getitem__(self, key):
        return read(self.volume, _offset(key, tuple(s.start for s in self.region)) + (self.channel,))


class Range(tuple):
    """``(low, high)`` of one channel (a plain 2-tuple: equal to one, unpacks as one) that also
    carries ``bad_z``, the channel's (Z,) bool planes left out of the statistics, which
    :class:`NormalizedView` sets to 0 as :func:`kt_stardist.normalize.normalize` does."""

    def __new__(cls, lo, hi, bad_z=None):
        r = super().__new__(cls, (lo, hi))
        r.bad_z = None if bad_z is None else np.asarray(bad_z, bool)
        return r


def normalization(volume, voxel_size_um=VOXEL_SIZE_UM, pmin=PMIN, pmax=PMAX, k_mad=8.0, chunk_px=CHUNK_PX,
                  defects=None):
    """Per-channel ``(low, high)`` (:class:`Range`) of :func:`kt_stardist.normalize.normalize`
    for a lazy ``(Z, Y, X, C)`` volume (statistics in its signal region), exactly as in memory.

    ``defects``: one :class:`kt_stardist.defects.Defects` per channel (or None): the statistics
    are then those of the repaired volume (:class:`RepairedView`), equal to
    ``normalize(repair_defects(volume, defects))``.
    """
    src = RepairedView(volume, defects) if _has_defects(defects) else volume
    zero, sat = plane_defects(src, chunk_px)
    bad = zero | sat
    region = signal_region(src, voxel_size_um=voxel_size_um, k_mad=k_mad, chunk_px=chunk_px, bad_z=bad[:, 0])
    return [Range(*intensity_range(src, region, c, pmin, pmax, k_mad, chunk_px, bad_z=bad[region[0], c]),
                  bad_z=bad[:, c]) for c in range(volume.shape[-1])]


class NormalizedView:
    """``(x - low) / (high - low)`` per channel, float32, of a lazy or in-memory ``(Z, Y, X, C)``
    volume, computed for each slice read (as :func:`kt_stardist.normalize.normalize` does for the
    whole volume, value for value).

    ``ranges``: per channel ``(low, high)`` (:func:`normalization`; the planes a :class:`Range`
    marks bad read as 0). ``defects``: one :class:`kt_stardist.defects.Defects` per channel (or
    None): each block is repaired on read before it is normalised (:class:`RepairedView`).

    Indexing: ``view[z, y, x]`` (ints and slices) gives ``(Z', Y', X', C)``; ``view[..., c]`` one
    whole channel ``(Z, Y, X)``; ``np.asarray(view)`` the whole normalised volume. An in-memory
    frame is held this way (:func:`kt_stardist.predict.preprocess.prepare`) so that no float32
    copy of it stays alive while the network runs: the screen reads the spot channel once, each
    network block is normalised on read.
    """

    def __init__(self, volume, ranges, eps=1e-20, defects=None):
        self.volume, self.ranges, self.eps = volume, list(ranges), eps
        self.source = RepairedView(volume, defects) if _has_defects(defects) else volume
        self.shape = tuple(int(s) for s in volume.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.float32)

    @classmethod
    def of(cls, volume, info, eps=1e-20):
        """The view of an in-memory ``(Z, Y, X, C)`` volume with the statistics ``info``
        (:func:`kt_stardist.normalize.normalization_info`): equal to ``normalize(volume)``."""
        bad = np.asarray(info.zero, bool) | np.asarray(info.saturated, bool)
        return cls(volume, [Range(lo, hi, bad_z=bad[:, c]) for c, (lo, hi) in enumerate(info.ranges)], eps)

    def __array__(self, dtype=None, copy=None):
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, slices):
        slices = tuple(slices) if isinstance(slices, tuple) else (slices,)
        if len(slices) == 2 and slices[0] is Ellipsis and isinstance(slices[1], (int, np.integer)):
            c = int(slices[1]) % self.shape[3]
            return self._normalized((slice(None),) * 3, [c])[..., 0]
        if len(slices) > 3 or any(s is Ellipsis for s in slices):
            raise IndexError("NormalizedView: index z, y, x, or [..., channel]")
        return self._normalized(slices + (slice(None),) * (3 - len(slices)), range(self.shape[3]))

    def _normalized(self, slices, channels):
        """Channels ``channels`` (all, or one) of ``volume[slices]`` normalised:
        ``(Z', Y', X', len(channels))``."""
        channels = list(channels)
        if len(channels) == self.shape[3]:
            raw = read(self.source, slices + (slice(None),))
        else:  # one channel
            raw = read(self.source, slices + (channels[0],))[..., None]
        out = np.empty(raw.shape, np.float32)
        zi = np.arange(self.shape[0])[slices[0]]
        for k, c in enumerate(channels):
            lo, hi = r = self.ranges[c]
            N.apply_range(raw[..., k], lo, hi, self.eps, out=out[..., k])
            bad = getattr(r, "bad_z", None)
            if bad is not None and bad[zi].any():
                if np.ndim(zi):
                    out[bad[zi], ..., k] = 0.0
                else:
                    out[..., k] = 0.0
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
