"""Benchmark detection, linking and track-aided recovery on held-out simulated time-lapses.

    python scripts/benchmark_time.py [--quick] [--presets mid hard very_hard] [--movies 2]
        [--frames 10] [--shape 40 112 112] [--false-alarm 1e-3]

Per preset: each frame of :func:`kt_stardist.simulate.simulate_timelapse` movies (seeds from
10000, never used in training) is detected with the shipped model and its stored thresholds
(:func:`kt_stardist.predict.detect`); the points are linked (:func:`kt_stardist.tracks.track_points`,
gap closing over ``--gap`` frames), then missed spots are recovered from the image
(:func:`kt_stardist.recover.recover_points`). Reported side by side, before and after recovery:
precision, recall and F1 of the points pooled over frames (one-to-one matching within 0.5 µm per
frame), how many points were recovered and how many of those match a true spot; link recall and
precision (:func:`kt_stardist.tracks.link_recovery`: frame-to-frame links between detected true
points); and the fraction of true sister pairs followed through the whole movie without an
identity switch (:func:`kt_stardist.tracks.pair_tracks_intact`, pairs from
:func:`kt_stardist.pairs.assign_pairs` with ``use_tracks`` and :func:`kt_stardist.tracks.link_pair_tracks`).
*Complete*: intact and detected (or recovered) in every frame. One markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark_pairs_tracks import match_to_gt

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.settings import RecoverSettings

SEED0 = 10000  # training seeds stay below this


def detect_movie(model, image, vox):
    """Points of every frame (``t, z, y, x`` px, ``prob``) of a (T, Z, Y, X, C) movie."""
    from kt_stardist.predict import detect

    tables = []
    for t in range(image.shape[0]):
        pts = detect(model, image[t], vox).points
        tables.append(pts.assign(t=t)[["t", "z", "y", "x", "prob"]])
    return pd.concat(tables, ignore_index=True)


def scores(truth, pred, vox):
    """(tp, fp, fn) pooled over frames and ``pred`` with ``gt_row``."""
    m = match_to_gt(truth, pred, vox)
    tp = int((m["gt_row"] >= 0).sum())
    return tp, len(pred) - tp, len(truth) - tp, m


def prf(tp, fp, fn):
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    return p, r, 2 * p * r / (p + r) if p + r else float("nan")


def follow(truth, pred, vox):
    """Link recall/precision and the pair-track fraction of a tracked (and recovered) table."""
    from kt_stardist.pairs import assign_pairs
    from kt_stardist.tracks import link_pair_tracks, link_recovery, pair_tracks_intact

    _, _, _, m = scores(truth, pred, vox)
    gt_track = truth["track_id"].to_numpy()
    m["gt_track_id"] = np.where(m["gt_row"] >= 0, gt_track[m["gt_row"].clip(lower=0)], -1)
    links = link_recovery(m)
    paired = link_pair_tracks(assign_pairs(m, vox, use_tracks=True))
    pt = pair_tracks_intact(paired, truth)
    return links, pt


def run_preset(model, snr, args, vox, settings):
    from kt_stardist.recover import recover_points
    from kt_stardist.simulate import simulate_timelapse
    from kt_stardist.tracks import track_points

    acc = {k: 0 for k in ("tp0", "fp0", "fn0", "tp1", "fp1", "fn1", "rec", "rec_ok")}
    link = {"before": [0, 0, 0], "after": [0, 0, 0]}
    pairs = {"before": [0, 0, 0], "after": [0, 0, 0]}
    secs = {"detect": 0.0, "recover": 0.0}
    for k in range(args.movies):
        seed = SEED0 + 100 * ["easy", "mid", "hard", "very_hard"].index(snr) + k
        image, truth = simulate_timelapse(args.frames, tuple(args.shape), seed=seed, snr=snr)
        truth = truth.reset_index(drop=True)
        t0 = time.perf_counter()
        det = detect_movie(model, image, vox)
        secs["detect"] += time.perf_counter() - t0
        tracked = track_points(det, vox, gap=args.gap)
        t0 = time.perf_counter()
        rec = recover_points(tracked, image[..., 0], vox, settings)
        secs["recover"] += time.perf_counter() - t0
        for tag, table in (("0", tracked), ("1", rec)):
            tp, fp, fn, m = scores(truth, table, vox)
            acc["tp" + tag] += tp
            acc["fp" + tag] += fp
            acc["fn" + tag] += fn
        acc["rec"] += int(rec["recovered"].sum())
        acc["rec_ok"] += int(((m["gt_row"] >= 0) & m["recovered"]).sum())
        for tag, table in (("before", tracked), ("after", rec)):
            links, pt = follow(truth, table, vox)
            link[tag] = [a + b for a, b in zip(link[tag], (links["n_gt"], links["n_pred"], links["n_correct"]))]
            pairs[tag] = [a + b for a, b in zip(pairs[tag], (pt["n_pairs"], pt["intact"], pt["complete"]))]
    rows = []
    for tag, when in (("0", "before"), ("1", "after")):
        p, r, f = prf(acc["tp" + tag], acc["fp" + tag], acc["fn" + tag])
        n_gt, n_pred, n_ok = link[when]
        rows.append({
            "preset": snr, "recovery": when, "precision": p, "recall": r, "F1": f,
            "recovered": acc["rec"] if tag == "1" else 0,
            "recovered right": acc["rec_ok"] if tag == "1" else 0,
            "link recall": n_ok / n_gt if n_gt else float("nan"),
            "link precision": n_ok / n_pred if n_pred else float("nan"),
            "pair tracks intact": pairs[when][1] / pairs[when][0] if pairs[when][0] else float("nan"),
            "complete": pairs[when][2] / pairs[when][0] if pairs[when][0] else float("nan"),
            "s/frame": (secs["detect"] if tag == "0" else secs["recover"]) / (args.movies * args.frames),
        })
    return rows


def markdown(df):
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 movie of 6 frames of 32x96x96 px per preset")
    ap.add_argument("--presets", nargs="+", default=["mid", "hard", "very_hard"])
    ap.add_argument("--movies", type=int, default=2)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=[40, 112, 112], metavar=("Z", "Y", "X"))
    ap.add_argument("--gap", type=int, default=RecoverSettings().max_gap_frames,
                    help="gap closing of the tracker, frames (default %(default)s)")
    ap.add_argument("--false-alarm", type=float, default=RecoverSettings().false_alarm)
    ap.add_argument("--model", help="model folder (default: the shipped one)")
    args = ap.parse_args(argv)
    if args.quick:
        args.movies, args.frames, args.shape = 1, 6, [32, 96, 96]
    from kt_stardist.model import load_model

    model = load_model(args.model)
    vox = tuple(VOXEL_SIZE_UM)
    settings = RecoverSettings(false_alarm=args.false_alarm, max_gap_frames=min(args.gap, 2) or 1)
    rows = []
    t0 = time.perf_counter()
    for snr in args.presets:
        rows += run_preset(model, snr, args, vox, settings)
        print(f"{snr} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    print(f"\nSimulated time-lapses: {args.movies} movie(s) x {args.frames} frames of "
          f"{'x'.join(map(str, args.shape))} px per preset, seeds {SEED0}+, model {model.name}, stored "
          f"thresholds; linking gap {args.gap}, recovery false_alarm {args.false_alarm:g}. "
          f"s/frame: detection (before) or recovery (after).\n")
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
