"""How well StarDist's star-convex polyhedra fit the sphere labels, and how learnable they are.

Two questions decide a StarDist configuration for kinetochores:

1. **Fit** — mean IoU of each label object against its own star-convex reconstruction from
   ``n_rays`` distances measured at the object's centre, exactly as StarDist does it
   (``stardist.geometry.star_dist3D`` → ``polyhedron_to_label``, scored with
   ``stardist.matching.matching(..., thresh=0).mean_true_score``, the number of StarDist's
   3D data notebook). It depends on the label radius, the number of rays and the anisotropy,
   not on the grid.
2. **Learnability** — StarDist predicts the probability map only on the output lattice
   (every ``grid``-th voxel), and the training target there is ``edt_prob(labels,
   anisotropy)[::gz, ::gy, ::gx]``. An object whose lattice voxels all lie at its rim has no
   strong target to learn from and no lattice voxel near its centre to fire on. Per grid we
   report: ``learnable`` (fraction of objects with a lattice voxel whose target probability is
   ≥ ``learnable_prob``, default 0.5, i.e. in the inner half of the object), ``any_on_grid``
   (fraction with any lattice voxel at all) and ``centre_on_grid`` (fraction whose rounded
   centroid is itself a lattice voxel: coordinate % grid == 0 on every axis). It depends on
   grid and radius (and the anisotropy of the distance transform), not on rays.

Each is computed once and the two are combined in one table (:func:`sweep`).
Axis order z, y, x; label images are int (Z, Y, X), 0 = background.
"""

from __future__ import annotations

import time
from math import lcm

import numpy as np
import pandas as pd

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.validate import check_labels

DEFAULT_RADII_UM = (0.3, 0.4, 0.5, 0.6)
DEFAULT_RAYS = (32, 64, 128, 256, 512, 1024)
DEFAULT_GRIDS = ((1, 1, 1), (1, 2, 2), (1, 4, 4), (1, 8, 8), (1, 16, 16))
#: thresholds of the recommendation
MIN_IOU = 0.7
MIN_LEARNABLE = 0.95
#: largest label radius recommended: sisters are ~1 µm apart, larger spheres would touch
MAX_RADIUS_UM = 0.5

COLUMNS = ["radius_um", "n_rays", "anisotropy", "grid", "n_objects", "n_fitted", "mean_iou",
           "learnable", "any_on_grid", "centre_on_grid", "ms_per_object"]


def fmt_triple(t) -> str:
    """(2.31, 1.0, 1.0) -> '2.31,1,1' (the form used in tables and on the command line)."""
    return ",".join(f"{float(v):g}" for v in t)


def select_objects(labels, max_objects=None, seed=0) -> np.ndarray:
    """Label ids present in ``labels`` (sorted); a random ``max_objects`` of them when given."""
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if max_objects is not None and len(ids) > max_objects:
        ids = np.sort(np.random.default_rng(seed).choice(ids, int(max_objects), replace=False))
    return ids


def _centres_int(labels, ids):
    """StarDist's centre of each object: its centroid truncated to int (as relabel_image_stardist3D)."""
    from scipy import ndimage

    c = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, ids)
    return np.array(c, float).reshape(-1, 3)


