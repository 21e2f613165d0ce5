"""Benchmark detection, linking and track-aided recovery on held-out simulated time-lapses.

    python scripts/benchmark_time.py [--quick] [--presets mid hard very_hard] [--movies 2]
        [--frames 10] [--shape 40 112 112] [--false-alarm 1e-3] [--conditions all | NAME ...]

Per preset: each frame of :func:`kt_stardist.simulate.simulate_timelapse` movies (seeds from
10000, never used in training nor in choosing the tracking settings, which used seeds 20000+) is
detected with the shipped model and its stored thresholds (:func:`kt_stardist.predict.detect`).
The detections are then tracked two ways, side by side (``linking``): ``baseline``, the linking
before the common motion was taken out (:func:`kt_stardist.tracks.track_points` with
``common_motion=False``, 1.0 µm, gap closing over ``--gap`` frames; recovery
:func:`kt_stardist.recover.recover_points` inside gaps only), and ``link_and_recover`` (what
``kt-stardist track --image`` and ``predict --pairs --track`` do: frame pairs, common motion out,
recovery inside gaps and at track ends, linked again). Reported before and after recovery:
precision, recall and F1 of the points pooled over frames (one-to-one matching within 0.5 µm per
frame), how many points were recovered and how many of those match a true spot; link recall and
precision (:func:`kt_stardist.tracks.link_recovery`: frame-to-frame links between detected true
points); and the fraction of true sister pairs followed through the whole movie without an
identity switch (:func:`kt_stardist.tracks.pair_tracks_intact`, pairs from
:func:`kt_stardist.pairs.assign_pairs` with ``use_tracks`` and :func:`kt_stardist.tracks.link_pair_tracks`).
*Complete*: intact and detected (or recovered) in every frame. s/frame: tracking and recovery
(detection: a line below). One markdown table.

``--conditions`` adds movies of the robustness panel's conditions
(:func:`kt_stardist.physical.simulate_condition` with ``n_frames``: psfmodels optics, real camera
noise, hot pixels, nuclei, each condition's own shape and voxel size; panel seeds from
``PANEL_SEED_MIN + --panel-seed``): optics and cameras the model was never trained on, the camera
gain and zero that recovery needs estimated from the movie as ``predict`` does.
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


#: the linking compared: the baseline (positions as they are, 1.0 µm, recovery inside gaps only,
#: as before the common motion was taken out) and today's ``tracks.link_and_recover``
LINKERS = ("baseline", "link_and_recover")


def link(linker, det, image, vox, settings, gap, recover):
    """Tracked (and, with ``recover``, recovered) points of one movie by one of :data:`LINKERS`."""
    from kt_stardist.pairs import assign_pairs
    from kt_stardist.recover import recover_points
    from kt_stardist.tracks import link_and_recover, track_points

    if linker == "baseline":
        tracked = track_points(det, vox, max_disp_um=1.0, gap=gap, common_motion=False)
        return recover_points(tracked, image[..., 0], vox, settings) if recover else tracked
    return link_and_recover(assign_pairs(det, vox), vox, image[..., 0] if recover else None, settings, gap=gap)


PRESETS = ("easy", "mid", "hard", "very_hard")


def movies(kind, args):
    """(movie (T, Z, Y, X, 1), truth with ``t`` and ``track_id``, voxel size µm) of each held-out
    movie of a Gaussian preset or a robustness-panel condition."""
    if kind in PRESETS:
        from kt_stardist.simulate import simulate_timelapse

        for k in range(args.movies):
            seed = SEED0 + 100 * PRESETS.index(kind) + k
            image, truth = simulate_timelapse(args.frames, tuple(args.shape), seed=seed, snr=kind)
            yield image, truth.reset_index(drop=True), tuple(VOXEL_SIZE_UM)
        return
    from kt_stardist.physical import PANEL_SEED_MIN, simulate_condition

    for k in range(args.movies):
        image, truth, vs, _ = simulate_condition(kind, PANEL_SEED_MIN + args.panel_seed + k, n_frames=args.frames)
        yield image[..., None], truth.reset_index(drop=True), tuple(vs)


def run_preset(model, snr, args, settings):
    acc = {(lk, tag): {k: 0 for k in ("tp", "fp", "fn", "rec", "rec_ok", "s")} for lk in LINKERS for tag in "01"}
    link_n = {key: [0, 0, 0] for key in acc}
    pairs = {key: [0, 0, 0] for key in acc}
    secs_detect = 0.0
    for image, truth, vox in movies(snr, args):
        t0 = time.perf_counter()
        det = detect_movie(model, image, vox)
        secs_detect += time.perf_counter() - t0
        for lk in LINKERS:
            for tag in "01":
                a = acc[(lk, tag)]
                t0 = time.perf_counter()
                table = link(lk, det, image, vox, settings, args.gap, recover=tag == "1")
                a["s"] += time.perf_counter() - t0
                tp, fp, fn, m = scores(truth, table, vox)
                a["tp"] += tp
                a["fp"] += fp
                a["fn"] += fn
                if tag == "1":
                    a["rec"] += int(table["recovered"].sum())
                    a["rec_ok"] += int(((m["gt_row"] >= 0) & m["recovered"]).sum())
                links, pt = follow(truth, table, vox)
                link_n[(lk, tag)] = [x + y for x, y in zip(link_n[(lk, tag)], (links["n_gt"], links["n_pred"], links["n_correct"]))]
                pairs[(lk, tag)] = [x + y for x, y in zip(pairs[(lk, tag)], (pt["n_pairs"], pt["intact"], pt["complete"]))]
    rows = []
    n_frames = args.movies * args.frames
    for lk in LINKERS:
        for tag, when in (("0", "before"), ("1", "after")):
            a = acc[(lk, tag)]
            p, r, f = prf(a["tp"], a["fp"], a["fn"])
            n_gt, n_pred, n_ok = link_n[(lk, tag)]
            n_pairs, intact, complete = pairs[(lk, tag)]
            rows.append({
                "preset": snr, "linking": lk, "recovery": when, "precision": p, "recall": r, "F1": f,
                "recovered": a["rec"], "recovered right": a["rec_ok"],
                "link recall": n_ok / n_gt if n_gt else float("nan"),
                "link precision": n_ok / n_pred if n_pred else float("nan"),
                "pair tracks intact": intact / n_pairs if n_pairs else float("nan"),
                "complete": complete / n_pairs if n_pairs else float("nan"),
                "s/frame": a["s"] / n_frames,
            })
    return rows, secs_detect / n_frames


def markdown(df):
    cols = list(df.columns)
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        out.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 movie of 6 frames of 32x96x96 px per preset")
    ap.add_argument("--presets", nargs="*", default=["mid", "hard", "very_hard"])
    ap.add_argument("--movies", type=int, default=2)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--shape", type=int, nargs=3, default=[40, 112, 112], metavar=("Z", "Y", "X"))
    ap.add_argument("--gap", type=int, default=RecoverSettings().max_gap_frames,
                    help="gap closing of the tracker, frames (default %(default)s)")
    ap.add_argument("--false-alarm", type=float, default=RecoverSettings().false_alarm)
    ap.add_argument("--model", help="model folder (default: the shipped one)")
    ap.add_argument("--conditions", nargs="*", default=[],
                    help="robustness-panel conditions as physical movies ('all': every one), after the presets")
    ap.add_argument("--panel-seed", type=int, default=0, help="offset of the physical movies' panel seeds")
    args = ap.parse_args(argv)
    if args.quick:
        args.movies, args.frames, args.shape = 1, 6, [32, 96, 96]
    from kt_stardist.model import load_model
    from kt_stardist.physical import CONDITIONS

    unknown = sorted(set(args.conditions) - set(CONDITIONS) - {"all"})
    if unknown:
        raise SystemExit(f"benchmark_time: unknown condition(s) {unknown}; expected 'all' or some of {sorted(CONDITIONS)}")
    kinds = list(args.presets) + (list(CONDITIONS) if "all" in args.conditions else list(args.conditions))
    model = load_model(args.model)
    settings = RecoverSettings(false_alarm=args.false_alarm, max_gap_frames=min(args.gap, 2) or 1)
    rows, detect_s = [], {}
    t0 = time.perf_counter()
    for snr in kinds:
        r, detect_s[snr] = run_preset(model, snr, args, settings)
        rows += r
        print(f"{snr} done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    print(f"\nSimulated time-lapses: {args.movies} movie(s) x {args.frames} frames of "
          f"{'x'.join(map(str, args.shape))} px per preset (conditions: their own shape), seeds {SEED0}+, model {model.name}, stored "
          f"thresholds; linking gap {args.gap}, recovery false_alarm {args.false_alarm:g}. "
          f"s/frame: tracking and recovery.\n")
    print(markdown(table))
    print("\nDetection s/frame: " + ", ".join(f"{k} {v:.1f}" for k, v in detect_s.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
