"""Simulated volumes for the predict benchmarks: kt_stardist.simulate when present, else a small
stand-in (Gaussian spots at real or random sister-pair positions, background, Poisson + read noise).
Axis order z, y, x; positions px."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

VOX = (0.3, 0.13, 0.13)
PSF_UM = (0.25, 0.11, 0.11)
#: stand-in SNR presets: spot amplitude over a background of 100 (Poisson + read noise 5)
AMPS = {"easy": 400.0, "mid": 150.0, "hard": 80.0, "very_hard": 50.0}
REAL = Path(__file__).resolve().parents[1] / "kt_stardist" / "data" / "real_kinetochores_t00_t04.csv"


def real_layout(t=0):
    df = pd.read_csv(REAL)
    return df[df.t == t][["z", "y", "x"]].to_numpy(float)


def render(shape, pts, amps, vox=VOX, bg=100.0, read_noise=5.0, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full(shape, bg, np.float32)
    sig = np.asarray(PSF_UM) / np.asarray(vox)
    r = np.ceil(4 * sig).astype(int)
    for p, a in zip(pts, amps):
        c = np.round(p).astype(int)
        lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, shape)
        if np.any(hi <= lo):
            continue
        g = [np.exp(-0.5 * ((np.arange(l, h) - q) / s) ** 2) for l, h, q, s in zip(lo, hi, p, sig)]
        img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += a * g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]
    img = rng.poisson(img).astype(np.float32)
    img += rng.normal(0, read_noise, shape).astype(np.float32)
    return img


def random_pairs(shape, n_pairs, rng, vox=VOX, extent_um=None):
    shape = np.asarray(shape, float)
    extent = np.asarray(extent_um if extent_um is not None else 0.8 * shape * np.asarray(vox))
    c0 = shape / 2 * np.asarray(vox)
    pts = []
    for _ in range(n_pairs):
        c = c0 + rng.uniform(-0.5, 0.5, 3) * extent
        d = rng.uniform(0.3, 1.2)
        v = rng.normal(0, 1, 3)
        v[1:] *= 0.5
        v[2] += 1.5
        v /= np.linalg.norm(v)
        pts += [(c - d / 2 * v) / vox, (c + d / 2 * v) / vox]
    pts = np.array(pts)
    return pts[np.all((pts >= 0) & (pts <= shape - 1), axis=1)]


def volume(shape, seed, snr="mid", layout="random", n_pairs=20, vox=VOX):
    """(image ZYX float32, truth (N, 3) px). layout "random" or "real" (real positions, cropped /
    centred into ``shape`` at the default voxel size when ``shape`` is smaller than a frame)."""
    try:
        from kt_stardist import simulate as S  # the project's simulator when merged

        img, df = S.simulate_volume(shape_px=tuple(shape), seed=seed, snr=snr, channels=1,
                                    layout={"random": "plate"}.get(layout, layout), voxel_size_um=vox)
        return np.asarray(img)[..., 0], df[["z", "y", "x"]].to_numpy(float)
    except (ImportError, TypeError, ValueError, KeyError):
        pass
    rng = np.random.default_rng(seed)
    if layout == "real":
        p = real_layout(t=seed % 2 * 4) * np.asarray(VOX) / np.asarray(vox)
        p = p - p.mean(0) + (np.asarray(shape) - 1) / 2 + rng.uniform(-3, 3, 3) * [0, 1, 1]
        pts = p[np.all((p >= 0) & (p <= np.asarray(shape) - 1), axis=1)]
    else:
        pts = random_pairs(shape, n_pairs, rng, vox)
    amps = AMPS[snr] * rng.uniform(0.7, 1.3, len(pts))
    return render(shape, pts, amps, vox, seed=seed), pts
