"""Maximum-likelihood fits of 3D Gaussian spots under the camera's noise model, batched.

The engine behind ``RefineSettings(method="gauss")`` (:mod:`kt_stardist.predict.refine`).

Noise model
    A camera count is ``offset + gain · Poisson(photons) + Normal(0, read_noise)``. As sCMOS
    localisation tools do (Huang et al. 2013), the read noise is folded into the Poisson
    likelihood by shifting both data and model by ``s = (read_noise / gain)²`` photons:
    ``d = (counts - offset) / gain + s`` is treated as Poisson with mean ``μ + s``. Both only
    need the *effective offset* ``offset - read_noise² / gain`` and the gain: :class:`Camera`.

Camera from the image
    When the gain or offset is not given, :func:`estimate_camera` reads them off the image's
    mean–variance line: in tiles of 8 × 8 px of a few z-planes, the local mean and the variance
    of neighbouring-voxel differences along x (half the mean squared difference: smooth
    background structure cancels) are taken; tiles are binned by their mean, and the median
    variance per bin (spots and texture only add variance) is fitted by a robust line
    ``var = gain · (mean - effective offset)``: the slope is the gain (counts per photon), the
    x-intercept the effective offset. Where the variance does not grow with the mean (no shot
    noise visible, e.g. processed data), the offset is taken as the image's 0.1th percentile and
    the gain as background variance / (background mean - offset).

Model
    ``μ(x) = b0 + b · (x - window centre) + Σ_k N_k · Π_axes P(x_a; c_ka, σ_a) + fixed(x)``:
    each spot ``k`` a Gaussian of ``N_k`` photons integrated over the voxels (``P``: erf
    differences, as the simulator renders), centre ``c_k`` (z, y, x px) and its own sigma per
    axis (kinetochores differ in size; a width shared by close sisters biases them); a linear
    background (photons per voxel); and
    ``fixed``: the already fitted neighbours outside the fit, held fixed. The spot model is
    pluggable (``fit_spots(spots=...)``): :data:`GAUSSIAN` (the above), or the PSF measured from
    the image (:class:`kt_stardist.predict.psf.SplinePsf`, ``spline`` method), each with
    ``n_shape`` shape parameters per spot (widths).

Fitting
    Levenberg–Marquardt on the Poisson negative log-likelihood with Fisher scoring (the
    Hessian approximated by the Fisher information ``Σ J Jᵀ / μ``), vectorised over a batch of
    fits with the same number of spots; windows of different size are padded and masked
    (``weights`` 0). Centres are kept within per-spot bounds, sigmas within bounds.

Uncertainty
    The Cramér–Rao bound of the fitted model: the inverse of the Poisson Fisher information at
    the fit (all parameters free: background, photons and sigma included), square root of its
    diagonal.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["Camera", "MleFit", "estimate_camera", "fit_spots", "gram", "peak_fraction", "spot_photons"]

_SQRT2 = np.sqrt(2.0)
_SQRT2PI = np.sqrt(2.0 * np.pi)


class Camera(NamedTuple):
    """counts → photons: ``photons = (counts - offset) / gain``, ``offset`` effective (the read
    noise folded in, see the module docstring); ``shift``: ``(read_noise / gain)²`` photons
    included in the fitted background (0 when unknown); ``estimated``: read off the image."""

    gain: float
    offset: float
    shift: float = 0.0
    estimated: bool = False

    @classmethod
    def from_settings(cls, gain, offset, read_noise=None):
        """Known gain (counts/photon), offset (counts) and read noise (counts rms, None: 0)."""
        rn = float(read_noise or 0.0)
        g = float(gain)
        return cls(g, float(offset) - rn ** 2 / g, (rn / g) ** 2, False)

    def photons(self, counts):
        """Shifted photons (Poisson) of ``counts``."""
        return (np.asarray(counts, np.float64) - self.offset) / self.gain


def _tile_stats(plane, tile=8):
    """(mean, variance from x-differences) of the ``tile`` × ``tile`` tiles of a 2D plane."""
    ny, nx = (plane.shape[0] // tile) * tile, (plane.shape[1] // tile) * tile
    if ny == 0 or nx == 0:
        return np.zeros(0), np.zeros(0)
    p = plane[:ny, :nx].astype(np.float64).reshape(ny // tile, tile, nx // tile, tile)
    mean = p.mean(axis=(1, 3))
    d = np.diff(p, axis=3)
    var = 0.5 * np.mean(d ** 2, axis=(1, 3))
    return mean.ravel(), var.ravel()


def estimate_camera(volume, gain=None, n_planes=8, tile=8, n_bins=16) -> Camera:
    """Gain (counts/photon) and effective offset (counts) of ``volume`` (Z, Y, X counts; a lazy
    volume is read plane by plane) from its mean–variance line (module docstring). ``gain``:
    known gain (only the offset is estimated)."""
    from scipy.stats import chi2, theilslopes

    from kt_stardist import outofcore as O

    nz = volume.shape[0]
    zs = np.unique(np.linspace(0, nz - 1, min(n_planes, nz)).round().astype(int))
    means, varis, lows = [], [], []
    for z in zs:
        plane = O.read(volume, (slice(int(z), int(z) + 1), slice(None), slice(None)))[0]
        plane = np.where(np.isfinite(plane), plane, np.nan)
        m, v = _tile_stats(plane, tile)
        ok = np.isfinite(m) & np.isfinite(v)
        means.append(m[ok]), varis.append(v[ok])
        if np.isfinite(plane).any():
            lows.append(np.nanpercentile(plane, 0.1))
    m, v = np.concatenate(means), np.concatenate(varis)
    low = float(np.min(lows)) if lows else 0.0
    dof = tile * (tile - 1)
    v = v * dof / chi2.median(dof)  # median → mean of a chi-square variance estimate
    if len(m) >= 3 * n_bins:
        edges = np.unique(np.quantile(m, np.linspace(0, 1, n_bins + 1)))
        b = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
        bm = np.array([np.median(m[b == k]) for k in range(len(edges) - 1) if np.any(b == k)])
        bv = np.array([np.median(v[b == k]) for k in range(len(edges) - 1) if np.any(b == k)])
    else:
        bm, bv = m, v
    if len(bm) >= 3:
        if gain is None:
            slope, icpt, lo_slope, _ = theilslopes(bv, bm)
            if np.isfinite(slope) and slope > 0 and lo_slope > 0:
                off = -icpt / slope
                if off < np.min(bm):
                    return Camera(float(slope), float(off), 0.0, True)
        else:
            off = float(np.median(bm - bv / float(gain)))
            if off < np.min(bm):
                return Camera(float(gain), off, 0.0, True)
    # no shot noise visible: offset at the image's floor, gain from the background's variance
    bg_m = float(np.median(m)) if len(m) else 1.0
    bg_v = float(np.median(v)) if len(v) else 1.0
    g = float(gain) if gain is not None else bg_v / max(bg_m - low, 1e-6 * max(abs(bg_m), 1.0))
    g = g if np.isfinite(g) and g > 0 else 1.0
    return Camera(g, min(low, bg_m - bg_v / g), 0.0, True)


def peak_fraction(sigma_px):
    """Fraction of a voxel-centred integrated Gaussian's photons in its central voxel."""
    from scipy.special import erf

    return np.prod(erf(0.5 / (_SQRT2 * np.asarray(sigma_px, np.float64))), axis=-1)


