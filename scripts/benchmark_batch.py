"""Batch prediction throughput: frames per minute with 1 and 2 dask workers on this machine, and
what a cluster of N workers would do for a 100-cell × 18-frame study (on paper).

A simulated time-lapse (default 4 frames of 61 × 1000 × 1000 px, real kinetochore layout, mid
SNR, EGFP) is written as a uint16 TIFF; ``pipeline.run`` (what ``kt-stardist predict --out-dir`` runs) then predicts every frame
in-process (1 worker: no dask) and on a dask LocalCluster of 2 worker processes, each from an
empty output folder. Both runs must give the same points. Each worker process loads the model
once and reads its frames from the file itself.

    python scripts/benchmark_batch.py [--model DIR] [--frames 4] [--shape 61 1000 1000]

The projection assumes what the batch design gives: frames are independent tasks, so N workers
(each with the cores of one measured worker) finish N times as many frames per minute, plus the
model load once per worker. Machines with more cores per worker are faster per frame.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the shipped model)")
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=(61, 1000, 1000), metavar=("Z", "Y", "X"))
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--cells", type=int, default=100)
    ap.add_argument("--frames-per-cell", type=int, default=18)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args(argv)

    import pandas as pd

    from kt_stardist import io, pipeline, simulate

    with tempfile.TemporaryDirectory(prefix="kt-batch-bench-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        movie, truth = simulate.simulate_timelapse(a.frames, tuple(a.shape), seed=a.seed, snr="mid", channels=1)
        path = tmp / "cell.tif"
        io.write_image(path, np.clip(np.asarray(movie), 0, 65535).astype(np.uint16), axes="TZYXC")
        del movie
        print(f"simulated {a.frames} frames of {tuple(a.shape)} px in {time.perf_counter() - t0:.0f} s "
              f"({path.stat().st_size / 1e9:.2f} GB on disk)", flush=True)

        rows, points = [], {}
        for w in a.workers:
            out = tmp / f"out-w{w}"
            t1 = time.perf_counter()
            s = pipeline.run([str(path)], out_dir=out, model_dir=a.model, workers=w, progress=False)
            dt = time.perf_counter() - t1
            if s.failures:
                raise SystemExit(f"{w} workers: failures {s.failures}")
            df = pd.read_csv(out / "all_points.csv")
            points[w] = df.sort_values(["t", "z", "y", "x"])[["t", "z", "y", "x"]].to_numpy()
            rows.append(dict(workers=w, frames=s.computed, points=len(df), seconds=round(dt, 1),
                             s_per_frame=round(dt / max(s.computed, 1), 1),
                             frames_per_min=round(60 * s.computed / dt, 2)))
            print(f"{w} worker(s): {s.computed} frames, {len(df)} points, {dt:.0f} s", flush=True)

    table = pd.DataFrame(rows)
    same = all(len(points[w]) == len(points[a.workers[0]]) and np.allclose(points[w], points[a.workers[0]])
               for w in a.workers)
    print()
    print(f"## Batch throughput on this machine ({os.cpu_count()} cores), {a.frames} frames of "
          f"{tuple(a.shape)} px, model {a.model or 'shipped default'}")
    print(table.to_string(index=False))
    print(f"\nsame points in every run: {same}")

    # on paper: N workers, each like the fastest measured single worker
    best1 = table[table.workers == 1].iloc[0] if (table.workers == 1).any() else table.iloc[0]
    fpm = float(best1.frames_per_min)
    n_frames = a.cells * a.frames_per_cell
    proj = pd.DataFrame([dict(workers=n, frames=n_frames, hours=round(n_frames / (fpm * n) / 60, 2))
                         for n in (1, 2, 8, 32, 100)])
    print(f"\n## Projection: {a.cells} cells x {a.frames_per_cell} frames = {n_frames} frames, "
          f"{fpm:.2f} frames/min per worker ({os.cpu_count()} cores each)")
    print(proj.to_string(index=False))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
