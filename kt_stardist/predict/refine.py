"""Sub-voxel spot positions from the raw intensities around each detection.

A detector's positions sit on its output grid (StarDist (1, 2, 2): 0.3 × 0.26 × 0.26 µm
cells). :func:`refine_points` moves each one to the centre of the spot in the image:

* ``gauss`` (default): maximum-likelihood fits of 3D Gaussians (integrated over the voxels, one
  sigma per axis and spot) on a linear background (a plane: the haze of the cell body slopes)
  under the camera's noise model, Poisson with the read noise folded in, counts → photons with
  the gain and offset of :class:`kt_stardist.settings.RefineSettings` or estimated from the
  image's background (:mod:`kt_stardist.predict.mle`: engine, camera estimate). Windows of
  about one PSF width on each side (``half_um``). As crowded-field photometry does (DAOPHOT),
  neighbours are part of the model: detections whose windows overlap (close sisters, ~0.3–1 µm
  apart) are fitted *jointly* (clumps larger than ``max_group`` are cut by ever tighter
  overlap, the closest kept together, the rest one by one, on their Voronoi cells in the first
  pass), and every fit holds the already fitted spots of its neighbours fixed in its model. The
  groups are fitted brightest first, in three batches by peak value, each batch vectorised
  (:func:`kt_stardist.predict.mle.fit_spots`: all fits of a batch with the same number of
  spots in one Levenberg–Marquardt), for ``passes`` passes. Every fit is checked
  (``fit_ok``): converged, Poisson deviance plausible, inside ``max_shift_um`` of its
  detection (not at the bound), not pulled onto a neighbour; a failed fit is refitted with its
  group from the detections, the widths held at the image's PSF (``rescue_spread``), and only
  if that fails too falls back to the centroid (then the start). Each point gets the
  Cramér–Rao standard deviation of its position (``sigma_z_nm`` ...; scaled by the square root
  of the fit's Poisson deviance per degree of freedom where that exceeds 1, as quasi-likelihood
  does, and a small systematic floor, :data:`SIGMA_FLOOR_NM`, added in quadrature: what the
  model misses, a neighbour's or the background's structure, widens it), its photons and
  background (``return_fit``, :data:`FIT_COLUMNS`).
  :func:`refine_and_split` then looks inside every detection for a close sister that the
  detector merged with it (sisters 0.3–0.6 µm apart are one blob to the network): one vs two
  Gaussians (least squares, :func:`gauss_fit_batch`: all detections of a frame in one
  vectorised fit, then the two-spot fits in another) on a wider window, neighbours subtracted, kept by
  an F-test (``alpha``) when two spots explain clearly more (``min_gain``), lie 0.25–0.8 µm
  apart, have comparable amplitudes and the second is not a neighbour's leftover light; the two
  spots are then fitted jointly by maximum likelihood;
* ``spline``: ``gauss``, then the image's own PSF (:mod:`kt_stardist.predict.psf`: averaged
  from its isolated, well-fitted spots, neighbours subtracted, a cubic spline) replaces the
  Gaussian in the same maximum-likelihood fits (each spot keeps its own width): ``psf_passes``
  passes, the PSF measured again from these fits, ``psf_passes`` more. With fewer than
  ``psf_min_spots`` usable spots the Gaussian fits stay and a warning says so; the fit
  table's ``attrs`` carry the PSF (``psf``) and how it was measured (``psf_note``). For
  aberrated or asymmetric PSFs (the Gaussian's z bias goes);
* ``lsq``: the former least-squares fits on raw counts (one sigma shared by a group, neighbours
  subtracted brightest first, :class:`_Fitter`); no uncertainty. On whole simulated mid frames
  (model detections) its z error was ~31 nm rms;
* ``centroid``: background-subtracted intensity-weighted centroid, iterated in a soft window;
* ``none``: keep the positions.

Positions are px (z, y, x) of the volume given. Every setting is a field of
:class:`kt_stardist.settings.RefineSettings` / :class:`kt_stardist.settings.SplitSettings`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.settings import RefineSettings, SplitSettings


def _window(shape, center, half):
    """Slices (z, y, x) of the window of ``half`` px around ``center`` px, clipped to ``shape``."""
    c = np.round(center).astype(int)
    lo = np.maximum(c - half, 0)
    hi = np.minimum(c + half + 1, shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _coords(sl):
    """``(N, 3)`` float px coordinates of the voxels of a window (slices)."""
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij")
    return np.stack(grids, -1).reshape(-1, 3).astype(np.float64)


def _own_mask(coords, i, points_um, tree, voxel_size_um, radius_um):
    """Voxels of a window nearer (µm) to point ``i`` than to any other detection (Voronoi cell)."""
    near = [j for j in tree.query_ball_point(points_um[i], radius_um) if j != i]
    if not near:
        return None
    vs = np.asarray(voxel_size_um)
    c_um = coords * vs
    d_self = np.sum((c_um - points_um[i]) ** 2, axis=1)
    d_other = np.min(np.sum((c_um[:, None, :] - points_um[near][None]) ** 2, axis=2), axis=1)
    return d_self <= d_other


def _centroid(vals, coords, start, n_iter=5, half=None):
    w = vals - np.percentile(vals, 20)
    w = np.clip(w, 0, None)
    p = np.asarray(start, np.float64)
    for _ in range(n_iter):
        # weight by a soft window around the current estimate, so a neighbour does not pull
        d2 = np.sum(((coords - p) / np.maximum(half, 1)) ** 2, axis=1)
        ww = w * np.exp(-2.0 * d2)
        s = ww.sum()
        if s <= 0:
            break
        p = (ww[:, None] * coords).sum(0) / s
    return p


class GaussFit(NamedTuple):
    """Result of :func:`gauss_fit`: ``centres`` (K, 3) px, ``amplitudes`` (K,) (peak above the
    background, the volume's units), ``sigma`` (3,) px (z, y, x), shared by the K spots; ``rss``
    and ``n`` for model comparison (:func:`f_test`)."""

    centres: np.ndarray
    amplitudes: np.ndarray
    sigma: np.ndarray
    rss: float = float("nan")  # residual sum of squares, the volume's units squared
    n: int = 0                 # voxels fitted

    def spot(self, k, coords):
        """Fitted spot ``k`` (without the background) at ``coords`` (N, 3) px."""
        return self.amplitudes[k] * np.exp(-0.5 * np.sum(((coords - self.centres[k]) / self.sigma) ** 2, axis=1))


def _gauss_start(vals, coords, starts, sigma0, max_shift, sigma_bounds):
    """Start, bounds and residual scale of a :func:`gauss_fit`: ``(x0, lo, hi, scale)``, the
    parameters K × (centre z, y, x, amplitude), sigma z, y, x, background, slope z, y, x;
    background at the window's 20th percentile, each amplitude from the voxel nearest its start."""
    starts = np.atleast_2d(np.asarray(starts, np.float64))
    sigma0 = np.asarray(sigma0, np.float64)
    bg0 = float(np.percentile(vals, 20))
    nearest = [int(np.argmin(np.sum((coords - s) ** 2, axis=1))) for s in starts]
    amp0 = [max(float(vals[n]) - bg0, 1e-6) for n in nearest]
    x0 = np.concatenate([np.r_[s, a] for s, a in zip(starts, amp0)] + [sigma0, [bg0, 0, 0, 0]])
    lo = np.concatenate([np.r_[s - max_shift, 0] for s in starts] + [sigma_bounds[0] * sigma0, [-np.inf] * 4])
    hi = np.concatenate([np.r_[s + max_shift, np.inf] for s in starts] + [sigma_bounds[1] * sigma0, [np.inf] * 4])
    return x0, lo, hi, max(max(amp0), 1e-6)


def gauss_fit(vals, coords, starts, sigma0, max_shift, sigma_bounds=(0.5, 2.0)):
    """Least-squares fit of K 3D Gaussians (each its own centre and amplitude, one shared sigma
    per axis: the same PSF) on a linear background to intensities ``vals`` at ``coords`` (px).

    ``starts`` (K, 3) px; ``sigma0`` (3,) px start, bounded to ``sigma_bounds`` × ``sigma0``;
    each centre stays within ``max_shift`` (3,) px of its start. Returns a :class:`GaussFit`, or
    None when the fit fails. Analytic Jacobian (~10× faster than finite differences).
    """
    from scipy.optimize import least_squares

    x0, lo, hi, scale = _gauss_start(vals, coords, starts, sigma0, max_shift, sigma_bounds)
    K = (len(x0) - 7) // 4
    dc = coords - coords.mean(0)  # background plane about the window's centre
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)
    nb = 4 * K + 3

    def parts(q):
        sg = q[4 * K:nb]
        for k in range(K):
            u = (coords - q[4 * k:4 * k + 3]) / sg
            yield u, sg, q[4 * k + 3], np.exp(-0.5 * np.sum(u ** 2, axis=1))

    def res(q):
        model = q[nb] + dc @ q[nb + 1:]
        for _, _, a, g in parts(q):
            model = model + a * g
        return (model - vals) / scale

    def jac(q):
        cols, d_sigma = [], 0
        for u, sg, a, g in parts(q):
            ag = (a * g)[:, None]
            cols += [ag * u / sg, g[:, None]]
            d_sigma = d_sigma + ag * u ** 2 / sg
        return np.hstack(cols + [d_sigma, np.ones((len(vals), 1)), dc]) / scale

    try:
        r = least_squares(res, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=60 * K)
    except Exception:
        return None
    if not (r.success or r.status == 0):
        return None
    q = r.x
    return GaussFit(np.stack([q[4 * k:4 * k + 3] for k in range(K)]), q[3:4 * K:4].copy(), q[4 * K:nb].copy(),
                    float(2 * r.cost * scale ** 2), len(vals))


