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
        [--conditions all | NAME ...] [--panel-seed K]

``--conditions`` adds 3-frame movies of the robustness panel's conditions
(``kt_stardist.physical.simulate_condition(..., n_frames=3)``: psfmodels optics, cameras with hot
pixels, nuclei, other voxel sizes; panel seeds), EGFP only: does a temporal model hold up on
microscopes unlike the Gaussian simulator?

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
            out.append((snr, s, img, df[df["t"] == 1][["z", "y", "x"]].to_numpy(float), simulate.VOXEL_SIZE_UM))
    return out


def physical_cases(conditions, n, seed=0):
    """(group ``physical: <condition>``, seed, movie TZYX1, truth of the middle frame (N, 3) px,
    voxel size µm): 3-frame movies of the robustness panel's conditions (physical optics and
    cameras, each condition's own shape and voxel size, panel seeds: never trained on), EGFP only."""
    from kt_stardist.physical import CONDITIONS, PANEL_SEED_MIN, simulate_condition

    out = []
    for name in (list(CONDITIONS) if conditions == ["all"] else conditions):
        for i in range(n):
            s = PANEL_SEED_MIN + int(seed) + i
            img, df, vs, _ = simulate_condition(name, s, n_frames=3)
            out.append((f"physical: {name}", s, np.asarray(img)[..., None],
                        df[df["t"] == 1][["z", "y", "x"]].to_numpy(float), tuple(vs)))
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
    ap.add_argument("--presets", nargs="*", default=["easy", "mid", "hard", "very_hard", "fast"])
    ap.add_argument("--conditions", nargs="*", default=[],
                    help="robustness-panel conditions as 3-frame physical movies ('all': every one; EGFP only, "
                         "so for 1- and 3-channel models)")
    ap.add_argument("--panel-seed", type=int, default=0, help="offset of the physical movies' panel seeds")
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
    n_fluor = max(m.layout.n_fluor for m in loaded)
    if a.conditions and n_fluor > 1:
        raise SystemExit("benchmark_layouts: physical movies are EGFP only; --conditions takes 1- and 3-channel models")
    cases = movie_cases(a.presets, a.n, a.shape, channels=n_fluor) + physical_cases(a.conditions, a.n, a.panel_seed)
    rows = []
    for group, seed, movie, truth, vox in cases:
        for name, m in models.items():
            x = stack_frames(movie, 1, m.layout)
            t0 = time.perf_counter()
            det = detect(m, x, voxel_size_um=vox, spot_channel=m.layout.spot_channel)
            dt = time.perf_counter() - t0
            mt = match_points(truth, det.points[["z", "y", "x"]].to_numpy(float), det.prepared.image_voxel_um, 0.5)
            rows.append(dict(group=group, seed=seed, layout=name, tp=mt.tp, fp=mt.fp, fn=mt.fn,
                             sq=float(np.sum(np.square(mt.dist_um))), seconds=dt))
        print(f"  {group} seed {seed}: " + ", ".join(f"{r['layout']} {r['tp']}/{r['fp']}/{r['fn']}"
                                                    for r in rows[-len(models):]), file=sys.stderr, flush=True)
    per = pd.DataFrame(rows)
    g = per.groupby(["group", "layout"], sort=False)
    tab = g[["tp", "fp", "fn", "sq"]].sum().reset_index()
    print(f"\n{len(cases)} held-out 3-frame movies ({tuple(a.shape)} px; physical: each condition's own), {a.n} per "
          "set, scored at the middle frame, 0.5 µm; seconds = median per volume")
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
