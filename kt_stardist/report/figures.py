"""Figures of a report: maximum-intensity projections with detections, tracks, histograms (PNG bytes)."""

from __future__ import annotations

import io as _bytes_io

import numpy as np

from kt_stardist.report.numbers import _ids
from kt_stardist.report.style import COLORS, DPI, LABELS, MARKERS, TRACK_COLORS

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


#: the points table's uncertainty columns (``kt_stardist.predict.refine.FIT_COLUMNS``), nm
SIGMA_COLUMNS = ("sigma_z_nm", "sigma_y_nm", "sigma_x_nm")


def _sigmas(points):
    """(sigma (N, 3) nm, ok (N,) bool: the fit passed and every sigma is finite), or None
    when the table has no uncertainty columns (refinement other than ``gauss`` / ``spline``)."""
    if not all(c in points.columns for c in SIGMA_COLUMNS):
        return None
    sig = points[list(SIGMA_COLUMNS)].to_numpy(dtype=float)
    ok = np.all(np.isfinite(sig), axis=1)
    if "fit_ok" in points.columns:
        ok &= points["fit_ok"].to_numpy(dtype=bool)
    return sig, ok


def uncertainty_summary(points):
    """Medians (nm) of each axis's reported position uncertainty over the points whose fit
    passed (``fit_ok``), with their number and the number of points: a dict, or None when the
    table has no uncertainty columns."""
    got = _sigmas(points)
    if got is None:
        return None
    sig, ok = got
    return {"n_points": int(len(points)), "n_fit_ok": int(ok.sum()),
            **{c.replace("sigma_", "median_"): (float(np.median(sig[ok, k])) if ok.any() else None)
               for k, c in enumerate(SIGMA_COLUMNS)}}


def _figure_uncertainty(points):
    """Histograms of the reported uncertainty (nm) per axis of the points whose fit passed, or
    None (no uncertainty columns, or no fit passed)."""
    from matplotlib.figure import Figure

    got = _sigmas(points)
    if got is None or not got[1].any():
        return None
    sig, ok = got
    fig = Figure(figsize=(10.5, 2.7), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    top = float(np.percentile(sig[ok], 99)) * 1.1 + 1.0
    for ax, k, name in zip(axes, range(3), "zyx"):
        v = sig[ok, k]
        ax.hist(np.minimum(v, top), bins=np.linspace(0, top, 31), color="#0072B2", edgecolor="white")
        ax.axvline(np.median(v), color="#D55E00", lw=1.2, label=f"median {np.median(v):.0f} nm")
        ax.set_xlabel(f"σ{name} (nm)")
        ax.legend(fontsize=7)
    axes[0].set_ylabel("points")
    return fig
