"""Transfer vs from scratch: point F1 on held-out simulations after the same number of steps.

Every arm runs the real command line, ``kt-stardist finetune --rays R`` (config ``kt-default``,
the same simulations, seed, steps and settings), and differs only in ``--from``:

* ``nuclei``: from ``kt-stardist pretrain`` (StarDist's example nuclei, run first if
  ``--pretrained`` does not exist yet): every U-Net layer and the probability head transfer, the
  distance head (48 -> R rays) starts fresh;
* ``kinetochore``: from the shipped kinetochore model (32 rays): the same layers transfer;
* ``scratch``: random weights (the baseline).

Each model's thresholds are chosen by point F1 on its validation simulations; all are then scored
on the same held-out volumes per SNR preset (``train.evaluate_model``: the full detection, match_points, 0.5 µm,
NMS centres, no refinement). The model folders stay in ``--work``; run again to continue an
interrupted benchmark (finished arms are resumed, i.e. only re-scored).

    python scripts/benchmark_transfer.py                        # 256 rays, 3 arms x 200 steps
    python scripts/benchmark_transfer.py --rays 32 --steps 400 --arms nuclei scratch
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ARMS = ("nuclei", "kinetochore", "scratch")


def cli(*args):
    """Run ``kt-stardist ARGS`` in a subprocess (what a user types); raise if it fails."""
    cmd = [sys.executable, "-m", "kt_stardist", *map(str, args)]
    print("$ kt-stardist " + " ".join(map(str, args)), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default=str(ROOT / "build" / "benchmark-transfer"))
    ap.add_argument("--pretrained", default=None,
                    help="nuclei model folder (default WORK/pretrain; made by `kt-stardist pretrain` if missing)")
    ap.add_argument("--pretrain-epochs", type=int, default=4)
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--rays", type=int, default=256)
    ap.add_argument("--steps", type=int, default=200, help="training steps of each arm")
    ap.add_argument("--steps-per-epoch", type=int, default=40)
    ap.add_argument("--simulate", type=int, default=16, help="simulated training volumes")
    ap.add_argument("--eval-volumes", type=int, default=3)
    ap.add_argument("--snr", nargs="+", default=["easy", "mid", "hard"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import pandas as pd

    from kt_stardist import train
    from kt_stardist.model import DEFAULT_MODEL_DIR, load_model

    work = Path(a.work)
    pre = Path(a.pretrained) if a.pretrained else work / "pretrain"
    if "nuclei" in a.arms and not (pre / "weights_best.h5").is_file():
        t0 = time.time()
        cli("pretrain", "--out", pre, "--epochs", a.pretrain_epochs, "--seed", a.seed, "--no-tensorboard")
        print(f"pretrain: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    sources = {"nuclei": pre, "kinetochore": DEFAULT_MODEL_DIR, "scratch": None}
    epochs = max(1, a.steps // a.steps_per_epoch)
    rows = []
    for arm in a.arms:
        out = work / f"{arm}-{a.rays}rays"
        t0 = time.time()
        done = (out / "thresholds.json").is_file() and (out / "history.csv").is_file() and \
            len(pd.read_csv(out / "history.csv")) >= epochs
        if not done:  # a finished arm is only scored again
            cli("finetune", "--out", out, *(["--from", sources[arm]] if sources[arm] else []), "--rays", a.rays,
                "--simulate", a.simulate, "--epochs", epochs, "--steps-per-epoch", a.steps_per_epoch,
                "--patience", 0, "--seed", a.seed, "--no-tensorboard",
                *(["--resume"] if (out / "history.csv").is_file() else []))  # an interrupted run goes on
        secs = time.time() - t0
        model = load_model(out)
        cases = train.evaluation_cases(a.snr, layouts=("plate",), n=a.eval_volumes, shape_px=(48, 128, 128))
        ev, _ = train.evaluate_model(model, cases)
        tinfo, vinfo = model.info.training, model.info.validation
        row = dict(start=arm, rays=a.rays, steps=epochs * a.steps_per_epoch,
                   minutes=tinfo.get("train_seconds", secs) / 60 if done else secs / 60,
                   fresh_layers=len(tinfo.get("transfer", {}).get("fresh", [])) if sources[arm] else "all",
                   prob=float(model.thresholds.prob), val_F1=vinfo.get("f1", float("nan")))
        for _, r in ev.iterrows():
            row[f"F1_{r.group}"] = r.f1
            row[f"RMSE_nm_{r.group}"] = r.rmse_nm
        rows.append(row)
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    print(f"\nfinetune --rays {a.rays}, {epochs * a.steps_per_epoch} steps each, same simulations and seed; "
          f"scored on {a.eval_volumes} held-out volumes per preset (0.5 µm):")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
