"""Track-aided recovery: spots a detector missed in one or two frames of a track, found again
in the image with a likelihood-ratio test.

After linking (:func:`kt_stardist.tracks.track_points`, gap closing), a track seen at frames
``a`` and ``b`` with ``1 <= b - a - 1 <= max_gap_frames`` missing frames in between is searched
for in each missing frame near its linearly interpolated position. In a window around that
position one 3D Gaussian (the PSF) on a linear background is fitted
(:func:`kt_stardist.predict.refine.gauss_fit`), together with the detections of that frame that
lie in or near the window, and compared with the fit without it (background and those
detections only). Both fits are scored by the Poisson log-likelihood of the window in photons;
the spot is kept, with ``recovered=True``, when twice the log-likelihood ratio passes the
threshold of :class:`kt_stardist.settings.RecoverSettings` (``false_alarm``: the probability
that a window of pure background passes).

Counts become photons by ``(counts - zero) / gain``: given in the settings, or measured on the
first frame searched (:func:`kt_stardist.predict.mle.estimate_camera`, a photon-transfer fit of
the noise variance against the mean, the read noise folded into ``zero``, so the photons are
close to Poisson). Axis order z, y, x; positions px, distances µm.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.settings import RecoverSettings
from kt_stardist.validate import check_points_table, check_voxel_size

__all__ = ["background_lr", "end_positions", "gap_positions", "lr_threshold", "null_dof", "recover_points", "spot_lr"]

#: degrees of freedom of the likelihood-ratio statistic: amplitude and centre (z, y, x)
LR_DOF = 4

#: most detections inside a window fitted with the spot (the nearest; farther ones' voxels are left out)
MAX_NEIGHBOURS = 2


def gap_positions(df, max_gap_frames=2) -> pd.DataFrame:
    """Frames where a track is missing between two of its points, and where it should be.

    ``df``: tracked points (``t``, ``track_id``, ``z, y, x`` px). A gap of 1 .. ``max_gap_frames``
    frames between consecutive points of one track gives one row per missing frame: ``t``,
    ``track_id`` and the position ``z, y, x`` (px) interpolated linearly in time.
    """
    if "track_id" not in df.columns or "t" not in df.columns:
        raise InputError("points: recovery needs t and track_id columns (link the points first)")
    d = df[df["track_id"] >= 0].sort_values(["track_id", "t"], kind="stable")
    tr = d["track_id"].to_numpy()
    t = d["t"].to_numpy().astype(np.int64)
    p = d[["z", "y", "x"]].to_numpy(np.float64)
    rows = []
    for i in np.flatnonzero((tr[1:] == tr[:-1]) & (t[1:] - t[:-1] >= 2) & (t[1:] - t[:-1] <= max_gap_frames + 1)):
        dt = t[i + 1] - t[i]
        for k in range(1, dt):
            rows.append((t[i] + k, tr[i], *(p[i] + (p[i + 1] - p[i]) * k / dt)))
    return pd.DataFrame(rows, columns=["t", "track_id", "z", "y", "x"]).astype(
        {"t": np.int64, "track_id": np.int64, "z": float, "y": float, "x": float})


def end_positions(df, n_frames, max_frames=2, shifts_um=None, voxel_size_um=VOXEL_SIZE_UM,
                  min_points=2) -> pd.DataFrame:
    """Frames just before a track's first point and after its last, and where it should be.

    A track that starts at frame ``a > 0`` (ends at ``b < n_frames - 1``) may have been missed
    there: frames ``a - 1 .. a - max_frames`` (``b + 1 .. b + max_frames``) inside the movie give
    one row each. The position is carried from the track's first (last) point: by its sister
    track's offset where the sister is in both frames (``pair_track_id``: the point keeps its
    place beside its sister, which follows the pair's own motion too), else by the common
    motion ``shifts_um`` ((T, 3) µm, row ``t - t_min``, :func:`kt_stardist.tracks.frame_shifts`;
    None: none). Only tracks of at least ``min_points`` points are carried.

    Returns ``t``, ``track_id``, ``z, y, x`` (px) as :func:`gap_positions`.
    """
    if "track_id" not in df.columns or "t" not in df.columns:
        raise InputError("points: recovery needs t and track_id columns (link the points first)")
    vs = np.asarray(voxel_size_um, np.float64)
    d = df[df["track_id"] >= 0]
    t_all = d["t"].to_numpy().astype(np.int64)
    p_all = d[["z", "y", "x"]].to_numpy(np.float64)
    tr_all = d["track_id"].to_numpy()
    t_min = int(df["t"].min()) if len(df) else 0
    partner = {}
    if "pair_track_id" in d.columns:
        for k, g in d[d["pair_track_id"] >= 0].groupby("pair_track_id"):
            ids = sorted(set(g["track_id"].tolist()))
            if len(ids) == 2:
                partner[ids[0]], partner[ids[1]] = ids[1], ids[0]
    where = {(int(tr), int(t)): p for tr, t, p in zip(tr_all, t_all, p_all)}
    rows = []
    for tr in np.unique(tr_all):
        ts = np.sort(t_all[tr_all == tr])
        if len(ts) < min_points:
            continue
        for edge, step in ((int(ts[0]), -1), (int(ts[-1]), 1)):
            p0 = where[(int(tr), edge)]
            for k in range(1, int(max_frames) + 1):
                t = edge + step * k
                if not 0 <= t < n_frames:
                    break
                sis = partner.get(int(tr))
                if (sis, t) in where and (sis, edge) in where:
                    pos = where[(sis, t)] + p0 - where[(sis, edge)]
                elif shifts_um is not None and 0 <= t - t_min < len(shifts_um) and edge - t_min < len(shifts_um):
                    pos = p0 + (shifts_um[t - t_min] - shifts_um[edge - t_min]) / vs
                else:
                    pos = p0
                rows.append((t, int(tr), *pos))
    return pd.DataFrame(rows, columns=["t", "track_id", "z", "y", "x"]).astype(
        {"t": np.int64, "track_id": np.int64, "z": float, "y": float, "x": float})


def lr_threshold(false_alarm, dof=LR_DOF) -> float:
    """Twice the log-likelihood ratio a spot must exceed: the χ² quantile of ``dof`` degrees of
    freedom with upper tail ``false_alarm``."""
    from scipy.stats import chi2

    return float(chi2.isf(float(false_alarm), dof))


def null_dof(lr_background) -> float:
    """Effective degrees of freedom of the statistic under background alone: the χ² whose median
    is the median of ``lr_background`` (the statistic at background windows), at least
    :data:`LR_DOF`. The position search makes the null wider than χ²(4) (the best of many
    places); a fitted χ² tail follows it (measured on simulated cells)."""
    from scipy.optimize import brentq
    from scipy.stats import chi2

    med = float(np.median(lr_background)) if len(lr_background) else 0.0
    if not med > chi2.median(LR_DOF):
        return float(LR_DOF)
    return float(brentq(lambda k: chi2.median(k) - med, LR_DOF, 1000.0))


def background_lr(volume, points_px, voxel_size_um=VOXEL_SIZE_UM, settings: RecoverSettings | None = None,
                  gain=1.0, zero=0.0, seed=0) -> np.ndarray:
    """The statistic of :func:`spot_lr` at ``settings.calibration_windows`` random places of
    ``volume`` (Z, Y, X) away from every point (``points_px`` (N, 3): the frame's detections):
    within 2 µm of their bounding box, at least ``settings.calibration_clear_um`` from each
    (the cell's own background, not the dark outside). Gives up after 50 tries per window."""
    from scipy.spatial import cKDTree

    settings = settings or RecoverSettings()
    vs = np.asarray(voxel_size_um, np.float64)
    pts = np.asarray(points_px, np.float64).reshape(-1, 3)
    lo, hi = _calibration_region(pts, volume.shape, vs)
    tree = cKDTree(pts * vs) if len(pts) else None
    reach = _reach_um(settings)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(50 * settings.calibration_windows):
        if len(out) >= settings.calibration_windows:
            break
        p = rng.uniform(lo, hi)
        if tree is not None and tree.query(p * vs)[0] < settings.calibration_clear_um:
            continue
        near = pts[tree.query_ball_point(p * vs, reach)] if tree is not None else pts
        r = spot_lr(volume, p, near, vs, settings, gain, zero)
        if r is not None:
            out.append(r[2])
    return np.asarray(out)


def _calibration_region(pts, shape, vs):
    """(lo, hi) px corners of the box :func:`background_lr` draws its places from: the points'
    bounding box grown by 2 µm (the whole volume without points), inside the volume."""
    shape = np.asarray(shape, np.float64)
    if not len(pts):
        return np.zeros(3), shape - 1.0
    return np.maximum(pts.min(0) - 2.0 / vs, 0), np.minimum(pts.max(0) + 2.0 / vs, shape - 1)


def _half_px(settings, vs):
    """Half-size (px, z, y, x) of :func:`spot_lr`'s window around a place's nearest voxel."""
    return np.maximum(np.ceil(np.asarray(settings.window_um) / vs - 1e-9).astype(int), 1)


class _Box:
    """One frame (Z, Y, X) of which only the box holding every window a search needs was read,
    in its own dtype: ``shape`` is the frame's and slices (within the box) read as from the
    frame, so :func:`spot_lr` and :func:`background_lr` give the same numbers on it."""

    def __init__(self, frame, lo_px, hi_px, half_px):
        """The box holds the window of any place whose nearest voxel lies in ``lo_px .. hi_px``."""
        from kt_stardist import outofcore as O

        self.shape = tuple(int(n) for n in frame.shape)
        lo = np.maximum(np.floor(lo_px).astype(int) - half_px, 0)
        hi = np.minimum(np.ceil(hi_px).astype(int) + half_px + 1, self.shape)
        self.lo = lo
        self.data = O.read(frame, tuple(slice(int(a), int(b)) for a, b in zip(lo, hi)))

    def __getitem__(self, slices):
        if any(sl.start < a or sl.stop > a + n for sl, a, n in zip(slices, self.lo, self.data.shape)):
            raise IndexError(f"recovery window {slices} outside the box read at {tuple(self.lo)}")
        return self.data[tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(slices, self.lo))]


def _reach_um(settings):
    """Detections within this distance (µm) of a searched place are fitted with it."""
    return float(np.linalg.norm(np.asarray(settings.window_um) + 2 * np.asarray(settings.psf_sigma_um)))


def _with_plane(vals, coords, spots):
    """Model values: ``spots`` plus the least-squares linear background of ``vals - spots``."""
    dc = coords - coords.mean(0)
    a = np.hstack([np.ones((len(vals), 1)), dc])
    coef = np.linalg.lstsq(a, vals - spots, rcond=None)[0]
    return spots + a @ coef


def _model(fit, vals, coords):
    spots = np.zeros(len(vals))
    if fit is not None:
        for k in range(len(fit.amplitudes)):
            spots = spots + fit.spot(k, coords)
    return _with_plane(vals, coords, spots)


def _poisson_ll(x, model_counts, gain, zero):
    lam = np.maximum((model_counts - zero) / gain, 1e-3)
    return float(np.sum(x * np.log(lam) - lam))


def spot_lr(volume, position_px, neighbours_px=(), voxel_size_um=VOXEL_SIZE_UM,
            settings: RecoverSettings | None = None, gain=1.0, zero=0.0):
    """Likelihood-ratio test for a spot near ``position_px`` (z, y, x) in ``volume`` (Z, Y, X counts).

    ``neighbours_px`` (K, 3): detections fitted in both models. Returns ``(centre_px (3,),
    amplitude (counts), lr)`` with ``lr`` twice the Poisson log-likelihood ratio (photon units,
    ``(counts - zero) / gain``) of spot + neighbours + background against neighbours +
    background; None when the window is too small or a fit fails.
    """
    from kt_stardist.predict.refine import gauss_fit

    settings = settings or RecoverSettings()
    vs = np.asarray(voxel_size_um, np.float64)
    pos = np.asarray(position_px, np.float64)
    half = _half_px(settings, vs)
    c = np.round(pos).astype(int)
    lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, volume.shape)
    if np.any(hi - lo < 2):
        return None
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    grids = np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij")
    coords = np.stack(grids, -1).reshape(-1, 3).astype(np.float64)
    vals = np.asarray(volume[sl], np.float64).ravel()
    if vals.size < 4 * LR_DOF + 8:
        return None
    sigma0 = np.asarray(settings.psf_sigma_um) / vs
    shift = np.asarray(settings.search_um) / vs
    bounds = tuple(settings.sigma_bounds)
    nb = np.asarray(neighbours_px, np.float64).reshape(-1, 3)
    if len(nb):  # voxels nearer to a detection outside the window than to the spot are left out
        d_self = np.sum(((coords - pos) * vs) ** 2, axis=1)
        d_nb = np.sum(((coords[:, None, :] - nb[None]) * vs) ** 2, axis=2)
        out_win = np.any((nb < lo - 0.5) | (nb > hi - 0.5), axis=1)
        if out_win.any():
            keep = d_self <= d_nb[:, out_win].min(axis=1)
            coords, vals = coords[keep], vals[keep]
        nb = nb[~out_win][np.argsort(np.sum(((nb[~out_win] - pos) * vs) ** 2, axis=1))[:MAX_NEIGHBOURS]]
        if vals.size < 4 * LR_DOF + 8:
            return None
    fit0 = None
    if len(nb):
        fit0 = gauss_fit(vals, coords, nb, sigma0, shift, bounds)
        if fit0 is None:
            return None
    fit1 = gauss_fit(vals, coords, np.vstack([nb, pos]), sigma0, shift, bounds)
    if fit1 is None:
        return None
    x = (vals - zero) / gain
    lr = 2.0 * (_poisson_ll(x, _model(fit1, vals, coords), gain, zero)
                - _poisson_ll(x, _model(fit0, vals, coords), gain, zero))
    return fit1.centres[-1], float(fit1.amplitudes[-1]), lr


