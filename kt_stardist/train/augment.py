"""Augmentation of training patches: y-x flips and 90° rotations, optionally intensities.

Geometry only in y-x (z has another voxel size). Axis order z, y, x, channel last.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_augmenter", "GEOMETRIC_AUGMENT"]

#: augmentation of finetune by default: y-x flips and 90° rotations, no intensity changes (with
#: intensity augmentation from the first step a fresh network had not started learning after
#: 320 steps, without it it had after ~200)
GEOMETRIC_AUGMENT = dict(gamma=None, scale=None, noise=None, offset=None)


def make_augmenter(flip=True, rotate=True, scale=(0.7, 1.4), gamma=(0.75, 1.35), noise=0.04, offset=0.08,
                   rng=None):
    """Augmentation for microscopy patches ``augment(x ZYXC, y ZYX) -> (x, y)``.

    Geometry only in y-x (flips; 90° rotations when the patch is square in y-x), since z has
    another voxel size. Intensity, per channel: gamma on |x| (sign kept), scale, background
    offset, Gaussian noise of a random level up to ``noise`` (units of the normalised range).
    Pass ``None``/``0`` to switch a part off. ``rng`` defaults to numpy's global state (seeded
    with the training seed, as StarDist's patch sampler).
    """
    r = np.random if rng is None else rng

    def augment(x, y):
        if flip:
            if r.uniform() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if r.uniform() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
        if rotate and x.shape[1] == x.shape[2]:
            k = int(r.integers(4) if hasattr(r, "integers") else r.randint(4))
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
        x = np.array(x, np.float32)
        nc = x.shape[-1] if x.ndim == 4 else 1
        xc = x if x.ndim == 4 else x[..., None]
        for c in range(nc):
            v = xc[..., c]
            if gamma:
                g = r.uniform(*gamma)
                v = np.sign(v) * np.abs(v) ** g
            if scale:
                v = v * r.uniform(*scale)
            if offset:
                v = v + r.uniform(-offset, offset)
            if noise:
                v = v + r.normal(0, r.uniform(0, noise), v.shape).astype(np.float32)
            xc[..., c] = v
        return x, np.ascontiguousarray(y)

    return augment
