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
- ``summary.json``: the numbers of the page (per frame and overall), for scripts.
- ``index.html``: the page, with every PNG embedded as a base64 data URI (the single file works
  when mailed), written last. Every file is written atomically (:func:`kt_stardist.io.atomic_write`).

Axis order z, y, x; coordinates of points in px, distances in µm, RMSE in nm.
"""

from __future__ import annotations

import base64
import datetime
import html
import io as _bytes_io
import json
import math
from pathlib import Path

import numpy as np

from kt_stardist.defaults import MATCH_CUTOFF_UM
from kt_stardist.errors import InputError

__all__ = ["write_report", "COLORS", "crop_box"]

#: Okabe–Ito colours (distinguishable with the common colour-vision deficiencies); each class
#: also has its own marker shape, so the colours are never the only cue.
COLORS = {
    "detection": "#E69F00",  # orange
    "tp": "#56B4E9",  # sky blue
    "fp": "#D55E00",  # vermillion
    "fn": "#F0E442",  # yellow
    "pair": "#FFFFFF",
}
MARKERS = {"detection": "o", "tp": "o", "fp": "s", "fn": "^"}
LABELS = {
    "detection": "detection",
    "tp": "true positive (detection matched)",
    "fp": "false positive (detection, no match)",
    "fn": "miss (ground truth, no detection)",
}
#: track colours (Okabe–Ito, cycled)
TRACK_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#FFFFFF"]
#: at most this many frame rows in the HTML table (all frames are in summary.json)
MAX_TABLE_ROWS = 200
DPI = 110

# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_tzyxc(image) -> np.ndarray:
    """(T, Z, Y, X, C); a (Z, Y, X, C) volume is one frame, a (Z, Y, X) volume one channel."""
    arr = np.asarray(image) if not hasattr(image, "ndim") else image
    if arr.ndim == 3:
        return arr[None, ..., None]
    if arr.ndim == 4:
        return arr[None]
    if arr.ndim == 5:
        return arr
    raise InputError(f"report: image must be (T, Z, Y, X, C), (Z, Y, X, C) or (Z, Y, X); got shape {arr.shape}")


def _check_voxel(voxel_size_um) -> tuple:
    try:
        vs = tuple(float(v) for v in voxel_size_um)
    except TypeError:
        vs = ()
    if len(vs) != 3 or not all(math.isfinite(v) and v > 0 for v in vs):
        raise InputError(f"report: voxel_size_um must be 3 positive numbers (z, y, x) µm; got {voxel_size_um!r}")
    return vs


def _check_points(df, name, n_frames) -> "object | None":
    """A copy with a ``t`` column (0 for a single frame); None stays None."""
    if df is None:
        return None
    missing = [c for c in ("z", "y", "x") if c not in getattr(df, "columns", ())]
    if missing:
        raise InputError(f"report: {name} lack column(s) {', '.join(missing)}; expected z, y, x px")
    df = df.reset_index(drop=True).copy()
    if "t" not in df.columns:
        if n_frames > 1:
            raise InputError(f"report: {name} have no 't' column but the image has {n_frames} frames")
        df["t"] = 0
    df["t"] = df["t"].astype(np.int64)
    bad = sorted(set(df["t"][(df["t"] < 0) | (df["t"] >= n_frames)].tolist()))
    if bad:
        raise InputError(f"report: {name} have frame(s) t={bad[:5]} outside the image's {n_frames} frame(s)")
    return df


def _ids(df, column):
    """Integer ids of ``column`` (-1 where missing or negative), or None without the column."""
    if df is None or column not in df.columns:
        return None
    v = np.asarray(df[column].to_numpy(dtype=float, na_value=np.nan))
    v = np.where(np.isfinite(v), v, -1).astype(np.int64)
    return np.where(v < 0, -1, v)


# --------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------


def _pair_distances_um(df, voxel_size_um) -> np.ndarray:
    """Inter-sister distances (µm) of pairs with exactly two members in a frame."""
    pid = _ids(df, "pair_id")
    if pid is None:
        return np.zeros(0)
    zyx_um = df[["z", "y", "x"]].to_numpy(dtype=float) * np.asarray(voxel_size_um)
    t = df["t"].to_numpy()
    out = []
    for key in set(zip(t[pid >= 0].tolist(), pid[pid >= 0].tolist())):
        members = np.flatnonzero((t == key[0]) & (pid == key[1]))
        if len(members) == 2:
            out.append(float(np.linalg.norm(zyx_um[members[0]] - zyx_um[members[1]])))
    return np.sort(np.asarray(out))


def _classify(points, gt, voxel_size_um, cutoff_um):
    """Per-row status: detections 'tp'/'fp', ground truth 'tp'/'fn' (per frame matching)."""
    from kt_stardist.evaluate import match_points

    p_status = np.full(len(points), "fp", dtype=object)
    g_status = np.full(len(gt), "fn", dtype=object)
    pt, gtt = points["t"].to_numpy(), gt["t"].to_numpy()
    pz, gz = points[["z", "y", "x"]].to_numpy(float), gt[["z", "y", "x"]].to_numpy(float)
    for t in sorted(set(pt.tolist()) | set(gtt.tolist())):
        pi, gi = np.flatnonzero(pt == t), np.flatnonzero(gtt == t)
        m = match_points(gz[gi], pz[pi], voxel_size_um, cutoff_um)
        p_status[pi[np.asarray(m.pred_idx, dtype=int)]] = "tp"
        g_status[gi[np.asarray(m.gt_idx, dtype=int)]] = "tp"
    return p_status, g_status


def _frame_table(points, gt, pair_dists_by_t, voxel_size_um, cutoff_um):
    """Per-frame rows and the overall row (dicts) for the table and summary.json."""
    frames = sorted(set(points["t"].tolist()) | (set(gt["t"].tolist()) if gt is not None else set()))
    pid = _ids(points, "pair_id")
    rows = []
    for t in frames:
        sel = points["t"].to_numpy() == t
        row = {"t": int(t), "detections": int(sel.sum())}
        if pid is not None:
            row["pairs"] = int(len(pair_dists_by_t.get(t, ())))
        rows.append(row)
    overall = {"t": "all", "detections": int(len(points))}
    if pid is not None:
        overall["pairs"] = int(sum(r["pairs"] for r in rows))
    if gt is not None:
        from kt_stardist.evaluate import evaluate_points

        per_frame, total = evaluate_points(gt, points, voxel_size_um, cutoff_um)
        by_t = {int(r["t"]): r for r in per_frame.to_dict("records")}
        keys = ("n_gt", "tp", "fp", "fn", "precision", "recall", "f1", "rmse_nm")
        for row in rows:
            row.update({k: by_t[row["t"]][k] for k in keys})
        overall.update({k: total[k] for k in keys})
    return rows, overall


# --------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------


def crop_box(points_px, shape_zyx, voxel_size_um, margin_um=2.0) -> tuple:
    """Slices (z, y, x) of the bounding box of ``points_px`` (N, 3) padded by ``margin_um`` µm.

    Clipped to ``shape_zyx``; the whole volume when there are no points.
    """
    pts = np.asarray(points_px, dtype=float).reshape(-1, 3)
    if len(pts) == 0:
        return tuple(slice(0, s) for s in shape_zyx)
    margin_px = margin_um / np.asarray(voxel_size_um, dtype=float)
    lo = np.floor(pts.min(0) - margin_px).astype(int)
    hi = np.ceil(pts.max(0) + margin_px).astype(int) + 1
    return tuple(slice(max(0, int(a)), min(int(s), max(int(b), int(a) + 1))) for a, b, s in zip(lo, hi, shape_zyx))


def _contrast(img):
    lo, hi = np.percentile(img, (0.5, 99.9))
    return float(lo), float(hi if hi > lo else lo + 1)


def _mip_axes(volume_zyx, box, voxel_size_um, width_in=7.5, max_height_in=10.0):
    """Figure with y–x (over z) and x–z (over y) MIPs of the crop; extents in µm."""
    from matplotlib.figure import Figure

    vz, vy, vx = voxel_size_um
    sub = np.asarray(volume_zyx[box], dtype=np.float32)
    yx, xz = sub.max(axis=0), sub.max(axis=1)
    (z0, z1), (y0, y1), (x0, x1) = ((s.start, s.stop) for s in box)
    w_um, h_um, d_um = (x1 - x0) * vx, (y1 - y0) * vy, (z1 - z0) * vz
    ext_yx = ((x0 - 0.5) * vx, (x1 - 0.5) * vx, (y1 - 0.5) * vy, (y0 - 0.5) * vy)
    ext_xz = ((x0 - 0.5) * vx, (x1 - 0.5) * vx, (z1 - 0.5) * vz, (z0 - 0.5) * vz)
    plot_w = width_in - 1.4
    plot_h = plot_w * (h_um + d_um) / w_um
    if plot_h > max_height_in:  # a tall, narrow crop: narrower figure, same aspect
        plot_w, plot_h = plot_w * max_height_in / plot_h, max_height_in
    fig = Figure(figsize=(max(plot_w + 1.4, 3.5), 1.6 + plot_h), layout="constrained")
    ax_yx, ax_xz = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [h_um, max(d_um, 1e-3)]})
    for ax, img, ext, ylab in ((ax_yx, yx, ext_yx, "y (µm)"), (ax_xz, xz, ext_xz, "z (µm)")):
        lo, hi = _contrast(img)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=ext, interpolation="nearest", aspect="equal")
        ax.set_ylabel(ylab)
        ax.set_facecolor("black")
    ax_xz.set_xlabel("x (µm)")
    ax_yx.set_title("maximum projection over z (y–x)", fontsize=9, loc="left")
    ax_xz.set_title("maximum projection over y (x–z)", fontsize=9, loc="left")
    return fig, ax_yx, ax_xz


def _inside(zyx, box):
    return np.all([(zyx[:, i] >= s.start - 0.5) & (zyx[:, i] <= s.stop - 0.5) for i, s in enumerate(box)], axis=0)


def _draw_points(ax_yx, ax_xz, zyx, voxel_size_um, kind, size=9):
    vz, vy, vx = voxel_size_um
    style = dict(marker=MARKERS[kind], s=size**2 / 1.3, facecolors="none", edgecolors=COLORS[kind],
                 linewidths=1.1, label=f"{LABELS[kind]} ({len(zyx)})")
    ax_yx.scatter(zyx[:, 2] * vx, zyx[:, 1] * vy, **style)
    style.pop("label")
    ax_xz.scatter(zyx[:, 2] * vx, zyx[:, 0] * vz, **style)


def _draw_pairs(ax_yx, ax_xz, zyx, pid, voxel_size_um):
    vz, vy, vx = voxel_size_um
    n = 0
    for k in np.unique(pid[pid >= 0]):
        m = np.flatnonzero(pid == k)
        if len(m) != 2:
            continue
        a, b = zyx[m[0]], zyx[m[1]]
        kw = dict(color=COLORS["pair"], lw=0.8, alpha=0.8, zorder=1)
        ax_yx.plot([a[2] * vx, b[2] * vx], [a[1] * vy, b[1] * vy], **kw)
        ax_xz.plot([a[2] * vx, b[2] * vx], [a[0] * vz, b[0] * vz], **kw)
        n += 1
    return n


def _png(fig) -> bytes:
    buf = _bytes_io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, facecolor="white")
    return buf.getvalue()


def _figure_frame(volume_zyx, t, points, gt, p_status, g_status, voxel_size_um, margin_um):
    """The MIP figure of frame ``t`` and its caption facts."""
    sel_p = points["t"].to_numpy() == t
    zyx = points[["z", "y", "x"]].to_numpy(float)[sel_p]
    all_zyx = [zyx]
    if gt is not None:
        sel_g = gt["t"].to_numpy() == t
        gzyx = gt[["z", "y", "x"]].to_numpy(float)[sel_g]
        all_zyx.append(gzyx)
    all_zyx = np.concatenate(all_zyx)
    if len(all_zyx):
        box = crop_box(all_zyx, volume_zyx.shape, voxel_size_um, margin_um)
        how = f"bounding box of the points + {margin_um:g} µm margin"
    else:
        from kt_stardist.normalize import signal_region

        box = signal_region(volume_zyx, voxel_size_um)
        how = "bright region of the frame (no points in this frame)"
    fig, ax_yx, ax_xz = _mip_axes(volume_zyx, box, voxel_size_um)
    n_pairs = 0
    pid = _ids(points, "pair_id")
    if pid is not None:
        n_pairs = _draw_pairs(ax_yx, ax_xz, zyx, pid[sel_p], voxel_size_um)
    if gt is None:
        _draw_points(ax_yx, ax_xz, zyx[_inside(zyx, box)], voxel_size_um, "detection")
    else:
        ps, gs = p_status[sel_p], g_status[sel_g]
        for kind, pts in (("tp", zyx[ps == "tp"]), ("fp", zyx[ps == "fp"]), ("fn", gzyx[gs == "fn"])):
            _draw_points(ax_yx, ax_xz, pts[_inside(pts, box)], voxel_size_um, kind)
    if n_pairs:
        ax_yx.plot([], [], color=COLORS["pair"], lw=0.8, label=f"sister pair ({n_pairs})")
    leg = ax_yx.legend(loc="upper right", fontsize=7, framealpha=0.6, facecolor="black", labelcolor="white")
    leg.get_frame().set_edgecolor("none")
    return fig, box, how, n_pairs


def _figure_tracks(volume_zyx, t_shown, points, tid, voxel_size_um, margin_um):
    zyx = points[["z", "y", "x"]].to_numpy(float)
    box = crop_box(zyx, volume_zyx.shape, voxel_size_um, margin_um)
    fig, ax_yx, ax_xz = _mip_axes(volume_zyx, box, voxel_size_um)
    vz, vy, vx = voxel_size_um
    t = points["t"].to_numpy()
    ids = np.unique(tid[tid >= 0])
    for i, k in enumerate(ids):
        m = np.flatnonzero(tid == k)
        m = m[np.argsort(t[m], kind="stable")]
        c = TRACK_COLORS[i % len(TRACK_COLORS)]
        ax_yx.plot(zyx[m, 2] * vx, zyx[m, 1] * vy, "-", color=c, lw=0.9, alpha=0.9)
        ax_xz.plot(zyx[m, 2] * vx, zyx[m, 0] * vz, "-", color=c, lw=0.9, alpha=0.9)
        now = m[t[m] == t_shown]
        ax_yx.plot(zyx[now, 2] * vx, zyx[now, 1] * vy, "o", color=c, ms=3)
        ax_xz.plot(zyx[now, 2] * vx, zyx[now, 0] * vz, "o", color=c, ms=3)
    return fig, box, len(ids)


def _figure_histograms(dists_um, probs, p_status):
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = [p for p in ("dist", "prob") if (p == "dist" and len(dists_um)) or (p == "prob" and probs is not None)]
    if not panels:
        return None
    fig = Figure(figsize=(3.8 * len(panels), 2.9), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, p in zip(axes, panels):
        if p == "dist":
            ax.hist(dists_um, bins=np.linspace(0, max(2.0, float(np.max(dists_um)) * 1.05), 31),
                    color="#0072B2", edgecolor="white")
            ax.axvline(np.median(dists_um), color="#D55E00", lw=1.2, label=f"median {np.median(dists_um):.2f} µm")
            ax.set_xlabel("inter-sister distance (µm)")
            ax.set_title(f"sister pairs (n = {len(dists_um)})", fontsize=9)
        else:
            bins = np.linspace(min(0.0, float(np.min(probs, initial=0))), 1.0, 26)
            if p_status is None:
                ax.hist(probs, bins=bins, color=COLORS["detection"], edgecolor="white", label="detections")
            else:
                ax.hist([probs[p_status == "tp"], probs[p_status == "fp"]], bins=bins, stacked=True,
                        color=[COLORS["tp"], COLORS["fp"]], edgecolor="white",
                        label=["true positives", "false positives"])
            ax.set_xlabel("detection probability")
            ax.set_title(f"detections (n = {len(probs)})", fontsize=9)
        ax.set_ylabel("count")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1100px;
margin:1.5em auto;padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
.meta{color:#555;font-size:.9em} figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #ccc}
figcaption{font-size:.9em;color:#333;max-width:60em}
table{border-collapse:collapse;font-size:.88em;margin:.5em 0} th,td{border:1px solid #ccc;padding:.2em .6em;text-align:right}
th{background:#f3f3f3} tr.total td{font-weight:bold;background:#fafafa} td.k{text-align:left}
.cards{display:flex;gap:1em;flex-wrap:wrap} .card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em;min-width:7em}
.card b{display:block;font-size:1.5em} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;white-space:pre-wrap}
.sw{display:inline-block;width:.9em;height:.9em;border:1px solid #777;vertical-align:middle;margin-right:.3em}
"""

