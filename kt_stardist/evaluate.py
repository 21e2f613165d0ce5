"""Point-detection scores: the one evaluator every number in kt-stardist comes from.

Ground-truth and predicted centres of mass (px, z, y, x) are matched one-to-one by an optimal
assignment (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`): among all
one-to-one matchings that only pair points within the cutoff it takes one with the most pairs,
and among those the smallest summed distance. Greedy nearest-first matching can lose pairs that
this finds.

Distances (``metric``):

- ``"euclidean"`` (default): physical distance in µm, ``sqrt(sum(((a - b) * voxel_size_um)**2))``;
  the cutoff is in µm (default 0.5 µm).
- ``"seuclidean"``: the historical weighted ("standardised") Euclidean distance on **px**
  coordinates, ``sqrt(dz**2 / 3 + dy**2 / 1.3 + dx**2 / 1.3)`` with the default
  ``weights=(3, 1.3, 1.3)`` (scipy ``cdist(..., "seuclidean", V=weights)``). Unitless; the cutoff
  is in these units, not µm, and the voxel size is not used for matching. Kept only to compare
  with earlier numbers.

Whatever the metric, the reported distances (``dist_um``) and RMSE are Euclidean, in µm and nm.

Conventions for empty sets: precision = TP / n_pred, 1 when there are no predictions;
recall = TP / n_gt, 1 when there is no ground truth; F1 = 2 TP / (2 TP + FP + FN), 1 when both
sets are empty (nothing to find, nothing found). RMSE is NaN when nothing matched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kt_stardist.defaults import MATCH_CUTOFF_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.validate import check_points_px, check_triple

__all__ = ["Matching", "match_points", "evaluate_points", "scores", "score_thresholds", "rmse_nm", "METRICS",
           "SEUCLIDEAN_WEIGHTS"]

METRICS = ("euclidean", "seuclidean")
#: variances (z, y, x) of the historical standardised Euclidean distance on px coordinates
SEUCLIDEAN_WEIGHTS = (3.0, 1.3, 1.3)
#: relative tolerance on the cutoff so that a distance equal to it (up to float rounding) matches
_CUTOFF_RTOL = 1e-9

SCORE_KEYS = ("n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "rmse_nm")


@dataclass(frozen=True)
class Matching:
    """Result of :func:`match_points`.

    ``gt_idx[k]`` (row in gt) is matched to ``pred_idx[k]`` (row in pred) at Euclidean distance
    ``dist_um[k]`` (µm), sorted by ``gt_idx``. Counts and scores as in the module docstring.
    """

    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    rmse_nm: float
    gt_idx: np.ndarray
    pred_idx: np.ndarray
    dist_um: np.ndarray
    n_gt: int
    n_pred: int
    metric: str = "euclidean"
    cutoff: float = MATCH_CUTOFF_UM

    def scores(self) -> dict:
        """Counts and scores as a plain dict (JSON-ready)."""
        return {k: getattr(self, k) for k in SCORE_KEYS}


def _scores(tp, n_gt, n_pred):
    fp, fn = n_pred - tp, n_gt - tp
    precision = tp / n_pred if n_pred else 1.0
    recall = tp / n_gt if n_gt else 1.0
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 1.0
    return fp, fn, float(precision), float(recall), float(f1)


def scores(tp: int, fp: int, fn: int) -> dict:
    """``precision, recall, f1`` from counts, with this module's empty-set rules (1 when there
    is nothing to find or nothing found). Every precision/recall/F1 in kt-stardist comes from
    here (or :func:`match_points`)."""
    _, _, precision, recall, f1 = _scores(int(tp), int(tp) + int(fn), int(tp) + int(fp))
    return dict(precision=precision, recall=recall, f1=f1)


def rmse_nm(dist_um) -> float:
    """Root-mean-square of distances in µm, in nm (NaN when empty)."""
    return float(np.sqrt(np.mean(np.square(dist_um))) * 1000) if len(dist_um) else float("nan")


def match_points(
    gt_px,
    pred_px,
    voxel_size_um=VOXEL_SIZE_UM,
    cutoff_um: float = MATCH_CUTOFF_UM,
    metric: str = "euclidean",
    weights=SEUCLIDEAN_WEIGHTS,
) -> Matching:
    """Match predicted to ground-truth points one-to-one and count TP, FP, FN.

    Parameters
    ----------
    gt_px, pred_px : (N, 3), (M, 3) arrays
        Points z, y, x in px (sub-voxel floats).
    voxel_size_um : (z, y, x)
        Voxel size, µm (for Euclidean distances, reported distances and RMSE).
    cutoff_um : float
        A pair matches only when its distance is <= the cutoff: µm for ``metric="euclidean"``;
        in the unitless weighted px distance for ``metric="seuclidean"`` (module docstring).
    metric : "euclidean" | "seuclidean"
    weights : (z, y, x)
        Variances for ``"seuclidean"`` (ignored otherwise).

    Returns
    -------
    Matching
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    gt = check_points_px(gt_px, "gt_px")
    pred = check_points_px(pred_px, "pred_px")
    vox = check_triple(voxel_size_um, "voxel_size_um")
    if metric not in METRICS:
        raise InputError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    try:
        cutoff = float(cutoff_um)
    except (TypeError, ValueError):
        raise InputError(f"cutoff_um: expected a number, got {cutoff_um!r}") from None
    if not cutoff >= 0:
        raise InputError(f"cutoff_um: expected a non-negative number, got {cutoff_um!r}")

    n_gt, n_pred = len(gt), len(pred)
    gt_idx = pred_idx = np.zeros(0, dtype=int)
    if n_gt and n_pred:
        d_um = cdist(gt * vox, pred * vox)
        if metric == "euclidean":
            d = d_um
        else:
            w = check_triple(weights, "weights")
            d = cdist(gt, pred, "seuclidean", V=w)
        ok = d <= cutoff * (1 + _CUTOFF_RTOL)
        if ok.any():
            # forbidden pairs cost more than any sum of allowed ones: the assignment first
            # maximises the number of allowed pairs, then minimises their summed distance
            big = 1.0 + 2.0 * (cutoff + 1.0) * min(n_gt, n_pred)
            cost = np.where(ok, d, big)
            r, c = linear_sum_assignment(cost)
            keep = ok[r, c]
            gt_idx, pred_idx = r[keep], c[keep]
        dist_um = d_um[gt_idx, pred_idx]
    else:
        dist_um = np.zeros(0)
    tp = len(gt_idx)
    fp, fn, precision, recall, f1 = _scores(tp, n_gt, n_pred)
    return Matching(
        tp=tp, fp=fp, fn=fn, precision=precision, recall=recall, f1=f1, rmse_nm=rmse_nm(dist_um),
        gt_idx=gt_idx, pred_idx=pred_idx, dist_um=dist_um, n_gt=n_gt, n_pred=n_pred,
        metric=metric, cutoff=cutoff,
    )


