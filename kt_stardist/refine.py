"""Sub-voxel spot positions from the raw intensities around each detection.

A detector's positions sit on its output grid (StarDist (1, 2, 2): 0.3 × 0.26 × 0.26 µm
cells). :func:`refine_points` moves each one to the centre of the spot in the image:

* ``gauss``: least-squares fit of a 3D Gaussian on a flat background in a window of about one
  PSF width on each side (:data:`REFINE_HALF_UM`). Detections whose windows overlap (close
  sisters, ~0.3–1 µm apart) are fitted *jointly*, one Gaussian each on a shared background, so
  a neighbour's light is explained rather than cut away; larger clumps fall back to one fit per
  detection on the voxels nearer to it than to any other (its Voronoi cell);
* ``centroid``: background-subtracted intensity-weighted centroid, iterated in a soft window;
* ``none``: keep the positions.

A fit that fails or moves further than ``max_shift_um`` falls back to the centroid, and that,
if it too moves too far, to the start. Positions are px (z, y, x) of the volume given.
"""

from __future__ import annotations

import numpy as np

from kt_stardist.defaults import VOXEL_SIZE_UM

#: refinement window half-size, µm (z, y, x): about one PSF width on each side
REFINE_HALF_UM = (0.6, 0.4, 0.4)

#: starting Gaussian sigma, µm (z, y, x)
PSF_SIGMA_UM = (0.25, 0.11, 0.11)

#: largest shift from the start a fit may make, µm (z, y, x)
MAX_SHIFT_UM = (0.45, 0.3, 0.3)

#: most detections fitted jointly; larger groups of overlapping windows are fitted one by one
MAX_GROUP = 4


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


def gauss_fit(vals, coords, starts, sigma0, max_shift):
    """Least-squares fit of K 3D Gaussians (each its own centre, sigmas and amplitude) on one
    flat background to intensities ``vals`` at ``coords`` (px).

    ``starts`` (K, 3) px; ``sigma0`` (3,) px start (bounded to 0.3–3×); each centre stays within
    ``max_shift`` (3,) px of its start. Returns (K, 3) centres px, or None when the fit fails.
    Analytic Jacobian (~10× faster than finite differences).
    """
    from scipy.optimize import least_squares

    starts = np.atleast_2d(np.asarray(starts, np.float64))
    K = len(starts)
    bg0 = float(np.percentile(vals, 20))
    nearest = [int(np.argmin(np.sum((coords - s) ** 2, axis=1))) for s in starts]
    amp0 = [max(float(vals[n]) - bg0, 1e-6) for n in nearest]
    scale = max(max(amp0), 1e-6)
    x0 = np.concatenate([np.r_[s, sigma0, a] for s, a in zip(starts, amp0)] + [[bg0]])
    lo = np.concatenate([np.r_[s - max_shift, 0.3 * sigma0, 0] for s in starts] + [[-np.inf]])
    hi = np.concatenate([np.r_[s + max_shift, 3.0 * sigma0, np.inf] for s in starts] + [[np.inf]])
    x0 = np.clip(x0, lo + 1e-9, hi - 1e-9)

    def parts(q):
        for k in range(K):
            c, sg, a = q[7 * k:7 * k + 3], q[7 * k + 3:7 * k + 6], q[7 * k + 6]
            u = (coords - c) / sg
            yield u, sg, a, np.exp(-0.5 * np.sum(u ** 2, axis=1))

    def res(q):
        model = np.full(len(vals), q[-1])
        for _, _, a, g in parts(q):
            model += a * g
        return (model - vals) / scale

    def jac(q):
        cols = []
        for u, sg, a, g in parts(q):
            ag = (a * g)[:, None]
            cols += [ag * u / sg, ag * u ** 2 / sg, g[:, None]]
        cols.append(np.ones((len(vals), 1)))
        return np.hstack(cols) / scale

    try:
        r = least_squares(res, x0, jac=jac, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=60 * K)
    except Exception:
        return None
    if not (r.success or r.status == 0):
        return None
    return np.stack([r.x[7 * k:7 * k + 3] for k in range(K)])


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