def fit_iou(labels, n_rays, anisotropy=None, ids=None) -> dict:
    """Mean IoU of each object with its ``n_rays`` star-convex reconstruction (StarDist's own).

    Distances are measured with ``star_dist3D`` at each object's centroid (truncated to int, as
    ``relabel_image_stardist3D``) on a crop around the object (with a 2-voxel margin, so rays
    stop at the same voxels as on the whole volume), the polyhedra are drawn with
    ``polyhedron_to_label`` and scored with ``matching(labels, reconstruction, thresh=0)
    .mean_true_score``. With ``ids`` (a subset of objects) only those are reconstructed and
    scored; with all objects this equals ``relabel_image_stardist3D`` + ``matching``.

    labels: int (Z, Y, X). anisotropy: (z, y, x) for ``Rays_GoldenSpiral`` or None (isotropic).
    Returns dict(mean_iou, n_fitted, seconds).
    """
    from scipy import ndimage
    from skimage.segmentation import relabel_sequential
    from stardist import Rays_GoldenSpiral
    from stardist.geometry import polyhedron_to_label, star_dist3D
    from stardist.matching import matching

    labels = np.asarray(labels)
    if ids is None:
        ids = select_objects(labels)
    ids = np.asarray(ids)
    t0 = time.perf_counter()
    rays = Rays_GoldenSpiral(int(n_rays), anisotropy=None if anisotropy is None else tuple(anisotropy))
    if len(ids) == 0:
        return dict(mean_iou=float("nan"), n_fitted=0, seconds=0.0)
    slices = ndimage.find_objects(labels)
    centres = _centres_int(labels, ids)
    points = centres.astype(int)
    dist = np.zeros((len(ids), len(rays)), np.float32)
    for i, (lab, p) in enumerate(zip(ids, points)):
        sl = slices[lab - 1]
        sl = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, n)) for s, n in zip(sl, labels.shape))
        crop = labels[sl]
        q = tuple(int(v - s.start) for v, s in zip(p, sl))
        if crop[q] != lab:  # centroid outside the object: StarDist gets 0 there too
            continue
        crop = relabel_sequential(crop)[0]  # small values for star_dist3D's uint16
        dist[i] = star_dist3D(crop, rays)[q]
    dist = np.maximum(dist, 1e-3)
    pred = polyhedron_to_label(dist, points, rays, shape=labels.shape, labels=ids, verbose=False)
    n_all = int(np.count_nonzero(np.unique(labels)))
    true = labels if len(ids) == n_all else np.where(np.isin(labels, ids), labels, 0)
    score = matching(true, pred, thresh=0).mean_true_score
    return dict(mean_iou=float(score), n_fitted=int(len(ids)), seconds=time.perf_counter() - t0)


def grid_fractions(labels, grid, anisotropy=None, learnable_prob=0.5, prob=None) -> dict:
    """How many objects the network can learn at output ``grid`` (z, y, x).

    Returns dict(learnable, any_on_grid, centre_on_grid), fractions of all objects:
    learnable = the object has a lattice voxel with training target ``edt_prob`` ≥
    ``learnable_prob``; any_on_grid = it has any lattice voxel; centre_on_grid = its rounded
    centroid is a lattice voxel (coordinate % grid == 0 on every axis). ``prob``: a precomputed
    ``stardist.utils.edt_prob(labels, anisotropy)`` (it does not depend on the grid).
    """
    labels = np.asarray(labels)
    grid = tuple(int(g) for g in grid)
    ids = select_objects(labels)
    if len(ids) == 0:
        return dict(learnable=float("nan"), any_on_grid=float("nan"), centre_on_grid=float("nan"))
    if prob is None:
        from stardist.utils import edt_prob

        prob = edt_prob(labels, anisotropy=anisotropy)
    ss = tuple(slice(0, None, g) for g in grid)
    lab, p = labels[ss].ravel(), prob[ss].ravel()
    peak = np.full(int(labels.max()) + 1, -1.0)
    np.maximum.at(peak, lab, p)
    peak = peak[ids]
    centres = np.round(_centres_int(labels, ids)).astype(int)
    on = np.all(centres % np.array(grid) == 0, axis=1)
    return dict(learnable=float(np.mean(peak >= learnable_prob)), any_on_grid=float(np.mean(peak >= 0)),
                centre_on_grid=float(np.mean(on)))


def sweep(labels_by_radius, rays=DEFAULT_RAYS, anisotropies=(None,), grids=DEFAULT_GRIDS,
          max_objects=None, seed=0, learnable_prob=0.5, progress=False) -> pd.DataFrame:
    """Fit and learnability for every radius × rays × anisotropy × grid.

    labels_by_radius: {radius_um (or None for a given label image): labels (Z, Y, X)} or a
    callable radius -> labels with an iterable ``keys``; anisotropies: (z, y, x) tuples (None =
    isotropic rays, (1,1,1)). Fit is computed once per (radius, rays, anisotropy) on up to
    ``max_objects`` sampled objects; learnability once per (radius, anisotropy, grid) on all.
    Returns a DataFrame with :data:`COLUMNS`.
    """
    from stardist.utils import edt_prob
    from tqdm.auto import tqdm

    anisotropies = [None if a is None else tuple(float(v) for v in a) for a in anisotropies]
    keys = list(labels_by_radius)
    n_steps = len(keys) * len(anisotropies) * (len(rays) + 1)
    bar = tqdm(total=n_steps, desc="polyfit", unit="fit", disable=not progress, leave=False)
    rows = []
    for r in keys:
        labels = check_labels(labels_by_radius[r], f"labels (radius {r} µm)" if r is not None else "labels")
        n_objects = len(select_objects(labels))
        ids = select_objects(labels, max_objects, seed)
        for a in anisotropies:
            astr = fmt_triple(a if a is not None else (1, 1, 1))
            bar.set_postfix_str(f"r={r} a={astr} learnability")
            prob = edt_prob(labels, anisotropy=a)
            frac = {g: grid_fractions(labels, g, a, learnable_prob, prob=prob) for g in grids}
            bar.update(1)
            for n in rays:
                bar.set_postfix_str(f"r={r} a={astr} rays={n}")
                fit = fit_iou(labels, n, a, ids)
                bar.update(1)
                for g in grids:
                    rows.append(dict(radius_um=np.nan if r is None else float(r), n_rays=int(n),
                                     anisotropy=astr, grid=fmt_triple(g), n_objects=n_objects,
                                     n_fitted=fit["n_fitted"], mean_iou=fit["mean_iou"], **frac[g],
                                     ms_per_object=1e3 * fit["seconds"] / max(fit["n_fitted"], 1)))
    bar.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def _grid_size(gstr) -> int:
    return int(np.prod([float(v) for v in gstr.split(",")]))


