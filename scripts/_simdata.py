"""Held-out simulated volumes for the benchmarks: :func:`kt_stardist.train.evaluation.evaluation_cases`
(seeds disjoint from every training seed). Axis order z, y, x, px."""

from __future__ import annotations

from kt_stardist import simulate
from kt_stardist.defaults import VOXEL_SIZE_UM as VOX
from kt_stardist.train.evaluation import evaluation_cases

#: SNR presets, easy to very hard
PRESETS = tuple(simulate.SNR_PRESETS)


def volume(shape, seed, snr="mid", layout="plate", vox=VOX):
    """(image ZYX float32 camera counts, truth (N, 3) px) of one held-out case."""
    c = evaluation_cases((snr,), ({"random": "plate"}.get(layout, layout),), 1, tuple(shape), seed=seed,
                         voxel_size_um=tuple(vox))[0]
    return c.image[..., 0], c.truth