def gauss_fit_batch(jobs, sigma_bounds=(0.5, 2.0), max_iter=60, ftol=1e-8, xtol=1e-8):
    """:func:`gauss_fit` of many windows at once: one Levenberg–Marquardt over the batch
    (bounds by projection, a parameter at its bound held while the descent pushes it out), the
    same model, start, bounds and result, so the sister search of a frame costs one vectorised
    fit per pass instead of one ``least_squares`` call per detection.

    ``jobs``: list of ``(vals (M,), coords (M, 3) px, starts (K, 3) px, sigma0 (3,) px,
    max_shift (3,) px)``, every job with the same K (windows of different size are padded and
    masked). Returns a list of :class:`GaussFit` (None where the fit is not finite).
    """
    from kt_stardist.predict.mle import bounded_step, gram

    if not jobs:
        return []
    B = len(jobs)
    K = len(np.atleast_2d(jobs[0][2]))
    M = max(len(j[0]) for j in jobs)
    vals = np.zeros((B, M))
    coords = np.zeros((B, M, 3))
    w = np.zeros((B, M))
    nb = 4 * K + 3
    P = nb + 4
    x, lo, hi = np.zeros((B, P)), np.zeros((B, P)), np.zeros((B, P))
    scale = np.ones(B)
    for b, (v, c, starts, sigma0, max_shift) in enumerate(jobs):
        m = len(v)
        vals[b, :m], coords[b, :m], w[b, :m] = v, c, 1.0
        x[b], lo[b], hi[b], scale[b] = _gauss_start(v, c, starts, sigma0, max_shift, sigma_bounds)
    x = np.clip(x, lo + 1e-9, hi - 1e-9)
    sw = np.maximum(w.sum(1, keepdims=True), 1)
    dc = (coords - ((coords * w[..., None]).sum(1) / sw)[:, None, :]) * w[..., None]

    def residuals(q, idx, jac=True):
        c = q[:, :4 * K].reshape(len(idx), K, 4)
        sg = q[:, None, None, 4 * K:nb]                                     # (b, 1, 1, 3)
        u = (coords[idx][:, None] - c[:, :, None, :3]) / sg                 # (b, K, M, 3)
        g = np.exp(-0.5 * np.sum(u ** 2, axis=3))                          # (b, K, M)
        ag = c[:, :, 3, None] * g
        model = q[:, nb, None] + np.einsum("bma,ba->bm", dc[idx], q[:, nb + 1:]) + ag.sum(1)
        r = (model - vals[idx]) / scale[idx, None] * w[idx]
        if not jac:
            return r, None
        d_c = ag[..., None] * u / sg                                        # (b, K, M, 3)
        d_sigma = np.sum(ag[..., None] * u ** 2 / sg, axis=1)               # (b, M, 3)
        cols = np.concatenate([d_c, g[..., None]], axis=3).transpose(0, 2, 1, 3).reshape(len(idx), -1, 4 * K)
        J = np.concatenate([cols, d_sigma, np.ones(r.shape + (1,)), dc[idx]], axis=2)
        return r, J / scale[idx, None, None] * w[idx][..., None]

    r, _ = residuals(x, np.arange(B), jac=False)
    cost = 0.5 * np.sum(r ** 2, axis=1)
    lam = np.full(B, 1e-3)
    active = np.isfinite(cost)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        q = x[idx]
        r, J = residuals(q, idx)
        grad = np.einsum("bmp,bm->bp", J, r)
        H = gram(J)
        diag = np.maximum(np.einsum("bpp->bp", H), 1e-12)
        new = bounded_step(H, grad, q, lo[idx], hi[idx], lam[idx, None] * diag, diag)
        r_new, _ = residuals(new, idx, jac=False)
        c_new = 0.5 * np.sum(r_new ** 2, axis=1)
        better = np.isfinite(c_new) & (c_new <= cost[idx])
        small_f = np.abs(cost[idx] - c_new) <= ftol * np.maximum(cost[idx], 1e-300)
        small_x = np.linalg.norm(new - q, axis=1) <= xtol * (xtol + np.linalg.norm(q, axis=1))
        x[idx[better]] = new[better]
        cost[idx[better]] = c_new[better]
        lam[idx] = np.where(better, np.maximum(lam[idx] / 10, 1e-10), lam[idx] * 10)
        done = (better & (small_f | small_x)) | (lam[idx] > 1e10)
        active[idx[done]] = False
    out = []
    for b in range(B):
        q = x[b]
        if not np.all(np.isfinite(q)) or not np.isfinite(cost[b]):
            out.append(None)
            continue
        out.append(GaussFit(q[:4 * K].reshape(K, 4)[:, :3].copy(), q[3:4 * K:4].copy(), q[4 * K:nb].copy(),
                            float(2 * cost[b] * scale[b] ** 2), int(w[b].sum())))
    return out


