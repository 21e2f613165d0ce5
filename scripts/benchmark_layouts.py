"""Do time and a second channel help? The 1-channel model on frame t beside models of other input
layouts: EGFP + mCherry (2 channels), EGFP at t-1, t, t+1 (3) and both at t-1, t, t+1 (6).

All see the same held-out simulated 3-frame movies (``kt_stardist.simulate.simulate_timelapse``:
plate drift, rotation and oscillation, pair oscillation, sister breathing, random walk,
bleaching, blinking; two channels, the second mCherry chromatin or spindle, when any model takes
it; seeds disjoint from training), scored at the middle frame by the project's
evaluator (0.5 µm) through ``kt_stardist.predict.detect`` (what ``predict`` runs, each model at its
stored thresholds, adaptive threshold and confirm band on). Besides the SNR presets, ``fast`` is the mid preset
with motion 3× larger than the defaults (plate oscillation 1.2 µm, pair oscillation 0.6 µm,
drift 0.24 µm and random walk 0.12 µm per frame), where stacking frames can hurt.

    python scripts/benchmark_layouts.py --models kt_stardist/pretrained/kt-temporal models/kt-2ch ...
        [--model DIR] [--n 2] [--shape 48 256 256] [--presets easy mid hard very_hard fast]

Each model's input is made by ``kt_stardist.channels.stack_frames`` from its own layout (what
``predict`` does), so the table's rows differ only in the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: motion of the ``fast`` set: 3× the simulator's defaults
FAST = dict(oscillation_um=1.2, pair_oscillation_um=0.6, drift_um=0.24, spot_drift_um=0.12)


def movie_cases(presets, n, shape, seed=0, channels=1):
    """(group, seed, movie TZYXC float32, truth of the middle frame (N, 3) px), ``n`` per preset;
    ``channels`` 2: EGFP and mCherry."""
    from kt_stardist import simulate
    from kt_stardist.train.evaluation import EVAL_SEED_OFFSET

    out = []
    for snr in presets:
        for i in range(n):
            s = int(seed) + i + EVAL_SEED_OFFSET
            params = None
            if snr == "fast":
                params = dataclasses.replace(simulate.SimParams.preset("mid"), **FAST)
            img, df = simulate.simulate_timelapse(3, tuple(shape), seed=s, snr="mid" if snr == "fast" else snr,
                                                  params=params, layout="plate", channels=channels)
            out.append((snr, s, img, df[df["t"] == 1][["z", "y", "x"]].to_numpy(float)))
    return out


def layout_label(model) -> str:
    """A table label for a model's input layout, e.g. '3 channels (egfp@t-1,t,t+1)'."""
    n = model.n_channel_in
    return f"{n} channel{'s' if n > 1 else ''} ({model.layout.name})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="1-channel model (default: the shipped one)")
    ap.add_argument("--models", nargs="+", required=True,
                    help="model folders of other layouts (2, 3 or 6 input channels), each beside --model")
    ap.add_argument("--n", type=int, default=2, help="movies per preset (default 2)")
    ap.add_argument("--shape", nargs=3, type=int, default=[48, 256, 256])
    ap.add_argument("--presets", nargs="+", default=["easy", "mid", "hard", "very_hard", "fast"])
    a = ap.parse_args(argv)

    import pandas as pd

    from kt_stardist.channels import stack_frames
    from kt_stardist.evaluate import match_points, scores
    from kt_stardist.model import load_model
    from kt_stardist.predict import detect

    loaded = [load_model(a.model)] + [load_model(d) for d in a.models]
    models = {layout_label(m): m for m in loaded}
    if len(models) < len(loaded):
        raise SystemExit("benchmark_layouts: two models of the same layout; give one per layout")
    for name, m in models.items():
        print(f"{name}: {m.name}, {m.n_channel_in} input channel(s), layout {m.layout.name}, thresholds "
              f"{m.thresholds.prob:.2f} / {m.thresholds.nms:.2f}", file=sys.stderr)
    cases = movie_cases(a.presets, a.n, a.shape, channels=max(m.layout.n_fluor for m in loaded))
    rows = []
    for group, seed, movie, truth in cases:
        for name, m in models.items():
            x = stack_frames(movie, 1, m.layout)
            t0 = time.perf_counter()
            det = detect(m, x, spot_channel=m.layout.spot_channel)
            dt = time.perf_counter() - t0
            mt = match_points(truth, det.points[["z", "y", "x"]].to_numpy(float), det.prepared.image_voxel_um, 0.5)
            rows.append(dict(group=group, seed=seed, layout=name, tp=mt.tp, fp=mt.fp, fn=mt.fn,
                             sq=float(np.sum(np.square(mt.dist_um))), seconds=dt))
        print(f"  {group} seed {seed}: " + ", ".join(f"{r['layout']} {r['tp']}/{r['fp']}/{r['fn']}"
                                                    for r in rows[-len(models):]), file=sys.stderr, flush=True)
    per = pd.DataFrame(rows)
    g = per.groupby(["group", "layout"], sort=False)
    tab = g[["tp", "fp", "fn", "sq"]].sum().reset_index()
    print(f"\n{len(cases)} held-out 3-frame movies {tuple(a.shape)} px ({a.n} per set), scored at the middle "
          f"frame, 0.5 µm; seconds = median per volume")
    print("| set | layout | precision | recall | F1 | RMSE nm | s |")
    print("|---|---|---|---|---|---|---|")
    for _, r in tab.iterrows():
        s = scores(int(r.tp), int(r.fp), int(r.fn))
        rmse = 1000 * np.sqrt(r.sq / max(r.tp, 1))
        secs = g.seconds.median()[(r.group, r.layout)]
        print(f"| {r.group} | {r.layout} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {rmse:.0f} | "
              f"{secs:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