class _Gather(NamedTuple):
    """Where each voxel of a batch of windows with whole-number coordinates reads its per-axis
    profiles (:func:`_profiles`): ``base`` (B, 3) px, each window's lowest coordinate per axis;
    ``length`` L, the per-axis grid's length; ``loc`` (B, K, N, 3), each voxel's offset into its
    window's (K, L, 3) profiles. Built once per batch of fits (:func:`gather_plan`); ``rows``
    selects the fits still running."""

    base: np.ndarray
    length: int
    loc: np.ndarray

    def rows(self, idx):
        return _Gather(self.base[idx], self.length, self.loc[idx])


def gather_plan(coords, K):
    """The :class:`_Gather` of ``coords`` (B, N, 3) px for K spots per window, or None when the
    coordinates are not voxel centres (whole numbers) or the windows are small (≤ 64 voxels):
    then :func:`_profiles` evaluates every voxel directly."""
    coords = np.asarray(coords)
    if not (coords.shape[1] > 64 and np.all(coords[:, :64] == np.round(coords[:, :64]))):
        return None
    base = coords.min(axis=1)                                          # (B, 3)
    idx = (coords - base[:, None, :]).astype(np.intp)                  # (B, N, 3)
    length = int(idx.max()) + 1
    loc = (np.arange(int(K))[None, :, None, None] * length + idx[:, None]) * 3 + np.arange(3)
    return _Gather(base, length, loc)


