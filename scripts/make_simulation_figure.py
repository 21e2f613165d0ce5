"""Figure of simulated volumes: z maximum-intensity projection and an x-z view, points overlaid.

    python scripts/make_simulation_figure.py [--out docs/images/simulated_mip.png] [--seed 1]

One column per SNR preset (easy, mid, hard, very_hard), same layout (same seed); top row:
MIP along z (y, x), bottom row: MIP along y (z, x) at true aspect ratio. Points in red.
"""

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from kt_stardist import io, simulate  # noqa: E402
from kt_stardist.defaults import VOXEL_SIZE_UM  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/images/simulated_mip.png")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs=3, default=[48, 128, 128])
    args = ap.parse_args(argv)
    vz, vy, vx = VOXEL_SIZE_UM
    presets = list(simulate.SNR_PRESETS)
    fig, axes = plt.subplots(2, len(presets), figsize=(3.2 * len(presets), 5.6),
                             gridspec_kw={"height_ratios": [args.shape[1] * vy, args.shape[0] * vz]})
    for j, snr in enumerate(presets):
        img, pts = simulate.simulate_volume(args.shape, seed=args.seed, snr=snr)
        v = img[..., 0]
        snr_value = simulate.measure_snr(img, pts)
        Z, Y, X = v.shape
        for i, (mip, ext, py, px) in enumerate([
            (v.max(axis=0), [0, X * vx, Y * vy, 0], pts["y"] * vy, pts["x"] * vx),
            (v.max(axis=1), [0, X * vx, Z * vz, 0], pts["z"] * vz, pts["x"] * vx),
        ]):
            ax = axes[i, j]
            lo, hi = np.percentile(mip, [1, 99.8])
            ax.imshow(mip, cmap="gray", vmin=lo, vmax=hi, extent=ext, interpolation="nearest")
            ax.scatter(px, py, s=14, facecolors="none", edgecolors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(f"{snr}: SNR {snr_value:.1f}", fontsize=10)
    axes[0, 0].set_ylabel("z-MIP (y, x)")
    axes[1, 0].set_ylabel("y-MIP (z, x)")
    fig.suptitle(f"simulated {args.shape[0]}x{args.shape[1]}x{args.shape[2]} px "
                 f"({vz}x{vy}x{vx} µm), {len(pts)} kinetochores; red: ground truth", fontsize=10)
    fig.tight_layout()
    with io.atomic_path(Path(args.out)) as tmp:
        fig.savefig(tmp, dpi=90)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
