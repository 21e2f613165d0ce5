"""kt-stardist beside its peers: Spotiflow, the seed's U-Net heatmap, Big-FISH and LoG on the same
held-out simulated frames, scored by the project's evaluator (0.5 µm).

Methods, on the same frames, one markdown table:

- **kt-stardist**: ``kt_stardist.predict.detect`` with the shipped model and its stored
  thresholds (no tuning on the test frames); its training minutes are read from ``model.json``.
- **U-Net heatmap** (``kt_stardist.peers``): csbdeep 3D U-Net regressing a Gaussian heatmap (Dice +
  MSE loss), trained here from scratch on the simulations kt-stardist trains on, with kt-default's
  patch (24×64×64), batch (2) and ``--steps``; peaks by ``peak_local_max`` above a threshold
  chosen on separate validation simulations; scored with the project's refinement and without.
- **Spotiflow** (``pip install '.[peers]'``): from scratch in 3D, z resampled to 0.13 µm
  (isotropic) and normalised by kt-stardist's ``prepare`` (in training and prediction alike), the
  same number of patches seen (steps × batch); skipped with a one-line note when not installed.
- **Big-FISH** ``detect_spots`` (automatic threshold); **LoG** with its threshold tuned on the
  training-seed volumes (``baselines.tune_log_threshold``), then fixed.

Held-out sets: SNR presets (``evaluation_cases``, seeds ≥ 10000 + the evaluation offset, never a
training seed); close-pair recall = recall of spots whose nearest neighbour is 0.3–0.6 µm away
(``close_pair_mask``); ``--robustness``: the physical robustness panel too. Seconds are per
volume on this machine (2 shared CPU cores unless said otherwise).

    python scripts/benchmark_peers.py --quick                      # smoke test, ~4 min
    python scripts/benchmark_peers.py                              # CI-sized (~30 min on 2 cores)
    python scripts/benchmark_peers.py --shape 61 512 512 --n 2     # README numbers

A trained heatmap model (weights + heatmap.json) and Spotiflow's weights are written under
``--out-dir`` (default build/peers, git-ignored); ``--heatmap-model DIR`` reuses one.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: kinds of the training simulations (those the shipped kt-default was finetuned on)
TRAIN_KINDS = ("easy", "mid", "hard", "very_hard", "random")
#: held-out frames use seeds from here on (plus the evaluation offset)
TEST_SEED = 10000
COLUMNS = ["set", "method", "precision", "recall", "f1", "rmse_nm", "close_recall", "seconds", "train_min"]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 40 training steps, tiny sets (~3-4 min on 2 idle cores)")
    ap.add_argument("--model", default=None, help="kt-stardist model folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=1, help="test frames per preset and layout")
    ap.add_argument("--shape", nargs=3, type=int, default=[32, 256, 256], help="test frame (Z, Y, X) px")
    ap.add_argument("--presets", nargs="+", default=["easy", "mid", "hard"])
    ap.add_argument("--layouts", nargs="+", default=["plate", "real"])
    ap.add_argument("--steps", type=int, default=480, help="training steps of each peer (batch 2)")
    ap.add_argument("--train-n", type=int, default=24, help="training simulations")
    ap.add_argument("--val-n", type=int, default=5,
                    help="validation simulations (peak thresholds; 5 covers every training kind once)")
    ap.add_argument("--train-shape", nargs=3, type=int, default=[48, 192, 192])
    ap.add_argument("--robustness", action="store_true", help="also the physical robustness panel (1 per condition)")
    ap.add_argument("--heatmap-model", default=None, help="a trained heatmap folder to reuse (skips training)")
    ap.add_argument("--no-spotiflow", action="store_true")
    ap.add_argument("--no-bigfish", action="store_true")
    ap.add_argument("--out-dir", default="build/peers")
    ap.add_argument("--png", default=None, help="F1 / RMSE plot per set")
    ap.add_argument("--spotiflow-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.shape, a.layouts = 1, [24, 128, 128], ["plate"]
        a.steps, a.train_n, a.val_n, a.train_shape = 40, 4, 2, [24, 96, 96]
    return a


def spotiflow_method(argv, steps, batch, out_dir):
    """(predictions {case key: (N, 3) px}, seconds {case key: s}, training minutes) of Spotiflow,
    or (None, one-line reason, None) when it is not installed or its run fails. Spotiflow runs in
    a child process (``--spotiflow-worker``) that simulates the same data from the same seeds:
    torch and TensorFlow crashed (segfault) when loaded in one process."""
    import subprocess

    from kt_stardist import peers

    reason = peers.spotiflow_available()
    if reason:
        return None, reason, None
    out = Path(out_dir) / "spotiflow" / "predictions.npz"
    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--spotiflow-worker", str(out)]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 or not out.is_file():
        last = (r.stderr.strip().splitlines() or ["no message"])[-1][:160]
        return None, f"its run failed (exit {r.returncode}: {last})", None
    with np.load(out, allow_pickle=False) as z:
        keys = [str(k) for k in z["keys"]]
        pred = {k: z[f"pred_{i}"] for i, k in enumerate(keys)}
        secs = dict(zip(keys, z["seconds"].tolist()))
        minutes = float(z["train_seconds"]) / 60
    log(f"Spotiflow: trained {minutes:.1f} min ({steps} steps x batch {batch} worth of crops)")
    return pred, secs, minutes


def case_key(c) -> str:
    return f"{c.group}/{c.layout}/{c.seed}"


def spotiflow_worker(a, train, val, cases, path):
    """Child process: train Spotiflow, predict every case, save an npz (atomically)."""
    from kt_stardist import peers
    from kt_stardist.io import atomic_path

    batch = peers.HeatmapSettings().batch_size
    s = peers.SpotiflowSettings(epochs=max(1, math.ceil(a.steps * batch / max(len(train), 1))), batch_size=batch)
    path = Path(path)
    model, train_seconds, thr, f1 = peers.train_spotiflow(train, val, path.parent, s)
    log(f"Spotiflow: probability threshold {thr} (validation F1 {f1:.3f})")
    arrays, secs = {}, []
    for i, c in enumerate(cases):
        t0 = time.perf_counter()
        arrays[f"pred_{i}"] = peers.spotiflow_detect(model, c.image, c.voxel_size_um, s, threshold=thr)
        secs.append(time.perf_counter() - t0)
    with atomic_path(path) as tmp:
        np.savez(tmp, keys=np.array([case_key(c) for c in cases]), seconds=np.array(secs),
                 train_seconds=np.float64(train_seconds), **arrays)
    return 0


def kt_training_minutes(model):
    """Training minutes recorded in the model's model.json (NaN when absent)."""
    tr = (getattr(model.info, "training", None) or {})
    sec = tr.get("train_seconds")
    return np.nan if sec is None else float(sec) / 60