def n_params(k):
    """Free parameters of a :func:`gauss_fit` with ``k`` spots."""
    return 4 * k + 3 + 4


def f_test(one, two):
    """p-value of the F-test that the two-spot fit ``two`` explains the window no better than the
    one-spot fit ``one`` (same voxels); small: the second spot is real."""
    from scipy.stats import f as f_dist

    d1, d2 = n_params(2) - n_params(1), two.n - n_params(2)
    if d2 <= 0 or not two.rss > 0:
        return 1.0
    F = max(one.rss - two.rss, 0.0) / d1 / (two.rss / d2)
    return float(f_dist.sf(F, d1, d2))


def overlap_groups(points_px, half_px):
    """Groups (lists of indices) of detections whose refinement windows overlap (connected
    components of the pairs closer than ``2 * half_px`` along every axis)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    n = len(points_px)
    if n == 0:
        return []
    scaled = np.asarray(points_px, np.float64) / (2.0 * np.maximum(np.asarray(half_px), 1))
    pairs = cKDTree(scaled).query_pairs(1.0 - 1e-9, p=np.inf, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, lab = connected_components(graph, directed=False)
    order = np.argsort(lab, kind="stable")
    return [list(g) for g in np.split(order, np.flatnonzero(np.diff(lab[order])) + 1)]


class _Fitter:
    """The ``gauss`` passes of :func:`refine_and_split` over one volume (module docstring): after
    :meth:`first_pass` (and :meth:`next_pass`), ``out`` (N, 3) px are the positions and
    ``fits[i]`` = (GaussFit, k) the fit whose spot k is detection i (None where the fit failed
    and the centroid was taken); :meth:`second_spots` then finds merged close sisters."""

    def __init__(self, vol, pts, voxel_size_um, settings: RefineSettings):
        from scipy.spatial import cKDTree

        self.vol, self.pts, self.settings = vol, pts, settings
        self.vs = vs = np.asarray(voxel_size_um, np.float64)
        half_um = settings.half_um
        self.half = np.maximum(np.round(np.asarray(half_um) / vs).astype(int), 1)
        self.sigma0 = np.asarray(settings.psf_sigma_um) / vs
        self.max_shift = np.asarray(settings.max_shift_um) / vs
        self.bounds = tuple(settings.sigma_bounds)
        self.pts_um = pts * vs
        self.tree = cKDTree(self.pts_um)
        self.radius = float(np.linalg.norm(np.asarray(half_um)) * 2)
        self.out = pts.copy()
        self.fits = [None] * len(pts)

    def within(self, q, i):
        return q is not None and np.all(np.isfinite(q)) and np.all(np.abs(q - self.pts[i]) <= self.max_shift)

    def read(self, sl):
        """(coords (M, 3) px, values (M,)) of the voxels of ``sl`` (slices z, y, x)."""
        from kt_stardist import outofcore as O

        return _coords(sl), O.read(self.vol, sl).astype(np.float64).ravel()

    def window(self, centre, half=None):
        """:meth:`read` of the window around ``centre``."""
        return self.read(_window(self.vol.shape, centre, self.half if half is None else half))

    def centroid(self, i, coords, vals):
        c = _centroid(vals, coords, self.pts[i], half=self.half)
        return c if self.within(c, i) else self.pts[i]

    def others_removed(self, members, coords, vals):
        """``vals`` minus the fitted spots of the detections near ``members`` (not among them)."""
        near = set().union(*(self.tree.query_ball_point(self.pts_um[i], self.settings.neighbour_um)
                            for i in members))
        for j in sorted(near - set(members)):
            if self.fits[j] is not None:
                vals = vals - self.fits[j][0].spot(self.fits[j][1], coords)
        return vals

    def accept(self, i, f, k, data=None):
        """Take spot k of fit f for detection i, else the centroid on ``data`` (coords, vals)."""
        if f is not None and self.within(f.centres[k], i):
            self.out[i], self.fits[i] = f.centres[k], (f, k)
            return
        coords, vals = data if data is not None else self.window(self.pts[i])
        if vals.size >= 8:
            self.out[i] = self.centroid(i, coords, vals)

    def first_pass(self, max_group):
        """Brightest group first, fitted neighbours subtracted: joint fits of overlapping windows;
        one by one on Voronoi cells in larger clumps."""
        pts, vol = self.pts, self.vol
        groups = overlap_groups(pts, self.half) if max_group > 1 else [[i] for i in range(len(pts))]
        peak = self.peaks()
        for g in sorted(groups, key=lambda g: -float(peak[g].max())):
            if 1 < len(g) <= max_group:
                wins = [_window(vol.shape, pts[i], self.half) for i in g]
                coords, vals = self.read(tuple(slice(min(w[a].start for w in wins), max(w[a].stop for w in wins))
                                               for a in range(3)))
                vals = self.others_removed(g, coords, vals)
                f = gauss_fit(vals, coords, pts[g], self.sigma0, self.max_shift, self.bounds)
                for k, i in enumerate(g):
                    self.accept(i, f, k)
                continue
            for i in g:
                coords, vals = self.window(pts[i])
                vals = self.others_removed([i], coords, vals)
                m = _own_mask(coords, i, self.pts_um, self.tree, self.vs, self.radius)
                if m is not None and m.sum() >= 8:
                    coords, vals = coords[m], vals[m]
                f = gauss_fit(vals, coords, pts[i], self.sigma0, self.max_shift, self.bounds) if vals.size >= 8 else None
                self.accept(i, f, 0, (coords, vals))

    def peaks(self):
        """The volume's value at each detection (rounded px)."""
        from kt_stardist import outofcore as O

        idx = np.clip(np.round(self.pts).astype(int), 0, np.array(self.vol.shape) - 1)
        if O.is_lazy(self.vol):  # one voxel each (h5py/zarr datasets do not take point lists)
            return np.array([O.read(self.vol, tuple(slice(c, c + 1) for c in ci)).item() for ci in idx])
        return np.asarray(self.vol[tuple(idx.T)], np.float64)

    def order(self):
        """Detections by fitted amplitude, brightest first (unfitted last)."""
        amp = np.array([f[0].amplitudes[f[1]] if f is not None else -np.inf for f in self.fits])
        return np.argsort(-amp, kind="stable")

    def next_pass(self):
        """Each detection alone, brightest first, the current fits of its neighbours subtracted."""
        for i in self.order():
            coords, vals = self.window(self.out[i])
            if vals.size < 8:
                continue
            vals = self.others_removed([i], coords, vals)
            s0 = self.fits[i][0].sigma if self.fits[i] is not None else self.sigma0
            f = gauss_fit(vals, coords, self.out[i], s0, self.max_shift, self.bounds)
            if f is not None and self.within(f.centres[0], i):
                self.out[i], self.fits[i] = f.centres[0], (f, 0)

    def second_spots(self, split: SplitSettings):
        """Test every fitted detection for an unresolved second spot (a close sister): one vs two
        Gaussians on a wider window, neighbours subtracted. Yields (i, (2, 3) px) for each
        detection whose two-spot fit passes the tests of ``split`` (:class:`SplitSettings`) and
        whose second spot lies inside the volume."""
        from scipy.spatial import cKDTree

        half = np.maximum(np.round(np.asarray(split.half_um) / self.vs).astype(int), 1)
        placed = cKDTree(self.out * self.vs)  # the refined detections, µm
        todo = [i for i in self.order() if self.fits[i] is not None]
        windows = {}
        for i in todo:
            coords, vals = self.window(self.out[i], half)
            if vals.size > n_params(2):
                windows[i] = (coords, self.others_removed([i], coords, vals))
        todo = list(windows)
        ones = gauss_fit_batch([(windows[i][1], windows[i][0], self.out[i][None], self.fits[i][0].sigma,
                                 self.max_shift) for i in todo], self.bounds)
        second = {}
        for i, one in zip(todo, ones):
            if one is None:
                continue
            coords, vals = windows[i]
            resid = vals - one.spot(0, coords)
            k = int(np.argmax(resid))
            if resid[k] - np.median(resid) >= split.min_residual * np.sqrt(one.rss / one.n):
                second[i] = (one, k)  # a residual peak that could be a second spot: try two spots
        tried = list(second)
        twos = gauss_fit_batch([(windows[i][1], windows[i][0], np.stack([second[i][0].centres[0],
                                 windows[i][0][second[i][1]]]), second[i][0].sigma, np.maximum(half, self.max_shift))
                                for i in tried], self.bounds)
        for i, two in zip(tried, twos):
            one = second[i][0]
            if two is None or f_test(one, two) >= split.alpha or two.rss > (1 - split.min_gain) * one.rss:
                continue
            sep = float(np.linalg.norm((two.centres[1] - two.centres[0]) * self.vs))
            a = two.amplitudes
            crowded = set(placed.query_ball_point(two.centres[1] * self.vs, split.min_other_um)) - {i}
            inside = np.all((two.centres[1] >= 0) & (two.centres[1] <= np.array(self.vol.shape) - 1))
            lo, hi = split.sep_um
            if lo <= sep <= hi and a.min() >= split.min_amp * a.max() and inside and not crowded \
                    and self.within(two.centres[0], i):
                yield i, two.centres