def recommend(table: pd.DataFrame, min_iou=MIN_IOU, min_learnable=MIN_LEARNABLE, max_radius_um=MAX_RADIUS_UM,
              anisotropy=None):
    """The smallest configuration that fits and can be learnt: (row as dict or None, one line).

    Among rows with mean_iou ≥ ``min_iou``, learnable ≥ ``min_learnable`` and radius ≤
    ``max_radius_um`` (sister kinetochores are ~1 µm apart; None: no limit): fewest rays, then
    coarsest grid, then the best fit, then the most learnable. ``anisotropy`` (e.g. '2.31,1,1'):
    consider only that one — the CLI passes the physical one (from the voxel size), because
    with isotropic (1,1,1) the training target ``edt_prob`` is measured in px, dominated by the
    thin z extent, and hardly falls off in y/x, so it would call far-off lattice voxels central. For point detection
    learnability matters more than a perfect fit, so when nothing passes both thresholds the
    most learnable row (then the best fit, fewest rays) is named instead.
    """
    if len(table) == 0:
        return None, "no results"
    t = table.assign(_g=table["grid"].map(_grid_size))
    if anisotropy is not None:
        t = t[t["anisotropy"] == anisotropy]
    if max_radius_um is not None:
        t = t[t["radius_um"].isna() | (t["radius_um"] <= max_radius_um + 1e-9)]
    ok = t[(t["mean_iou"] >= min_iou) & (t["learnable"] >= min_learnable)]

    def describe(row):
        rad = "" if pd.isna(row["radius_um"]) else f"label radius {row['radius_um']:g} µm, "
        return (f"{rad}{int(row['n_rays'])} rays, grid ({row['grid']}), anisotropy ({row['anisotropy']}): "
                f"mean IoU {row['mean_iou']:.2f}, learnable {row['learnable']:.2f}")

    if len(ok):
        best = ok.sort_values(["n_rays", "_g", "mean_iou", "learnable"],
                              ascending=[True, False, False, False]).iloc[0]
        text = (f"recommended: {describe(best)} — the fewest rays and coarsest grid with mean IoU ≥ "
                f"{min_iou:g} and learnable ≥ {min_learnable:g}"
                + (f" (radius ≤ {max_radius_um:g} µm)" if max_radius_um is not None else "") + ". For point detection learnability "
                "matters more than a perfect fit: more rays only sharpen the shape.")
    else:
        best = t.sort_values(["learnable", "mean_iou", "n_rays"], ascending=[False, False, True]).iloc[0]
        text = (f"nothing reaches mean IoU ≥ {min_iou:g} with learnable ≥ {min_learnable:g}; most "
                f"learnable: {describe(best)}. For point detection learnability matters more than "
                f"a perfect fit.")
    return best.drop("_g").to_dict(), text


