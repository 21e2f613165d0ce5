"""Adapting the model to a new microscope: held-out F1 against the number of annotated spots.

A user with one annotated stack runs ``kt-stardist finetune --from default``. This benchmark does
exactly that, through the CLI, for a microscope of the physical panel
(:mod:`kt_stardist.physical`; default ``thin_stack``: 10 slices at 0.5 µm, where the shipped model
is weakest after the two hard samples), with 10, 30 and 100 annotated spots:

- the "annotated stack" is rendered by the physical path with its own seeds (never the panel's);
  N annotated spots are a crop of it holding exactly those N spots (every spot inside the crop is
  annotated, as a user annotates a region completely), more volumes when N needs them;
- ``kt-stardist finetune --from default --images crop.tif ... --points crop.csv ...`` twice: with
  ``--epochs 0`` (the shipped weights, thresholds re-chosen on the annotated crop: how much is
  calibration) and with a small training budget (``--epochs``, ``--steps-per-epoch``), each timed
  (minutes, threshold search included);
- the finetuned model and the shipped one are scored side by side by ``kt_stardist.predict.detect``
  with each model's stored thresholds (what ``predict`` does) on ``--n-test`` held-out panel
  volumes of the same microscope (panel seeds, 0.5 µm matching).

    python scripts/benchmark_adaptation.py [--condition thin_stack] [--spots 10 30 100]
        [--epochs 8] [--steps-per-epoch 20] [--n-test 2] [--work build/adaptation] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: spawn key of the annotated stacks' seeds (the panel uses its own; see kt_stardist.physical)
ADAPT_KEY = 7


def annotated_crops(condition, n_spots, first_seed=0):
    """``[(image ZYX, points DataFrame z, y, x px, voxel_size_um)]`` holding exactly ``n_spots``
    annotated spots: whole volumes of ``condition`` while more are needed, then an x-crop of the
    next one cut midway between its k-th and (k+1)-th spot along x (all spots left of the cut)."""
    from kt_stardist.physical import CONDITIONS, simulate_physical

    out, left, seed = [], int(n_spots), int(first_seed)
    while left > 0:
        img, df, vs, _ = simulate_physical(CONDITIONS[condition], np.random.SeedSequence(seed, spawn_key=(ADAPT_KEY,)))
        seed += 1
        df = df.sort_values("x").reset_index(drop=True)
        if len(df) == 0:
            continue
        if len(df) <= left:
            out.append((img, df[["z", "y", "x"]], vs))
            left -= len(df)
            continue
        cut = int(np.ceil((df.x.iloc[left - 1] + df.x.iloc[left]) / 2))
        out.append((img[:, :, :cut], df[["z", "y", "x"]].iloc[:left], vs))
        left = 0
    return out


def score(model, cases):
    """(F1, RMSE nm, tp, fp, fn) of ``model`` with its stored thresholds on ``cases``."""
    from kt_stardist.evaluate import match_points
    from kt_stardist.predict import detect
    from kt_stardist.settings import DetectSettings

    tp = fp = fn = 0
    sq = 0.0
    for c in cases:
        det = detect(model, c.image, c.voxel_size_um, DetectSettings(), spot_channel=model.layout.spot_channel)
        m = match_points(c.truth, det.points[["z", "y", "x"]].to_numpy(float), c.voxel_size_um, 0.5)
        tp, fp, fn, sq = tp + m.tp, fp + m.fp, fn + m.fn, sq + float(np.sum(np.square(m.dist_um)))
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return f1, 1000 * np.sqrt(sq / max(tp, 1)), tp, fp, fn


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--condition", default="thin_stack", help="panel condition = the user's microscope")
    ap.add_argument("--spots", type=int, nargs="+", default=[10, 30, 100], help="annotated spots per run")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--steps-per-epoch", type=int, default=20)
    ap.add_argument("--n-test", type=int, default=2, help="held-out panel volumes")
    ap.add_argument("--work", default="build/adaptation", help="folder for the crops and models")
    ap.add_argument("--quick", action="store_true", help="smoke test: 10 spots, 1 epoch of 2 steps, 1 test volume")
    a = ap.parse_args(argv)
    if a.quick:
        a.spots, a.epochs, a.steps_per_epoch, a.n_test = [10], 1, 2, 1

    from kt_stardist.cli import main as cli
    from kt_stardist.io import write_image, write_points
    from kt_stardist.model import load_model
    from kt_stardist.train.evaluation import robustness_cases

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    test = robustness_cases([a.condition], a.n_test, seed=100)
    base = score(load_model(None), test)
    rows = [("shipped model (no annotation)", 0, 0.0, base)]
    for n in a.spots:
        run = work / f"{a.condition}-{n}"
        imgs, pts = [], []
        for i, (img, df, vs) in enumerate(annotated_crops(a.condition, n)):
            ip, pp = run / f"stack{i}.tif", run / f"stack{i}.csv"
            run.mkdir(parents=True, exist_ok=True)
            write_image(ip, img[None, :, None], axes="TZCYX", voxel_size_um=vs)
            write_points(df.assign(t=0), pp, voxel_size_um=vs)
            imgs.append(str(ip))
            pts.append(str(pp))
        stacks = f"{len(imgs)} stack{'s' * (len(imgs) > 1)}"
        for epochs, label in ((0, "thresholds only (0 steps)"), (a.epochs, f"{a.epochs * a.steps_per_epoch} steps")):
            out = run / f"model-{epochs}"
            t0 = time.perf_counter()
            rc = cli(["--quiet", "finetune", "--from", "default", "--out", str(out), "--images", *imgs,
                      "--points", *pts, "--epochs", str(epochs), "--steps-per-epoch", str(a.steps_per_epoch),
                      "--no-tensorboard"])
            minutes = (time.perf_counter() - t0) / 60
            if rc:
                print(f"finetune with {n} spots, {epochs} epochs failed (exit {rc})", file=sys.stderr)
                continue
            rows.append((f"{n} annotated spots ({stacks}), {label}", n, minutes, score(load_model(out), test)))

    print(f"\nmicroscope: {a.condition}; {a.n_test} held-out panel volumes ({sum(len(c.truth) for c in test)} spots), "
          f"0.5 µm matching; finetune {a.epochs} epochs × {a.steps_per_epoch} steps from the shipped model, 2 cores")
    print("| model | annotated spots | finetune minutes | F1 held-out | RMSE nm | TP / FP / FN |")
    print("|---|---|---|---|---|---|")
    for name, n, minutes, (f1, rmse, tp, fp, fn) in rows:
        print(f"| {name} | {n} | {minutes:.1f} | {f1:.3f} | {rmse:.0f} | {tp} / {fp} / {fn} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
