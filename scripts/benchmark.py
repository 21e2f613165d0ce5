"""Accuracy of kt-stardist vs classical detectors on held-out simulated volumes.

Methods: the model (``kt_stardist.predict.predict_volume``, stored thresholds); LoG
(``kt_stardist.baselines.log_detect``, threshold tuned on separate simulated training volumes);
Big-FISH ``detect_spots`` (automatic threshold). Every SNR preset, random sister-pair layouts and
layouts from real positions; scored with ``evaluate.match_points`` at 0.5 µm. Also: recall on
close sister pairs (0.3–0.6 µm apart), and a rescaling check on 0.3 × 0.07 × 0.07 µm data
(our zoom vs StarDist's ``predict_instances(scale=...)``).

    python scripts/benchmark.py --model DIR [--n 3] [--png benchmark_predict.png]
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
sys.path.insert(0, str(HERE))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def close_pair_mask(truth, vox, lo=0.3, hi=0.6):
    from scipy.spatial import cKDTree

    if len(truth) < 2:
        return np.zeros(len(truth), bool)
    d, _ = cKDTree(truth * np.asarray(vox)).query(truth * np.asarray(vox), k=2)
    return (d[:, 1] >= lo) & (d[:, 1] <= hi)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=3, help="test volumes per SNR and layout")
    ap.add_argument("--shape", nargs=3, type=int, default=[32, 160, 160])
    ap.add_argument("--png", default="benchmark_predict.png")
    ap.add_argument("--no-bigfish", action="store_true")
    ap.add_argument("--rescale-shape", nargs=3, type=int, default=[32, 160, 160],
                    help="volumes (px at the model's voxel size) of the 0.07 µm rescaling check")
    ap.add_argument("--only-rescale", action="store_true", help="run the rescaling check only")
    a = ap.parse_args()

    import pandas as pd

    import _simdata
    from kt_stardist import baselines as B
    from kt_stardist import predict as P
    from kt_stardist.evaluate import match_points

    vox = _simdata.VOX
    snrs = list(_simdata.PRESETS)
    shape = tuple(a.shape)
    model = P.load(a.model)

    if not a.only_rescale:
        # LoG threshold from separate training volumes (seeds 1000+)
        tr = [_simdata.volume(shape, 1000 + i, snr=s, layout="random") for i, s in enumerate(snrs * 2)]
        log_thr, log_f1 = B.tune_log_threshold([v for v, _ in tr], [p for _, p in tr], vox)
        print(f"LoG threshold {log_thr:.4f} (training F1 {log_f1:.3f})", file=sys.stderr)

        methods = {
            "kt-stardist": lambda v: P.predict_volume(model, v[..., None], vox),
            "LoG (tuned)": lambda v: B.log_detect(v, vox, threshold=log_thr),
        }
        if not a.no_bigfish:
            methods["Big-FISH (auto)"] = lambda v: B.bigfish_detect(v, vox)
        rows, close = [], {m: [0, 0] for m in methods}
        for snr in snrs:
            for layout in ("random", "real"):
                for i in range(a.n):
                    vol, truth = _simdata.volume(shape, i, snr=snr, layout=layout)
                    cm = close_pair_mask(truth, vox)
                    for name, fn in methods.items():
                        t0 = time.perf_counter()
                        df = fn(vol)
                        dt = time.perf_counter() - t0
                        m = match_points(truth, df[["z", "y", "x"]].to_numpy(float), vox, 0.5)
                        hit = np.zeros(len(truth), bool)
                        hit[np.asarray(m.gt_idx, int)] = True
                        close[name][0] += int(hit[cm].sum())
                        close[name][1] += int(cm.sum())
                        rows.append(dict(method=name, snr=snr, layout=layout, tp=m.tp, fp=m.fp, fn=m.fn,
                                         sq=np.sum(np.square(m.dist_um)) if m.tp else 0.0, s=dt))
        df = pd.DataFrame(rows)

        def agg(g):
            tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
            return pd.Series(dict(precision=tp / max(tp + fp, 1), recall=tp / max(tp + fn, 1),
                                  F1=2 * tp / max(2 * tp + fp + fn, 1),
                                  RMSE_nm=1000 * np.sqrt(g.sq.sum() / max(tp, 1)), seconds=g.s.mean()))

        table = df.groupby(["snr", "method"], sort=False).apply(agg, include_groups=False)
        allsnr = df.groupby("method", sort=False).apply(agg, include_groups=False)
        pd.set_option("display.width", 140)
        print(f"\n{len(df) // len(methods)} held-out volumes {shape} px, voxel {vox} µm, match cutoff 0.5 µm; "
              f"seconds = mean per volume")
        print(table.round(3).to_string())
        print("\nall SNR:")
        print(allsnr.round(3).to_string())
        print("\nrecall on close sister pairs (nearest neighbour 0.3-0.6 µm):")
        for k, (h, n) in close.items():
            print(f"  {k:<18} {h}/{n} = {h / max(n, 1):.3f}")

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        t = table.reset_index()
        for name in methods:
            s = t[t.method == name]
            ax[0].plot(s.snr, s.F1, "o-", label=name)
            ax[1].plot(s.snr, s.RMSE_nm, "o-", label=name)
        ax[0].set(ylabel="F1 (0.5 µm)", xlabel="SNR preset", ylim=(0, 1.02))
        ax[1].set(ylabel="RMSE (nm)", xlabel="SNR preset")
        ax[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.png, dpi=120)
        print(f"\nsaved {a.png}")

    # rescaling: 0.3 x 0.07 x 0.07 µm data
    vs2 = (0.3, 0.07, 0.07)
    f = P.zoom_factors(vs2, P.model_facts(model)["voxel_size_um"])
    rs = tuple(a.rescale_shape)
    sh2 = (rs[0], int(rs[1] / f[1]), int(rs[2] / f[2]))
    res = {"ours (zoom, refine on raw)": [], "StarDist scale=": []}
    for i in range(a.n):
        vol, truth = _simdata.volume(sh2, 500 + i, snr="mid", layout="random", vox=vs2)
        d1 = P.predict_volume(model, vol[..., None], vs2)[["z", "y", "x"]].to_numpy(float)
        from kt_stardist.normalize import normalize
        _, polys = model.predict_instances(normalize(vol, voxel_size_um=vs2), axes="ZYX", scale=f,
                                           show_tile_progress=False)
        d2 = np.asarray(polys["points"], float)
        res["ours (zoom, refine on raw)"].append(match_points(truth, d1, vs2, 0.5))
        res["StarDist scale="].append(match_points(truth, d2, vs2, 0.5))
    print(f"\nvoxel {vs2} µm ({a.n} volumes {sh2} px, mid SNR):")
    for k, ms in res.items():
        tp, fp, fn = sum(m.tp for m in ms), sum(m.fp for m in ms), sum(m.fn for m in ms)
        sq = sum(np.sum(np.square(m.dist_um)) for m in ms)
        print(f"  {k:<28} F1 {2 * tp / max(2 * tp + fp + fn, 1):.3f}  RMSE {1000 * np.sqrt(sq / max(tp, 1)):.1f} nm")


if __name__ == "__main__":
    main()
