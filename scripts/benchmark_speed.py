"""Speed and memory of ``kt_stardist.predict.detect`` vs StarDist's own tiled ``predict_instances`` on a
whole frame (default 61 × 1000 × 1000 px, real kinetochore layout), same model, same normalisation.

Each method runs in its own subprocess; peak memory is that process's own high-water mark (VmHWM; whole process:
TensorFlow, the input volume and everything). Detections are compared with
``evaluate.match_points`` (F1 between the two point sets, and each against the truth).

    python scripts/benchmark_speed.py [--model DIR] [--shape 61 1000 1000] [--methods kt,stardist:1x4x4] [--repeat 3]

With ``--repeat N`` every method runs N times, each in a fresh process (cold, as a command-line
call), and the table shows the median seconds and the range; the runs alternate between the
methods so that a slow spell of the machine hits all of them.

Whole-movie mode (``--frames N``): a TZYX uint16 ImageJ TIFF of N simulated time-lapse frames
(default shape, real layout) and its first frame alone are written, then each is run as a user
runs it, ``kt-stardist predict MOVIE --out points.csv`` in a fresh process (start-up included),
beside stock StarDist in a fresh process (import, model load, then per frame ``normalize`` and
``predict_instances`` with n_tiles (1, 4, 4)) on the same files, in the same run. Per run = the
1-frame time; per extra frame = (T(N frames) - T(1 frame)) / (N - 1). Stock StarDist runs
``--stock-frames`` frames (default 2) and its per-movie time is extrapolated (labelled so).
``--compare-src DIR`` also runs ``kt-stardist`` from another source tree (e.g. an older commit
checked out with ``git worktree add``) and reports the F1 between its points and this tree's, and
the new / old ratio per stage; ``--src DIR`` runs "this tree" from a given source tree too (e.g.
a commit, without uncommitted work in the checkout)::

    python scripts/benchmark_speed.py --frames 18 [--stock-frames 2] [--compare-src /tmp/old] [--src /tmp/new]

Stock StarDist imports TensorFlow with TensorFlow's own settings, as a user's script does;
``--stock-tf-settings`` gives it kt-stardist's instead
(:data:`kt_stardist.model.stardist_backend.TF_ENVIRONMENT`: oneDNN, which TensorFlow turns on
by itself only on CPUs with AVX-512 neural-network instructions), so that both sides run the
same convolutions.

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


def stock_tensorflow(same_settings):
    """Import TensorFlow for stock StarDist: with its own settings (as a user's script does;
    kt-stardist's loader then leaves them) or, ``same_settings``, with kt-stardist's."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not same_settings:
        import tensorflow  # noqa: F401


def worker(method, model_dir, vol_path, out_path, stock_tf_settings=False):
    from benchmark_peers import peak_memory_gb  # this process's own high-water mark (not ru_maxrss)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if method != "kt":
        stock_tensorflow(stock_tf_settings)
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
    peak_gb = peak_memory_gb()
    np.save(out_path + ".npy", pts)
    json.dump(dict(seconds=dt, peak_gb=peak_gb, n=len(pts), **extra), open(out_path, "w"))


def measure(cmd, env=None, cwd=None):
    """Run ``cmd`` in a child process (in folder ``cwd``: a source tree's ``python -m`` must not
    pick up the package from the current folder): (seconds, peak RSS GB of the child)."""
    import resource

    code = ("import json, resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:]); dt = time.perf_counter() - t; "
            "print(json.dumps(dict(rc=r.returncode, seconds=dt, "
            "peak_gb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2)))")
    p = subprocess.run([sys.executable, "-c", code, *cmd], env=env, cwd=cwd, capture_output=True, text=True)
    del resource
    r = json.loads(p.stdout.strip().splitlines()[-1])
    if r["rc"] != 0:
        raise RuntimeError(f"{cmd[:4]} failed (exit {r['rc']}):\n{p.stderr[-3000:]}")
    return r["seconds"], r["peak_gb"]


def write_movie(path, n_frames, shape, seed, batch=2):
    """A TZYX uint16 ImageJ TIFF of ``n_frames`` simulated time-lapse frames (``shape`` z, y, x px,
    real layout, mid SNR; simulated ``batch`` frames at a time to bound memory) and its truth
    (DataFrame t, z, y, x px)."""
    import pandas as pd
    import tifffile

    from kt_stardist import simulate

    vox = (0.3, 0.13, 0.13)
    mm = tifffile.memmap(path, shape=(n_frames,) + tuple(shape), dtype=np.uint16, imagej=True,
                         resolution=(1 / vox[2], 1 / vox[1]),
                         metadata=dict(axes="TZYX", spacing=vox[0], unit="um"))
    truth = []
    for t0 in range(0, n_frames, batch):
        n = min(batch, n_frames - t0)
        img, df = simulate.simulate_timelapse(n, tuple(shape), seed=seed + t0, snr="mid", layout="real",
                                              voxel_size_um=vox)
        mm[t0:t0 + n] = np.clip(np.round(img[..., 0]), 0, 65535).astype(np.uint16)
        truth.append(df.assign(t=df["t"] + t0))
        del img
    mm.flush()
    del mm
    return pd.concat(truth, ignore_index=True)


def stock_worker(model_dir, movie, n_frames, out_path, stock_tf_settings=False):
    """Stock StarDist on the first ``n_frames`` of a movie file: points per frame (t, z, y, x)."""
    stock_tensorflow(stock_tf_settings)
    import tifffile

    from kt_stardist import predict as P
    from kt_stardist.normalize import normalize

    sd = P.load(model_dir).stardist
    data = tifffile.memmap(movie, mode="r")
    data = data if data.ndim == 4 else data[None]
    rows = []
    for t in range(int(n_frames)):
        x = normalize(np.asarray(data[t]))
        _, polys = sd.predict_instances(x, axes="ZYX", n_tiles=(1, 4, 4), show_tile_progress=False)
        p = np.asarray(polys["points"], float).reshape(-1, 3)
        rows.append(np.column_stack([np.full(len(p), t), p]))
    np.save(out_path, np.concatenate(rows))


def movie_main(a):
    """Whole-movie mode (module docstring)."""
    import pandas as pd

    from kt_stardist.evaluate import match_points

    vox = (0.3, 0.13, 0.13)
    tmp = os.path.abspath(tempfile.mkdtemp(prefix="kt_speed_") if a.workdir is None else a.workdir)
    os.makedirs(tmp, exist_ok=True)
    movie, one = os.path.join(tmp, f"movie_{a.frames}.tif"), os.path.join(tmp, "movie_1.tif")
    truth_csv = os.path.join(tmp, f"truth_{a.frames}.csv")
    if not (os.path.exists(movie) and os.path.exists(truth_csv)):
        print(f"writing {a.frames} simulated frames {tuple(a.shape)} ...", file=sys.stderr, flush=True)
        write_movie(movie, a.frames, a.shape, a.seed).to_csv(truth_csv, index=False)
    import tifffile

    with tifffile.TiffFile(movie) as f:
        first = f.asarray(key=range(a.shape[0]))
    tifffile.imwrite(one, first.reshape(tuple(a.shape)), imagej=True, resolution=(1 / vox[2], 1 / vox[1]),
                     metadata=dict(axes="ZYX", spacing=vox[0], unit="um"))
    del first
    truth = pd.read_csv(truth_csv)
    model = ["--model", a.model] if a.model else []
    trees = {"kt": a.src} if not a.compare_src else {"kt": a.src, "kt (compare-src)": a.compare_src}
    res = {}

    def env_of(src):
        if not src:
            return None
        return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.abspath(src)] + (
            [os.environ["PYTHONPATH"]] if "PYTHONPATH" in os.environ else [])))

    where = {name: subprocess.run([sys.executable, "-c", "import kt_stardist; print(kt_stardist.__file__)"],
                                  env=env_of(src), cwd=tmp, capture_output=True, text=True).stdout.strip()
             for name, src in trees.items()}
    for rep in range(a.repeat):
        for name, src in trees.items():
            for n, path in ((1, one), (a.frames, movie)):
                out = os.path.join(tmp, f"{name.split()[0]}{'_cmp' if '(' in name else ''}_{n}.csv")
                env = env_of(src)
                cmd = [sys.executable, "-m", "kt_stardist", "--quiet", "predict", path, "--out", out] + model
                print(f"{name}: {n} frame(s) ({rep + 1}/{a.repeat}) ...", file=sys.stderr, flush=True)
                sec, gb = measure(cmd, env, cwd=tmp)
                r = res.setdefault((name, n), dict(seconds=[], peak_gb=0.0))
                r["seconds"].append(sec)
                r["peak_gb"] = max(r["peak_gb"], gb)
                r["csv"] = out
                if n == a.frames:
                    rj = json.load(open(out[:-4] + ".run.json"))
                    r["stages"] = rj.get("seconds_per_frame", {})
                print(f"  {sec:.1f} s, peak {gb:.2f} GB", file=sys.stderr, flush=True)
        if a.stock_frames:
            for n in sorted({1, a.stock_frames}):
                out = os.path.join(tmp, f"stock_{n}.npy")
                cmd = [sys.executable, os.path.abspath(__file__), "--_stock", movie, str(n), out] + model + \
                    (["--stock-tf-settings"] if a.stock_tf_settings else [])
                print(f"stock StarDist: {n} frame(s) ({rep + 1}/{a.repeat}) ...", file=sys.stderr, flush=True)
                sec, gb = measure(cmd, cwd=tmp)
                r = res.setdefault(("stock", n), dict(seconds=[], peak_gb=0.0))
                r["seconds"].append(sec)
                r["peak_gb"] = max(r["peak_gb"], gb)
                r["npy"] = out
                print(f"  {sec:.1f} s, peak {gb:.2f} GB", file=sys.stderr, flush=True)

    def med(key):
        return float(np.median(res[key]["seconds"]))

    def per_frame(name, n):
        return (med((name, n)) - med((name, 1))) / (n - 1) if n > 1 else float("nan")

    def f1_truth(pts):
        return np.mean([match_points(truth[truth.t == t][["z", "y", "x"]].to_numpy(float), pts[pts[:, 0] == t, 1:],
                                     vox, 0.5).f1 for t in np.unique(pts[:, 0])])

    def kt_points(csv):
        return pd.read_csv(csv)[["t", "z", "y", "x"]].to_numpy(float)

    print(f"\nmovie {a.frames} x {tuple(a.shape)} px (TZYX uint16 TIFF), real layout, model {a.model or 'shipped'}, "
          f"{os.cpu_count()} CPUs; whole processes, medians of {a.repeat} run(s); "
          + "; ".join(f"{k}: {os.path.dirname(os.path.dirname(v))}" for k, v in where.items()))
    print("| method | 1-frame run (s) | per extra frame (s) | whole movie (s) | peak GB | F1 vs truth |")
    print("|---|---|---|---|---|---|")
    for name in trees:
        n = a.frames
        print(f"| `kt-stardist predict`{' (' + name.split('(')[1][:-1] + ')' if '(' in name else ''} | "
              f"{med((name, 1)):.1f} | {per_frame(name, n):.2f} | {med((name, n)):.1f} | "
              f"{max(res[(name, 1)]['peak_gb'], res[(name, n)]['peak_gb']):.2f} | "
              f"{f1_truth(kt_points(res[(name, n)]['csv'])):.3f} |")
    if a.stock_frames:
        ns = a.stock_frames
        pf = per_frame("stock", ns) if ns > 1 else med(("stock", 1)) - 7.0
        whole = med(("stock", 1)) + pf * (a.frames - 1)
        label = "" if ns == a.frames else f" (extrapolated from {ns} frames)"
        tf_note = "kt-stardist's TensorFlow settings" if a.stock_tf_settings else "TensorFlow's own settings"
        print(f"| stock StarDist `predict_instances` n_tiles (1, 4, 4), {tf_note} | {med(('stock', 1)):.1f} | {pf:.2f} | "
              f"{whole:.1f}{label} | {max(res[('stock', k)]['peak_gb'] for k in {1, ns}):.2f} | "
              f"{f1_truth(np.load(res[('stock', ns)]['npy'])):.3f} |")
        kt1, ktn = med(("kt", 1)), per_frame("kt", a.frames)
        print(f"\nspeed-up vs stock: {med(('stock', 1)) / kt1:.1f}x per 1-frame run, {pf / ktn:.1f}x per extra frame, "
              f"{whole / med(('kt', a.frames)):.1f}x per {a.frames}-frame movie")
    if a.compare_src:
        new, old = kt_points(res[("kt", a.frames)]["csv"]), kt_points(res[("kt (compare-src)", a.frames)]["csv"])
        f1 = [match_points(old[old[:, 0] == t, 1:], new[new[:, 0] == t, 1:], vox, 0.5) for t in range(a.frames)]
        tp, fp, fn = (sum(getattr(m, k) for m in f1) for k in ("tp", "fp", "fn"))
        same = len(old) == len(new) and np.allclose(np.sort(old, 0), np.sort(new, 0), atol=1e-6)
        print(f"\nthis tree vs --compare-src: F1 {2 * tp / max(2 * tp + fp + fn, 1):.4f} (tp {tp}, only new {fp}, "
              f"only old {fn}); identical points: {same}")
    stages = res[("kt", a.frames)].get("stages", {})
    if stages:
        cmp = res.get(("kt (compare-src)", a.frames), {}).get("stages", {})
        print("\nper stage, median seconds per frame (run.json `seconds_per_frame`)")
        print("| stage | this tree |" + (" compare-src | ratio |" if cmp else ""))
        print("|---|---|" + ("---|---|" if cmp else ""))
        for k in sorted(set(stages) | set(cmp)):
            new, old = stages.get(k, float("nan")), cmp.get(k, float("nan"))
            print(f"| {k} | {new:.2f} |" + (f" {old:.2f} | {new / old if old else float('nan'):.2f} |" if cmp else ""))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: shipped)")
    ap.add_argument("--shape", nargs=3, type=int, default=[61, 1000, 1000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", default="kt,stardist:1x4x4,stardist",
                    help="comma-separated: kt, stardist (StarDist's guessed n_tiles), stardist:ZxYxX (given n_tiles)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per method (median and range reported)")
    ap.add_argument("--frames", type=int, default=None,
                    help="whole-movie mode: N simulated frames, `kt-stardist predict` per run and per frame")
    ap.add_argument("--stock-frames", type=int, default=2,
                    help="movie mode: frames stock StarDist runs (0: none; fewer than --frames: extrapolated)")
    ap.add_argument("--compare-src", default=None, help="movie mode: also run kt-stardist from this source tree")
    ap.add_argument("--src", default=None,
                    help="movie mode: run 'this tree' from this source tree (default: the installed kt_stardist)")
    ap.add_argument("--workdir", default=None, help="movie mode: folder for the movie and outputs (kept)")
    ap.add_argument("--stock-tf-settings", action="store_true",
                    help="stock StarDist with kt-stardist's TensorFlow settings (oneDNN) instead of TensorFlow's own")
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_stock", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._stock:
        return stock_worker(a.model, a._stock[0], a._stock[1], a._stock[2], a.stock_tf_settings)
    if a.frames:
        return movie_main(a)
    if a._worker:
        return worker(a._worker[0], a.model, a._worker[1], a._worker[2], a.stock_tf_settings)

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
                cmd = [sys.executable, __file__, "--_worker", m, vp, out] + (["--model", a.model] if a.model else []) + \
                    (["--stock-tf-settings"] if a.stock_tf_settings else [])
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
