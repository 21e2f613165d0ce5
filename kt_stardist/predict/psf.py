"""An empirical 3D PSF measured from the image's own spots: build it, evaluate it, store it.

The ``spline`` refinement (:mod:`kt_stardist.predict.refine`) fits every spot with this PSF
instead of a Gaussian, as localisation-microscopy tools do with experimental PSFs (SMAP; Li et
al. 2018, Nature Methods 15:367): an aberrated or asymmetric PSF is then the model, not a
bias.

What it is
    ``values`` (Z', Y', X'): the fraction of a spot's photons that falls in a voxel whose
    centre lies ``u = (index - centre index) / oversample`` px (z, y, x) from the spot's
    position, on a grid ``oversample`` times finer than the voxels, ±``half_px`` px; the
    voxel integration is part of it (it is averaged from voxel data). It sums to
    ``prod(oversample)`` (so one voxel grid's worth of samples sums to about 1): ``photons``
    fitted with it are the spot's photons inside that box. Between samples it is a cubic
    B-spline (:func:`scipy.ndimage.map_coordinates`, order 3, on
    :func:`scipy.ndimage.spline_filter` coefficients); its gradient comes from the spline's
    exact derivative at the samples, itself interpolated the same way (within a few % of the
    exact derivative). Zero outside the box.

As a spot model (:func:`kt_stardist.predict.mle.fit_spots`)
    Like the Gaussian's sigmas, each spot has a width per axis (its Gaussian-equivalent
    sigma, px): at the PSF's own (:meth:`SplinePsf.sigma_px`) the spot is the PSF, otherwise
    the PSF stretched along that axis (photons kept). Kinetochores differ in size; with one
    rigid PSF, spots of the Gaussian simulator (10 % size spread) were fitted 40 % worse.

Where a spot is
    An asymmetric PSF has no single centre: the position convention is the centre of mass of
    its core (the voxels at or above :data:`kt_stardist.optics.CORE_FRACTION` of the maximum),
    which is what the simulators report as a spot's position. Each build shifts the averaged
    PSF so that its core's centre of mass sits on the grid's centre.

How it is built (:func:`build_psf`)
    From the spots of one volume with a good fit (``ok``): those whose box lies inside the
    volume and with no other detection near (within the fit window: isolated), brightest
    first (at most ``max_spots``). Each one's photons minus its fitted neighbours (their
    current model) and its fitted background, divided by its fitted photons, is
    interpolated (cubic spline of its voxels) at its fitted position + the grid's offsets; the
    spots are averaged weighted by the inverse variance of their normalised peak, the
    median of the box's outer faces (left-over background) subtracted, the result re-centred,
    tapered to 0 over the box's outer px (cosine) and normalised. With fewer than
    ``min_spots`` qualifying spots there is no PSF (None and a one-line reason): the caller
    keeps the Gaussian.

Stored with the run
    ``kt-stardist predict --refine spline`` keeps each frame's PSF in ``<points>.psf.npz``
    (:func:`merge_frames`; :func:`load_psf` reads a frame back) and its summary, or why there
    is none, in the run record (``<points>.run.json``: ``psf``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["MIN_SPOTS", "SplinePsf", "build_psf", "frame_key", "gaussian_bias_px", "load_psf", "merge_frames"]

#: fewest isolated, well-fitted spots from which a PSF is built (fewer: Gaussian fits kept)
MIN_SPOTS = 15


def _node_derivative(coef, axis):
    """Values at the grid nodes of the derivative along ``axis`` (per grid step) of the cubic
    B-spline with coefficients ``coef``: [-1/2, 0, 1/2] along ``axis``, [1/6, 2/3, 1/6] along
    the others (zero coefficients outside)."""
    from scipy import ndimage

    out = ndimage.correlate1d(coef, [-0.5, 0.0, 0.5], axis=axis, mode="constant")
    for a in range(coef.ndim):
        if a != axis:
            out = ndimage.correlate1d(out, [1 / 6, 2 / 3, 1 / 6], axis=a, mode="constant")
    return out


class SplinePsf:
    """A measured PSF (module docstring): ``values`` (Z', Y', X'), ``oversample`` (3,) grid
    steps per voxel, ``voxel_size_um`` (z, y, x) µm of the volume it was measured in,
    ``n_spots`` spots averaged. A spot model for :func:`kt_stardist.predict.mle.fit_spots`
    whose shape parameters are each spot's width (kinetochores differ in size)."""

    def __init__(self, values, oversample, voxel_size_um, n_spots=0):
        from scipy import ndimage

        self.values = np.asarray(values, np.float64)
        self.oversample = np.asarray(oversample, np.int64).reshape(3)
        self.voxel_size_um = tuple(float(v) for v in voxel_size_um)
        self.n_spots = int(n_spots)
        shape = np.asarray(self.values.shape)
        if self.values.ndim != 3 or np.any(shape % 2 == 0):
            raise ValueError(f"PSF values must be 3D with odd sizes, got shape {tuple(shape)}")
        self.centre_index = (shape - 1) / 2.0
        self.half_px = self.centre_index / self.oversample
        pad = 3  # zero nodes around the box: the spline falls to 0 at its edge
        padded = np.pad(self.values, pad)
        coef = ndimage.spline_filter(padded, order=3, mode="grid-constant")
        self._origin = self.centre_index + pad
        # the value and its three derivatives (per px) as interpolating-spline coefficients
        derivs = [_node_derivative(coef, a) * self.oversample[a] for a in range(3)]
        self._coef = [coef] + [ndimage.spline_filter(d, order=3, mode="grid-constant") for d in derivs]
        self._sigma = self.sigma_px()

    def evaluate(self, offsets_px, derivatives=True):
        """The PSF at ``offsets_px`` (..., 3) px (voxel centre minus spot position, z, y, x):
        values (...) and, with ``derivatives``, the gradient (..., 3) per px (None without)."""
        from scipy import ndimage

        u = np.asarray(offsets_px, np.float64).reshape(-1, 3)
        shp = np.shape(offsets_px)[:-1]
        inside = np.flatnonzero(np.all(np.abs(u) <= self.half_px, axis=1))  # only these are computed
        idx = (u[inside] * self.oversample + self._origin).T

        def at(c):
            out = np.zeros(len(u))
            out[inside] = ndimage.map_coordinates(c, idx, order=3, prefilter=False, mode="grid-constant")
            return out

        val = at(self._coef[0]).reshape(shp)
        if not derivatives:
            return val, None
        grad = np.stack([at(c) for c in self._coef[1:]], -1).reshape(shp + (3,))
        return val, grad

    # the spot-model interface of kt_stardist.predict.mle.fit_spots: shape parameters are each
    # spot's width, as the Gaussian-equivalent sigma (z, y, x px): at sigma_px() the PSF itself,
    # otherwise the PSF stretched along each axis by sigma / sigma_px() (photons kept)
    n_shape = 3

    def unit(self, coords, centres, shape, derivatives=True):
        """Fraction of each spot's photons per voxel at ``coords`` (B, N, 3) px, spots at
        ``centres`` (B, K, 3) px of widths ``shape`` (B, K, 3) px (Gaussian-equivalent sigma):
        G (B, K, N) and, with ``derivatives``, dG/dcentre and dG/dwidth (B, K, N, 3)."""
        s = np.asarray(shape, np.float64)[:, :, None, :]                  # (B, K, 1, 3)
        r = self._sigma / s                                               # stretch per axis
        u = np.asarray(coords, np.float64)[:, None, :, :] - np.asarray(centres, np.float64)[:, :, None, :]
        jac = np.prod(r, axis=-1)                                         # (B, K, 1)
        v, grad = self.evaluate(u * r, derivatives)
        G = v * jac
        if not derivatives:
            return G, None, None
        d_u = grad * r * jac[..., None]                                   # dG/du (B, K, N, 3)
        d_s = -(u * d_u + G[..., None]) / s
        return G, -d_u, d_s

    def peak_fraction(self, shape):
        """Fraction of a voxel-centred spot's photons in its central voxel, (B, K), for widths
        ``shape`` (B, K, 3) px."""
        return float(self.evaluate(np.zeros(3), False)[0]) * np.prod(self._sigma / np.asarray(shape), axis=-1)

    def widths(self, shape):
        """The spots' widths (B, K, 3) px (their shape parameters)."""
        return shape

    def sigma_px(self):
        """(z, y, x) px sigma of the voxel-integrated Gaussian with the same full width at half
        maximum (:meth:`fwhm_um`; the voxel's own 1/12 px² taken out)."""
        fwhm_px = np.asarray(self.fwhm_um()) / np.asarray(self.voxel_size_um)
        return np.sqrt(np.maximum((fwhm_px / 2.3548) ** 2 - 1.0 / 12.0, 0.04))

    def fwhm_um(self):
        """(z, y, x) full width at half maximum µm through the peak (samples, linear between)."""
        v = self.values
        peak = np.unravel_index(np.argmax(v), v.shape)
        out = []
        for a in range(3):
            prof = v[tuple(slice(None) if b == a else peak[b] for b in range(3))]
            above = np.flatnonzero(prof >= 0.5 * prof.max())
            lo, hi = above[0], above[-1]
            left = lo - (prof[lo] - 0.5 * prof.max()) / (prof[lo] - prof[lo - 1]) if lo > 0 else lo
            right = hi + (prof[hi] - 0.5 * prof.max()) / (prof[hi] - prof[hi + 1]) if hi < len(prof) - 1 else hi
            out.append(float((right - left) / self.oversample[a] * self.voxel_size_um[a]))
        return tuple(out)

    def summary(self) -> dict:
        """What the run record keeps of it (JSON-able)."""
        return dict(n_spots=self.n_spots, oversample=[int(o) for o in self.oversample],
                    half_px=[float(h) for h in self.half_px], voxel_size_um=list(self.voxel_size_um),
                    fwhm_um=[round(f, 4) for f in self.fwhm_um()],
                    sigma_px=[round(float(s), 4) for s in self.sigma_px()])

    def arrays(self) -> dict:
        """The arrays that :func:`load_psf` reads back (for ``np.savez``)."""
        return dict(values=self.values, oversample=self.oversample, voxel_size_um=np.asarray(self.voxel_size_um),
                    n_spots=np.asarray(self.n_spots))

    def save(self, path):
        """Write the PSF to ``path`` (.npz), atomically."""
        from kt_stardist.io import atomic_write

        with atomic_write(path) as f:
            np.savez_compressed(f, **self.arrays())


def load_psf(path, prefix="") -> SplinePsf:
    """The :class:`SplinePsf` stored in ``path`` (.npz; ``prefix``: of its array names, e.g.
    ``"t00003/"`` in a run's per-frame file)."""
    with np.load(path) as z:
        return SplinePsf(z[prefix + "values"], z[prefix + "oversample"], z[prefix + "voxel_size_um"],
                         int(z[prefix + "n_spots"]))


def _isolated(centres_px, box_px):
    """True for the points (N, 3) px with no other point inside their box (±``box_px``)."""
    from scipy.spatial import cKDTree

    c = np.asarray(centres_px, np.float64) / np.asarray(box_px, np.float64)
    tree = cKDTree(c)
    counts = np.array([len(n) for n in tree.query_ball_point(c, 1.0, p=np.inf)])
    return counts <= 1


def _core_centre_px(psf: SplinePsf, fine=4):
    """(z, y, x) px offset of the centre of mass of ``psf``'s core (at or above
    ``CORE_FRACTION`` of its maximum), the spline evaluated ``fine`` times finer than its grid."""
    from kt_stardist.optics import CORE_FRACTION

    step = 1.0 / (psf.oversample * fine)
    axes = [np.arange(-h, h + s / 2, s) for h, s in zip(psf.half_px, step)]
    # only where the core can be: around the samples at or above half the core's level, 2 samples
    # wider (the spline between samples stays far below the level beyond); the same fine-grid
    # points as the whole box, so the same centre up to the sums' rounding (< 1e-7 px)
    near = np.argwhere(psf.values >= 0.5 * CORE_FRACTION * psf.values.max())
    lo = (near.min(0) - 2 - psf.centre_index) / psf.oversample
    hi = (near.max(0) + 2 - psf.centre_index) / psf.oversample
    axes = [ax[(ax >= a - 1e-9) & (ax <= b + 1e-9)] for ax, a, b in zip(axes, lo, hi)]
    u = np.stack(np.meshgrid(*axes, indexing="ij"), -1)
    v, _ = psf.evaluate(u, derivatives=False)
    core = np.where(v >= CORE_FRACTION * v.max(), v, 0.0)
    return np.tensordot(core, u, axes=3) / core.sum()


def _recentred(values, oversample, voxel_size_um, rounds=2):
    """``values`` shifted (cubic spline) so that the centre of mass of its core sits on the
    grid's centre (:func:`_core_centre_px`)."""
    from scipy import ndimage

    for _ in range(rounds):
        com = _core_centre_px(SplinePsf(values, oversample, voxel_size_um))
        values = ndimage.shift(values, -com * np.asarray(oversample), order=3, mode="constant", cval=0.0)
    return values


def _tapered(values, oversample, width_px=1.0):
    """``values`` brought smoothly to 0 over the outer ``width_px`` px of each axis (a cosine
    taper): the spline and its gradient then fall to the zero outside the box without a step."""
    out = values
    for a, o in enumerate(oversample):
        n = values.shape[a]
        k = max(round(width_px * o), 1)
        ramp = np.ones(n)
        edge = 0.5 - 0.5 * np.cos(np.pi * (np.arange(k) + 1) / (k + 1))
        ramp[:k], ramp[n - k:] = edge, edge[::-1]
        out = out * ramp.reshape([-1 if b == a else 1 for b in range(values.ndim)])
    return out


def build_psf(volume, centres_px, photons, background, ok, voxel_size_um, half_px, to_photons=None,
              oversample=(2, 2, 2), min_spots=MIN_SPOTS, max_spots=200, isolation_px=None, neighbours=None):
    """The image's PSF from its well-fitted, isolated spots (module docstring).

    Parameters
    ----------
    volume : (Z, Y, X) counts (a lazy volume is read window by window).
    centres_px : (N, 3) px z, y, x positions of every detection (fitted or not: all count as
        neighbours); ``photons`` (N,) fitted photons;
        ``background`` (N,) photons per voxel under each spot (in the units of
        ``to_photons(counts)``); ``ok`` (N,) bool: usable fits.
    voxel_size_um : (z, y, x) µm.
    half_px : (3,) px half-size of the PSF's box.
    to_photons : counts → photons (e.g. :meth:`kt_stardist.predict.mle.Camera.photons`;
        None: the counts are photons).
    isolation_px : (3,) px: a spot with another detection within ± this is not used (None:
        ``half_px``).
    neighbours : None, or ``neighbours(i, coords)``: photons (M,) of the fitted spots other than
        ``i`` at ``coords`` (M, 3) px, subtracted from spot ``i``'s window (as crowded-field
        photometry builds its PSF from neighbour-subtracted stars).

    Returns
    -------
    (SplinePsf or None, str): the PSF and a one-line note (how many spots, or why none).
    """
    from scipy import ndimage

    from kt_stardist import outofcore as O

    c = np.asarray(centres_px, np.float64).reshape(-1, 3)
    n_ph = np.asarray(photons, np.float64)
    bg = np.asarray(background, np.float64)
    half = np.asarray(half_px, np.float64)
    o = np.asarray(oversample, np.int64)
    shape = np.asarray(volume.shape)
    margin = np.ceil(half).astype(int) + 2  # voxels read around each spot (spline support)
    good = np.asarray(ok, bool) & np.all(np.isfinite(c), 1) & np.isfinite(n_ph) & (n_ph > 0) & np.isfinite(bg)
    good &= np.all(np.round(c) - margin >= 0, 1) & np.all(np.round(c) + margin <= shape - 1, 1)
    iso = half if isolation_px is None else np.asarray(isolation_px, np.float64)
    alone = _isolated(np.where(np.isfinite(c), c, -1e9), iso)  # every detection counts as a neighbour
    cand = np.flatnonzero(good & alone)
    if len(cand) < min_spots:
        return None, (f"{len(cand)} isolated well-fitted spots (fewer than {min_spots}): no PSF measured, "
                      f"Gaussian fits kept")
    cand = cand[np.argsort(-n_ph[cand], kind="stable")][:max_spots]
    grid = [np.arange(-round(h * oo), round(h * oo) + 1) / oo for h, oo in zip(half, o)]
    gz, gy, gx = np.meshgrid(*grid, indexing="ij")
    offsets = np.stack([gz, gy, gx])  # (3, Z', Y', X') px
    stack, used = [], []
    for i in cand:
        lo = np.round(c[i]).astype(int) - margin
        sl = tuple(slice(int(a), int(a) + 2 * int(m) + 1) for a, m in zip(lo, margin))
        win = O.read(volume, sl).astype(np.float64)
        win = to_photons(win) if to_photons is not None else win
        if not np.all(np.isfinite(win)):
            continue
        if neighbours is not None:
            vox = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1)
            win = win - neighbours(i, vox.reshape(-1, 3).astype(np.float64)).reshape(win.shape)
        unit = (win - bg[i]) / n_ph[i]
        at = offsets + (c[i] - lo)[:, None, None, None]
        stack.append(ndimage.map_coordinates(unit, at.reshape(3, -1), order=3, mode="nearest").reshape(gz.shape))
        used.append(i)
    if not used:
        return None, "no readable spot windows: no PSF measured, Gaussian fits kept"
    stack, used = np.stack(stack), np.asarray(used)
    # inverse-variance weights at the peak: a spot's normalised values vary by (N p + b) / N²
    peak = np.max(np.average(stack, axis=0, weights=n_ph[used]))
    w = n_ph[used] ** 2 / (n_ph[used] * peak + np.maximum(bg[used], 0.0) + 1e-9)
    psf = np.average(stack, axis=0, weights=w)
    faces = np.concatenate([np.moveaxis(psf, a, 0)[[0, -1]].ravel() for a in range(3)])
    psf = psf - np.median(faces)
    psf = _tapered(_recentred(psf, o, voxel_size_um), o)
    psf = psf / (psf.sum() / np.prod(o))
    return SplinePsf(psf, o, voxel_size_um, len(cand)), f"PSF measured from {len(cand)} spots"


