"""Transfer vs from scratch: point F1 on held-out simulations after the same number of steps.

Both runs finetune config ``kt-default`` on the same randomized simulations with the same seed
and steps; one starts from a pretrained model (weights transferred, every layer whose shape
matches), one from random weights. Thresholds are chosen by point F1 on validation
simulations, then both are scored on held-out volumes per SNR preset (match_points, 0.5 µm).

    python scripts/benchmark_transfer.py --from build/default-model/pretrain --steps 120
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", default=str(ROOT / "build" / "default-model" / "pretrain"),
                    help="pretrained model folder (made by `kt-stardist pretrain` if missing)")
    ap.add_argument("--work", default=str(ROOT / "build" / "benchmark-transfer"))
    ap.add_argument("--steps", type=int, default=120, help="training steps for each run")
    ap.add_argument("--steps-per-epoch", type=int, default=30)
    ap.add_argument("--simulate", type=int, default=16)
    ap.add_argument("--val", type=int, default=3)
    ap.add_argument("--rays", type=int, default=None, help="rays of the finetuned model (default: config's)")
    ap.add_argument("--eval-volumes", type=int, default=3)
    ap.add_argument("--snr", nargs="+", default=["easy", "mid", "hard"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)

    import pandas as pd

    from kt_stardist import train

    work, src = Path(a.work), Path(a.src)
    if not (src / "weights_best.h5").is_file():
        train.pretrain(src, epochs=1, steps_per_epoch=25, seed=a.seed, tensorboard=False)
    epochs = max(1, a.steps // a.steps_per_epoch)
    rows = []
    for mode, from_model in (("transfer", src), ("scratch", None)):
        t0 = time.time()
        model, rep = train.finetune(work / mode, from_model=from_model, config="kt-default", n_rays=a.rays,
                                    simulate=a.simulate, n_val_sim=a.val, epochs=epochs,
                                    steps_per_epoch=a.steps_per_epoch, seed=a.seed, patience=0,
                                    tensorboard=False, patch_size=(16, 64, 64),
                                    augment=dict(gamma=None, noise=0.02, offset=0.05))
        secs = time.time() - t0
        ev = train.evaluate_simulated(model, snrs=a.snr, n=a.eval_volumes)
        row = dict(mode=mode, steps=rep["steps"], s_per_step=secs / max(rep["steps"], 1),
                   prob=rep["thresholds"]["prob"], val_f1=rep["thresholds"]["f1"])
        for _, r in ev.iterrows():
            row[f"F1_{r.snr}"] = r.f1
            row[f"RMSE_nm_{r.snr}"] = r.rmse_nm
        rows.append(row)
        print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"), flush=True)
    table = pd.DataFrame(rows)
    print("\ntransfer vs scratch (baseline), same data, seed and steps:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
