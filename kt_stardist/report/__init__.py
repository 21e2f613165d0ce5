"""Visual report of a detection run: one self-contained HTML page a biologist can read or mail.

:func:`write_report` writes into ``out_dir``:

- ``mip_t<T>.png``: maximum-intensity projections of the EGFP channel (y–x over z, and an
  orthogonal x–z view over y) of one frame, cropped to the bounding box of the points plus a
  margin in µm, with the detections drawn on top. With ground truth, true positives, false
  positives and misses (matched at ``MATCH_CUTOFF_UM`` = 0.5 µm by
  :func:`kt_stardist.evaluate.match_points`) get different colours *and* marker shapes
  (Okabe–Ito colours, safe for colour-blind readers). Sister pairs (``pair_id``) are linked.
- ``tracks.png``: tracks (``track_id``) as lines over all frames, projected on y–x and x–z.
- ``histograms.png``: inter-sister distance (µm) and detection probability.
- ``uncertainty.png``: the reported position uncertainty (nm) per axis of the points whose fit
  passed (``fit_ok``), when the table has it (``gauss`` / ``spline`` refinement).
- ``summary.json``: the numbers of the page (per frame and overall), for scripts.
- ``index.html``: the page, with every PNG embedded as a base64 data URI (the single file works
  when mailed), written last. Every file is written atomically (:func:`kt_stardist.io.atomic_write`).

Axis order z, y, x; coordinates of points in px, distances in µm, RMSE in nm.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kt_stardist.defaults import MATCH_CUTOFF_UM
from kt_stardist.errors import InputError
from kt_stardist.report.figures import (_figure_frame, _figure_histograms, _figure_tracks, _figure_uncertainty, _png,
                                        crop_box, uncertainty_summary)
from kt_stardist.report.numbers import (_as_tzyxc, _check_points, _check_voxel, _classify, _frame_table, _ids,
                                        _pair_distances_um)
from kt_stardist.report.page import _box_text, _esc, _html, _json_ready, _legend_html
from kt_stardist.report.style import COLORS

__all__ = ["write_report", "COLORS", "crop_box"]


def write_report(
    out_dir,
    image,
    voxel_size_um,
    points_df,
    gt_df=None,
    pair_table=None,
    meta=None,
    frame: int | None = None,
    title: str | None = None,
    channel: int = 0,
    margin_um: float = 2.0,
    cutoff_um: float = MATCH_CUTOFF_UM,
) -> Path:
    """Write a visual report of detections (and their scores) into ``out_dir``; return index.html.

    Parameters
    ----------
    out_dir : path
        Folder (created); existing report files in it are replaced, one by one, atomically.
    image : array (T, Z, Y, X, C), or (Z, Y, X, C) / (Z, Y, X) for one frame
        Raw intensities; only the crops that are shown are read (a dask or memory-mapped array
        is fine).
    voxel_size_um : (z, y, x) µm
        Sets the aspect of the views and every µm number (``defaults.VOXEL_SIZE_UM`` for the
        reference microscope).
    points_df : DataFrame
        Detections: ``t`` (frame index into ``image``; may be absent for one frame),
        ``z, y, x`` px, optional ``prob``, ``pair_id``, ``sister``, ``track_id``.
    gt_df : DataFrame, optional
        Ground truth (same layout). Adds TP/FP/miss colours and precision, recall, F1 and
        RMSE per frame and overall, matched within ``cutoff_um`` µm.
    pair_table : DataFrame, optional
        Per-pair table with ``distance_um`` (from :mod:`kt_stardist.pairs`); without it the
        inter-sister distances come from ``pair_id`` in ``points_df``.
    meta : dict, optional
        Shown under "Run": ``model``, ``thresholds`` (dict), ``command`` (str) and any other
        key (e.g. ``image``, ``points``).
    frame : int, optional
        Frame drawn in the projection; default the first frame with detections.
    channel : int
        Channel shown (0: EGFP).
    margin_um : float
        Margin around the points' bounding box of the crop, µm.

    Returns
    -------
    pathlib.Path of ``out_dir/index.html``.
    """
    from kt_stardist.io import atomic_write

    data = _as_tzyxc(image)
    n_t, n_z, n_y, n_x, n_c = data.shape
    vs = _check_voxel(voxel_size_um)
    if points_df is None:
        raise InputError("report: no detections table (points_df) given")
    points = _check_points(points_df, "detections", n_t)
    gt = _check_points(gt_df, "ground-truth points", n_t)
    if not 0 <= int(channel) < n_c:
        raise InputError(f"report: channel {channel} not in the image's {n_c} channel(s)")
    if frame is None:
        frame = int(points["t"].min()) if len(points) else 0
    if not 0 <= int(frame) < n_t:
        raise InputError(f"report: frame {frame} outside the image's {n_t} frame(s) (0..{n_t - 1})")
    frame = int(frame)
    meta = dict(meta or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    # numbers
    p_status = g_status = None
    if gt is not None:
        p_status, g_status = _classify(points, gt, vs, cutoff_um)
    pid = _ids(points, "pair_id")
    dists_by_t = {}
    if pid is not None:
        for t in sorted(set(points["t"].tolist())):
            dists_by_t[t] = _pair_distances_um(points[points["t"] == t], vs)
    if pair_table is not None and "distance_um" in getattr(pair_table, "columns", ()):
        dists = np.asarray(pair_table["distance_um"].to_numpy(dtype=float))
        dists = dists[np.isfinite(dists)]
        dist_source = "pair table"
    else:
        dists = np.concatenate(list(dists_by_t.values())) if dists_by_t else np.zeros(0)
        dist_source = "pair_id of the detections"
    rows, overall = _frame_table(points, gt, dists_by_t, vs, cutoff_um)
    probs = points["prob"].to_numpy(dtype=float) if "prob" in points.columns else None
    tid = _ids(points, "track_id")
    has_tracks = tid is not None and (tid >= 0).any() and points["t"].nunique() > 1

    volume = data[frame, ..., int(channel)]
    figures = []  # (file name, png bytes, caption html, alt)

    fig, box, how, n_pairs = _figure_frame(volume, frame, points, gt, p_status, g_status, vs, margin_um)
    kinds = ["detection"] if gt is None else ["tp", "fp", "fn"]
    cap = (f"Frame t = {frame}, channel {channel}: maximum-intensity projections, cropped to the "
           f"{_esc(how)}: {_esc(_box_text(box, vs))} of the {n_z} × {n_y} × {n_x} px frame "
           f"(voxel {vs[0]:g} × {vs[1]:g} × {vs[2]:g} µm, z × y × x; true aspect). Top: projection "
           f"along z; bottom: along y (z grows downwards). Markers: {_legend_html(kinds)}.")
    if gt is not None:
        cap += f" A detection matches a ground-truth point within {cutoff_um:g} µm (one-to-one)."
    if n_pairs:
        cap += " White lines link the two sisters of a pair."
    figures.append((f"mip_t{frame}.png", _png(fig), cap, f"projections of frame {frame}"))

    if has_tracks:
        fig, tbox, n_tracks = _figure_tracks(volume, frame, points, tid, vs, margin_um)
        cap = (f"{n_tracks} tracks over {points['t'].nunique()} frames, each a line through its "
               f"positions (projected on y–x and x–z), over the projection of frame t = {frame}; "
               f"dots: positions in frame {frame}. Crop: {_esc(_box_text(tbox, vs))}.")
        figures.append(("tracks.png", _png(fig), cap, "tracks"))

    fig = _figure_histograms(dists, probs, p_status)
    if fig is not None:
        cap = []
        if len(dists):
            cap.append(f"Inter-sister distance (µm, 3D, from the {dist_source}) over all frames: "
                       f"median {np.median(dists):.2f} µm, n = {len(dists)}.")
        if probs is not None:
            cap.append("Detection probability" + (" (stacked: true / false positives)." if gt is not None else "."))
        figures.append(("histograms.png", _png(fig), " ".join(cap), "histograms"))

    unc = uncertainty_summary(points)
    fig = _figure_uncertainty(points)
    if fig is not None:
        cap = (f"How well each point is placed: the position uncertainty (the Cramér–Rao bound of its "
               f"fit, nm, columns sigma_z_nm, sigma_y_nm, sigma_x_nm) of the {unc['n_fit_ok']} of "
               f"{unc['n_points']} points whose fit passed its checks (fit_ok); the others fell back "
               f"to the centroid and have none. Medians z / y / x: {unc['median_z_nm']:.0f} / "
               f"{unc['median_y_nm']:.0f} / {unc['median_x_nm']:.0f} nm; the last bin also counts the "
               f"few values beyond it.")
        figures.append(("uncertainty.png", _png(fig), cap, "position uncertainty histograms"))

    # files: PNGs, summary.json, then index.html
    for name, png, _, _ in figures:
        with atomic_write(out_dir / name, "wb") as f:
            f.write(png)
    summary = {
        "title": title, "frame_shown": frame, "channel": channel, "image_shape_tzyxc": list(data.shape),
        "voxel_size_um": list(vs), "cutoff_um": cutoff_um if gt is not None else None,
        "overall": overall, "per_frame": rows,
        "inter_sister_distance_um": {"n": int(len(dists)),
                                     "median": float(np.median(dists)) if len(dists) else None},
        "uncertainty_nm": unc,
        "meta": meta,
    }
    with atomic_write(out_dir / "summary.json", "w") as f:
        json.dump(_json_ready(summary), f, indent=1, default=str)
    page = _html(title, frame, data.shape, vs, overall, rows, figures, meta, gt is not None, dists)
    index = out_dir / "index.html"
    with atomic_write(index, "w") as f:
        f.write(page)
    return index