def _profiles(coords, centres, sigma, derivatives=True, plan=None):
    """Per-axis integrated profiles of K Gaussians at ``coords`` (B, N, 3) px: P (B, K, N, 3) and,
    with ``derivatives``, dP/dc and dP/dσ (same shape). ``centres``, ``sigma`` (B, K, 3) px.
    Voxel coordinates (whole numbers) are computed once per distinct value of each axis, then
    gathered (``plan``: their :func:`gather_plan`, None: made here)."""
    from scipy.special import erf

    B, K = centres.shape[:2]
    plan = gather_plan(coords, K) if plan is None else plan
    if plan is not None:
        grid = plan.base[:, None, :] + np.arange(plan.length)[None, :, None]   # (B, L, 3)
    else:
        grid = coords
    t = grid[:, None, :, :] - centres[:, :, None, :]
    s = sigma[:, :, None, :]
    hi, lo = t + 0.5, t - 0.5
    out = [0.5 * (erf(hi / (_SQRT2 * s)) - erf(lo / (_SQRT2 * s)))]
    if derivatives:
        phi_hi = np.exp(-0.5 * (hi / s) ** 2) / (_SQRT2PI * s)
        phi_lo = np.exp(-0.5 * (lo / s) ** 2) / (_SQRT2PI * s)
        out += [phi_lo - phi_hi, (lo * phi_lo - hi * phi_hi) / s]
    if plan is not None:  # one flat gather per array (each is a fresh C-contiguous (B, K, L, 3))
        flat = plan.loc + (np.arange(B) * (K * plan.length * 3))[:, None, None, None]
        out = [np.take(o, flat) for o in out]
    return out[0], (out[1] if derivatives else None), (out[2] if derivatives else None)


def spot_photons(coords, centre, photons, sigma, spots=None):
    """Expected photons per voxel at ``coords`` (N, 3) px of one spot (centre (3,) px,
    ``photons`` total, sigma (3,) px) of the spot model ``spots`` (None: an integrated
    Gaussian of that sigma; a model without shape parameters ignores ``sigma``), or the sum of
    K spots (centre (K, 3), photons (K,), sigma (K, 3)): evaluated in one batch, added in their
    order (the same sums as adding them one by one)."""
    spots = GAUSSIAN if spots is None else spots
    c = np.asarray(centre, np.float64)
    one = c.ndim == 1
    c = c.reshape(-1, 3)
    shape = np.asarray(sigma, np.float64).reshape(len(c), 3)[:, :spots.n_shape]
    G, _, _ = spots.unit(np.asarray(coords, np.float64)[None], c[None], shape[None], derivatives=False)
    each = np.asarray(photons, np.float64).reshape(len(c), 1) * G[0]
    if one:
        return each[0]
    out = np.zeros(G.shape[-1])
    for row in each:
        out += row
    return out