def gaussian_bias_px(psf: SplinePsf, photons, background, half_px, sigma0, sigma_bounds=(0.5, 2.0),
                     sigma_prior=None, steps=3) -> np.ndarray:
    """Where a Gaussian fit places a spot of this PSF, relative to the spot's position: (z, y, x)
    px, the mean over ``steps``³ sub-voxel positions.

    Each is the expected image (no noise) of one spot of ``photons`` on ``background`` photons
    per voxel, in a window of ± ``half_px`` (z, y, x px, the refinement's), fitted as the
    ``gauss`` refinement fits (:func:`kt_stardist.predict.mle.fit_spots`, start sigma
    ``sigma0`` px within ``sigma_bounds`` × it, optional ``sigma_prior``). Zero for a Gaussian
    PSF; on an aberrated widefield PSF about −40 … −60 nm in z (its axial tail pulls the fit):
    the bias :meth:`kt_stardist.predict.refine._MleFitter.correct_bias` takes out."""
    from kt_stardist.predict.mle import fit_spots

    half = np.ceil(np.asarray(half_px, np.float64)).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-h, h + 1) for h in half], indexing="ij"), -1).reshape(-1, 3)
    sub = (np.arange(steps) + 0.5) / steps - 0.5
    true = np.stack(np.meshgrid(sub, sub, sub, indexing="ij"), -1).reshape(-1, 3)
    B = len(true)
    unit, _ = psf.evaluate(grid[None] - true[:, None], derivatives=False)    # (B, N)
    data = float(background) + float(photons) * unit
    coords = np.broadcast_to(grid.astype(np.float64), (B,) + grid.shape)
    starts = np.zeros((B, 1, 3))
    lim = np.broadcast_to(half.astype(np.float64), (B, 1, 3))
    fit = fit_spots(data, coords, np.ones_like(data), starts, -lim, lim, np.asarray(sigma0, np.float64),
                    sigma_bounds, sigma_prior=sigma_prior)
    ok = fit.converged & np.all(np.isfinite(fit.centres[:, 0]), axis=1)
    if not ok.any():
        return np.zeros(3)
    return np.mean(fit.centres[ok, 0] - true[ok], axis=0)


