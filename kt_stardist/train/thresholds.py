"""Thresholds chosen through the code path users run: point F1 of :func:`kt_stardist.predict.detect`.

For every validation volume the network runs once (:func:`kt_stardist.predict.network_candidates`
at the sweep's lowest probability, one NMS per NMS threshold); then, for every (prob, nms) pair,
:func:`kt_stardist.predict.finish` thresholds, refines and searches sisters exactly as ``predict``
does, and the points are scored with :func:`kt_stardist.evaluate.match_points` (0.5 µm). The sweep
is coarse first, from the highest probability down, stopping once F1 has fallen well below the
best (:func:`descending_sweep`: the low thresholds are the expensive ones), then fine around the
best (at its NMS threshold), and it also tries the model's current thresholds. The
result is the pair with the best summed-count F1 (ties: the middle of the best plateau, then the
lower NMS threshold), and the validation share of detections just below the threshold, which
``predict`` compares images with.

With the search's detection settings adapting the threshold per volume (``search.detect.adaptive``,
on by default, as in ``predict``), each probability tried is the *stored* threshold that
:func:`kt_stardist.predict.adaptive_threshold` starts from and may lower in a volume, exactly as
``predict`` will; with adaptation off, it is the threshold used.
"""

from __future__ import annotations

import numpy as np

from kt_stardist.defaults import MATCH_CUTOFF_UM
from kt_stardist.settings import ThresholdSearch

__all__ = ["choose_thresholds", "descending_sweep", "record_calibration"]


def _sweep(lo, hi, step):
    return [float(v) for v in np.round(np.arange(lo, hi + 1e-9, step), 4)]


def descending_sweep(probs, f1_of, stop_drop=None, patience=2) -> list:
    """Evaluate ``f1_of(p)`` for ``probs`` in the order given (highest first) and stop early once
    F1 has stayed more than ``stop_drop`` below the best so far for ``patience`` consecutive
    values (None: every value). Lower thresholds leave more candidates, each refined and
    sister-searched, so the values skipped are the most expensive ones, and there F1 only falls
    further as false detections pile up. Returns the values evaluated."""
    done, best, low = [], -np.inf, 0
    for p in probs:
        f1 = float(f1_of(p))
        done.append(p)
        best = max(best, f1)
        low = low + 1 if (stop_drop is not None and f1 < best - stop_drop) else 0
        if low >= patience:
            break
    return done


