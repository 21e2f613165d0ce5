"""Localisation accuracy and uncertainty: least squares vs maximum likelihood (Gaussian, measured PSF).

Detection is taken out of the picture: every true spot is a detection, its start the true
position rounded to the network's (1, 2, 2) output grid (what NMS centres look like). Both
refinements (``RefineSettings(method="lsq", passes=2)``: least squares on raw counts, the former
default; ``RefineSettings()``: Poisson maximum likelihood, :mod:`kt_stardist.predict.mle`) then run on the
same volumes with the same starts, sister search off, camera gain/offset estimated from the
image (as ``kt-stardist predict`` does without them). ``spline`` (``RefineSettings(method=
"spline")``): the maximum-likelihood fit with the PSF measured from each volume's own isolated
spots (:mod:`kt_stardist.predict.psf`; the Gaussian kept when too few: column ``psf``).

Sets: the Gaussian simulator's presets (``kt_stardist.simulate.simulate_volume``, plate layout,
sisters 0.7-1.2 µm) and the same with close sisters (0.3-0.6 µm, ``close``); physical-PSF
volumes of the robustness panel (``kt_stardist.physical.simulate_condition``: reference
widefield, aberrated widefield, confocal, EMCCD).

Each true spot is scored against the refined point assigned to it (one-to-one, least summed
distance: two close sisters whose fits traded places count as found). Per set and method: RMSE
and median of the 3D error (nm), share of spots > 100 nm off, RMSE / CRLB (the Cramér–Rao
bound from a maximum-likelihood fit's Fisher information on the same spots, alone: not the
reported sigma, which adds overdispersion and a floor; rms over the spots with ``fit_ok``: its
own for ``gauss`` and ``spline``, the Gaussian fit's for ``lsq``), std(error / sigma) per axis (the calibration of the reported uncertainty;
maximum-likelihood methods, spots with ``fit_ok``), ``fit_ok`` share, the median error per axis
(z bias), the rms error of the inter-sister distance, and seconds per spot. Then the
refinement time of a whole 61 × 1000 × 1000 frame (median of repeats, every method). Prints
markdown tables. ``--joint-scales 1.0 1.25`` runs the maximum-likelihood methods with each
``RefineSettings.joint_scale`` (how far apart detections are still fitted jointly) side by
side on the same volumes. ``gauss_nobias``: the Gaussian fits without the PSF bias correction
(``RefineSettings(psf_bias=False)``; ``gauss`` is the default, with it).

    python scripts/benchmark_localisation.py [--quick] [--n 2] [--shape 32 128 128] [--repeats 3]
        [--methods lsq gauss_nobias gauss spline] [--sets easy mid ... reference emccd] [--joint-scales 1.0 1.25]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GRID = np.array([1, 2, 2])
PRESETS = ("easy", "mid", "hard")
CONDITIONS = ("reference", "aberrated_widefield", "confocal_water", "emccd")
METHODS = ("lsq", "gauss_nobias", "gauss", "spline")
SIGMA_COLUMNS = ["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]


def grid_starts(truth_px):
    """True positions rounded to the network's (1, 2, 2) output grid."""
    return np.round(truth_px / GRID) * GRID


def gaussian_sets(n, shape, seed, only=None):
    """(name, [(volume ZYX, truth DataFrame, voxel µm)]) of the Gaussian simulator (``only``:
    the set names to make, None: all)."""
    from kt_stardist.simulate import SimParams, simulate_volume

    for snr in PRESETS:
        for close in (False, True):
            if only is not None and f"{snr}{' close' if close else ''}" not in only:
                continue
            vols = []
            for i in range(n):
                p = SimParams.preset(snr, sister_distance_um=(0.3, 0.6)) if close else SimParams.preset(snr)
                img, df = simulate_volume(shape, seed=seed + 100 * i + (7 if close else 0), params=p, layout="plate")
                vols.append((img[..., 0], df, p.voxel_size_um))
            yield f"{snr}{' close' if close else ''}", vols


def physical_sets(n, shape, seed, only=None):
    """Like :func:`gaussian_sets` for the robustness panel: :data:`CONDITIONS` at ``shape``, or
    (``only``) any panel condition named there, the others at their own shape and voxel size."""
    from kt_stardist.physical import CONDITIONS as PANEL
    from kt_stardist.physical import PANEL_SEED_MIN, simulate_condition

    for name in (CONDITIONS if only is None else [s for s in only if s in PANEL]):
        vols = []
        for i in range(n):
            img, df, vs, _ = simulate_condition(name, PANEL_SEED_MIN + seed + i, shape if name in CONDITIONS else None)
            vols.append((np.asarray(img, np.float32), df, tuple(vs)))
        yield name, vols