#: sets ``data-images-loaded="ok/total"`` on <body> once the page has loaded (for headless checks)
_SCRIPT = ("addEventListener('load',function(){var m=document.images,k=0;for(var i=0;i<m.length;i++)"
           "if(m[i].complete&&m[i].naturalWidth>0)k++;document.body.dataset.imagesLoaded=k+'/'+m.length;});")


def _esc(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v, key="") -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        return f"{v:.1f}" if key == "rmse_nm" else f"{v:.3f}"
    return str(v)


_HEADERS = {"t": "frame", "detections": "detections", "pairs": "pairs", "n_gt": "ground truth",
            "tp": "TP", "fp": "FP", "fn": "misses", "precision": "precision", "recall": "recall",
            "f1": "F1", "rmse_nm": "RMSE (nm)"}


def _table(rows, overall) -> str:
    keys = [k for k in _HEADERS if k in overall]
    head = "".join(f"<th>{_esc(_HEADERS[k])}</th>" for k in keys)
    body = []
    shown = rows[:MAX_TABLE_ROWS]
    for r in shown:
        body.append("<tr>" + "".join(f"<td>{_esc(_fmt(r.get(k), k))}</td>" for k in keys) + "</tr>")
    if len(rows) > len(shown):
        body.append(f'<tr><td class="k" colspan="{len(keys)}">… {len(rows) - len(shown)} more frames '
                    "in summary.json</td></tr>")
    body.append('<tr class="total">' + "".join(f"<td>{_esc(_fmt(overall.get(k), k))}</td>" for k in keys) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _kv_table(d) -> str:
    rows = "".join(f'<tr><td class="k">{_esc(k)}</td><td class="k">{_esc(v)}</td></tr>' for k, v in d.items())
    return f"<table>{rows}</table>"


def _img(png: bytes, name: str, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{_esc(alt)}" title="{_esc(name)}">'


def _box_text(box, voxel_size_um) -> str:
    parts = []
    for axis, s, v in zip("zyx", box, voxel_size_um):
        parts.append(f"{axis} {s.start}–{s.stop - 1} px ({(s.stop - s.start) * v:.1f} µm)")
    return ", ".join(parts)


def _legend_html(kinds) -> str:
    return "; ".join(f'<span class="sw" style="background:{COLORS[k]}"></span>{_esc(LABELS[k])} '
                     f'({"circle" if MARKERS[k] == "o" else "square" if MARKERS[k] == "s" else "triangle"})'
                     for k in kinds)


def _json_ready(x):
    if isinstance(x, dict):
        return {str(k): _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


# --------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------


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
        "meta": meta,
    }
    with atomic_write(out_dir / "summary.json", "w") as f:
        json.dump(_json_ready(summary), f, indent=1, default=str)
    page = _html(title, frame, data.shape, vs, overall, rows, figures, meta, gt is not None, dists)
    index = out_dir / "index.html"
    with atomic_write(index, "w") as f:
        f.write(page)
    return index


def _html(title, frame, shape, vs, overall, rows, figures, meta, has_gt, dists) -> str:
    from kt_stardist import __version__

    title = title or "kt-stardist report"
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    n_t, n_z, n_y, n_x, n_c = shape
    cards = [("detections", overall["detections"])]
    if "pairs" in overall:
        cards.append(("sister pairs", overall["pairs"]))
    if len(dists):
        cards.append(("median sister distance", f"{np.median(dists):.2f} µm"))
    if has_gt:
        cards += [("precision", _fmt(overall["precision"])), ("recall", _fmt(overall["recall"])),
                  ("F1", _fmt(overall["f1"])), ("RMSE", f"{_fmt(overall['rmse_nm'], 'rmse_nm')} nm")]
    card_html = "".join(f'<div class="card">{_esc(k)}<b>{_esc(v)}</b></div>' for k, v in cards)

    fig_html = []
    for name, png, cap, alt in figures:
        fig_html.append(f"<figure>{_img(png, name, alt)}<figcaption>{cap} "
                        f"(Also saved as <code>{_esc(name)}</code>.)</figcaption></figure>")
    projections = fig_html[:1]
    rest = fig_html[1:]

    run = {}
    run["model"] = meta.get("model", "not recorded")
    thresholds = meta.get("thresholds")
    extra = {k: v for k, v in meta.items() if k not in ("model", "thresholds", "command")}
    run.update(extra)
    run["kt-stardist version"] = __version__
    run["created"] = now
    thr_html = ""
    if isinstance(thresholds, dict) and thresholds:
        thr_html = "<h3>Thresholds</h3>" + _kv_table(thresholds)
    elif thresholds is not None:
        run["thresholds"] = thresholds
    command = meta.get("command")
    cmd_html = f"<h3>Command</h3><pre>{_esc(command)}</pre>" if command else ""
    score_note = ""
    if has_gt:
        score_note = ("<p class=\"meta\">Precision = TP / detections, recall = TP / ground truth, "
                      "F1 = 2 TP / (2 TP + FP + misses); RMSE: distance between matched points, nm.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title><style>{_CSS}</style>
<script>{_SCRIPT}</script></head>
<body>
<h1>{_esc(title)}</h1>
<p class="meta">Image {n_t} frame(s) × {n_z} × {n_y} × {n_x} px (z × y × x), {n_c} channel(s);
voxel {vs[0]:g} × {vs[1]:g} × {vs[2]:g} µm. Created {_esc(now)} by kt-stardist {_esc(__version__)}.</p>
<div class="cards">{card_html}</div>
<h2>Detections in frame {frame}</h2>
{''.join(projections)}
<h2>Counts and scores per frame</h2>
{_table(rows, overall)}
{score_note}
{('<h2>Tracks and distributions</h2>' + ''.join(rest)) if rest else ''}
<h2>Run</h2>
{_kv_table(run)}
{thr_html}
{cmd_html}
</body></html>
"""
