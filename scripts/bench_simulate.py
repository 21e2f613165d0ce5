"""Benchmark of the simulator: time per volume and peak memory, with a naive baseline.

    PYTHONPATH=. python scripts/bench_simulate.py [--full] [--repeat 3]

Rows: spot rendering alone (``render_spots``: local windows, vectorised) against the naive
baseline (a full-volume separable Gaussian per spot), then whole ``simulate_volume`` calls
(background, spots, camera noise). ``--full`` adds a whole 61x1000x1000 frame (run in a child
process so its peak memory is measured alone).
"""

import argparse
import resource
import subprocess
import sys
import time

import numpy as np
from scipy.special import erf

from kt_stardist import simulate
from kt_stardist.defaults import VOXEL_SIZE_UM


def naive_render(shape, pts, peak, sigma_px):
    """Baseline: every spot evaluated over the full volume (integrated Gaussian per axis)."""
    out = np.zeros(shape, np.float32)
    for q, a, s in zip(pts, peak, sigma_px):
        prof = []
        for ax in range(3):
            i = np.arange(shape[ax])
            e = erf((i[:, None] + np.array([-0.5, 0.5]) - q[ax]) / (np.sqrt(2) * s[ax]))
            prof.append(0.5 * (e[:, 1] - e[:, 0]))
        total = a / simulate._peak_fraction(s)
        out += (total * prof[0][:, None, None] * prof[1][None, :, None] * prof[2][None, None, :]).astype(np.float32)
    return out


def best_of(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="also time a whole 61x1000x1000 frame")
    ap.add_argument("--child-full", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_full:
        t = time.perf_counter()
        img, pts = simulate.simulate_volume((61, 1000, 1000), seed=0)
        dt = time.perf_counter() - t
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
        print(f"{dt:.2f} {rss:.2f} {len(pts)}")
        return

    shape = (48, 128, 128)
    rng = np.random.default_rng(0)
    pts = np.asarray(shape) / 2 + rng.normal(0, 15, (80, 3)) * [0.5, 1, 1]
    peak = rng.uniform(50, 200, 80)
    sig = np.array([0.4, 0.15, 0.15]) / np.asarray(VOXEL_SIZE_UM) * rng.uniform(0.8, 1.2, (80, 1))
    fast = simulate.render_spots(shape, pts, peak, sig)
    slow = naive_render(shape, pts, peak, sig)
    err = float(np.abs(fast - slow).max() / slow.max())
    t_fast = best_of(lambda: simulate.render_spots(shape, pts, peak, sig), args.repeat)
    t_slow = best_of(lambda: naive_render(shape, pts, peak, sig), args.repeat)
    print("| what | shape (px) | kt-stardist (s) | naive baseline (s) |")
    print("|---|---|---|---|")
    print(f"| render 80 spots (max rel. diff {err:.1e}) | 48x128x128 | {t_fast:.4f} | {t_slow:.3f} |")
    for shp, kw in [((48, 128, 128), {}), ((48, 128, 128), {"channels": 2}),
                    ((32, 96, 96), {"randomize": True})]:
        t = best_of(lambda: simulate.simulate_volume(shp, seed=1, **kw), args.repeat)
        label = "simulate_volume " + (", ".join(f"{k}={v}" for k, v in kw.items()) or "mid")
        print(f"| {label} | {'x'.join(map(str, shp))} | {t:.3f} | - |")
    t = best_of(lambda: simulate.simulate_timelapse(3, (32, 96, 96), seed=1), args.repeat)
    print(f"| simulate_timelapse 3 frames | 32x96x96 | {t:.3f} | - |")
    if args.full:
        out = subprocess.run([sys.executable, __file__, "--child-full"], capture_output=True, text=True)
        dt, rss, n = out.stdout.split()
        print(f"| simulate_volume whole frame, peak RSS {float(rss):.2f} GB, {n} points | 61x1000x1000 | {float(dt):.2f} | - |")


if __name__ == "__main__":
    main()