def refine(vol, starts, vs, method, joint_scale=None):
    """``joint_scale``: ``RefineSettings.joint_scale`` of the maximum-likelihood methods (None:
    the default; ``lsq`` groups by its own windows)."""
    import warnings

    from kt_stardist.predict.refine import refine_and_split
    from kt_stardist.settings import RefineSettings, SplitSettings

    t0 = time.perf_counter()
    joint = {} if joint_scale is None else dict(joint_scale=joint_scale)
    if method == "lsq":
        settings = RefineSettings(method="lsq", passes=2)
    elif method == "gauss_nobias":
        settings = RefineSettings(method="gauss", psf_bias=False, **joint)
    else:
        settings = RefineSettings(method=method, **joint)
    with warnings.catch_warnings():  # the spline's fallback is counted in the table
        warnings.simplefilter("ignore")
        pts, _, fit = refine_and_split(vol, starts, vs, settings, SplitSettings(enabled=False), return_fit=True)
    return pts, fit, time.perf_counter() - t0


def assigned(truth, pts, vs):
    """For each true spot, the index of its refined point: the one-to-one assignment of least
    summed distance (:func:`kt_stardist.evaluate.match_points`, no cutoff). Two close sisters whose
    fits traded places (the same two positions, labels swapped) are then scored as found, not as
    two errors of their distance."""
    from kt_stardist.evaluate import match_points

    m = match_points(truth, pts, vs, cutoff_um=1e6)
    order = np.empty(len(truth), int)
    order[m.gt_idx] = m.pred_idx
    return order


def sister_errors(df, pts, vs):
    """Errors (nm) of the distance between the two sisters of each complete pair: all, and the
    pairs whose true distance is below 0.65 µm."""
    vs = np.asarray(vs)
    errs, close = [], []
    if "pair_id" not in df:
        return np.array([]), np.array([])
    truth = df[["z", "y", "x"]].to_numpy(float)
    for _, g in df[df["pair_id"] >= 0].groupby("pair_id"):
        if len(g) != 2:
            continue
        a, b = g.index.to_numpy()
        d_true = np.linalg.norm((truth[a] - truth[b]) * vs)
        d_fit = np.linalg.norm((pts[a] - pts[b]) * vs)
        errs.append(1000 * (d_fit - d_true))
        if d_true < 0.65:
            close.append(1000 * (d_fit - d_true))
    return np.array(errs), np.array(close)


def evaluate(sets, methods=METHODS, scales=(None,)):
    """One row per set, method and joint scale (``scales``: ``RefineSettings.joint_scale``
    values, None: the default; side by side on the same volumes). Methods without an
    uncertainty of their own (``lsq``) are scored against the Gaussian maximum-likelihood fit's
    sigma and ``fit_ok``."""
    from kt_stardist.settings import RefineSettings

    rows = []
    own = [m for m in methods if m != "lsq"]
    fitted = sorted(set(own) | ({"gauss"} if "lsq" in methods else set()), key=METHODS.index)
    for name, vols in sets:
        accs = {sc: {m: dict(err=[], ax=[], sig=[], crlb=[], ok=[], sis=[], sis_close=[], sec=0.0, n=0, psf=[])
                     for m in METHODS} for sc in scales}
        for (vol, df, vs), sc in ((v, sc) for v in vols for sc in scales):
            acc = accs[sc]
            df = df.reset_index(drop=True)
            truth = df[["z", "y", "x"]].to_numpy(float)
            starts = grid_starts(truth)
            for m in fitted + (["lsq"] if "lsq" in methods else []):
                pts, fit, sec = refine(vol, starts, vs, m, sc)
                psf = fit.attrs.get("psf")
                order = assigned(truth, pts, vs)
                # the Cramér–Rao bound alone (the sigma columns add overdispersion and a floor)
                crlb = np.asarray(fit.attrs.get("crlb_nm", fit[SIGMA_COLUMNS].to_numpy()))[order]
                pts, fit = pts[order], fit.iloc[order].reset_index(drop=True)
                a = acc[m]
                e_ax = (pts - truth) * np.asarray(vs) * 1000
                a["err"].append(np.linalg.norm(e_ax, axis=1))
                a["ax"].append(e_ax)
                ref = fit if m != "lsq" else acc["gauss"]["fit"]
                a["fit"], a["crlb_now"] = fit, crlb
                a["sig"].append(ref[SIGMA_COLUMNS].to_numpy())
                a["crlb"].append(crlb if m != "lsq" else acc["gauss"]["crlb_now"])
                a["ok"].append(ref["fit_ok"].to_numpy())
                a["psf"].append(psf.n_spots if psf is not None else 0)
                s_all, s_close = sister_errors(df, pts, vs)
                a["sis"].append(s_all), a["sis_close"].append(s_close)
                a["sec"] += sec
                a["n"] += len(pts)
        for sc, m in ((sc, m) for sc in scales for m in methods):
            a = accs[sc][m]
            err, ax, sig = np.concatenate(a["err"]), np.concatenate(a["ax"]), np.concatenate(a["sig"])
            ok = np.concatenate(a["ok"])
            rms_crlb = np.sqrt(np.mean(np.sum(np.concatenate(a["crlb"])[ok] ** 2, axis=1)))
            z = ax[ok] / sig[ok]
            sis, sis_c = np.concatenate(a["sis"]), np.concatenate(a["sis_close"])
            mine = m != "lsq"
            rows.append(dict(
                set=name, method=m, joint_scale=sc if sc is not None else RefineSettings().joint_scale,
                spots=len(err),
                rmse_nm=np.sqrt(np.mean(err ** 2)), median_nm=np.median(err),
                over_100nm=np.mean(err > 100), rmse_over_crlb=np.sqrt(np.mean(err[ok] ** 2)) / rms_crlb,
                crlb_nm=rms_crlb if mine else np.nan, fit_ok=np.mean(ok) if mine else np.nan,
                std_z=np.std(z[:, 0]) if mine else np.nan,
                std_y=np.std(z[:, 1]) if mine else np.nan,
                std_x=np.std(z[:, 2]) if mine else np.nan,
                bias_z_nm=np.median(ax[:, 0]),
                sister_rms_nm=np.sqrt(np.mean(sis ** 2)) if len(sis) else np.nan,
                close_sister_rms_nm=np.sqrt(np.mean(sis_c ** 2)) if len(sis_c) else np.nan,
                psf=("/".join(str(n) for n in a["psf"]) if m == "spline" else "–"),
                ms_per_spot=1000 * a["sec"] / max(a["n"], 1)))
            print(f"  {name:22s} {m:6s} x{rows[-1]['joint_scale']} rmse {rows[-1]['rmse_nm']:.1f} nm",
                  file=sys.stderr)
    return rows