class MleFit(NamedTuple):
    """Result of :func:`fit_spots` for a batch of B fits of K spots each. Positions px (z, y, x).

    ``centres`` (B, K, 3); ``photons`` (B, K) total photons per spot; ``sigma`` (B, K, 3) px
    PSF sigma of each spot; ``background`` (B, K) photons per voxel at each spot (fitted plane, the camera's
    ``shift`` included); ``crlb`` (B, K, 3) px, the Cramér–Rao standard deviation of each
    centre; ``converged`` (B,); ``deviance`` (B,) Poisson deviance; ``dof`` (B,) voxels minus
    parameters; ``iterations`` (B,)."""

    centres: np.ndarray
    photons: np.ndarray
    sigma: np.ndarray
    background: np.ndarray
    crlb: np.ndarray
    converged: np.ndarray
    deviance: np.ndarray
    dof: np.ndarray
    iterations: np.ndarray


class GaussianSpots:
    """The spot model of the ``gauss`` method: a 3D Gaussian integrated over the voxels, its own
    sigma per axis and spot (3 shape parameters, px). Any spot model for :func:`fit_spots` has
    ``n_shape`` and these three methods (e.g. :class:`kt_stardist.predict.psf.SplinePsf`)."""

    n_shape = 3

    def unit(self, coords, centres, shape, derivatives=True, plan=None):
        """Fraction of each spot's photons per voxel at ``coords`` (B, N, 3) px, spots at
        ``centres`` (B, K, 3) px with shape parameters ``shape`` (B, K, n_shape): G (B, K, N)
        and, with ``derivatives``, dG/dcentre (B, K, N, 3) and dG/dshape (B, K, N, n_shape).
        ``plan``: the coordinates' :func:`gather_plan` when the caller made it (a fit's
        iterations share it)."""
        P, dPc, dPs = _profiles(coords, centres, shape, derivatives=derivatives, plan=plan)
        G = np.prod(P, axis=-1)
        if not derivatives:
            return G, None, None
        # products of the other two axes' profiles
        others = np.stack([P[..., 1] * P[..., 2], P[..., 0] * P[..., 2], P[..., 0] * P[..., 1]], -1)
        return G, dPc * others, dPs * others

    def peak_fraction(self, shape):
        """Fraction of a voxel-centred spot's photons in its central voxel, (B, K)."""
        return peak_fraction(shape)

    def widths(self, shape):
        """Gaussian sigma (B, K, 3) px of spots of shape parameters ``shape``."""
        return shape


GAUSSIAN = GaussianSpots()


def _model(theta, coords, dc, fixed, K, jac=True, spots=GAUSSIAN, plan=None):
    """μ (B, N) and, with ``jac``, J (B, N, P) of parameters theta (B, P): [centres K×3,
    photons K, shape parameters K×S (``spots.n_shape``; Gaussian: sigmas), b0, slopes 3].
    ``plan``: the Gaussian model's :func:`gather_plan` of ``coords`` (None: none given)."""
    B = theta.shape[0]
    S = spots.n_shape
    c = theta[:, :3 * K].reshape(B, K, 3)
    n = theta[:, 3 * K:4 * K]
    s = theta[:, 4 * K:(4 + S) * K].reshape(B, K, S)
    extra = {} if plan is None else {"plan": plan}
    G, dGc, dGs = spots.unit(coords, c, s, derivatives=jac, **extra)  # G (B, K, N)
    b = (4 + S) * K
    mu = theta[:, b, None] + np.einsum("bna,ba->bn", dc, theta[:, b + 1:]) + \
        np.einsum("bk,bkn->bn", n, G) + fixed
    if not jac:
        return mu, None
    d_c = n[:, :, None, None] * dGc                     # (B, K, N, 3)
    d_s = n[:, :, None, None] * dGs                     # (B, K, N, S)
    Nv = coords.shape[1]
    J = np.concatenate([d_c.transpose(0, 2, 1, 3).reshape(B, Nv, 3 * K), G.transpose(0, 2, 1),
                        d_s.transpose(0, 2, 1, 3).reshape(B, Nv, S * K), np.ones((B, Nv, 1)), dc], axis=2)
    return mu, J