def choose_thresholds(model, validation, search: ThresholdSearch = ThresholdSearch(), cutoff_um=MATCH_CUTOFF_UM,
                      save=True, log=None):
    """Choose (prob, nms) maximising point F1 of the full detection on ``validation`` (module
    docstring). ``validation``: list of ``(image ZYXC raw, points px, voxel size µm)``.

    Returns dict(prob, nms, f1, precision, recall, near_ratio, table=DataFrame of every pair
    tried); with ``save`` the model's thresholds are saved (``thresholds.json``) and its
    ``model.json`` records the validation (``validation``: f1, near_ratio, volumes).
    """
    import pandas as pd

    from kt_stardist.evaluate import match_points, scores
    from kt_stardist.predict import adaptive_threshold, candidate_floor, finish, network_candidates, prepare

    st = search.detect
    spot = model.layout.spot_channel
    lo, hi = search.prob_range
    floor = candidate_floor(lo, st)
    preps, cands = [], []
    for img, _, vs in validation:
        prep = prepare(img, vs, model.voxel_size_um, model.info.normalize, st.repair_defects, st.max_in_memory_gb)
        preps.append(prep)
        cands.append(network_candidates(model, prep, floor, search.nms_threshs, st, spot))
    # a half-trained model can leave tens of thousands of candidates: start the sweep higher
    # (greedy NMS: results at thresholds above the new start are unchanged)
    biggest = max((len(c.prob) for cs in cands for c in cs.values()), default=0)
    if biggest > search.max_candidates:
        k = search.max_candidates
        start = max(float(-np.partition(-c.prob, k)[k]) for cs in cands for c in cs.values() if len(c.prob) > k)
        lo = min(max(lo, float(np.ceil(start / search.fine_step) * search.fine_step)), hi)
        if log:
            log(f"thresholds: more than {k} detections in a volume, sweep from prob {lo:.2f}")
    rows = {}
    refined = [{n: {} for n in cs} for cs in cands]  # per volume and NMS threshold: refinements reused

    def score(p, nms):
        if (p, nms) in rows:
            return rows[(p, nms)]
        tp = fp = fn = near = above = 0
        for prep, cs, cache, (_, gt, vs) in zip(preps, cands, refined, validation):
            used, how = adaptive_threshold(cs[nms].prob, p, st.adaptive)
            det = finish(model, prep, cs[nms], used, st, spot, threshold_by=how, cache=cache[nms])
            m = match_points(gt, det.points[["z", "y", "x"]].to_numpy(float), vs, cutoff_um)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
            near, above = near + det.n_near, above + det.diagnostics["n_detections"]
        s = scores(tp, fp, fn)
        rows[(p, nms)] = dict(nms=nms, prob=p, tp=tp, fp=fp, fn=fn, **s, near=near, above=above)
        return rows[(p, nms)]

    for nms in search.nms_threshs:
        descending_sweep(_sweep(lo, hi, search.prob_step)[::-1], lambda p: score(p, float(nms))["f1"],
                         search.stop_drop, search.stop_patience)
    stored = getattr(model, "thresholds", None)  # the sweep also tries the model's current pair
    if stored is not None and lo <= float(stored.prob) <= hi and float(stored.nms) in [float(n) for n in search.nms_threshs]:
        score(round(float(stored.prob), 4), float(stored.nms))
    best = max(rows.values(), key=lambda r: r["f1"])
    a, b = max(lo, best["prob"] - search.prob_step), min(hi, best["prob"] + search.prob_step)
    for p in _sweep(a, b, search.fine_step):  # fine sweep around the coarse best, at its NMS threshold
        score(p, float(best["nms"]))
    table = pd.DataFrame(sorted(rows.values(), key=lambda r: (r["nms"], r["prob"])))
    top = table[table.f1 >= table.f1.max() - 1e-12]
    nms_best = float(top.nms.min())
    plateau = top[top.nms == nms_best].prob.to_numpy()
    prob_best = float(plateau[len(plateau) // 2])
    row = table[(table.nms == nms_best) & (table.prob == prob_best)].iloc[0]
    near_ratio = float(row.near) / max(float(row.above), 1.0)
    out = dict(prob=prob_best, nms=nms_best, f1=float(row.f1), precision=float(row.precision),
               recall=float(row.recall), near_ratio=near_ratio, table=table)
    if save:
        model.save_thresholds(prob_best, nms_best)
        model.save_info(validation=dict(f1=round(float(row.f1), 4), precision=round(float(row.precision), 4),
                                        recall=round(float(row.recall), 4), near_ratio=round(near_ratio, 4),
                                        volumes=len(validation), by="point F1 of kt_stardist.predict.detect "
                                        f"(screen, blocks, NMS, refinement, sister search), {cutoff_um} µm"))
    return out


def record_calibration(model, validation, settings=None, cutoff_um=MATCH_CUTOFF_UM, save=True):
    """Score the model at its *stored* thresholds on ``validation`` (list of ``(image ZYXC raw,
    points px, voxel size µm)``) through :func:`kt_stardist.predict.detect`, and record in
    ``model.json`` what :func:`choose_thresholds` records (f1, precision, recall, the share of
    detections just below the threshold ``near_ratio`` that ``predict`` compares images with),
    without changing the thresholds. Returns that record."""
    from kt_stardist.evaluate import match_points, scores
    from kt_stardist.predict import detect
    from kt_stardist.settings import DetectSettings

    st = settings or DetectSettings()
    tp = fp = fn = near = above = 0
    for img, gt, vs in validation:
        det = detect(model, img, vs, st, spot_channel=model.layout.spot_channel)
        m = match_points(gt, det.points[["z", "y", "x"]].to_numpy(float), vs, cutoff_um)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
        near, above = near + det.n_near, above + det.diagnostics["n_detections"]
    s = scores(tp, fp, fn)
    rec = dict(f1=round(s["f1"], 4), precision=round(s["precision"], 4), recall=round(s["recall"], 4),
               near_ratio=round(near / max(above, 1), 4), volumes=len(validation),
               by=f"point F1 of kt_stardist.predict.detect at the stored thresholds, {cutoff_um} µm")
    if save:
        model.save_info(validation=rec)
    return rec
