"""Benchmark sister pairing and tracking on simulated time-lapses with known pairs and tracks.

    python scripts/benchmark_pairs_tracks.py [--movies 3] [--frames 20] [--snr mid]
    python scripts/benchmark_pairs_tracks.py --pred detections.csv --gt truth.csv

Pairing accuracy: fraction of ground-truth sister pairs (both members present in a frame)
recovered exactly (the two points paired with each other). Tracking accuracy: fraction of true
frame-to-frame links (consecutive points of one ground-truth track) that the tracker made.
Baselines side by side: greedy matching and distance-only cost for pairing, no gap closing for
tracking. Also pairs the real positions shipped with the package and prints the median
inter-sister distance (expected 0.7-1.2 µm).

From detections (``--pred``, points CSV with ``t, z, y, x`` px, and ``--gt``, points CSV with
``t, z, y, x, pair_id, track_id``): detections are matched one-to-one to the ground truth within
0.5 µm per frame; a true pair (link) counts as recovered only when both of its points were
detected and the detections were paired (linked).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kt_stardist.defaults import MATCH_CUTOFF_UM, VOXEL_SIZE_UM  # noqa: E402
from kt_stardist.pairs import assign_pairs, pair_recovery, pairs_table  # noqa: E402
from kt_stardist.tracks import MAX_DISP_UM, link_recovery, track_points  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / "kt_stardist" / "data" / "real_kinetochores_t00_t04.csv"


def match_to_gt(gt, pred, voxel_size_um, cutoff_um=MATCH_CUTOFF_UM):
    """Per frame one-to-one matching of detections to ground truth (``evaluate.match_points``,
    µm). Returns ``pred`` with ``gt_row`` (index into ``gt``, -1 unmatched)."""
    from kt_stardist.evaluate import match_points

    gt_row = np.full(len(pred), -1, np.int64)
    for t in np.union1d(gt["t"].unique(), pred["t"].unique()):
        gi = np.flatnonzero(gt["t"].to_numpy() == t)
        pi = np.flatnonzero(pred["t"].to_numpy() == t)
        if len(gi) == 0 or len(pi) == 0:
            continue
        g = gt.iloc[gi][["z", "y", "x"]].to_numpy(float)
        p = pred.iloc[pi][["z", "y", "x"]].to_numpy(float)
        m = match_points(g, p, voxel_size_um, cutoff_um=cutoff_um)
        mg, mp = np.asarray(m.gt_idx, int), np.asarray(m.pred_idx, int)
        gt_row[pi[mp]] = gi[mg]
    return pred.assign(gt_row=gt_row)


def accuracy_from_detections(gt, pred, voxel_size_um, **kw):
    """Pairing and tracking accuracy of detections against ground truth (see module doc)."""
    pred = match_to_gt(gt.reset_index(drop=True), pred.reset_index(drop=True), voxel_size_um)
    pred = track_points(pred[["t", "z", "y", "x", "gt_row"]], voxel_size_um, **kw)
    pred = assign_pairs(pred, voxel_size_um)
    gt = gt.reset_index(drop=True)
    # true pairs and links as sets of gt rows; predicted ones mapped to gt rows
    row_of = pred["gt_row"].to_numpy()
    ok = row_of >= 0
    pred_pairs = {frozenset(row_of[g.index]) for _, g in pred[ok & pred.paired].groupby(["t", "pair_id"])
                  if len(g) == 2 and (row_of[g.index] >= 0).all()}
    gt_pairs = {frozenset(g.index) for _, g in gt[gt.pair_id >= 0].groupby(["t", "pair_id"]) if len(g) == 2}
    from kt_stardist.tracks import track_edges

    gt_links = {tuple(e) for e in track_edges(gt)}
    pe = track_edges(pred)
    pred_links = {(row_of[a], row_of[b]) for a, b in pe if row_of[a] >= 0 and row_of[b] >= 0}
    return {
        "detected": ok.sum() / len(gt),
        "pairs": len(gt_pairs & pred_pairs) / max(len(gt_pairs), 1),
        "links": len(gt_links & pred_links) / max(len(gt_links), 1),
    }


def simulated_movies(n_movies, n_frames, snr, shape_px, seed):
    from kt_stardist.simulate import simulate_timelapse

    for k in range(n_movies):
        _, pts = simulate_timelapse(n_frames=n_frames, shape_px=shape_px, seed=seed + k, snr=snr,
                                    noise_free=True)
        yield pts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--movies", type=int, default=3)
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--snr", default="mid")
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128], metavar=("Z", "Y", "X"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--voxel-size", type=float, nargs=3, default=list(VOXEL_SIZE_UM))
    ap.add_argument("--max-disp-um", type=float, default=MAX_DISP_UM)
    ap.add_argument("--gap", type=int, default=1)
    ap.add_argument("--pred", help="detections CSV (t, z, y, x px) to score against --gt")
    ap.add_argument("--gt", help="ground truth CSV (t, z, y, x, pair_id, track_id) for --pred")
    args = ap.parse_args(argv)
    vox = args.voxel_size
    rows = []
    import laptrack  # noqa: F401  (import once, outside the timings)

    if args.pred:
        if not args.gt:
            ap.error("--pred needs --gt")
        from kt_stardist.io import read_points

        gt, pred = read_points(args.gt), read_points(args.pred)
        t0 = time.perf_counter()
        acc = accuracy_from_detections(gt, pred, vox, max_disp_um=args.max_disp_um, gap=args.gap)
        print(f"\nFrom detections {args.pred} vs {args.gt} ({time.perf_counter() - t0:.1f} s)")
        print(pd.DataFrame([acc]).to_string(index=False, float_format="%.3f"))
    else:
        for k, pts in enumerate(simulated_movies(args.movies, args.frames, args.snr,
                                                 tuple(args.shape), args.seed)):
            df = pts.rename(columns={"pair_id": "gt_pair_id", "track_id": "gt_track_id",
                                     "sister": "gt_sister"})
            base = df[["t", "z", "y", "x", "gt_pair_id", "gt_track_id"]]
            row = {"movie": k, "points": len(df)}
            t0 = time.perf_counter()
            tracked = track_points(base, vox, max_disp_um=args.max_disp_um, gap=args.gap)
            row["t_track_s"] = time.perf_counter() - t0
            row["links"] = link_recovery(tracked)["recovered"]
            row["links_nogap"] = link_recovery(track_points(base, vox, args.max_disp_um, gap=0))["recovered"]
            t0 = time.perf_counter()
            row["pairs"] = pair_recovery(assign_pairs(base, vox))["recovered"]
            row["t_pair_s"] = time.perf_counter() - t0
            row["pairs_greedy"] = pair_recovery(assign_pairs(base, vox, method="greedy"))["recovered"]
            row["pairs_dist_only"] = pair_recovery(assign_pairs(base, vox, angle_weight=0))["recovered"]
            row["pairs_tracks"] = pair_recovery(assign_pairs(tracked, vox, use_tracks=True))["recovered"]
            rows.append(row)
        table = pd.DataFrame(rows)
        mean = table.mean(numeric_only=True).to_frame().T.assign(movie="mean")
        table = pd.concat([table, mean], ignore_index=True)
        print(f"\nSimulated time-lapses, ground-truth points: snr={args.snr}, {args.frames} frames, "
              f"shape {tuple(args.shape)}, max_disp {args.max_disp_um} µm, gap {args.gap}")
        print("pairs = optimal matching (distance + plate normal); baselines: greedy, distance only;"
              " pairs_tracks = --use-tracks; links = laptrack with gap closing, baseline links_nogap")
        print(table.to_string(index=False, float_format="%.3f"))
        ok = table.iloc[-1]["pairs"] >= 0.95 and table.iloc[-1]["links"] >= 0.95
        print(f"target pairs >= 0.95 and links >= 0.95: {'PASS' if ok else 'FAIL'}")

    real = pd.read_csv(REAL)
    out = assign_pairs(real[["t", "z", "y", "x"]], vox)
    greedy = pairs_table(assign_pairs(real[["t", "z", "y", "x"]], vox, method="greedy"), vox)
    tab = pairs_table(out, vox)
    summary = tab.groupby("t").agg(points=("pair_id", lambda s: 0), pairs=("pair_id", "size"),
                                   median_dist_um=("distance_um", "median"),
                                   median_angle_deg=("angle_deg", "median"))
    summary["points"] = real.groupby("t").size()
    summary["pairs_greedy"] = greedy.groupby("t").size()
    summary["median_dist_greedy_um"] = greedy.groupby("t")["distance_um"].median()
    print(f"\nReal positions ({REAL.name}), voxel {tuple(vox)} µm")
    print(summary.reset_index().to_string(index=False, float_format="%.3f"))
    med = tab["distance_um"].median()
    print(f"median inter-sister distance {med:.3f} µm (expected 0.7-1.2): "
          f"{'PASS' if 0.7 <= med <= 1.2 else 'FAIL'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