def plot_sweep(table: pd.DataFrame, path, title=None) -> None:
    """PNG: mean IoU vs rays (one line per radius × anisotropy) and learnable fraction vs grid
    (one line per radius; dotted: centre on grid). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kt_stardist.io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    anis = list(dict.fromkeys(table["anisotropy"]))
    radii = list(dict.fromkeys(table["radius_um"]))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(radii), 1)))
    styles = ["-", "--", ":", "-."]

    def rlabel(r):
        return "labels" if pd.isna(r) else f"{r:g} µm"

    for ci, r in enumerate(radii):
        sel_r = table[table["radius_um"].isna()] if pd.isna(r) else table[table["radius_um"] == r]
        for ai, a in enumerate(anis):
            s = sel_r[sel_r["anisotropy"] == a].drop_duplicates("n_rays").sort_values("n_rays")
            ax1.plot(s["n_rays"], s["mean_iou"], styles[ai % 4], marker="o", ms=3, color=colors[ci],
                     label=f"{rlabel(r)}, aniso ({a})")
        s = sel_r[sel_r["anisotropy"] == anis[0]].drop_duplicates("grid")
        x = np.arange(len(s))
        ax2.plot(x, s["learnable"], "-o", ms=3, color=colors[ci], label=f"{rlabel(r)} learnable")
        ax2.plot(x, s["centre_on_grid"], ":", color=colors[ci])
        ax2.set_xticks(x, [f"({g})" for g in s["grid"]])
    ax1.set_xscale("log", base=2)
    ax1.axhline(MIN_IOU, color="grey", lw=0.8)
    ax1.set(xlabel="rays", ylabel="mean IoU (star-convex fit)", ylim=(0, 1))
    ax1.legend(fontsize=6, ncol=2)
    ax2.axhline(MIN_LEARNABLE, color="grey", lw=0.8)
    ax2.set(xlabel="grid (z,y,x)", ylabel="fraction of objects", ylim=(0, 1.05),
            title="learnable (target ≥ 0.5 on lattice); dotted: centre on lattice", )
    ax2.title.set_fontsize(8)
    ax2.legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


def crop_to_points(points_px, shape, margin_px, align=(1, 1, 1)):
    """Box (tuple of slices) around the points with ``margin_px`` (z, y, x), clipped to ``shape``;
    its start is a multiple of ``align`` on each axis, so output lattices keep their phase."""
    pts = np.asarray(points_px, float).reshape(-1, 3)
    if len(pts) == 0:
        return tuple(slice(0, n) for n in shape)
    lo = np.floor(pts.min(0) - np.asarray(margin_px)).astype(int)
    hi = np.ceil(pts.max(0) + np.asarray(margin_px)).astype(int) + 1
    out = []
    for lo_i, hi_i, n, a in zip(lo, hi, shape, align):
        start = max(lo_i, 0) // a * a
        out.append(slice(start, min(max(hi_i, start + 1), n)))
    return tuple(out)


def labels_from_points(points_px, shape, voxel_size_um, radii_um, align=(1, 1, 1), crop=True):
    """{radius_um: labels} from points (N, 3) px via ``labels.points_to_labels``, on a crop around
    the points (margin: largest radius + 2 px; start aligned to ``align``). Returns
    (dict, crop slices)."""
    from kt_stardist.labels import points_to_labels

    pts = np.asarray(points_px, float).reshape(-1, 3)
    shape = tuple(int(s) for s in shape)
    if crop:
        margin = [max(radii_um) / v + 2 for v in voxel_size_um]
        sl = crop_to_points(pts, shape, margin, align)
    else:
        sl = tuple(slice(0, n) for n in shape)
    offset = np.array([s.start for s in sl], float)
    cshape = tuple(s.stop - s.start for s in sl)
    inside = np.all((pts - offset >= -0.5) & (pts - offset < np.array(cshape) - 0.5), axis=1)
    return {float(r): points_to_labels(pts[inside] - offset, cshape, voxel_size_um, r) for r in radii_um}, sl


def example_labels():
    """StarDist's own 3D example labels (``stardist.data.test_image_nuclei_3d``) and the
    anisotropy StarDist's notebook derives from their extents (median bounding box)."""
    from stardist import calculate_extents
    from stardist.data import test_image_nuclei_3d

    _, mask = test_image_nuclei_3d(return_mask=True)
    ext = np.asarray(calculate_extents(mask), float)
    return mask.astype(np.int32), tuple(round(float(v), 2) for v in ext.max() / ext)


def grid_lcm(grids) -> tuple:
    """Per axis, the least common multiple of the grids (crop alignment keeping lattice phase)."""
    return tuple(lcm(*[int(g[i]) for g in grids]) for i in range(3))


__all__ = ["DEFAULT_RADII_UM", "DEFAULT_RAYS", "DEFAULT_GRIDS", "MIN_IOU", "MIN_LEARNABLE", "MAX_RADIUS_UM", "COLUMNS",
           "fit_iou", "grid_fractions", "sweep", "recommend", "plot_sweep", "select_objects",
           "labels_from_points", "crop_to_points", "example_labels", "check_labels", "grid_lcm",
           "fmt_triple", "VOXEL_SIZE_UM"]
