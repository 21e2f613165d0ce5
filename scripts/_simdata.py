"""Held-out simulated volumes for the benchmarks (kt_stardist.simulate; axis order z, y, x, px).

Seeds here (0–999 test, 1000+ baseline tuning) are disjoint from the training seeds of
``scripts/train_default_model.py``, which draws its volumes from ``SeedSequence(seed)`` children.
"""

from __future__ import annotations

import numpy as np

from kt_stardist import simulate
from kt_stardist.defaults import VOXEL_SIZE_UM as VOX

#: SNR presets, easy to very hard
PRESETS = tuple(simulate.SNR_PRESETS)


def volume(shape, seed, snr="mid", layout="plate", vox=VOX):
    """(image ZYX float32 camera counts, truth (N, 3) px); layout "plate" or "real"."""
    layout = {"random": "plate"}.get(layout, layout)
    img, df = simulate.simulate_volume(tuple(shape), seed=seed + 7919 * 10**6, snr=snr, channels=1,
                                       layout=layout, voxel_size_um=tuple(vox))
    return np.asarray(img)[..., 0], df[["z", "y", "x"]].to_numpy(float)