def _fill(new, df):
    """Values of the non-position columns for recovered rows (unpaired, no probability)."""
    defaults = {"pair_id": -1, "sister": 0, "paired": False, "pair_track_id": -1, "split": False}
    for col in df.columns:
        if col in new.columns:
            continue
        if col == "point_id":
            start = int(df[col].max()) + 1 if len(df) else 0
            new[col] = np.arange(start, start + len(new), dtype=np.int64)
        elif col in defaults:
            new[col] = defaults[col]
        else:
            new[col] = np.nan
    return new


def recover_points(df, movie, voxel_size_um=VOXEL_SIZE_UM, settings: RecoverSettings | None = None,
                   progress=None, positions=None) -> pd.DataFrame:
    """Add the spots of tracks missing for 1 .. ``max_gap_frames`` frames (module docstring).

    Parameters
    ----------
    df : tracked points (``t``, ``track_id``, ``z, y, x`` px), e.g. from
        :func:`kt_stardist.tracks.track_points` run with ``gap >= settings.max_gap_frames``.
    movie : array-like (T, Z, Y, X), camera counts of the spot channel; numpy or lazy (dask,
        only the frames with gaps are read).
    voxel_size_um : (z, y, x) µm.
    settings : :class:`kt_stardist.settings.RecoverSettings` (None: defaults).
    progress : optional callable ``progress(done, total)``.
    positions : where to search (``t``, ``track_id``, ``z, y, x`` px, one row per frame and
        track); None: the gaps of the tracks (:func:`gap_positions`). A track found in a frame
        is not searched there again.

    Returns
    -------
    A copy of ``df`` plus the recovered points, with ``recovered`` (bool) and ``recovery_lr``
    (twice the log-likelihood ratio; NaN for detections). Recovered points carry their track's
    ``track_id``, position px from the fit, ``prob`` NaN, ``pair_id`` -1 and ``sister`` 0.
    """
    from scipy.spatial import cKDTree

    settings = settings or RecoverSettings()
    vs = np.asarray(check_voxel_size(voxel_size_um, "voxel_size_um"), np.float64)
    if len(getattr(movie, "shape", ())) != 4:
        raise InputError(f"image: expected a time-lapse (T, Z, Y, X) for recovery, got shape "
                         f"{tuple(getattr(movie, 'shape', ()))}")
    check_points_table(df, n_frames=int(movie.shape[0]))
    gaps = gap_positions(df, settings.max_gap_frames) if positions is None else positions
    out = df.copy()
    out["recovered"] = False
    out["recovery_lr"] = np.nan
    if not len(gaps):
        return out.reset_index(drop=True)
    gain, zero, threshold = settings.gain_adu_per_photon, settings.zero_adu, None
    shape = np.array(movie.shape[1:])
    reach_um = _reach_um(settings)
    t_all = df["t"].to_numpy().astype(np.int64)
    pts_all = df[["z", "y", "x"]].to_numpy(np.float64)
    found, done = [], 0
    seen = set(zip(t_all.tolist(), df["track_id"].to_numpy().tolist()))  # (t, track) already there
    half = _half_px(settings, vs)
    for t, cand in gaps.groupby("t", sort=True):
        frame = movie[int(t)]  # read below only where searched (a lazy movie stays on disk)
        if gain is None or zero is None:  # once per movie: the camera is the same in every frame
            from kt_stardist.outofcore import as_lazy
            from kt_stardist.predict.mle import estimate_camera

            # its 8 planes read and cast to float64 one by one, never the whole frame
            cam = estimate_camera(as_lazy(frame).astype(np.float64), gain=gain)
            gain, zero = cam.gain, (cam.offset if zero is None else zero)
        placed = list(pts_all[t_all == t])
        where = cand[["z", "y", "x"]].to_numpy(np.float64)
        lo, hi = where.min(0), where.max(0)
        if threshold is None and settings.calibration_windows:  # the background places too
            c_lo, c_hi = _calibration_region(np.asarray(placed).reshape(-1, 3), shape, vs)
            lo, hi = np.minimum(lo, c_lo), np.maximum(hi, c_hi)
        vol = _Box(frame, np.round(lo), np.round(hi), half)
        if threshold is None:  # once per movie, on the first frame searched
            dof = (null_dof(background_lr(vol, np.asarray(placed), vs, settings, gain, zero))
                   if settings.calibration_windows else LR_DOF)
            threshold = lr_threshold(settings.false_alarm, dof)
        for _, row in cand.iterrows():
            done += 1
            pos = row[["z", "y", "x"]].to_numpy(np.float64)
            if np.any(pos < -0.5) or np.any(pos > shape - 0.5) or (int(t), int(row["track_id"])) in seen:
                continue
            here = np.asarray(placed).reshape(-1, 3)
            tree = cKDTree(here * vs) if len(here) else None
            if tree is not None and tree.query(pos * vs)[0] < settings.min_sep_um:
                continue  # the frame already has a detection there
            near = here[tree.query_ball_point(pos * vs, reach_um)] if tree is not None else here
            res = spot_lr(vol, pos, near, vs, settings, gain, zero)
            if res is None:
                continue
            centre, amp, lr = res
            inside = np.all((centre >= -0.5) & (centre <= shape - 0.5))
            clear = tree is None or tree.query(centre * vs)[0] >= settings.min_sep_um
            if lr >= threshold and amp > 0 and inside and clear:
                found.append((int(t), int(row["track_id"]), *centre, lr))
                placed.append(centre)
                seen.add((int(t), int(row["track_id"])))
            if progress is not None:
                progress(done, len(gaps))
    if not found:
        return out.reset_index(drop=True)
    new = pd.DataFrame(found, columns=["t", "track_id", "z", "y", "x", "recovery_lr"])
    new["recovered"] = True
    if "prob" in out.columns:
        new["prob"] = np.nan
    new = _fill(new, out)[out.columns]
    merged = pd.concat([out, new], ignore_index=True)
    for col in out.columns:  # keep integer/bool columns as they were
        if out[col].dtype.kind in "iub" and not merged[col].isna().any():
            merged[col] = merged[col].astype(out[col].dtype)
    return merged