_BLAS = None


def gram(J, weights=None):
    """``Jᵀ diag(weights) J`` of a batch of fits: J (B, N, P), weights (B, N) or None → (B, P, P).

    A batched matrix product on *one* BLAS thread: about ten times faster than the equivalent
    ``np.einsum`` (which runs no BLAS at all), and, unlike threaded BLAS, its sums do not depend
    on how many threads the machine or a dask worker allows, so every process gives the same
    fits bit for bit. Shared by :func:`fit_spots` and the sister search's least squares."""
    global _BLAS
    if _BLAS is None:
        from threadpoolctl import ThreadpoolController

        _BLAS = ThreadpoolController()
    Jw = J if weights is None else J * weights[..., None]
    with _BLAS.limit(limits=1, user_api="blas"):
        return np.matmul(Jw.transpose(0, 2, 1), J)


def _nll(mu, d, w, floor):
    mu = np.maximum(mu, floor)
    return np.sum(w * (mu - d * np.log(mu)), axis=1)


def bounded_step(H, grad, theta, lo, hi, damp, diag):
    """One damped Newton step of a batch of B fits, kept inside the bounds: ``theta`` (B, P)
    plus the solution of ``(H + diag(damp)) step = -grad`` (H (B, P, P), grad and damp (B, P)),
    clipped to ``lo``, ``hi`` (B, P). A parameter at a bound that the descent would push out of
    it is held (its damping raised to 1e12 × ``diag``, H's diagonal): an active set, so the
    others move freely. The Levenberg–Marquardt step of :func:`fit_spots` and of the sister
    search's least squares (:func:`kt_stardist.predict.refine.gauss_fit_batch`)."""
    pinned = ((theta <= lo + 1e-9) & (grad > 0)) | ((theta >= hi - 1e-9) & (grad < 0))
    A = H + np.where(pinned, 1e12 * diag, damp)[:, :, None] * np.eye(H.shape[1])
    try:
        step = -np.linalg.solve(A, grad[..., None])[..., 0]
    except np.linalg.LinAlgError:
        step = -np.stack([np.linalg.lstsq(a, g, rcond=None)[0] for a, g in zip(A, grad)])
    return np.clip(theta + np.nan_to_num(step), lo, hi)