def timing(repeats, seed, methods=METHODS):
    """Median seconds of refining one whole 61 × 1000 × 1000 mid frame, per method."""
    from kt_stardist.defaults import FRAME_SHAPE_PX
    from kt_stardist.simulate import simulate_volume

    img, df = simulate_volume(FRAME_SHAPE_PX, seed=seed, snr="mid")
    vol = img[..., 0]
    starts = grid_starts(df[["z", "y", "x"]].to_numpy(float))
    out = {}
    for m in methods:
        out[m] = float(np.median([refine(vol, starts, (0.3, 0.13, 0.13), m)[2] for _ in range(repeats)]))
    return out, len(starts)


def markdown(df) -> str:
    """A DataFrame as a markdown table (3 significant digits)."""
    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one volume per set, 2 timing repeats")
    ap.add_argument("--n", type=int, default=2, help="volumes per set")
    ap.add_argument("--shape", nargs=3, type=int, default=[32, 128, 128], help="Gaussian sets, (Z, Y, X) px")
    ap.add_argument("--physical-shape", nargs=3, type=int, default=[40, 160, 160])
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--joint-scales", nargs="+", type=float, metavar="S",
                    help="RefineSettings.joint_scale values side by side (default: the default only)")
    ap.add_argument("--sets", nargs="+", metavar="SET", help="only these sets (e.g. mid 'mid close' reference "
                    "aberrated_widefield confocal_water emccd, or any other panel condition at its own shape; default all)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.repeats = 1, 2

    import pandas as pd

    t0 = time.perf_counter()
    methods = [m for m in METHODS if m in a.methods]
    scales = tuple(a.joint_scales) if a.joint_scales else (None,)
    rows = evaluate(gaussian_sets(a.n, tuple(a.shape), a.seed, a.sets), methods, scales)
    rows += evaluate(physical_sets(a.n, tuple(a.physical_shape), a.seed, a.sets), methods, scales)
    df = pd.DataFrame(rows)
    print(f"# Localisation: least squares (lsq) vs maximum likelihood: Gaussian (gauss_nobias; gauss: with the "
          f"PSF bias correction), measured PSF (spline)\n\n"
          f"Starts: true positions on the (1, 2, 2) grid; {a.n} volume(s) per set; errors 3D, nm; "
          f"CRLB from each ML fit's Fisher information (rms over fit_ok spots; lsq: the Gaussian's); "
          f"std(err/σ) per axis z, y, x; bias_z: median z error; psf: spots the PSF was measured from, "
          f"per volume (0: too few, Gaussian kept).\n")
    print(markdown(df))
    if not a.no_timing:
        sec, n = timing(a.repeats, a.seed + 1, methods)
        print(f"\nWhole frame 61 × 1000 × 1000, {n} spots, median of {a.repeats}: "
              + ", ".join(f"{m} {sec[m]:.2f} s" for m in methods))
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
