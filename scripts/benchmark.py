"""Accuracy of kt-stardist vs classical detectors on held-out simulated whole frames.

Methods, side by side on the same frames: the model through ``kt_stardist.predict.detect`` (what
``kt-stardist predict`` runs: stored thresholds, the probability threshold adapted per frame,
no tuning on the test frames); the same with the stored threshold only (no adaptation, no
confirm band: ``predict --stored-threshold``); LoG
(``kt_stardist.baselines.log_detect``, threshold tuned on separate simulated frames, refined by
the same Gaussian fits); Big-FISH ``detect_spots`` (automatic threshold). Frames come from
``kt_stardist.train.evaluation.evaluation_cases`` (every SNR preset, random plate and real
layouts, seeds disjoint from training) and are scored by ``evaluate_detector`` (0.5 µm) — the
same cases and scoring as the model folder's ``evaluation.csv``. Also: recall on close sister
pairs (0.3–0.6 µm apart), and a rescaling check on 0.3 × 0.07 × 0.07 µm data (our zoom vs
StarDist's ``predict_instances(scale=...)``).

    python scripts/benchmark.py [--model DIR] [--n 1] [--shape 61 512 512] [--png benchmark_predict.png]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

VOX = (0.3, 0.13, 0.13)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=1, help="test frames per SNR preset and layout")
    ap.add_argument("--shape", nargs=3, type=int, default=[61, 512, 512])
    ap.add_argument("--presets", nargs="+", default=["easy", "mid", "hard", "very_hard"])
    ap.add_argument("--png", default="benchmark_predict.png")
    ap.add_argument("--no-bigfish", action="store_true")
    ap.add_argument("--rescale-shape", nargs=3, type=int, default=[32, 160, 160],
                    help="volumes (px at the model's voxel size) of the 0.07 µm rescaling check")
    ap.add_argument("--skip-rescale", action="store_true")
    a = ap.parse_args(argv)

    import pandas as pd

    from kt_stardist import baselines as B
    from kt_stardist.model import load_model
    from kt_stardist.predict import detect, zoom_factors
    from kt_stardist.settings import stored_threshold_only
    from kt_stardist.train.evaluation import evaluate_detector, evaluation_cases, summarize

    fixed = stored_threshold_only()

    model = load_model(a.model)
    shape = tuple(a.shape)
    cases = evaluation_cases(a.presets, ("plate", "real"), a.n, shape, seed=0)
    tune = evaluation_cases(a.presets, ("plate",), 2, shape, seed=1000)  # LoG tuning: other seeds
    log_thr, log_f1 = B.tune_log_threshold([c.image[..., 0] for c in tune], [c.truth for c in tune], VOX)
    print(f"LoG threshold {log_thr:.4f} (tuning F1 {log_f1:.3f} on {len(tune)} separate frames)", file=sys.stderr)
    methods = {
        "kt-stardist": lambda c: detect(model, c.image, c.voxel_size_um).points[["z", "y", "x"]],
        "kt-stardist, stored threshold": lambda c: detect(model, c.image, c.voxel_size_um, fixed).points[["z", "y", "x"]],
        "LoG (tuned)": lambda c: B.log_detect(c.image[..., 0], c.voxel_size_um, threshold=log_thr)[["z", "y", "x"]],
    }
    if not a.no_bigfish:
        methods["Big-FISH (auto)"] = lambda c: B.bigfish_detect(c.image[..., 0], c.voxel_size_um)[["z", "y", "x"]]
    tables = []
    for name, fn in methods.items():
        print(f"running {name} on {len(cases)} frames ...", file=sys.stderr, flush=True)
        tables.append(summarize(evaluate_detector(fn, cases)).assign(method=name))
    table = pd.concat(tables, ignore_index=True)
    order = {p: i for i, p in enumerate(a.presets)}
    table = table.sort_values(["group", "method"], key=lambda s: s.map(order) if s.name == "group" else s,
                              kind="stable")
    pd.set_option("display.width", 160)
    print(f"\n{len(cases)} held-out frames {shape} px ({a.n} per preset and layout), voxel {VOX} µm, "
          f"match cutoff 0.5 µm; seconds = mean per frame")
    print(table[["group", "method", "precision", "recall", "f1", "rmse_nm", "close_recall", "seconds"]]
          .round(3).to_string(index=False))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for name in methods:
        s = table[table.method == name]
        ax[0].plot(s.group, s.f1, "o-", label=name)
        ax[1].plot(s.group, s.rmse_nm, "o-", label=name)
    ax[0].set(ylabel="F1 (0.5 µm)", xlabel="SNR preset", ylim=(0, 1.02))
    ax[1].set(ylabel="RMSE (nm)", xlabel="SNR preset")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(a.png, dpi=120)
    print(f"\nsaved {a.png}")

    if a.skip_rescale:
        return 0
    # rescaling: 0.3 x 0.07 x 0.07 µm data
    from kt_stardist.evaluate import match_points
    from kt_stardist.normalize import normalize

    vs2 = (0.3, 0.07, 0.07)
    f = zoom_factors(vs2, model.voxel_size_um)
    rs = tuple(a.rescale_shape)
    sh2 = (rs[0], int(rs[1] / f[1]), int(rs[2] / f[2]))
    res = {"ours (zoom, refine on raw)": [], "StarDist scale=": []}
    for c in evaluation_cases(("mid",), ("plate",), max(a.n, 1), sh2, seed=500, voxel_size_um=vs2):
        d1 = detect(model, c.image, vs2).points[["z", "y", "x"]].to_numpy(float)
        _, polys = model.stardist.predict_instances(normalize(c.image[..., 0], voxel_size_um=vs2), axes="ZYX",
                                                    scale=f, show_tile_progress=False)
        res["ours (zoom, refine on raw)"].append(match_points(c.truth, d1, vs2, 0.5))
        res["StarDist scale="].append(match_points(c.truth, np.asarray(polys["points"], float), vs2, 0.5))
    print(f"\nvoxel {vs2} µm ({len(res['StarDist scale='])} volumes {sh2} px, mid SNR):")
    for k, ms in res.items():
        tp, fp, fn = sum(m.tp for m in ms), sum(m.fp for m in ms), sum(m.fn for m in ms)
        sq = sum(np.sum(np.square(m.dist_um)) for m in ms)
        print(f"  {k:<28} F1 {2 * tp / max(2 * tp + fp + fn, 1):.3f}  RMSE {1000 * np.sqrt(sq / max(tp, 1)):.1f} nm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