def refine_points(volume, points_px, voxel_size_um=VOXEL_SIZE_UM, method="gauss", half_um=REFINE_HALF_UM,
                  psf_sigma_um=PSF_SIGMA_UM, max_shift_um=MAX_SHIFT_UM, max_group=MAX_GROUP):
    """Sub-voxel positions from raw intensities around each detection.

    Parameters
    ----------
    volume : ndarray (Z, Y, X)
        Raw (or normalised) intensities of the spot channel, image px. A lazy (dask) volume is
        read window by window.
    points_px : (N, 3) float px (z, y, x)
        Starting positions (e.g. NMS centres on the network's grid).
    voxel_size_um : (z, y, x) µm of ``volume``.
    method : "gauss", "centroid" or "none" (see the module docstring).
    half_um : window half-size (z, y, x) µm.
    psf_sigma_um : starting Gaussian sigma (z, y, x) µm for "gauss".
    max_shift_um : (z, y, x) µm; a fit that moves further than this from the start, or fails,
        falls back to the centroid (and that, if it too moves too far, to the start).
    max_group : detections with overlapping windows are fitted jointly in groups of up to this
        many ("gauss"); 1 fits every detection alone on its Voronoi cell.

    Returns
    -------
    (N, 3) float64 px.
    """
    from scipy.spatial import cKDTree

    from kt_stardist import outofcore as O

    vol = volume if O.is_lazy(volume) else np.asarray(volume)  # lazy: only the windows are read
    pts = np.asarray(points_px, np.float64).reshape(-1, 3)
    if method == "none" or len(pts) == 0:
        return pts.copy()
    if method not in ("gauss", "centroid"):
        raise ValueError(f"refine method must be 'gauss', 'centroid' or 'none', got {method!r}")
    vs = np.asarray(voxel_size_um, np.float64)
    half = np.maximum(np.round(np.asarray(half_um) / vs).astype(int), 1)
    sigma0 = np.asarray(psf_sigma_um) / vs
    max_shift = np.asarray(max_shift_um) / vs
    pts_um = pts * vs
    tree = cKDTree(pts_um)
    radius = float(np.linalg.norm(np.asarray(half_um)) * 2)

    def within(q, p):
        return q is not None and np.all(np.isfinite(q)) and np.all(np.abs(q - p) <= max_shift)

    def alone(i):
        """One detection on its own window, neighbours' Voronoi cells left out."""
        p = pts[i]
        sl = _window(vol.shape, p, half)
        vals = O.read(vol, sl).astype(np.float64).ravel()
        if vals.size < 8:
            return p
        coords = _coords(sl)
        m = _own_mask(coords, i, pts_um, tree, vs, radius)
        if m is not None and m.sum() >= 8:
            coords, vals = coords[m], vals[m]
        c = _centroid(vals, coords, p, half=half)
        q = gauss_fit(vals, coords, p, sigma0, max_shift)[0] if method == "gauss" else c
        if not within(q, p):
            q = c if within(c, p) else p
        return q

    out = pts.copy()
    groups = overlap_groups(pts, half) if method == "gauss" and max_group > 1 else [[i] for i in range(len(pts))]
    for g in groups:
        if len(g) == 1 or len(g) > max_group:
            for i in g:
                out[i] = alone(i)
            continue
        # joint fit in the union of the members' windows
        wins = [_window(vol.shape, pts[i], half) for i in g]
        sl = tuple(slice(min(w[a].start for w in wins), max(w[a].stop for w in wins)) for a in range(3))
        vals = O.read(vol, sl).astype(np.float64).ravel()
        q = gauss_fit(vals, _coords(sl), pts[g], sigma0, max_shift)
        for k, i in enumerate(g):
            out[i] = q[k] if q is not None and within(q[k], pts[i]) else alone(i)
    return out