def _zyx(df, name) -> np.ndarray:
    missing = [c for c in ("z", "y", "x") if c not in df.columns]
    if missing:
        raise InputError(f"{name}: points table has no column(s) {', '.join(missing)} (z, y, x in px)")
    return check_points_px(df[["z", "y", "x"]].to_numpy(dtype=float), name)


def evaluate_points(
    gt_df,
    pred_df,
    voxel_size_um=VOXEL_SIZE_UM,
    cutoff_um: float = MATCH_CUTOFF_UM,
    metric: str = "euclidean",
    weights=SEUCLIDEAN_WEIGHTS,
):
    """Score predicted against ground-truth points tables, per frame and overall.

    Parameters
    ----------
    gt_df, pred_df : pandas.DataFrame
        Points tables with columns ``z, y, x`` (px) and, for time-lapses, ``t``. When ``t`` is in
        both, points are matched within each frame (a frame present in only one table counts all
        its points as FN or FP); when in neither, the tables are one frame. ``t`` in only one
        table is an error unless it holds a single frame (``predict`` writes ``t`` = 0 for a
        volume; the other table's points are that frame).
    voxel_size_um, cutoff_um, metric, weights
        As in :func:`match_points`.

    Returns
    -------
    per_frame : DataFrame
        One row per frame: ``t`` (when present), n_gt, n_pred, tp, fp, fn, precision, recall,
        f1, rmse_nm.
    overall : dict
        Same keys (no ``t``) plus ``n_frames``, from counts summed over frames; ``rmse_nm`` over
        all matched pairs. Also ``metric``, ``cutoff`` and ``voxel_size_um`` used.
    """
    import pandas as pd

    has_t = ("t" in gt_df.columns, "t" in pred_df.columns)
    if has_t[0] != has_t[1]:
        which, timed = ("ground truth", gt_df) if has_t[0] else ("prediction", pred_df)
        if timed["t"].nunique() > 1:
            raise InputError(f"only the {which} points have a 't' column, with {timed['t'].nunique()} frames: "
                             f"both or neither must have time")
        has_t = (False, False)  # one frame (e.g. predict's t = 0 for a volume) against a volume's points
    gt, pred = _zyx(gt_df, "ground truth"), _zyx(pred_df, "prediction")
    if has_t[0]:
        tg, tp_ = gt_df["t"].to_numpy(), pred_df["t"].to_numpy()
        frames = sorted(set(tg.tolist()) | set(tp_.tolist()))
        groups = [(t, gt[tg == t], pred[tp_ == t]) for t in frames]
    else:
        groups = [(None, gt, pred)]

    rows, dists = [], []
    for t, g, p in groups:
        m = match_points(g, p, voxel_size_um, cutoff_um, metric, weights)
        row = ({"t": t} if t is not None else {}) | m.scores()
        rows.append(row)
        dists.append(m.dist_um)
    per_frame = pd.DataFrame(rows, columns=(["t"] if has_t[0] else []) + list(SCORE_KEYS))

    n_gt, n_pred = int(per_frame["n_gt"].sum()), int(per_frame["n_pred"].sum())
    tp = int(per_frame["tp"].sum())
    fp, fn, precision, recall, f1 = _scores(tp, n_gt, n_pred)
    overall = {
        "n_frames": len(groups), "n_gt": n_gt, "n_pred": n_pred, "tp": tp, "fp": fp, "fn": fn,
        "precision": precision, "recall": recall, "f1": f1,
        "rmse_nm": rmse_nm(np.concatenate(dists)),
        "metric": metric, "cutoff": float(cutoff_um),
        "voxel_size_um": [float(v) for v in np.asarray(voxel_size_um, dtype=float)],
    }
    return per_frame, overall


def score_thresholds(cands, truths, voxel_size_um, thresholds, cutoff_um=MATCH_CUTOFF_UM, inclusive=True):
    """Summed-count point F1 of thresholded candidates at every threshold: ``cands`` one
    ``(positions (N, 3) px, scores (N,))`` per volume, ``truths`` one (M, 3) px array per volume
    (same grid), a candidate kept when its score is ``>= t`` (``inclusive``) or ``> t``.
    Returns a DataFrame (threshold, tp, fp, fn, precision, recall, f1), one row per threshold
    in the order given (the detectors' own threshold tuning: LoG, the U-Net heatmap)."""
    import pandas as pd

    rows = []
    for t in thresholds:
        tp = fp = fn = 0
        for (pos, val), gt in zip(cands, truths):
            keep = val >= t if inclusive else val > t
            m = match_points(np.asarray(gt, float), np.asarray(pos, float)[keep], voxel_size_um, cutoff_um)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        rows.append(dict(threshold=float(t), tp=tp, fp=fp, fn=fn, **scores(tp, fp, fn)))
    return pd.DataFrame(rows, columns=["threshold", "tp", "fp", "fn", "precision", "recall", "f1"])