def frame_key(t) -> str:
    """The prefix of frame ``t``'s arrays in a run's ``.psf.npz`` (:func:`merge_frames`)."""
    return f"t{int(t):05d}/"


def merge_frames(frames, dest):
    """One run's PSFs in one file: ``frames`` [(t, path of the frame's .npz or None, note)],
    written to ``dest`` (.npz, atomically; frame t's arrays under :func:`frame_key`, read back
    with ``load_psf(dest, frame_key(t))``) when any frame has one. Returns the run record's
    ``psf`` entry: ``path`` (None when no frame measured one) and per frame (t as text) its
    :meth:`SplinePsf.summary` or the note why the Gaussian was kept."""
    from kt_stardist.io import atomic_write

    arrays, per_frame = {}, {}
    for t, path, note in sorted(frames, key=lambda f: f[0]):
        if path is not None and Path(path).is_file():
            psf = load_psf(path)
            arrays.update({frame_key(t) + k: v for k, v in psf.arrays().items()})
            per_frame[str(int(t))] = dict(psf.summary(), note=note)
        else:
            per_frame[str(int(t))] = dict(note=note)
    if arrays:
        with atomic_write(dest) as f:
            np.savez_compressed(f, **arrays)
    return dict(path=str(dest) if arrays else None, frames=per_frame)
