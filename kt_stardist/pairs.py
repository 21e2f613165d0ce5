"""Sister kinetochore pairing, frame by frame (and, with tracks, consistently over time).

Axis order z, y, x. Points are given in px (columns ``z, y, x``) and converted to µm with the
voxel size before any distance or angle is computed.

The pairing is an optimal matching on a general graph (not a bipartite one): the points of a
frame are nodes, every two points closer than ``max_dist_um`` are joined by an edge of cost

    cost_ij = d_ij / max_dist_um + angle_weight * planarity * sin²(θ_ij)

where ``d_ij`` is the distance in µm and ``θ_ij`` the angle between the sister axis i→j and the
metaphase plate normal (the smallest principal axis of the frame's point cloud). ``planarity``
(0..1, from the singular values) switches the angle term off when the cloud is not a plate.
Every point left unpaired costs ``(1 + angle_weight) / 2``, so the matching minimises

    Σ_pairs cost_ij + Σ_unpaired (1 + angle_weight) / 2,

i.e. it maximises Σ_pairs w_ij with w_ij = (1 + angle_weight) - cost_ij ≥ 0. This is solved
exactly with Edmonds' blossom algorithm (``networkx.max_weight_matching``; networkx is a
dependency of laptrack). ``method="greedy"`` (cheapest edge first) is kept for comparison: it
is not optimal, e.g. on a chain A–B–C–D whose middle edge is the cheapest it pairs only B–C
and leaves A and D alone, where the optimal matching pairs A–B and C–D.

Unpaired points are kept, with ``pair_id = -1``, ``sister = 0`` and ``paired = False``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.validate import check_points_table, check_voxel_size

#: beyond this distance (µm) two points are never sisters
MAX_PAIR_DIST_UM = 1.6

#: weight of the plate-normal term in the pair cost (distance term is 0..1)
ANGLE_WEIGHT = 1.0

PAIR_COLUMNS = ["pair_id", "sister", "paired"]


# --------------------------------------------------------------------------- checks


def points_um(df, voxel_size_um) -> np.ndarray:
    """(N, 3) coordinates in µm (z, y, x) from the px columns ``z, y, x``."""
    return df[["z", "y", "x"]].to_numpy(dtype=float) * np.asarray(voxel_size_um, dtype=float)


# --------------------------------------------------------------------------- geometry


def plate_normal(points_um) -> tuple[np.ndarray | None, float]:
    """Metaphase plate normal of one frame: the smallest principal axis of the point cloud.

    Parameters
    ----------
    points_um : (N, 3) array, µm (z, y, x)

    Returns
    -------
    normal : (3,) unit vector (z, y, x), sign fixed so its largest component is positive;
        None with fewer than 4 points.
    planarity : float in [0, 1], ``1 - s3/s2`` from the singular values s1 ≥ s2 ≥ s3: near 1 for
        a thin plate, near 0 for a ball (where the normal means nothing).
    """
    p = np.asarray(points_um, dtype=float)
    if len(p) < 4:
        return None, 0.0
    _, s, vt = np.linalg.svd(p - p.mean(axis=0), full_matrices=False)
    normal = vt[2]
    if normal[np.argmax(np.abs(normal))] < 0:
        normal = -normal
    planarity = float(1.0 - s[2] / s[1]) if s[1] > 0 else 0.0
    return normal, planarity


def _angle_deg(axis_um, normal) -> np.ndarray:
    """Angle (degrees, 0..90) between sister axes (K, 3) and the plate normal."""
    axis_um = np.atleast_2d(axis_um)
    if normal is None:
        return np.full(len(axis_um), np.nan)
    n = np.linalg.norm(axis_um, axis=1)
    cos = np.abs(axis_um @ normal) / np.where(n > 0, n, 1.0)
    return np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))


def candidate_pairs(points_um, max_dist_um=MAX_PAIR_DIST_UM, normal=None, planarity=0.0,
                    angle_weight=ANGLE_WEIGHT):
    """Candidate sister pairs of one frame and their costs.

    Returns ``(ij, cost)``: ``ij`` (K, 2) int indices (i < j) of point pairs closer than
    ``max_dist_um`` (µm), ``cost`` (K,) as in the module docstring (0 .. 1 + angle_weight).
    """
    from scipy.spatial import cKDTree

    p = np.asarray(points_um, dtype=float)
    if len(p) < 2:
        return np.zeros((0, 2), int), np.zeros(0)
    ij = cKDTree(p).query_pairs(max_dist_um, output_type="ndarray")
    if len(ij) == 0:
        return np.zeros((0, 2), int), np.zeros(0)
    ij = ij[np.lexsort((ij[:, 1], ij[:, 0]))]
    axis = p[ij[:, 1]] - p[ij[:, 0]]
    d = np.linalg.norm(axis, axis=1)
    cost = d / max_dist_um
    if normal is not None and planarity > 0 and angle_weight > 0:
        sin2 = np.sin(np.radians(_angle_deg(axis, normal))) ** 2
        cost = cost + angle_weight * planarity * sin2
    return ij, cost


def match_pairs(n, ij, cost, unpaired_cost, method="optimal") -> np.ndarray:
    """Choose pairs among candidates so that no point is in two pairs.

    Parameters
    ----------
    n : number of points
    ij, cost : candidate pairs (K, 2) and their costs (K,)
    unpaired_cost : cost of leaving one point unpaired; a pair is only worth taking when
        ``cost < 2 * unpaired_cost``
    method : ``"optimal"`` (minimum total cost, Edmonds' blossom via networkx) or ``"greedy"``
        (cheapest pair first; not optimal, kept for comparison)

    Returns
    -------
    (M, 2) int array of chosen pairs (i < j), sorted.
    """
    ij = np.asarray(ij, dtype=int).reshape(-1, 2)
    cost = np.asarray(cost, dtype=float)
    keep = cost < 2 * unpaired_cost
    ij, cost = ij[keep], cost[keep]
    if len(ij) == 0:
        return np.zeros((0, 2), int)
    if method == "greedy":
        used = np.zeros(n, bool)
        chosen = []
        for k in np.argsort(cost, kind="stable"):
            i, j = ij[k]
            if not used[i] and not used[j]:
                used[i] = used[j] = True
                chosen.append((i, j))
    elif method == "optimal":
        import networkx as nx

        g = nx.Graph()
        # integer weights: networkx's blossom is exact on integers
        w = np.round((2 * unpaired_cost - cost) * 1e6).astype(np.int64)
        g.add_weighted_edges_from((int(i), int(j), int(wk)) for (i, j), wk in zip(ij, w))
        chosen = [tuple(sorted(e)) for e in nx.max_weight_matching(g, maxcardinality=False)]
    else:
        raise InputError(f"method: expected 'optimal' or 'greedy', got {method!r}")
    out = np.array(sorted(chosen), dtype=int).reshape(-1, 2)
    return out


def pair_frame(points_um, max_dist_um=MAX_PAIR_DIST_UM, angle_weight=ANGLE_WEIGHT,
               method="optimal", normal="auto"):
    """Pair the points of one frame.

    Parameters
    ----------
    points_um : (N, 3) µm (z, y, x)
    normal : ``"auto"`` (estimated with :func:`plate_normal`), None (no angle term) or a (3,)
        unit vector (z, y, x)

    Returns
    -------
    pairs : (M, 2) int indices; the first of each row is sister 1 (lower along the normal,
        or lower in z, y, x without a normal)
    normal : the normal used, or None
    """
    p = np.asarray(points_um, dtype=float)
    planarity = 1.0
    if isinstance(normal, str) and normal == "auto":
        normal, planarity = plate_normal(p)
    ij, cost = candidate_pairs(p, max_dist_um, normal, planarity, angle_weight)
    pairs = match_pairs(len(p), ij, cost, (1.0 + angle_weight) / 2, method)
    return _order_sisters(p, pairs, normal), normal


def _order_sisters(p, pairs, normal):
    if len(pairs) == 0:
        return pairs
    a, b = p[pairs[:, 0]], p[pairs[:, 1]]
    if normal is not None:
        swap = (b - a) @ normal < 0
    else:
        swap = np.array([tuple(bb) < tuple(aa) for aa, bb in zip(a, b)], bool)
    pairs = pairs.copy()
    pairs[swap] = pairs[swap][:, ::-1]
    return pairs


# --------------------------------------------------------------------------- tables


def _frames(df):
    """Yield (t or None, positional index array) per frame."""
    if "t" in df.columns:
        t = df["t"].to_numpy()
        for tv in np.unique(t):
            yield tv, np.flatnonzero(t == tv)
    else:
        yield None, np.arange(len(df))


def assign_pairs(df, voxel_size_um=VOXEL_SIZE_UM, max_dist_um=MAX_PAIR_DIST_UM,
                 angle_weight=ANGLE_WEIGHT, method="optimal", use_tracks=False,
                 min_fraction=0.5) -> pd.DataFrame:
    """Assign sister pairs in every frame of a points table.

    Parameters
    ----------
    df : points table, columns ``z, y, x`` (px), optional ``t`` (frame) and ``track_id``
    voxel_size_um : (z, y, x) µm
    max_dist_um : two points farther apart than this (µm) are never paired
    angle_weight : weight of the plate-normal term (0: distance only)
    method : ``"optimal"`` or ``"greedy"`` (see :func:`match_pairs`)
    use_tracks : with a ``track_id`` column, first pair whole tracks: two tracks that are
        partners in at least ``min_fraction`` of the frames they share (and the most often
        among their candidates) are sisters in every frame where both are present and within
        ``max_dist_um``; the points left over are paired frame by frame.

    Returns
    -------
    A copy of ``df`` with ``pair_id`` (int, -1 when unpaired; constant over time for track
    pairs), ``sister`` (1/2, 0 when unpaired) and ``paired`` (bool).
    """
    check_points_table(df)
    vox = np.asarray(check_voxel_size(voxel_size_um, "voxel_size_um"))
    if not max_dist_um > 0:
        raise InputError(f"max_dist_um: expected a positive distance in µm, got {max_dist_um!r}")
    if method not in ("optimal", "greedy"):
        raise InputError(f"method: expected 'optimal' or 'greedy', got {method!r}")
    if use_tracks and "track_id" not in df.columns:
        raise InputError("points: --use-tracks needs a track_id column (run `kt-stardist track` first)")
    out = df.copy()
    for c in PAIR_COLUMNS:
        if c in out.columns:
            out = out.drop(columns=c)
    p_um = points_um(out, vox)
    pair_id = np.full(len(out), -1, dtype=np.int64)
    sister = np.zeros(len(out), dtype=np.int64)
    next_id = 0

    fixed = np.zeros(len(out), bool)
    if use_tracks:
        first = assign_pairs(df, vox, max_dist_um, angle_weight, method, use_tracks=False)
        partners = vote_track_partners(first, min_fraction=min_fraction)
        track = out["track_id"].to_numpy()
        for pid, (ta, tb) in enumerate(sorted({tuple(sorted((a, b))) for a, (b, _) in partners.items()})):
            for _, idx in _frames(out):
                ia = idx[track[idx] == ta]
                ib = idx[track[idx] == tb]
                if len(ia) != 1 or len(ib) != 1:
                    continue
                if np.linalg.norm(p_um[ia[0]] - p_um[ib[0]]) > max_dist_um:
                    continue
                pair_id[[ia[0], ib[0]]] = pid
                sister[ia[0]], sister[ib[0]] = 1, 2
                fixed[[ia[0], ib[0]]] = True
            next_id = pid + 1

    for _, idx in _frames(out):
        # the plate normal comes from all points of the frame, pairs from the free ones
        normal, planarity = plate_normal(p_um[idx])
        free = idx[~fixed[idx]]
        ij, cost = candidate_pairs(p_um[free], max_dist_um, normal, planarity, angle_weight)
        pairs = match_pairs(len(free), ij, cost, (1.0 + angle_weight) / 2, method)
        pairs = _order_sisters(p_um[free], pairs, normal)
        for a, b in pairs:
            pair_id[free[a]] = pair_id[free[b]] = next_id
            sister[free[a]], sister[free[b]] = 1, 2
            next_id += 1
    out["pair_id"] = pair_id
    out["sister"] = sister
    out["paired"] = pair_id >= 0
    return out


def vote_track_partners(df, min_fraction=0.5) -> dict:
    """Sister tracks by a vote over frames.

    Parameters
    ----------
    df : points table with ``track_id`` and per-frame ``pair_id`` (-1 unpaired), optional ``t``
    min_fraction : two tracks are candidates when they are paired in at least this fraction
        of the frames in which both are present

    Returns
    -------
    dict ``track_id -> (partner_track_id, n_frames_paired)``, symmetric; each track has at most
    one partner (a maximum-weight matching on the vote counts).
    """
    for c in ("track_id", "pair_id"):
        if c not in df.columns:
            raise InputError(f"points: missing column {c}")
    import networkx as nx

    d = df[df["track_id"] >= 0]
    tcol = d["t"] if "t" in d.columns else pd.Series(0, index=d.index)
    d = d.assign(_t=tcol.to_numpy())
    votes = Counter()
    for (_, pid), g in d[d["pair_id"] >= 0].groupby(["_t", "pair_id"]):
        if len(g) == 2:
            a, b = sorted(g["track_id"].tolist())
            if a != b:
                votes[(a, b)] += 1
    frames_of = {tid: set(g["_t"]) for tid, g in d.groupby("track_id")}
    gr = nx.Graph()
    for (a, b), v in votes.items():
        shared = len(frames_of[a] & frames_of[b])
        if shared and v / shared >= min_fraction:
            gr.add_edge(a, b, weight=int(v))
    partners = {}
    for a, b in nx.max_weight_matching(gr):
        v = votes[tuple(sorted((a, b)))]
        partners[a] = (b, v)
        partners[b] = (a, v)
    return partners


def pairs_table(df, voxel_size_um=VOXEL_SIZE_UM) -> pd.DataFrame:
    """One row per pair and frame.

    Columns: ``t`` (when present), ``pair_id``, ``distance_um`` (inter-sister distance, µm),
    midpoint ``z, y, x`` (px) and ``z_um, y_um, x_um`` (µm), ``angle_deg`` (angle between the
    sister axis and the frame's plate normal, 0..90°; NaN with < 4 points), and
    ``track_id_1, track_id_2`` when tracks are present.
    """
    check_points_table(df)
    if "pair_id" not in df.columns:
        raise InputError("points: no pair_id column (run assign_pairs / `kt-stardist pairs` first)")
    vox = np.asarray(check_voxel_size(voxel_size_um, "voxel_size_um"))
    p_um = points_um(df, vox)
    pid = df["pair_id"].to_numpy()
    sis = df["sister"].to_numpy() if "sister" in df.columns else None
    has_tracks = "track_id" in df.columns
    rows = []
    for tv, idx in _frames(df):
        normal, _ = plate_normal(p_um[idx])
        for k in np.unique(pid[idx]):
            if k < 0:
                continue
            members = idx[pid[idx] == k]
            if len(members) != 2:
                continue
            if sis is not None and sis[members[0]] > sis[members[1]]:
                members = members[::-1]
            a, b = p_um[members[0]], p_um[members[1]]
            mid_um = (a + b) / 2
            row = {} if tv is None else {"t": tv}
            row.update(pair_id=int(k), distance_um=float(np.linalg.norm(b - a)))
            row.update(zip(("z", "y", "x"), mid_um / vox))
            row.update(zip(("z_um", "y_um", "x_um"), mid_um))
            row["angle_deg"] = float(_angle_deg(b - a, normal)[0])
            if has_tracks:
                tr = df["track_id"].to_numpy()
                row.update(track_id_1=int(tr[members[0]]), track_id_2=int(tr[members[1]]))
            rows.append(row)
    cols = (["t"] if "t" in df.columns else []) + [
        "pair_id", "distance_um", "z", "y", "x", "z_um", "y_um", "x_um", "angle_deg"]
    if has_tracks:
        cols += ["track_id_1", "track_id_2"]
    return pd.DataFrame(rows, columns=cols)


def pair_recovery(df, gt_col="gt_pair_id", pred_col="pair_id") -> dict:
    """How many ground-truth pairs were found exactly (both members, nothing else).

    Pairs are compared frame by frame as sets of rows. ``gt_col`` holds the true pair ids
    (-1 or NaN for points without a partner).

    Returns ``{"n_gt": int, "n_pred": int, "n_correct": int, "recovered": float,
    "precision": float}``.
    """
    def pair_sets(col):
        s = set()
        ids = df[col].to_numpy(dtype=float)
        for _, idx in _frames(df):
            v = ids[idx]
            ok = np.isfinite(v) & (v >= 0)
            for k in np.unique(v[ok]):
                m = idx[v == k]
                if len(m) == 2:
                    s.add(frozenset(m.tolist()))
        return s

    gt, pred = pair_sets(gt_col), pair_sets(pred_col)
    n_ok = len(gt & pred)
    return {
        "n_gt": len(gt), "n_pred": len(pred), "n_correct": n_ok,
        "recovered": n_ok / len(gt) if gt else float("nan"),
        "precision": n_ok / len(pred) if pred else float("nan"),
    }
