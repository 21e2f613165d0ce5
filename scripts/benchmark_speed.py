"""Speed and memory of ``kt_stardist.predict.detect`` vs StarDist's own tiled ``predict_instances`` on a
whole frame (default 61 × 1000 × 1000 px, real kinetochore layout), same model, same normalisation.

Each method runs in its own subprocess; peak memory is that process's max RSS (whole process:
TensorFlow, the input volume and everything). Detections are compared with
``evaluate.match_points`` (F1 between the two point sets, and each against the truth).

    python scripts/benchmark_speed.py [--model DIR] [--shape 61 1000 1000] [--methods kt,stardist:1x4x4] [--repeat 3]

With ``--repeat N`` every method runs N times, each in a fresh process (cold, as a command-line
call), and the table shows the median seconds and the range; the runs alternate between the
methods so that a slow spell of the machine hits all of them.

StarDist's own n_tiles guess for a 61 x 1000 x 1000 frame is (3, 13, 13): 507 tiles, each with
a halo of the receptive field; an explicit ``stardist:1x4x4`` tiling is much faster (and needs
more memory), so the default runs both.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def worker(method, model_dir, vol_path, out_path):
    import resource

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from kt_stardist import predict as P
    from kt_stardist.normalize import normalize

    vol = np.load(vol_path)
    model = P.load(model_dir)
    t0 = time.perf_counter()
    extra = {}
    if method == "kt":
        det = P.detect(model, vol[..., None])
        pts = det.points[["z", "y", "x"]].to_numpy()
        d = det.diagnostics
        extra = dict(blocks=d["n_blocks"], voxels_read=d["n_voxels_read"] / vol.size,
                     **{f"s_{k}": v for k, v in d["seconds"].items()})
    else:
        sd = model.stardist
        x = normalize(vol)
        # "stardist": StarDist's own guess of n_tiles; "stardist:1x4x4": the given tiling
        n_tiles = tuple(int(n) for n in method.split(":")[1].split("x")) if ":" in method else sd._guess_n_tiles(x)
        _, polys = sd.predict_instances(x, axes="ZYX", n_tiles=n_tiles, show_tile_progress=False)
        pts = np.asarray(polys["points"], float)
        extra = dict(n_tiles=str(tuple(int(n) for n in n_tiles)))
    dt = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    np.save(out_path + ".npy", pts)
    json.dump(dict(seconds=dt, peak_gb=peak_gb, n=len(pts), **extra), open(out_path, "w"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: shipped)")
    ap.add_argument("--shape", nargs=3, type=int, default=[61, 1000, 1000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="kt,stardist:1x4x4,stardist",
                    help="comma-separated: kt, stardist (StarDist's guessed n_tiles), stardist:ZxYxX (given n_tiles)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method (median and range reported)")
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._worker:
        return worker(a._worker[0], a.model, a._worker[1], a._worker[2])

    import _simdata
    from kt_stardist.evaluate import match_points

    vox = (0.3, 0.13, 0.13)
    vol, truth = _simdata.volume(tuple(a.shape), a.seed, snr="mid", layout="real")
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        vp = os.path.join(tmp, "vol.npy")
        np.save(vp, vol.astype(np.float32))
        del vol
        for rep in range(a.repeat):
            for m in a.methods.split(","):
                out = os.path.join(tmp, m.replace(":", "_") + ".json")
                cmd = [sys.executable, __file__, "--_worker", m, vp, out] + (["--model", a.model] if a.model else [])
                print(f"running {m} ({rep + 1}/{a.repeat}) ...", file=sys.stderr, flush=True)
                subprocess.run(cmd, check=True)
                r = json.load(open(out))
                r["pts"] = np.load(out + ".npy")
                print(f"{m}: {r['seconds']:.1f} s, peak {r['peak_gb']:.2f} GB, {r['n']} points, "
                      f"F1 vs truth {match_points(truth, r['pts'], vox, 0.5).f1:.3f}", file=sys.stderr, flush=True)
                runs = res.setdefault(m, dict(r, all_seconds=[]))["all_seconds"]
                runs.append(r["seconds"])
                res[m]["peak_gb"] = max(res[m]["peak_gb"], r["peak_gb"])
        for r in res.values():
            r["seconds"] = float(np.median(r["all_seconds"]))
    print(f"\nframe {tuple(a.shape)} px, {len(truth)} true spots, model {a.model or 'shipped'}")
    print(f"{'method':<34}{'seconds':>9}{'peak GB':>9}{'points':>8}{'F1 truth':>10}{'RMSE nm':>9}  notes"
          + ("  (seconds: median of runs, range in notes)" if a.repeat > 1 else ""))
    for m, r in res.items():
        mt = match_points(truth, r["pts"], vox, 0.5)
        name = "kt_stardist.predict (screen+blocks)" if m == "kt" else "StarDist predict_instances tiled"
        notes = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                          if k not in ("seconds", "peak_gb", "n", "pts", "all_seconds"))
        if len(r["all_seconds"]) > 1:
            notes += f", runs {min(r['all_seconds']):.1f}-{max(r['all_seconds']):.1f} s"
        print(f"{name:<34}{r['seconds']:>9.1f}{r['peak_gb']:>9.2f}{r['n']:>8}{mt.f1:>10.3f}{mt.rmse_nm:>9.1f}  {notes}")
    for m in [m for m in res if m != "kt" and "kt" in res]:
        mm = match_points(res[m]["pts"], res["kt"]["pts"], vox, 0.5)
        print(f"kt vs {m} ({res[m]['n_tiles']} tiles): speed-up {res[m]['seconds'] / res['kt']['seconds']:.1f}x; "
              f"F1 between the two point sets {mm.f1:.3f} (tp {mm.tp}, only-stardist {mm.fn}, only-kt {mm.fp})")


if __name__ == "__main__":
    main()