def fit_spots(data, coords, weights, starts, lo, hi, sigma0, sigma_bounds=(0.5, 2.0), fixed=None,
              max_iter=100, tol_px=1e-3, tol_nll=1e-6, warmup=5, sigma_start=None, sigma_prior=None,
              spots=None) -> MleFit:
    """Poisson maximum-likelihood fits of B windows, K spots each (module docstring).

    Parameters
    ----------
    data : (B, N) photons (shifted, :meth:`Camera.photons`) at ``coords`` (B, N, 3) px z, y, x.
    weights : (B, N) 1 for the voxels fitted, 0 for padding / voxels left out.
    starts : (B, K, 3) px start centres; ``lo``, ``hi`` (B, K, 3) px bounds of each centre.
    sigma0 : (3,), (B, 3) or (B, K, 3) px PSF sigma, each spot's kept within ``sigma_bounds`` ×
        it; the start unless ``sigma_start`` ((B, 3) or (B, K, 3) px) is given.
    fixed : (B, N) photons of spots outside the fit (fitted neighbours), or None.
    tol_px, tol_nll : converged when an accepted step moves no centre or sigma by more than
        ``tol_px`` px or changes the negative log-likelihood by less than ``tol_nll``.
    sigma_prior : None, or (sigma (3,) px, relative sd): a Gaussian prior on each spot's sigma
        (maximum a posteriori; its information is added to the Fisher information): a dim
        spot's width then follows the image's PSF instead of its noise.
    warmup : iterations with the sigmas held at ``sigma0`` (a far start otherwise lets the width
        run to its bound first).
    spots : the spot model (None: :data:`GAUSSIAN`, integrated Gaussians whose shape parameters
        are the sigmas above); a model without shape parameters (``n_shape`` 0, e.g. the
        image's own PSF, :class:`kt_stardist.predict.psf.SplinePsf`) ignores the sigma
        arguments, and :attr:`MleFit.sigma` holds its Gaussian-equivalent width.
    """
    data = np.asarray(data, np.float64)
    B = data.shape[0]
    starts = np.asarray(starts, np.float64).reshape(B, -1, 3)
    K = starts.shape[1]
    spots = GAUSSIAN if spots is None else spots
    S = spots.n_shape  # shape parameters per spot: 3 (sigmas) or 0
    w = np.asarray(weights, np.float64)
    d = np.where(w > 0, np.maximum(np.nan_to_num(data, nan=0.0), 0.0), 0.0)
    coords = np.asarray(coords, np.float64)
    fixed = np.zeros_like(d) if fixed is None else np.asarray(fixed, np.float64)
    s_ref = np.broadcast_to(np.asarray(sigma0, np.float64).reshape(-1, 1, 3)
                            if np.ndim(sigma0) == 2 else np.asarray(sigma0, np.float64), (B, K, 3))
    s_st = s_ref if sigma_start is None else np.asarray(sigma_start, np.float64)
    s_st = s_st.reshape(B, 1, 3) if s_st.shape == (B, 3) else s_st
    s0 = np.clip(np.broadcast_to(s_st, (B, K, 3)), sigma_bounds[0] * s_ref, sigma_bounds[1] * s_ref)
    sw = np.maximum(w.sum(1, keepdims=True), 1)
    centre = (coords * w[..., None]).sum(1) / sw
    dc = (coords - centre[:, None, :]) * w[..., None]
    # start: background at the 20th percentile, photons from the voxel nearest each start
    masked = np.where(w > 0, d, np.nan)
    with np.errstate(all="ignore"):
        bg0 = np.nan_to_num(np.nanpercentile(masked, 20, axis=1), nan=1.0)
    bg0 = np.maximum(bg0, 1e-3)
    near = np.argmin(np.sum((coords[:, None] - starts[:, :, None]) ** 2, -1) + 1e12 * (w[:, None] == 0), axis=2)
    peak = np.take_along_axis(d, near, axis=1) - bg0[:, None]
    n0 = np.maximum(peak, 1.0) / spots.peak_fraction(s0[..., :S])
    theta = np.concatenate([starts.reshape(B, 3 * K), n0, s0[..., :S].reshape(B, S * K), bg0[:, None],
                            np.zeros((B, 3))], axis=1)
    sh = slice(4 * K, (4 + S) * K)  # the shape parameters in theta
    nb = (4 + S) * K                # the background's index in theta
    P = theta.shape[1]
    lo_t = np.full((B, P), -np.inf)
    hi_t = np.full((B, P), np.inf)
    lo_t[:, :3 * K] = np.asarray(lo, np.float64).reshape(B, 3 * K)
    hi_t[:, :3 * K] = np.asarray(hi, np.float64).reshape(B, 3 * K)
    lo_t[:, 3 * K:4 * K] = 1e-3
    lo_t[:, sh] = sigma_bounds[0] * s_ref[..., :S].reshape(B, S * K)
    hi_t[:, sh] = sigma_bounds[1] * s_ref[..., :S].reshape(B, S * K)
    theta = np.clip(theta, lo_t, hi_t)
    floor = 1e-6
    prec = s_mean = None
    if sigma_prior is not None and S == 3:
        s_mean = np.broadcast_to(np.asarray(sigma_prior[0], np.float64), (B, K, 3)).reshape(B, 3 * K)
        prec = 1.0 / (float(sigma_prior[1]) * s_mean) ** 2

    def prior_nll(th, rows=slice(None)):
        if prec is None:
            return 0.0
        return 0.5 * np.sum(prec[rows] * (th[:, sh] - s_mean[rows]) ** 2, axis=1)

    lam = np.full(B, 1e-2)
    plan = gather_plan(coords, K) if isinstance(spots, GaussianSpots) else None  # shared by every iteration
    mu, _ = _model(theta, coords, dc, fixed, K, jac=False, spots=spots, plan=plan)
    nll = _nll(mu, d, w, floor) + prior_nll(theta)
    active = np.isfinite(nll)
    converged = np.zeros(B, bool)
    iters = np.zeros(B, int)
    for it in range(max_iter):
        idx = np.flatnonzero(active)
        if len(idx) == 0:
            break
        th = theta[idx]
        plan_i = None if plan is None else plan.rows(idx)
        mu, J = _model(th, coords[idx], dc[idx], fixed[idx], K, spots=spots, plan=plan_i)
        mu = np.maximum(mu, floor)
        wi, di = w[idx], d[idx]
        grad = np.einsum("bn,bnp->bp", wi * (1.0 - di / mu), J)  # einsum: no BLAS threads
        H = gram(J, wi / mu)
        if prec is not None:
            grad[:, sh] += prec[idx] * (th[:, sh] - s_mean[idx])
            H[:, np.arange(4 * K, nb), np.arange(4 * K, nb)] += prec[idx]
        diag = np.maximum(np.einsum("bpp->bp", H), 1e-12)
        damp = lam[idx, None] * diag
        if it < warmup:  # the PSF width held at its start until centres and photons settle
            damp[:, sh] = 1e12 * diag[:, sh]
        new = bounded_step(H, grad, th, lo_t[idx], hi_t[idx], damp, diag)
        mu_new, _ = _model(new, coords[idx], dc[idx], fixed[idx], K, jac=False, spots=spots, plan=plan_i)
        nll_new = _nll(mu_new, di, wi, floor) + prior_nll(new, idx)
        better = np.isfinite(nll_new) & (nll_new <= nll[idx])
        moved = np.abs(new - th)
        small = (moved[:, :3 * K].max(1) < tol_px) & (moved[:, sh].max(1, initial=0.0) < tol_px)
        small |= np.abs(nll[idx] - nll_new) < tol_nll  # a flat valley: the likelihood no longer moves
        theta[idx[better]] = new[better]
        nll[idx[better]] = nll_new[better]
        lam[idx] = np.where(better, np.maximum(lam[idx] / 10, 1e-7), lam[idx] * 10)
        iters[idx] += 1
        done = ((better & small) | (lam[idx] > 1e8)) & (it >= warmup)
        converged[idx[done]] = True
        active[idx[done]] = False
    # Fisher information at the fit
    mu, J = _model(theta, coords, dc, fixed, K, spots=spots, plan=plan)
    mu = np.maximum(mu, floor)
    fisher = gram(J, w / mu)
    if prec is not None:
        fisher[:, np.arange(4 * K, nb), np.arange(4 * K, nb)] += prec
    with np.errstate(all="ignore"):
        try:
            cov_diag = np.einsum("bpp->bp", np.linalg.inv(fisher))
        except np.linalg.LinAlgError:
            cov_diag = np.stack([np.diag(np.linalg.pinv(f)) for f in fisher])
        crlb = np.sqrt(np.where(cov_diag > 0, cov_diag, np.nan))[:, :3 * K].reshape(B, K, 3)
        from scipy.special import xlogy

        dev = 2.0 * np.sum(w * (mu - d + xlogy(d, d) - xlogy(d, mu)), axis=1)
    c = theta[:, :3 * K].reshape(B, K, 3)
    bg = theta[:, nb, None] + np.einsum("bka,ba->bk", c - centre[:, None, :], theta[:, nb + 1:])
    dof = w.sum(1) - P
    widths = np.broadcast_to(spots.widths(theta[:, sh].reshape(B, K, S)), (B, K, 3)).copy()
    return MleFit(c, theta[:, 3 * K:4 * K].copy(), widths, bg, crlb,
                  converged & np.isfinite(nll), dev, dof, iters)