def main(argv=None):
    a = parse(argv)
    import pandas as pd

    from benchmark_localisation import markdown
    from kt_stardist import baselines as B
    from kt_stardist import peers
    from kt_stardist.model import load_model
    from kt_stardist.predict import detect
    from kt_stardist.train.data import simulated_pairs
    from kt_stardist.train.evaluation import evaluate_detector, evaluation_cases, robustness_cases, summarize

    t_start = time.perf_counter()
    out_dir = Path(a.out_dir)
    shape, tshape = tuple(a.shape), tuple(a.train_shape)
    log(f"simulating {a.train_n} training + {a.val_n} validation volumes {tshape} px (seeds 0, 1) ...")
    train = simulated_pairs(a.train_n, tshape, 0, kinds=TRAIN_KINDS)
    val = simulated_pairs(a.val_n, tshape, 1, kinds=TRAIN_KINDS)
    cases = evaluation_cases(a.presets, a.layouts, a.n, shape, seed=TEST_SEED)
    if a.robustness:
        cases += robustness_cases(n=1, seed=TEST_SEED)

    if a.spotiflow_worker:
        return spotiflow_worker(a, train, val, cases, a.spotiflow_worker)

    model = load_model(a.model)
    methods, train_min, notes = {}, {}, []
    methods["kt-stardist"] = lambda c: detect(model, c.image, c.voxel_size_um).points[["z", "y", "x"]]
    train_min["kt-stardist"] = kt_training_minutes(model)
    tr = getattr(model.info, "training", None) or {}
    if tr.get("transferred_from"):
        notes.append(f"kt-stardist: train_min is its last training job ({tr.get('job', 'finetune')}, "
                     f"{tr.get('steps', '?')} steps x batch 2 on {tr.get('training_data', '?')}), which started "
                     f"from earlier weights ({tr['transferred_from']}): its total training is longer")

    # U-Net heatmap, same patches/batch/steps as a kt-stardist finetune
    if a.heatmap_model:
        hm = peers.load_heatmap_model(a.heatmap_model)
        log(f"heatmap threshold {hm.threshold} re-chosen on this run's validation simulations: "
            f"{peers.calibrate_heatmap(hm, val)} F1 at {hm.threshold}")
    else:
        hs = peers.HeatmapSettings(steps=a.steps)
        log(f"training the U-Net heatmap: {hs.steps} steps x batch {hs.batch_size}, patch {hs.patch_size_px} ...")
        hm = peers.train_heatmap(train, val, hs, log=log)
        peers.save_heatmap_model(hm, out_dir / "heatmap-unet")
        log(f"saved {out_dir / 'heatmap-unet'} (threshold {hm.threshold}, validation F1 "
            f"{hm.training['validation_f1']}, {hm.training['train_seconds'] / 60:.1f} min)")
    hm_min = (hm.training or {}).get("train_seconds", float("nan")) / 60
    methods["U-Net heatmap + refine"] = lambda c: peers.heatmap_detect(hm, c.image, c.voxel_size_um)[["z", "y", "x"]]
    methods["U-Net heatmap (peaks)"] = lambda c: peers.heatmap_detect(hm, c.image, c.voxel_size_um,
                                                                      refine=False)[["z", "y", "x"]]
    train_min["U-Net heatmap + refine"] = train_min["U-Net heatmap (peaks)"] = hm_min

    if a.no_spotiflow:
        notes.append("Spotiflow: skipped (--no-spotiflow)")
    else:
        log("training Spotiflow (separate process) ...")
        sf_pred, sf_secs, sf_min = spotiflow_method(list(sys.argv[1:] if argv is None else argv), a.steps,
                                                    peers.HeatmapSettings().batch_size, out_dir)
        if sf_pred is None:
            notes.append(f"Spotiflow: skipped, {sf_secs}")
        else:
            methods["Spotiflow"], train_min["Spotiflow"] = (lambda c: sf_pred[case_key(c)]), sf_min

    if a.no_bigfish:
        notes.append("Big-FISH: skipped (--no-bigfish)")
    else:
        try:
            import bigfish.detection  # noqa: F401

            methods["Big-FISH (auto)"] = lambda c: B.bigfish_detect(c.image[..., 0], c.voxel_size_um)[["z", "y", "x"]]
        except ImportError as e:
            notes.append(f"Big-FISH: skipped, not installed ({e}); pip install '.[baselines]'")

    log_thr, log_f1 = B.tune_log_threshold([p[0][..., 0] for p in train], [p[1] for p in train], train[0][2])
    log(f"LoG threshold {log_thr:.4f} (F1 {log_f1:.3f} on the {len(train)} training volumes)")
    methods["LoG (tuned)"] = lambda c: B.log_detect(c.image[..., 0], c.voxel_size_um, threshold=log_thr)[["z", "y", "x"]]
    
    tables = []
    for name, fn in methods.items():
        log(f"running {name} on {len(cases)} volumes ...")
        per_case = evaluate_detector(fn, cases)
        if name == "Spotiflow":  # its seconds were measured in its own process
            per_case["seconds"] = [sf_secs[case_key(c)] for c in cases]
        per_case["set"] = per_case["group"]
        both = pd.concat([per_case, per_case.assign(set="all")], ignore_index=True)
        t = summarize(both, by=("set",)).assign(method=name, train_min=train_min.get(name, np.nan))
        no_close = both.groupby("set", sort=False).close_n.sum() == 0  # no close pair: no recall to show
        t.loc[t["set"].map(no_close).to_numpy(bool), "close_recall"] = np.nan
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    sets = list(dict.fromkeys(c.group for c in cases)) + ["all"]
    table["order"] = table["set"].map({s: i for i, s in enumerate(sets)})
    table = table.sort_values(["order"], kind="stable")[COLUMNS]

    print(f"\n{len(cases)} held-out volumes ({', '.join(a.layouts)} layouts, {a.n} per preset and layout, "
          f"{shape} px; seeds from {TEST_SEED}), voxel 0.3 x 0.13 x 0.13 µm, match 0.5 µm; close_recall: "
          f"spots with a neighbour 0.3-0.6 µm away; seconds per volume; peers trained {a.steps} steps x batch 2 "
          f"on {a.train_n} simulations {tshape} px; total {(time.perf_counter() - t_start) / 60:.1f} min\n")
    print(markdown(table))
    for n in notes:
        print(f"\n- {n}")
    if a.png:
        plot(table, methods, a.png)
    return 0


def plot(table, methods, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kt_stardist.io import atomic_path

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for name in methods:
        s = table[(table.method == name) & (table.set != "all")]
        ax[0].plot(s.set, s.f1, "o-", label=name)
        ax[1].plot(s.set, s.rmse_nm, "o-", label=name)
    ax[0].set(ylabel="F1 (0.5 µm)", ylim=(0, 1.02))
    ax[1].set(ylabel="RMSE (nm)")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    sys.exit(main())
