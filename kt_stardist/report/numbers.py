"""Checked inputs and the numbers of a report: per-frame counts, scores, inter-sister distances."""

from __future__ import annotations


import numpy as np

from kt_stardist.errors import InputError
from kt_stardist.validate import check_voxel_size

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
    return check_voxel_size(voxel_size_um, "report: voxel_size_um")


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