#: columns of the fit's quality and uncertainty (:func:`refine_and_split` with ``return_fit``)
FIT_COLUMNS = ["fit_ok", "sigma_z_nm", "sigma_y_nm", "sigma_x_nm", "photons", "background"]

#: the fit table's last column, not one of the points table's: the accepted maximum-likelihood
#: fit's lateral widths ran to their upper bound (:meth:`_MleFitter.is_extended`; False for the
#: other methods); the confirm band does not confirm such fits
#: (:func:`kt_stardist.predict.detect.confirmed`)
EXTENDED_COLUMN = "extended"

#: a lateral width within this fraction of its upper bound counts as at the bound
EXTENDED_AT = 0.98


def _pixel_sigma(sigma_px):
    """sigma (px) of the point-sampled Gaussian closest to a voxel-integrated one."""
    return np.sqrt(np.asarray(sigma_px, np.float64) ** 2 + 1.0 / 12.0)


class _MleFitter(_Fitter):
    """The ``gauss`` method: Poisson maximum-likelihood fits (:mod:`kt_stardist.predict.mle`),
    batched over every fit of a pass. Pass 1 fits overlapping windows jointly (larger clumps one
    by one on their Voronoi cells), later passes refit the same groups with the fitted
    neighbours of the pass before held fixed in the model (Jacobi passes). ``ok`` / ``crlb_px``
    / ``photons`` / ``background`` hold each detection's fit quality and uncertainty; ``fits``
    (least-squares-style :class:`GaussFit` in counts) feed the sister search."""

    def __init__(self, vol, pts, voxel_size_um, settings: RefineSettings, camera):
        super().__init__(vol, pts, voxel_size_um, settings)
        self.camera = camera
        n = len(pts)
        self.ok = np.zeros(n, bool)
        self.crlb_px = np.full((n, 3), np.nan)
        self.overdispersion = np.ones(n)  # sqrt(deviance / dof) of each accepted fit, at least 1
        self.photons = np.full(n, np.nan)
        self.background = np.full(n, np.nan)
        self.extended = np.zeros(n, bool)  # accepted fits whose lateral widths ran to their bound
        self.spots = [None] * n  # (centre px, photons, sigma px) of usable fits: neighbours' model
        self.was_pulled = set()  # detections whose last fit ended on a neighbour
        self.psf = None          # the image's PSF sigma (z, y, x px) once measured (image_psf)
        self.spot_model = None   # the spot model of the fits (None: Gaussian; spline: the measured PSF)
        self.measured = None     # the PSF measured from the image (spline method), a SplinePsf
        self.psf_note = None     # how it was measured, or why not (spline method)
        self.bias_nm = None      # the PSF bias taken off the Gaussian fits (z, y, x nm; psf_bias)
        self.bias_note = None    # what correct_bias did, or why not

    def extend(self, new_pts):
        """Add points (M, 3) px (second spots of split detections), unfitted."""
        from scipy.spatial import cKDTree

        m = len(new_pts)
        self.pts = np.vstack([self.pts, new_pts])
        self.out = np.vstack([self.out, new_pts])
        self.pts_um = self.pts * self.vs
        self.tree = cKDTree(self.pts_um)
        self.fits += [None] * m
        self.spots += [None] * m
        self.ok = np.concatenate([self.ok, np.zeros(m, bool)])
        self.crlb_px = np.vstack([self.crlb_px, np.full((m, 3), np.nan)])
        self.overdispersion = np.concatenate([self.overdispersion, np.ones(m)])
        self.photons = np.concatenate([self.photons, np.full(m, np.nan)])
        self.background = np.concatenate([self.background, np.full(m, np.nan)])
        self.extended = np.concatenate([self.extended, np.zeros(m, bool)])

    def _job(self, members, own_cell, with_fixed):
        """(coords (M, 3) px, photons (M,), weights (M,), fixed (M,)) of one fit's window."""
        wins = [_window(self.vol.shape, self.out[i], self.half) for i in members]
        coords, counts = self.read(tuple(slice(min(w[a].start for w in wins), max(w[a].stop for w in wins))
                                         for a in range(3)))
        data = self.camera.photons(counts)
        w = np.isfinite(data).astype(np.float64)
        if own_cell and len(members) == 1:
            m = _own_mask(coords, members[0], self.pts_um, self.tree, self.vs, self.radius)
            if m is not None and np.sum(m & (w > 0)) >= 8:
                w = w * m
        fixed = self.neighbour_photons(members, coords) if with_fixed else np.zeros(len(coords))
        return coords, data, w, fixed

    def neighbour_photons(self, members, coords):
        """Photons (M,) at ``coords`` (M, 3) px of the fitted spots within ``neighbour_um`` of
        ``members`` (not among them), each with the current spot model."""
        from kt_stardist.predict.mle import spot_photons

        near = set().union(*(self.tree.query_ball_point(self.pts_um[i], self.settings.neighbour_um)
                             for i in members))
        fitted = [self.spots[j] for j in sorted(near - set(members)) if self.spots[j] is not None]
        if not fitted:
            return np.zeros(len(coords))
        return spot_photons(coords, np.array([f[0] for f in fitted]), np.array([f[1] for f in fitted]),
                            np.array([f[2] for f in fitted]), spots=self.spot_model)

    def fit_groups(self, groups, own_cell=False, with_fixed=False, fresh=False, width=None, restart=False,
                   only=None):
        """Fit every group (list of detection indices) of one pass, batched by group size, and
        take each member's fit where it passes the checks (:meth:`take`). Each spot's PSF sigma
        starts from its earlier fit, or (``fresh``) from the settings'; ``width``: (sigma (3,)
        px, relative sd): every spot's sigma starts there and has that prior instead; ``restart``:
        the centres start from the detections, not from the current positions; ``only``: the
        detections whose fits are taken (None: all; the others are only part of the model)."""
        from kt_stardist.predict.mle import fit_spots

        by_k = {}
        for g in groups:
            by_k.setdefault(len(g), []).append(g)
        results = {}
        for K, gs in by_k.items():
            jobs = [self._job(g, own_cell, with_fixed) for g in gs]
            usable = [j for j, job in enumerate(jobs) if np.sum(job[2]) > 7 * K + 4 + 1]
            if not usable:
                continue
            n_max = max(len(jobs[j][0]) for j in usable)
            B = len(usable)
            coords, data = np.zeros((B, n_max, 3)), np.zeros((B, n_max))
            w, fixed = np.zeros((B, n_max)), np.zeros((B, n_max))
            for b, j in enumerate(usable):
                c, d, ww, f = jobs[j]
                n = len(c)
                coords[b, :n], data[b, :n], w[b, :n], fixed[b, :n] = c, np.nan_to_num(d), ww, f
                coords[b, n:] = c[0]
            idx = np.array([gs[j] for j in usable], dtype=np.intp)  # (B, K)
            starts = (self.pts if restart else self.out)[idx]
            lo, hi = self.pts[idx] - self.max_shift, self.pts[idx] + self.max_shift
            starts = np.clip(starts, lo, hi)
            earlier = np.array([[self.spots[i] is not None and not fresh for i in g] for g in idx])
            s_start = np.array([[self.spots[i][2] if e else self.sigma0 for i, e in zip(g, eg)]
                                for g, eg in zip(idx, earlier)])
            prior = (self.psf, self.settings.width_spread) if self.psf is not None else None
            if width is not None:
                s_start, prior = np.broadcast_to(width[0], s_start.shape), width
            fit = fit_spots(data, coords, w, starts, lo, hi, self.sigma0, self.bounds, fixed, sigma_start=s_start,
                            warmup=0 if earlier.all() else 5, sigma_prior=prior, spots=self.spot_model)
            for b in range(B):
                for k, i in enumerate(idx[b]):
                    if only is None or int(i) in only:
                        results[int(i)] = (fit, b, k, lo[b, k], hi[b, k])
        self.take(results, [i for g in groups for i in g if only is None or i in only])

    def take(self, results, members=()):
        """Accept each detection's fit if converged, plausible (Poisson deviance per degree of
        freedom at most ``max_deviance`` × the median of this pass's fits, or of 1 if larger:
        unmodelled background texture raises every fit's deviance alike), not at the
        ``max_shift`` bound and not pulled onto a neighbour; else keep its earlier accepted fit,
        or fall back to the centroid (flagged)."""
        cand = {}
        per_dof = [f.deviance[b] / f.dof[b] for f, b, _, _, _ in results.values() if f.dof[b] > 0]
        limit = self.settings.max_deviance * max(float(np.median(per_dof)) if per_dof else 1.0, 1.0)
        for i, (f, b, k, lo, hi) in results.items():
            c = f.centres[b, k]
            finite = np.all(np.isfinite(c)) and np.isfinite(f.photons[b, k]) and f.photons[b, k] > 0
            at_bound = bool(np.any(np.isclose(c, lo, atol=1e-6) | np.isclose(c, hi, atol=1e-6)))
            usable = bool(f.converged[b]) and finite and not at_bound
            plausible = f.dof[b] > 0 and f.deviance[b] / f.dof[b] <= limit
            determined = bool(np.all(f.crlb[b, k] <= self.max_shift))  # NaN: not determined either
            cand[i] = (c, finite, usable, usable and plausible and determined, f, b, k)
        pulled = self.pulled({i: v[0] for i, v in cand.items() if v[2]})
        self.was_pulled = (self.was_pulled - set(cand)) | pulled
        for i, (c, finite, usable, ok, f, b, k) in cand.items():
            ok = ok and i not in pulled
            if usable and i not in pulled:  # models its light in its neighbours' fits
                self.spots[i] = (c.copy(), float(f.photons[b, k]), f.sigma[b, k].copy())
            if not ok and self.ok[i]:
                continue  # keep the accepted fit of the pass before
            self.ok[i] = ok
            self.photons[i] = f.photons[b, k] if usable else np.nan
            self.background[i] = f.background[b, k] - self.camera.shift if usable else np.nan
            self.crlb_px[i] = f.crlb[b, k] if ok else np.nan
            self.overdispersion[i] = np.sqrt(max(1.0, f.deviance[b] / f.dof[b]))
            if self.spot_model is None:  # the measured PSF's fits keep the Gaussian passes' verdict
                self.extended[i] = ok and self.is_extended(f.sigma[b, k])
            if ok:
                self.out[i] = c
            else:
                self.fallback(i)
            if finite:  # also a flagged fit (a misfit: maybe two spots) goes to the sister search
                self.fits[i] = (self._as_gauss(c, f.photons[b, k], f.sigma[b, k]), 0)
        for i in set(int(i) for i in members) - set(results):  # nothing to fit (empty window)
            if not self.ok[i]:
                self.fallback(i)

    def is_extended(self, sigma_px):
        """Whether a fitted Gaussian sigma (z, y, x px) has both lateral widths at (within
        :data:`EXTENDED_AT` of) their upper bound, ``sigma_bounds[1]`` × the starting sigma: the
        fit is spreading over structure wider than a diffraction-limited spot (a textured
        nucleus, haze), not fitting one."""
        upper = self.bounds[1] * np.asarray(self.sigma0, np.float64)[1:]
        return bool(np.all(np.asarray(sigma_px, np.float64)[1:] >= EXTENDED_AT * upper))

    def _as_gauss(self, centre, photons, sigma):
        """A fitted spot as a :class:`GaussFit` in counts (point-sampled; for the sister search)."""
        s = _pixel_sigma(sigma)
        peak = photons * self.camera.gain / ((2 * np.pi) ** 1.5 * np.prod(s))
        return GaussFit(centre[None].copy(), np.array([peak]), s)

    def fallback(self, i):
        """The centroid (else the start) for detection ``i``; its fit is not used."""
        coords, vals = self.window(self.pts[i])
        keep = np.isfinite(vals)
        self.out[i] = self.centroid(i, coords[keep], vals[keep]) if keep.sum() >= 8 else self.pts[i]
        self.fits[i] = None
        self.crlb_px[i] = np.nan

    def pulled(self, centres):
        """Detections whose fit ended nearer (µm) another detection's start than its own, or on
        another fit (closer to it than half their starts' distance, the one moved further)."""
        out = set()
        if len(self.pts) < 2:
            return out
        idx = np.array(sorted(centres), int)
        if len(idx) == 0:
            return out
        c_um = np.array([centres[i] for i in idx]) * self.vs
        d_own = np.linalg.norm(c_um - self.pts_um[idx], axis=1)
        for a, i in enumerate(idx):
            near = [j for j in self.tree.query_ball_point(c_um[a], d_own[a] + 1e-9) if j != i]
            if any(np.linalg.norm(self.pts_um[j] - c_um[a]) < d_own[a] for j in near):
                out.add(int(i))
        from scipy.spatial import cKDTree

        tree = cKDTree(c_um)
        for a, b in tree.query_pairs(float(np.max(self.half * self.vs))):
            i, j = idx[a], idx[b]
            if np.linalg.norm(c_um[a] - c_um[b]) < 0.5 * np.linalg.norm(self.pts_um[i] - self.pts_um[j]):
                out.add(int(i if d_own[a] >= d_own[b] else j))
        return out

    def groups(self, max_group):
        """Detections fitted together: overlapping windows, each grown by ``joint_scale``; a
        clump of more than ``max_group`` is cut by ever tighter overlap (windows shrunk to 3/4,
        1/2, 1/3), so that the closest detections in it (close sisters) are still fitted
        jointly; what is left, one by one."""
        if max_group <= 1:
            return [[i] for i in range(len(self.pts))]
        half = self.half * self.settings.joint_scale
        out, todo = [], [list(g) for g in overlap_groups(self.pts, half)]
        for f in (0.75, 0.5, 1 / 3, 0.0):
            big = []
            for g in todo:
                (out if len(g) <= max_group else big).append(g)
            if f == 0.0:
                out += [[i] for g in big for i in g]
                break
            todo = [[g[k] for k in sub] for g in big for sub in overlap_groups(self.pts[g], half * f)]
        return out

    def image_psf(self, min_spots=5):
        """The median Gaussian sigma (z, y, x px) of the good fits at or above the median
        photons, or None with fewer than ``min_spots`` of them."""
        good = [i for i in range(len(self.pts)) if self.ok[i] and self.spots[i] is not None]
        if len(good) < 2 * min_spots:
            return None
        ph = np.array([self.spots[i][1] for i in good])
        bright = [i for i, p in zip(good, ph) if p >= np.median(ph)]
        return np.median([self.spots[i][2] for i in bright], axis=0)

    def run(self, passes, max_group, tiers=3):
        """The fitting passes (class docstring): in each, the groups in ``tiers`` batches by
        peak value, brightest first, each batch with the fits so far held fixed (as
        crowded-field photometry fits brightest first). A detection whose fit was pulled onto a
        neighbour is refitted alone (its group without it) in the following passes. After the
        first pass the image's PSF is measured (:meth:`image_psf`) and becomes the prior of
        every spot's width (``width_spread``)."""
        groups = self.groups(max_group)
        peak = np.nan_to_num(self.peaks(), nan=-np.inf)
        groups = sorted(groups, key=lambda g: -float(np.max(peak[g])))
        cuts = np.linspace(0, len(groups), min(tiers, len(groups)) + 1).round().astype(int)
        batches = [groups[a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]
        for p in range(passes):
            if p == 1 and self.settings.width_spread > 0:
                self.psf = self.image_psf()
            for batch in batches:
                if self.was_pulled:  # a detection pulled onto a neighbour leaves its joint fit
                    batch = [g2 for g in batch for g2 in ([[i] for i in g if i in self.was_pulled]
                                                          + [[i for i in g if i not in self.was_pulled]]) if g2]
                self.fit_groups(batch, own_cell=p == 0, with_fixed=True)
        self.rescue(groups)

    def rescue(self, groups):
        """Refit the groups of the detections whose fit failed (``fit_ok`` False: a dim spot's
        free width wandered off, or close sisters merged into one wide spot) jointly from their
        detections, every spot's width held at the image's PSF (prior of relative sd
        ``rescue_spread``: 3 parameters fewer per spot); a fit that passes the checks replaces
        the centroid. The good fits of their groups are kept, but refitted once, alone, with the
        rescued spots held fixed (a sister that had taken in both spots' light lets go). Off
        with ``rescue_spread`` 0 or another spot model than the Gaussian."""
        spread = self.settings.rescue_spread
        failed = set(int(i) for i in np.flatnonzero(~self.ok))
        if spread <= 0 or not failed or self.spot_model is not None:
            return
        psf = self.psf if self.psf is not None else self.image_psf()
        psf = self.sigma0 if psf is None else psf
        redo = [g for g in groups if failed.intersection(g)]
        self.fit_groups(redo, with_fixed=True, width=(np.asarray(psf, np.float64), spread), restart=True, only=failed)
        partners = [[j] for g in redo if any(self.ok[i] for i in failed.intersection(g))
                    for j in g if j not in failed]
        if partners:
            self.fit_groups(partners, with_fixed=True)

    def _build_psf(self, box_px=2):
        """:func:`kt_stardist.predict.psf.build_psf` of the current fits: (SplinePsf or None, note)."""
        from kt_stardist.predict.psf import build_psf

        return build_psf(self.vol, self.out, self.photons, self.background + self.camera.shift, self.ok,
                         self.vs, self.half + box_px, self.camera.photons,
                         min_spots=self.settings.psf_min_spots, isolation_px=self.half,
                         neighbours=lambda i, coords: self.neighbour_photons([i], coords))

    def correct_bias(self):
        """The ``gauss`` method's PSF bias correction (``RefineSettings.psf_bias``): the image's
        PSF is measured from its well-fitted isolated spots (as the ``spline`` method does), the
        place where a Gaussian fit puts a spot of that PSF is computed
        (:func:`kt_stardist.predict.psf.gaussian_bias_px`, the median spot's photons and
        background) and taken off every accepted fit, on each axis where it reaches both
        ``psf_bias_min_nm`` and ``psf_bias_min_se`` × its standard error (the median position
        uncertainty of the fitted spots over the square root of the spots averaged: on dim data
        the measured PSF is noisy). Nothing moves with fewer than ``psf_min_spots`` spots or on a
        Gaussian-like PSF. ``bias_nm`` / ``bias_note`` say what was done."""
        from kt_stardist.predict.psf import gaussian_bias_px

        psf, note = self._build_psf()
        if psf is None:
            self.bias_note = f"no PSF bias correction: {note}"
            return
        good = self.ok & np.isfinite(self.photons) & np.isfinite(self.background)
        width = self.psf if self.psf is not None else self.sigma0
        prior = (width, self.settings.width_spread) if self.settings.width_spread > 0 else None
        bias = gaussian_bias_px(psf, np.median(self.photons[good]), np.median(self.background[good]) + self.camera.shift,
                                self.half, width, self.bounds, sigma_prior=prior)
        bias_nm = bias * self.vs * 1000.0
        # how far the measured PSF's noise moves the estimate: a spot's position uncertainty
        # averaged over the spots the PSF came from
        se_nm = np.median(self.crlb_px[good] * self.overdispersion[good, None], axis=0) * self.vs * 1000.0 \
            / np.sqrt(psf.n_spots)
        floor = np.maximum(self.settings.psf_bias_min_nm, self.settings.psf_bias_min_se * se_nm)
        take = np.abs(bias_nm) >= floor
        said = (f"PSF from {psf.n_spots} spots, Gaussian bias {np.round(bias_nm, 1).tolist()} nm "
                f"± {np.round(se_nm, 1).tolist()} (z, y, x)")
        if not take.any():
            self.bias_note = f"{said}: within {np.round(floor, 1).tolist()} nm, not corrected"
            return
        shift = np.where(take, bias, 0.0)  # px
        self.out[self.ok] -= shift
        self.bias_nm = bias_nm = shift * self.vs * 1000.0
        self.bias_note = f"{said}: {np.round(bias_nm, 1).tolist()} nm taken off"

    def measure_psf(self, passes, max_group, box_px=2):
        """The ``spline`` method, after the Gaussian passes: the image's PSF is measured from its
        well-fitted isolated spots (:func:`kt_stardist.predict.psf.build_psf`, box: the fit
        window + ``box_px`` px), every group is refitted with it (``passes`` passes), the PSF is
        measured again from these fits and the groups refitted once more. With too few spots
        the Gaussian fits stay (``psf_note`` says why)."""
        for _ in range(2):
            psf, note = self._build_psf(box_px)
            if psf is None:
                self.psf_note = self.psf_note or note
                return
            self.spot_model = self.measured = psf
            self.psf_note = note
            self.run(passes, max_group)

    def table(self):
        """The :data:`FIT_COLUMNS` of every point (DataFrame): ``sigma_*_nm`` the reported
        uncertainty (:func:`reported_sigma_nm`); ``attrs``: ``crlb_nm`` (N lists z, y, x: the
        Cramér–Rao bound alone, nm), ``psf`` (the measured :class:`kt_stardist.predict.psf.SplinePsf` or
        None) and ``psf_note``."""
        crlb_nm = self.crlb_px * self.vs * 1000.0
        tab = _fit_table(self.ok, reported_sigma_nm(crlb_nm, self.overdispersion), self.photons, self.background,
                         self.extended)
        # a list, not an array: pandas compares attrs when it concatenates tables
        tab.attrs.update(crlb_nm=crlb_nm.tolist(), psf=self.measured, psf_note=self.psf_note,
                         psf_bias_nm=None if self.bias_nm is None else self.bias_nm.tolist(),
                         psf_bias_note=self.bias_note)
        return tab


#: systematic floor of the position uncertainty (z, y, x nm), added in quadrature: what a fit's
#: model misses and its Fisher information cannot see (background texture under the spot, the
#: residual light of neighbours, each spot's own shape). Chosen on simulated design volumes
#: (Gaussian simulator, voxel 0.3 × 0.13 × 0.13 µm, seeds 30000+): std(error / sigma) within
#: 0.8-1.25 over easy, mid, hard and close sisters (without it easy z is ~1.7), while perfectly
#: modelled bright spots (no texture, crlb z ~12 nm) stay above 0.8 (a floor of 10 nm z would
#: make them 0.78).
SIGMA_FLOOR_NM = (8.0, 2.0, 2.0)


def reported_sigma_nm(crlb_nm, overdispersion):
    """The uncertainty (N, 3) nm reported per point: the Cramér–Rao bound ``crlb_nm`` (N, 3) nm
    × ``overdispersion`` (N,) (sqrt of the fit's Poisson deviance per degree of freedom, at
    least 1, as quasi-likelihood scales it), and :data:`SIGMA_FLOOR_NM` in quadrature."""
    scaled = np.asarray(crlb_nm, np.float64) * np.asarray(overdispersion, np.float64)[:, None]
    return np.sqrt(scaled ** 2 + np.square(SIGMA_FLOOR_NM))


def _fit_table(ok, sigma_nm, photons, background, extended=None):
    import pandas as pd

    ext = np.zeros(len(ok), bool) if extended is None else np.asarray(extended, bool)
    return pd.DataFrame({"fit_ok": np.asarray(ok, bool), "sigma_z_nm": sigma_nm[:, 0], "sigma_y_nm": sigma_nm[:, 1],
                         "sigma_x_nm": sigma_nm[:, 2], "photons": photons, "background": background,
                         EXTENDED_COLUMN: ext})


def camera_of(volume, settings: RefineSettings):
    """The :class:`kt_stardist.predict.mle.Camera` of ``volume``: from ``settings``' gain and
    zero (read noise 0 unless given), else estimated from the image's background
    (:func:`kt_stardist.predict.mle.estimate_camera`; with only the gain given, the offset)."""
    from kt_stardist.predict.mle import Camera, estimate_camera

    g, z = settings.gain_adu_per_photon, settings.zero_adu
    if g is not None and z is not None:
        return Camera.from_settings(g, z, settings.read_noise_adu)
    return estimate_camera(volume, gain=g)


def refine_points(volume, points_px, voxel_size_um=VOXEL_SIZE_UM, settings: RefineSettings = RefineSettings(),
                  return_fit: bool = False):
    """Sub-voxel positions from raw intensities around each detection.

    Parameters
    ----------
    volume : ndarray (Z, Y, X)
        Raw intensities (camera counts) of the spot channel, image px. A lazy (dask) volume is
        read window by window.
    points_px : (N, 3) float px (z, y, x)
        Starting positions (e.g. NMS centres on the network's grid).
    voxel_size_um : (z, y, x) µm of ``volume``.
    settings : :class:`kt_stardist.settings.RefineSettings` (method ``gauss``, ``lsq``,
        ``centroid`` or ``none``; windows, PSF start, passes, neighbours, max shift, joint
        groups, camera).
    return_fit : also return the :data:`FIT_COLUMNS` table (see :func:`refine_and_split`).

    Returns
    -------
    (N, 3) float64 px [, DataFrame of N rows].
    """
    res = refine_and_split(volume, points_px, voxel_size_um, settings, SplitSettings(enabled=False),
                           return_fit=return_fit)
    return (res[0], res[2]) if return_fit else res[0]


def refine_and_split(volume, points_px, voxel_size_um=VOXEL_SIZE_UM, settings: RefineSettings = RefineSettings(),
                     split: SplitSettings = SplitSettings(), return_fit: bool = False):
    """:func:`refine_points`, then (``split.enabled``, methods "gauss" and "lsq") a search for
    close sisters that the detector merged into one detection: each fitted detection is tested
    for a second spot (:class:`kt_stardist.settings.SplitSettings`; see the module docstring).
    With ``gauss``, the two spots of a split are then fitted jointly by maximum likelihood.

    Returns
    -------
    points : (M, 3) float64 px, M >= N: the N refined detections, then the second spots found.
    parent : (M,) int, the detection each point comes from (``parent[:N] == arange(N)``).
    fit : with ``return_fit``, a DataFrame of M rows, :data:`FIT_COLUMNS` and
        :data:`EXTENDED_COLUMN`: ``fit_ok`` (the
        maximum-likelihood fit converged, its Poisson deviance per degree of freedom is at most
        ``max_deviance``, it stays inside ``max_shift_um`` of the detection and was not pulled
        onto a neighbour; False: the position fell back to the centroid or the start, and for
        methods other than ``gauss``), ``sigma_z_nm, sigma_y_nm, sigma_x_nm`` (uncertainty of
        the position, nm: the Cramér–Rao standard deviation, × sqrt(deviance / dof) where that
        exceeds 1, :data:`SIGMA_FLOOR_NM` in quadrature; NaN where not ``fit_ok``; the bound
        alone in ``attrs["crlb_nm"]``), ``photons`` (the
        spot's total photons) and ``background`` (photons per voxel under the spot), NaN where
        no fit converged; ``extended`` (:data:`EXTENDED_COLUMN`: the accepted fit's lateral
        widths ran to their upper bound, extended structure rather than a spot).
    """
    from kt_stardist import outofcore as O

    vol = volume if O.is_lazy(volume) else np.asarray(volume)  # lazy: only the windows are read
    pts = np.asarray(points_px, np.float64).reshape(-1, 3)
    parent = np.arange(len(pts))
    method = settings.method

    def result(points, par, fitter=None):
        if method == "gauss" and settings.psf_bias and isinstance(fitter, _MleFitter):
            fitter.correct_bias()  # in place: ``points`` is ``fitter.out``
        if not return_fit:
            return points, par
        if isinstance(fitter, _MleFitter):
            return points, par, fitter.table()
        n = len(points)
        ok = np.zeros(n, bool)
        return points, par, _fit_table(ok, np.full((n, 3), np.nan), np.full(n, np.nan), np.full(n, np.nan))

    if method == "none" or len(pts) == 0:
        return result(pts.copy(), parent)
    if method in ("gauss", "spline"):
        fitter = _MleFitter(vol, pts, voxel_size_um, settings, camera_of(vol, settings))
        fitter.run(settings.passes, settings.max_group)
        if method == "spline":
            fitter.measure_psf(settings.psf_passes, settings.max_group)
            if fitter.measured is None:
                import warnings

                warnings.warn(f"refine spline: {fitter.psf_note}", stacklevel=2)
    else:
        fitter = _Fitter(vol, pts, voxel_size_um, settings)
    if method == "centroid":
        for i in range(len(pts)):
            coords, vals = fitter.window(pts[i])
            if vals.size >= 8:
                fitter.out[i] = fitter.centroid(i, coords, vals)
        return result(fitter.out, parent)
    if method == "lsq":
        fitter.first_pass(settings.max_group)
        for _ in range(settings.passes - 1):
            fitter.next_pass()
    found = list(fitter.second_spots(split)) if split.enabled else []
    if not found:
        return result(fitter.out, parent, fitter)
    if method in ("gauss", "spline"):
        n = len(pts)
        pairs = [[i, n + m] for m, (i, _) in enumerate(found)]
        fitter.extend(np.array([pair[1] for _, pair in found]))
        for (i, pair), g in zip(found, pairs):
            fitter.out[g] = pair
            fitter.pts[i] = pair[0]  # the split's spots are bounded around the two-spot fit
        fitter.pts_um = fitter.pts * fitter.vs
        fitter.ok[[g[0] for g in pairs]] = False
        fitter.fit_groups(pairs, with_fixed=True, fresh=True)
        return result(fitter.out, np.concatenate([parent, [i for i, _ in found]]), fitter)
    out = fitter.out.copy()
    for i, pair in found:  # the detection becomes the first of the two spots
        out[i] = pair[0]
    return result(np.vstack([out, [pair[1] for _, pair in found]]), np.concatenate([parent, [i for i, _ in found]]),
                  fitter)
