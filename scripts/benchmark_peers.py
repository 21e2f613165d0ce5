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
(``close_pair_mask``); the physical robustness panel (one volume per condition, on by default,
``--no-robustness``); one whole frame (``--frame-shape``, default 61 × 1000 × 1000 px, real
layout, mid SNR; ``--no-whole-frame``) on which every method runs in a fresh child process
(``--frame-worker``) that loads its model and the frame, predicts once, and reports the
prediction's seconds and the process's peak resident memory (``VmHWM``, see
:func:`peak_memory_gb`: the whole process, Python, TensorFlow or torch, model, input frame and all;
the peak before the prediction is noted too). Seconds are per volume on this machine (2 shared CPU cores unless said otherwise).

    python scripts/benchmark_peers.py --quick     # smoke test of every path (~6 min on 2 idle cores)
    python scripts/benchmark_peers.py             # README numbers (CI-sized, see the README for the time)

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
COLUMNS = ["set", "method", "precision", "recall", "f1", "rmse_nm", "close_recall", "seconds", "peak_gb", "train_min"]
#: a whole frame's set name in the table
FRAME_SET = "whole frame"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke test: 40 training steps, tiny sets, one robustness condition, a small whole frame")
    ap.add_argument("--model", default=None, help="kt-stardist model folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=1, help="test frames per preset and layout")
    ap.add_argument("--shape", nargs=3, type=int, default=[32, 256, 256], help="test frame (Z, Y, X) px")
    ap.add_argument("--presets", nargs="+", default=["easy", "mid", "hard"])
    ap.add_argument("--layouts", nargs="+", default=["plate", "real"])
    ap.add_argument("--steps", type=int, default=240, help="training steps of each peer (batch 2)")
    ap.add_argument("--train-n", type=int, default=12, help="training simulations")
    ap.add_argument("--val-n", type=int, default=5,
                    help="validation simulations (peak thresholds; 5 covers every training kind once)")
    ap.add_argument("--train-shape", nargs=3, type=int, default=[48, 192, 192])
    ap.add_argument("--robustness", action=argparse.BooleanOptionalAction, default=True,
                    help="the physical robustness panel (1 volume per condition)")
    ap.add_argument("--conditions", nargs="+", default=None, help="robustness conditions (default: all)")
    ap.add_argument("--whole-frame", action=argparse.BooleanOptionalAction, default=True,
                    help="seconds and peak memory per method on one whole frame, each in a fresh process")
    ap.add_argument("--frame-shape", nargs=3, type=int, default=[61, 1000, 1000], help="whole frame (Z, Y, X) px")
    ap.add_argument("--heatmap-model", default=None, help="a trained heatmap folder to reuse (skips training)")
    ap.add_argument("--no-spotiflow", action="store_true")
    ap.add_argument("--no-bigfish", action="store_true")
    ap.add_argument("--out-dir", default="build/peers")
    ap.add_argument("--png", default=None, help="F1 / RMSE plot per set")
    ap.add_argument("--spotiflow-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--frame-worker", nargs=4, default=None, metavar=("METHOD", "SPEC", "FRAME", "OUT"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.shape, a.layouts = 1, [24, 128, 128], ["plate"]
        a.steps, a.train_n, a.val_n, a.train_shape = 40, 4, 2, [24, 96, 96]
        a.conditions, a.frame_shape = a.conditions or ["confocal_water"], [24, 192, 192]
    return a


def spotiflow_method(argv, steps, batch, out_dir):
    """(predictions {case key: (N, 3) px}, seconds {case key: s}, training minutes, probability
    threshold) of Spotiflow, or (None, one-line reason, None, None) when it is not installed or its
    run fails (its weights stay in ``out_dir/spotiflow``). Spotiflow runs in
    a child process (``--spotiflow-worker``) that simulates the same data from the same seeds:
    torch and TensorFlow crashed (segfault) when loaded in one process."""
    from kt_stardist import peers

    reason = peers.spotiflow_available()
    if reason:
        return None, reason, None, None
    out = Path(out_dir) / "spotiflow" / "predictions.npz"
    failed = run_child([*argv, "--spotiflow-worker", str(out)], out)
    if failed:
        return None, f"its run failed ({failed})", None, None
    with np.load(out, allow_pickle=False) as z:
        keys = [str(k) for k in z["keys"]]
        pred = {k: z[f"pred_{i}"] for i, k in enumerate(keys)}
        secs = dict(zip(keys, z["seconds"].tolist()))
        minutes = float(z["train_seconds"]) / 60
        thr = float(z["threshold"])
    log(f"Spotiflow: trained {minutes:.1f} min ({steps} steps x batch {batch} worth of crops)")
    return pred, secs, minutes, thr


def run_child(args, out_path) -> str | None:
    """Run this script with ``args`` in a fresh process; None when it exited 0 and wrote
    ``out_path``, else a one-line reason (exit status and its last line of stderr)."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0 or not Path(out_path).is_file():
        last = (r.stderr.strip().splitlines() or ["no message"])[-1][:160]
        return f"exit {r.returncode}: {last}"
    return None


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
                 train_seconds=np.float64(train_seconds), threshold=np.float64(thr), **arrays)
    return 0


def kt_training_minutes(model):
    """Training minutes recorded in the model's model.json (NaN when absent)."""
    tr = (getattr(model.info, "training", None) or {})
    sec = tr.get("train_seconds")
    return np.nan if sec is None else float(sec) / 60


#: method names (table rows), in table order
KT, HM_REFINE, HM_PEAKS, SPOTIFLOW, BIGFISH, LOG = ("kt-stardist", "U-Net heatmap + refine", "U-Net heatmap (peaks)",
                                                    "Spotiflow", "Big-FISH (auto)", "LoG (tuned)")


def load_method(name, spec):
    """What :func:`run_method` needs for method ``name``, from a run's ``spec`` (dict: ``model``
    kt-stardist folder or None, ``heatmap`` and ``spotiflow`` folders, ``spotiflow_threshold``,
    ``log_threshold``): the loaded model, (model, threshold), a threshold, or None."""
    from kt_stardist import peers
    from kt_stardist.errors import InputError

    if name == KT:
        from kt_stardist.model import load_model

        return load_model(spec.get("model"))
    if name in (HM_REFINE, HM_PEAKS):
        return peers.load_heatmap_model(spec["heatmap"])
    if name == SPOTIFLOW:
        from spotiflow.model import Spotiflow

        # "last": the weights the in-memory model of the training child ended with
        return Spotiflow.from_folder(spec["spotiflow"], which="last", map_location="cpu"), spec["spotiflow_threshold"]
    if name == BIGFISH:
        return None
    if name == LOG:
        return float(spec["log_threshold"])
    raise InputError(f"unknown method {name!r}")


def run_method(name, obj, image, voxel_size_um):
    """Points (N, 3) float px (z, y, x) of method ``name`` on a raw ``(Z, Y, X, 1)`` volume of
    voxel ``voxel_size_um`` (z, y, x) µm; ``obj`` as :func:`load_method` gives it (the one place
    each method is called, in this process and in the whole-frame children)."""
    from kt_stardist import baselines as B
    from kt_stardist import peers
    from kt_stardist.errors import InputError

    zyx = ["z", "y", "x"]
    if name == KT:
        from kt_stardist.predict import detect

        return detect(obj, image, voxel_size_um).points[zyx].to_numpy(float)
    if name in (HM_REFINE, HM_PEAKS):
        return peers.heatmap_detect(obj, image, voxel_size_um, refine=name == HM_REFINE)[zyx].to_numpy(float)
    if name == SPOTIFLOW:
        model, thr = obj
        return np.asarray(peers.spotiflow_detect(model, image, voxel_size_um, threshold=thr), float).reshape(-1, 3)
    if name == BIGFISH:
        return B.bigfish_detect(image[..., 0], voxel_size_um)[zyx].to_numpy(float)
    if name == LOG:
        return B.log_detect(image[..., 0], voxel_size_um, threshold=obj)[zyx].to_numpy(float)
    raise InputError(f"unknown method {name!r}")


def peak_memory_gb() -> float:
    """Peak resident memory of this process so far, GB: ``VmHWM`` of ``/proc/self/status`` (Linux),
    the high-water mark of this process's own memory since it started (exec). Not ``ru_maxrss``:
    Linux carries the parent's resident size over fork + exec into a child's ``ru_maxrss``, so a
    child of a 3.5 GB benchmark reported 3.5 GB before it had loaded anything. ``ru_maxrss`` where
    there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024 ** 2  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2


def frame_worker(name, spec_path, frame_path, out_path):
    """Child process: load method ``name`` (``spec_path``: JSON, see :func:`load_method`) and the
    ZYX frame (``frame_path``, .npy), predict once; write an npz (atomically) of the points, the
    prediction's seconds, the peak memory after loading (``loaded_gb``) and the peak (``peak_gb``)."""
    import json

    from kt_stardist.io import atomic_path

    spec = json.loads(Path(spec_path).read_text())
    obj = load_method(name, spec)
    frame = np.load(frame_path)[..., None]
    loaded = peak_memory_gb()
    t0 = time.perf_counter()
    pts = run_method(name, obj, frame, tuple(spec["voxel_size_um"]))
    seconds = time.perf_counter() - t0
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, points=np.asarray(pts, float).reshape(-1, 3), seconds=np.float64(seconds),
                     loaded_gb=np.float64(loaded), peak_gb=np.float64(peak_memory_gb()))
    return 0


def run_frame_child(name, spec_path, frame_path, out_path):
    """Run :func:`frame_worker` for ``name`` in a fresh process: dict (points, seconds, loaded_gb,
    peak_gb), or a one-line reason (str) when it failed."""
    failed = run_child(["--frame-worker", name, str(spec_path), str(frame_path), str(out_path)], out_path)
    if failed:
        return f"its whole-frame run failed ({failed})"
    with np.load(out_path) as z:
        return {k: (z[k] if k == "points" else float(z[k])) for k in ("points", "seconds", "loaded_gb", "peak_gb")}


def summary(per_case, name, train_min, aggregate=None):
    """Rows (set, method, precision ... train_min) of one method's per-case table
    (``evaluate_detector``'s, optionally with ``peak_gb``): one per ``group``, plus one per
    ``aggregate(per_case row) -> set name`` (None: no aggregate rows). ``close_recall`` is NaN where
    a set has no close pair; ``peak_gb`` is NaN where not measured."""
    import pandas as pd

    from kt_stardist.train.evaluation import summarize

    per_case = per_case.assign(set=per_case["group"])
    parts = [per_case]
    if aggregate is not None:
        parts.append(per_case.assign(set=[aggregate(r) for r in per_case.itertuples()]))
    both = pd.concat(parts, ignore_index=True)
    t = summarize(both, by=("set",)).assign(method=name, train_min=train_min)
    no_close = both.groupby("set", sort=False).close_n.sum() == 0  # no close pair: no recall to show
    t.loc[t["set"].map(no_close).to_numpy(bool), "close_recall"] = np.nan
    peak = both.groupby("set", sort=False)["peak_gb"].max() if "peak_gb" in both else {}
    t["peak_gb"] = t["set"].map(lambda s: peak.get(s, np.nan))
    return t


def aggregate_set(row) -> str:
    """The aggregate a held-out case counts in: the robustness panel's or the presets'."""
    return "all robustness" if row.layout == "physical" else "all presets"


def whole_frame(shape, names, spec, train_min, out_dir):
    """Simulate one whole frame (``shape`` z, y, x px, real layout, mid SNR, held-out seed), run
    every method in ``names`` on it in a fresh child process (:func:`frame_worker`); returns
    (summary rows, notes). The frame is written to ``out_dir`` for the children and removed."""
    import json

    import _simdata
    import pandas as pd

    from kt_stardist.io import atomic_write
    from kt_stardist.train.evaluation import EvalCase, evaluate_detector

    log(f"simulating the whole frame {tuple(shape)} px (real layout, mid SNR) ...")
    vol, truth = _simdata.volume(tuple(shape), TEST_SEED, snr="mid", layout="real")
    wdir = Path(out_dir) / "whole-frame"
    wdir.mkdir(parents=True, exist_ok=True)
    frame_path, spec_path = wdir / "frame.npy", wdir / "spec.json"
    np.save(frame_path, np.asarray(vol, np.float32))
    del vol
    with atomic_write(spec_path, "w") as f:
        f.write(json.dumps(spec))
    case = EvalCase(f"{FRAME_SET} {'×'.join(map(str, shape))}", "real", np.zeros((0, 0, 0, 1)), truth,
                    tuple(spec["voxel_size_um"]), TEST_SEED)
    rows, notes = [], []
    try:
        for name in names:
            log(f"whole frame: {name} (fresh process) ...")
            r = run_frame_child(name, spec_path, frame_path, wdir / f"{name.replace(' ', '_')}.npz")
            if isinstance(r, str):
                notes.append(f"{name}, whole frame: {r}")
                continue
            log(f"whole frame: {name} {r['seconds']:.0f} s, peak {r['peak_gb']:.2f} GB "
                f"({r['loaded_gb']:.2f} GB after loading), {len(r['points'])} points")
            per_case = evaluate_detector(lambda c, p=r["points"]: p, [case]).assign(
                seconds=r["seconds"], peak_gb=r["peak_gb"])
            rows.append(summary(per_case, name, train_min.get(name, np.nan)))
            notes.append(f"{name}, whole frame: peak {r['loaded_gb']:.2f} GB after loading the model and the frame, "
                         f"before predicting")
    finally:
        frame_path.unlink(missing_ok=True)
    return (pd.concat(rows, ignore_index=True) if rows else None), notes


def compact(table):
    """One row per method: F1 / RMSE on the presets, close-pair recall, F1 / RMSE on the
    robustness panel, the whole frame's F1, seconds and peak GB, training minutes."""
    import pandas as pd

    out = []
    for name, t in table.groupby("method", sort=False):
        by = t.set_index("set")
        row = {"method": name}
        for s, lab in (("all presets", "presets"), ("all robustness", "robustness")):
            if s in by.index:
                row[f"F1 {lab}"], row[f"RMSE nm {lab}"] = by.at[s, "f1"], by.at[s, "rmse_nm"]
                if lab == "presets":
                    row["close-pair recall"] = by.at[s, "close_recall"]
        fr = [s for s in by.index if str(s).startswith(FRAME_SET)]
        if fr:
            row.update({"F1 whole frame": by.at[fr[0], "f1"], "s / whole frame": by.at[fr[0], "seconds"],
                        "peak GB": by.at[fr[0], "peak_gb"]})
        row["training min"] = t["train_min"].iloc[0]
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None):
    a = parse(argv)
    if a.frame_worker:
        return frame_worker(*a.frame_worker)
    import pandas as pd

    from benchmark_localisation import markdown
    from kt_stardist import baselines as B
    from kt_stardist import peers
    from kt_stardist.defaults import VOXEL_SIZE_UM
    from kt_stardist.io import atomic_write
    from kt_stardist.model import load_model
    from kt_stardist.train.data import simulated_pairs
    from kt_stardist.train.evaluation import evaluate_detector, evaluation_cases, robustness_cases

    t_start = time.perf_counter()
    out_dir = Path(a.out_dir)
    shape, tshape = tuple(a.shape), tuple(a.train_shape)
    log(f"simulating {a.train_n} training + {a.val_n} validation volumes {tshape} px (seeds 0, 1) ...")
    train = simulated_pairs(a.train_n, tshape, 0, kinds=TRAIN_KINDS)
    val = simulated_pairs(a.val_n, tshape, 1, kinds=TRAIN_KINDS)
    cases = evaluation_cases(a.presets, a.layouts, a.n, shape, seed=TEST_SEED)
    if a.robustness:
        log("rendering the robustness panel ...")
        cases += robustness_cases(a.conditions, n=1, seed=TEST_SEED)

    if a.spotiflow_worker:
        return spotiflow_worker(a, train, val, cases, a.spotiflow_worker)

    model = load_model(a.model)
    objs, train_min, notes = {KT: model}, {KT: kt_training_minutes(model)}, []
    tr = getattr(model.info, "training", None) or {}
    if tr.get("transferred_from"):
        notes.append(f"kt-stardist: train_min is its last training job ({tr.get('job', 'finetune')}, "
                     f"{tr.get('steps', '?')} steps x batch 2 on {tr.get('training_data', '?')}), which started "
                     f"from earlier weights ({tr['transferred_from']}): its total training is longer")
    spec = dict(model=a.model, voxel_size_um=list(VOXEL_SIZE_UM))

    # U-Net heatmap, same patches/batch/steps as a kt-stardist finetune
    if a.heatmap_model:
        hm = peers.load_heatmap_model(a.heatmap_model)
        log(f"heatmap threshold {hm.threshold} re-chosen on this run's validation simulations: "
            f"{peers.calibrate_heatmap(hm, val)} F1 at {hm.threshold}")
    else:
        hs = peers.HeatmapSettings(steps=a.steps)
        log(f"training the U-Net heatmap: {hs.steps} steps x batch {hs.batch_size}, patch {hs.patch_size_px} ...")
        hm = peers.train_heatmap(train, val, hs, log=log)
        log(f"U-Net heatmap: threshold {hm.threshold}, validation F1 {hm.training['validation_f1']}, "
            f"{hm.training['train_seconds'] / 60:.1f} min")
    spec["heatmap"] = str(peers.save_heatmap_model(hm, out_dir / "heatmap-unet"))  # with this run's threshold
    objs[HM_REFINE] = objs[HM_PEAKS] = hm
    train_min[HM_REFINE] = train_min[HM_PEAKS] = (hm.training or {}).get("train_seconds", float("nan")) / 60

    sf_pred = None
    if a.no_spotiflow:
        notes.append("Spotiflow: skipped (--no-spotiflow)")
    else:
        log("training Spotiflow (separate process) ...")
        sf_pred, sf_secs, sf_min, sf_thr = spotiflow_method(list(sys.argv[1:] if argv is None else argv), a.steps,
                                                            peers.HeatmapSettings().batch_size, out_dir)
        if sf_pred is None:
            notes.append(f"Spotiflow: skipped, {sf_secs}")
        else:
            objs[SPOTIFLOW], train_min[SPOTIFLOW] = None, sf_min
            spec.update(spotiflow=str(out_dir / "spotiflow"), spotiflow_threshold=sf_thr)

    if a.no_bigfish:
        notes.append("Big-FISH: skipped (--no-bigfish)")
    else:
        try:
            import bigfish.detection  # noqa: F401

            objs[BIGFISH] = None
        except ImportError as e:
            notes.append(f"Big-FISH: skipped, not installed ({e}); pip install '.[baselines]'")

    log_thr, log_f1 = B.tune_log_threshold([p[0][..., 0] for p in train], [p[1] for p in train], train[0][2])
    log(f"LoG threshold {log_thr:.4f} (F1 {log_f1:.3f} on the {len(train)} training volumes)")
    objs[LOG] = spec["log_threshold"] = float(log_thr)

    tables = []
    for name, obj in objs.items():
        log(f"running {name} on {len(cases)} volumes ...")
        if name == SPOTIFLOW:  # predicted, and timed, in its own process
            per_case = evaluate_detector(lambda c: sf_pred[case_key(c)], cases)
            per_case["seconds"] = [sf_secs[case_key(c)] for c in cases]
        else:
            per_case = evaluate_detector(lambda c, n=name, o=obj: run_method(n, o, c.image, c.voxel_size_um), cases)
        tables.append(summary(per_case, name, train_min.get(name, np.nan), aggregate_set))
    table = pd.concat(tables, ignore_index=True)
    sets = list(dict.fromkeys(c.group for c in cases)) + ["all presets", "all robustness"]
    held_out_min = (time.perf_counter() - t_start) / 60
    if a.whole_frame:  # the held-out sets' tables first: a whole frame may run for long
        print(f"\nHeld-out sets ({held_out_min:.1f} min so far):\n\n{markdown(compact(table))}\n\n"
              f"{markdown(table[COLUMNS])}\n", flush=True)
        del cases, train, val
        wf, wf_notes = whole_frame(a.frame_shape, list(objs), spec, train_min, out_dir)
        notes += wf_notes
        if wf is not None:
            table = pd.concat([table, wf], ignore_index=True)
            sets += list(dict.fromkeys(wf["set"]))
    table["order"] = table["set"].map({s: i for i, s in enumerate(sets)})
    table = table.sort_values(["order"], kind="stable")[COLUMNS]

    print(f"\nHeld-out volumes: {len(a.presets) * len(a.layouts) * a.n} preset frames ({', '.join(a.presets)}; "
          f"{', '.join(a.layouts)} layouts, {a.n} per preset and layout, {shape} px, voxel 0.3 x 0.13 x 0.13 µm; "
          f"seeds from {TEST_SEED})" + (", the robustness panel (one volume per condition)" if a.robustness else "")
          + (f", one whole frame {tuple(a.frame_shape)} px (real layout, mid SNR), each method in a fresh process"
             if a.whole_frame else "") + f". Match 0.5 µm; close_recall: spots with a neighbour 0.3-0.6 µm away; "
          f"seconds per volume (prediction only); peak_gb: the whole-frame process's peak resident memory; "
          f"peers trained {a.steps} steps x batch 2 on {a.train_n} simulations {tshape} px. Held-out sets "
          f"{held_out_min:.1f} min, total {(time.perf_counter() - t_start) / 60:.1f} min.\n")
    print(markdown(compact(table)))
    print()
    print(markdown(table))
    for n in notes:
        print(f"\n- {n}")
    csv = out_dir / "peers.csv"
    with atomic_write(csv, "w") as f:
        table.to_csv(f, index=False)
    print(f"\nsaved {csv}")
    if a.png:
        plot(table, list(objs), a.png)
    return 0


def plot(table, methods, path):
    """F1 and RMSE per set (one line per method), and the whole frame's seconds against peak memory."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kt_stardist.io import atomic_path

    fig, ax = plt.subplots(1, 3, figsize=(16, 4.5), gridspec_kw=dict(width_ratios=(2, 2, 1)))
    sets = [s for s in dict.fromkeys(table.set) if not str(s).startswith(FRAME_SET)]
    for i, name in enumerate(methods):  # one colour per method in every panel
        s = table[table.method == name].set_index("set").reindex(sets)
        ax[0].plot(range(len(sets)), s.f1, "o-", color=f"C{i}", label=name)
        ax[1].plot(range(len(sets)), s.rmse_nm, "o-", color=f"C{i}", label=name)
        fr = table[(table.method == name) & table.set.astype(str).str.startswith(FRAME_SET)]
        if len(fr):
            ax[2].plot(fr.seconds, fr.peak_gb, "o", color=f"C{i}", label=name)
    for a_ in ax[:2]:
        a_.set_xticks(range(len(sets)), sets, rotation=60, ha="right", fontsize=7)
    ax[0].set(ylabel="F1 (0.5 µm)", ylim=(0, 1.02))
    ax[1].set(ylabel="RMSE (nm)")
    ax[2].set(xlabel="seconds per whole frame", ylabel="peak memory (GB)", xscale="log", ylim=(0, None))
    ax[2].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    sys.exit(main())
