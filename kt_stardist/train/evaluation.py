"""Held-out evaluation of a model through :func:`kt_stardist.predict.detect`, the code path users run.

The same cases and the same scoring make the model folder's ``evaluation.csv``, the README's
accuracy table (``scripts/benchmark.py``) and the golden test, so the three cannot drift apart.
Cases are simulated with seeds disjoint from every training seed (training draws from
``SeedSequence(seed)`` children; these are plain integers offset by :data:`EVAL_SEED_OFFSET`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kt_stardist.defaults import MATCH_CUTOFF_UM, VOXEL_SIZE_UM

__all__ = ["EvalCase", "evaluation_cases", "robustness_cases", "evaluate_detector", "evaluate_model", "summarize", "close_pair_mask",
           "EVAL_SEED_OFFSET"]

#: held-out simulations use seed + this (never a training seed)
EVAL_SEED_OFFSET = 7919 * 10**6


@dataclass
class EvalCase:
    """One held-out volume: ``group`` (e.g. the SNR preset), ``layout``, raw ``image`` ZYXC,
    ``truth`` (N, 3) px, ``voxel_size_um`` (z, y, x), ``seed``, ``info`` (how it was made)."""

    group: str
    layout: str
    image: np.ndarray
    truth: np.ndarray
    voxel_size_um: tuple = VOXEL_SIZE_UM
    seed: int = 0
    info: dict = field(default_factory=dict)


def evaluation_cases(presets=("easy", "mid", "hard", "very_hard"), layouts=("plate", "real"), n=1,
                     shape_px=(61, 512, 512), seed=0, voxel_size_um=VOXEL_SIZE_UM, lay=None):
    """Held-out simulated volumes, ``n`` per preset and layout (module docstring). ``lay``: a
    channel layout (temporal layouts: a 3-frame movie, scored at the middle frame)."""
    from kt_stardist import simulate
    from kt_stardist.channels import layout as get_layout
    from kt_stardist.channels import stack_frames

    lay = lay or get_layout("egfp")
    out = []
    for snr in presets:
        for lo in layouts:
            for i in range(n):
                s = int(seed) + i + EVAL_SEED_OFFSET
                if lay.temporal:
                    img, df = simulate.simulate_timelapse(3, tuple(shape_px), seed=s, snr=snr, channels=lay.n_fluor,
                                                          layout=lo, voxel_size_um=tuple(voxel_size_um))
                    x, df = stack_frames(img, 1, lay), df[df["t"] == 1]
                else:
                    x, df = simulate.simulate_volume(tuple(shape_px), seed=s, snr=snr, channels=lay.n_fluor,
                                                     layout=lo, voxel_size_um=tuple(voxel_size_um))
                out.append(EvalCase(snr, lo, np.asarray(x, np.float32), df[["z", "y", "x"]].to_numpy(float),
                                    tuple(voxel_size_um), s))
    return out


def robustness_cases(conditions=None, n=1, seed=0, shape_px=None):
    """Held-out volumes of the robustness panel: ``n`` per named condition of
    :data:`kt_stardist.physical.CONDITIONS` (None: all), rendered by the physical path
    (psfmodels optics, cameras, samples) with panel seeds (never used in training, see
    :mod:`kt_stardist.physical`). ``image`` keeps the camera's dtype (ZYX1: uint8/uint16 raw
    counts, float32 for deconvolved data); ``group`` is the condition's name, ``layout``
    ``physical``; ``shape_px`` None: each condition's own."""
    from kt_stardist.physical import CONDITIONS, PANEL_SEED_MIN, simulate_condition

    names = list(CONDITIONS) if conditions is None else list(conditions)
    out = []
    for name in names:
        for i in range(n):
            s = PANEL_SEED_MIN + int(seed) + i
            img, df, vs, info = simulate_condition(name, s, shape_px)
            out.append(EvalCase(name, "physical", np.asarray(img)[..., None], df[["z", "y", "x"]].to_numpy(float),
                                tuple(float(v) for v in vs), s, info))
    return out


def close_pair_mask(truth_px, voxel_size_um, lo_um=0.3, hi_um=0.6):
    """Points whose nearest neighbour is ``lo_um``–``hi_um`` µm away (close sisters)."""
    from scipy.spatial import cKDTree

    t = np.asarray(truth_px, float).reshape(-1, 3) * np.asarray(voxel_size_um)
    if len(t) < 2:
        return np.zeros(len(t), bool)
    d, _ = cKDTree(t).query(t, k=2)
    return (d[:, 1] >= lo_um) & (d[:, 1] <= hi_um)


def evaluate_detector(detector, cases, cutoff_um=MATCH_CUTOFF_UM):
    """Score ``detector(case) -> (N, 3) px`` on every case: a DataFrame with one row per case
    (group, layout, seed, tp, fp, fn, sq_um2 (summed squared match distances), close_hit,
    close_n, seconds)."""
    import pandas as pd

    from kt_stardist.evaluate import match_points

    rows = []
    for c in cases:
        t0 = time.perf_counter()
        pred = np.asarray(detector(c), float).reshape(-1, 3)
        dt = time.perf_counter() - t0
        m = match_points(c.truth, pred, c.voxel_size_um, cutoff_um)
        hit = np.zeros(len(c.truth), bool)
        hit[np.asarray(m.gt_idx, int)] = True
        close = close_pair_mask(c.truth, c.voxel_size_um)
        rows.append(dict(group=c.group, layout=c.layout, seed=c.seed, tp=m.tp, fp=m.fp, fn=m.fn,
                         sq_um2=float(np.sum(np.square(m.dist_um))), close_hit=int(hit[close].sum()),
                         close_n=int(close.sum()), seconds=dt))
    return pd.DataFrame(rows)


def summarize(per_case, by=("group",)):
    """Summed-count precision, recall, F1, RMSE (nm) and mean seconds per ``by`` group of
    :func:`evaluate_detector`'s table."""
    import pandas as pd

    from kt_stardist.evaluate import scores

    def agg(g):
        tp, fp, fn = int(g.tp.sum()), int(g.fp.sum()), int(g.fn.sum())
        return pd.Series(dict(volumes=len(g), tp=tp, fp=fp, fn=fn, **scores(tp, fp, fn),
                              rmse_nm=1000 * float(np.sqrt(g.sq_um2.sum() / tp)) if tp else float("nan"),
                              close_recall=g.close_hit.sum() / max(g.close_n.sum(), 1), seconds=g.seconds.mean()))

    return per_case.groupby(list(by), sort=False).apply(agg, include_groups=False).reset_index()


def evaluate_model(model, cases, settings=None, cutoff_um=MATCH_CUTOFF_UM):
    """:func:`summarize` of the model's :func:`kt_stardist.predict.detect` (stored thresholds
    unless ``settings`` says otherwise) on ``cases``; also returns the per-case table."""
    from kt_stardist.predict import detect

    spot = model.layout.spot_channel

    def run(c):
        return detect(model, c.image, c.voxel_size_um, settings, spot_channel=spot).points[["z", "y", "x"]]

    per_case = evaluate_detector(run, cases, cutoff_um)
    return summarize(per_case), per_case
