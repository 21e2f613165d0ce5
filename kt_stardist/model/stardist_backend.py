"""The one adapter between kt-stardist and StarDist: every use of StarDist's (and csbdeep's)
internals lives here, so an upgrade of StarDist touches one file.

A :class:`StarDistBackend` wraps a ``stardist.models.StarDist3D`` and gives the rest of the
package the few operations it needs:

* :meth:`~StarDistBackend.candidates`: ``predict_sparse`` of one block with ``b=0`` (objects at
  the block border are kept: StarDist drops them otherwise);
* :meth:`~StarDistBackend.nms`: StarDist's sparse 3D non-maximum suppression;
* :meth:`~StarDistBackend.context_px`: the network's receptive field (StarDist measures it with a
  forward pass, ~1 s on CPU; training stores it in ``model.json`` so prediction skips that);
* :meth:`~StarDistBackend.labels`: polyhedra drawn as a label image.

Training-side helpers (model construction and loading, ``Config3D`` with overrides, StarDist's
patch sampler, ``prepare_for_training``) are module functions. TensorFlow and StarDist are
imported inside the functions that need them. Axis order z, y, x, channel last.
"""

from __future__ import annotations

import contextlib
import io as _pyio
from pathlib import Path

import numpy as np

__all__ = [
    "StarDistBackend", "quiet", "import_tensorflow", "VERBOSE_ENV", "load_stardist", "new_stardist", "config3d", "config_with", "rays_golden",
    "patch_sampler", "prepare_for_training", "example_nuclei", "nms_sparse", "measure_receptive_field",
]


#: set (to anything) to see TensorFlow's start-up lines (``kt-stardist --verbose`` sets it)
VERBOSE_ENV = "KT_STARDIST_VERBOSE"


#: optional packages Keras imports with TensorFlow only for features kt-stardist never uses
#: (scikit-learn wrappers, the IPython file editor, matplotlib image galleries): about a third of
#: TensorFlow's import time. :func:`import_tensorflow` hides the ones not yet imported while
#: TensorFlow loads (Keras guards each with ``except ImportError``); they import normally after.
SKIPPED_AT_IMPORT = ("sklearn", "IPython", "matplotlib.pyplot")

#: TensorFlow settings read at its import, set by :func:`import_tensorflow` unless the
#: environment already sets them. TensorFlow's x86 wheels use oneDNN's convolutions only on CPUs
#: with AVX-512 neural-network instructions; elsewhere (AMD, most laptops) its own 3D
#: convolutions run about 3x slower (a 61 x 264 x 232 block: 6.7 s against 2.0 s on 2 cores).
#: oneDNN's system allocator keeps its pool from growing the peak memory (1.71 against 2.00 GB
#: for a 4-frame 61 x 1000 x 1000 movie; 1.68 GB without oneDNN). The points are the same.
TF_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_ONEDNN_USE_SYSTEM_ALLOCATOR": "1"}


def import_tensorflow():
    """Import TensorFlow once. Its C++ start-up lines (oneDNN, CPU features), written to the
    stderr file descriptor before its logging is configured, are hidden unless
    :data:`VERBOSE_ENV` is set; an import error is raised as usual. The packages of
    :data:`SKIPPED_AT_IMPORT` are not imported on the way (start-up time), and
    :data:`TF_ENVIRONMENT` is set first where the environment does not say otherwise."""
    import os
    import sys

    if "tensorflow" in sys.modules:
        return
    for key, value in TF_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    hidden = [m for m in SKIPPED_AT_IMPORT if m not in sys.modules]
    for m in hidden:
        sys.modules[m] = None  # "import m" raises ImportError, which Keras catches
    try:
        if os.environ.get(VERBOSE_ENV):
            import tensorflow  # noqa: F401

            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
    finally:
        for m in hidden:
            if sys.modules.get(m, 0) is None:
                del sys.modules[m]


@contextlib.contextmanager
def quiet():
    """Silence StarDist's/csbdeep's prints (loading messages) on stdout."""
    with contextlib.redirect_stdout(_pyio.StringIO()):
        yield


def nms_sparse(prob, dist, points, rays, nms_thresh):
    """StarDist's sparse 3D NMS: ``(points (M, 3), prob (M,), dist (M, R))``, most probable first."""
    from stardist.nms import non_maximum_suppression_3d_sparse

    prob = np.asarray(prob)
    if len(prob) == 0:
        return np.zeros((0, 3)), np.zeros(0, np.float32), np.zeros((0, len(rays)), np.float32)
    p, pr, d, _ = non_maximum_suppression_3d_sparse(np.asarray(dist), prob, np.asarray(points), rays,
                                                    nms_thresh=float(nms_thresh), verbose=False)
    return np.asarray(p, float).reshape(-1, 3), np.asarray(pr), np.asarray(d)


#: change of the probability (of 1) beyond which a probe spot still counts as seen
RECEPTIVE_FIELD_TOL = 1e-6


def measure_receptive_field(sd, tol=RECEPTIVE_FIELD_TOL, probe_sigma_px=1.0, shape=None):
    """``[(before, after)] * 3`` px (z, y, x): how far from a spot the network's probability
    changes by more than ``tol``. As StarDist's ``_compute_receptive_field`` (one forward pass of
    an image with a probe in its centre against one without), but the probe is a spot (a
    Gaussian of ``probe_sigma_px``, peak 1 on the network's normalised scale) and changes up to
    ``tol`` do not count: StarDist counts any change (``tol=0``, a single-voxel probe), down to
    float32 rounding, which is weight-dependent (the same architecture measured 12 px after one
    training and 46 px after another, with the same spots seen within ~10 px at 1e-6) and sets
    every block's halo. ``shape`` px of the probe image (None: StarDist's, 64 × the grid).
    ``probe_sigma_px=0`` with ``tol=0`` is StarDist's measurement."""
    from scipy.ndimage import gaussian_filter, zoom

    grid = tuple(int(g) for g in sd.config.grid)
    shape = tuple(64 * g for g in grid) if shape is None else tuple(int(s) for s in shape)
    mid = tuple(s // 2 for s in shape)
    probe = np.zeros(shape, np.float32)
    probe[mid] = 1
    if probe_sigma_px > 0:
        probe = gaussian_filter(probe, float(probe_sigma_px))
        probe /= probe.max()
    # one image per call, as StarDist: a batch of two can take other kernels (other float32
    # rounding) on some CPUs, and with tol=0 rounding is all that is measured
    x = np.zeros((1,) + shape + (int(sd.config.n_channel_in),), np.float32)
    empty = sd.keras_model.predict(x, verbose=0)[0][0, ..., 0]
    x[0] = probe[..., None]
    spot = sd.keras_model.predict(x, verbose=0)[0][0, ..., 0]
    change = zoom(np.abs(spot - empty), grid, order=0)
    where = np.nonzero(change > tol)
    if any(len(i) == 0 for i in where):
        return [(0, 0)] * 3
    return [(int(m - i.min()), int(i.max() - m)) for m, i in zip(mid, where)]


class StarDistBackend:
    """A StarDist3D network behind the operations prediction needs (module docstring)."""

    def __init__(self, sd, receptive_field_px=None):
        from stardist import rays_from_json

        self.sd = sd
        self.rays = rays_from_json(sd.config.rays_json)
        self.grid = tuple(int(g) for g in sd.config.grid)
        self.n_channel_in = int(sd.config.n_channel_in)
        if receptive_field_px is not None:
            sd._tile_overlap = tuple(tuple(int(a) for a in p) for p in receptive_field_px)  # StarDist's cache

    @property
    def keras_model(self):
        return self.sd.keras_model

    @property
    def config(self):
        return self.sd.config

    def receptive_field_px(self) -> list:
        """``[[before, after]] * 3`` px (z, y, x), measured once (:func:`measure_receptive_field`;
        cached where StarDist caches its own)."""
        if not hasattr(self.sd, "_tile_overlap"):
            with quiet():
                self.sd._tile_overlap = measure_receptive_field(self.sd)
        return [[int(a) for a in p] for p in self.sd._tile_overlap]

    def context_px(self) -> tuple:
        """Halo (px, z, y, x) a block needs so its core sees what the whole volume would give:
        StarDist's own tile-overlap estimate."""
        self.receptive_field_px()
        return tuple(int(c) for c in self.sd._axes_tile_overlap("ZYX"))

    def candidates(self, x, prob_thresh):
        """``predict_sparse`` of a normalised ``(Z, Y, X, C)`` block, ``b=0``:
        ``(prob (N,), dist (N, R), points (N, 3) int px)``."""
        with quiet():
            r = self.sd.predict_sparse(np.asarray(x, np.float32), axes="ZYXC", prob_thresh=float(prob_thresh), b=0,
                                       show_tile_progress=False)
        prob, dist, points = r[0], r[1], r[-1]
        return np.asarray(prob), np.asarray(dist), np.asarray(points).reshape(-1, 3)

    def nms(self, prob, dist, points, nms_thresh):
        return nms_sparse(prob, dist, points, self.rays, nms_thresh)

    def labels(self, dist, points, prob, shape, scale=None):
        """Label image (int32, ``shape`` px) of polyhedra ``dist`` at ``points``; ``scale``
        (z, y, x) maps the network's px to the image's (rays scaled alike)."""
        from stardist.geometry import polyhedron_to_label

        if len(points) == 0:
            return np.zeros(tuple(shape), np.int32)
        rays = self.rays
        pts = np.asarray(points, float)
        if scale is not None:
            pts = pts * np.asarray(scale)
            rays = rays.copy(scale=tuple(np.asarray(scale, float)))
        return polyhedron_to_label(np.asarray(dist), pts, rays=rays, prob=np.asarray(prob), shape=tuple(shape),
                                   verbose=False).astype(np.int32)


# --------------------------------------------------------------------------------------------
# construction, loading, training
# --------------------------------------------------------------------------------------------

def load_stardist(folder, weights=None):
    """A StarDist3D from its folder (config.json, weights; thresholds.json if any)."""
    import_tensorflow()
    from stardist.models import StarDist3D

    folder = Path(folder)
    with quiet():
        sd = StarDist3D(None, name=folder.name, basedir=str(folder.parent))
        if weights is not None:
            sd.load_weights(weights)
    return sd


def new_stardist(conf, name="model"):
    """A fresh StarDist3D for ``conf`` (a Config3D), in memory (no folder)."""
    import_tensorflow()
    from stardist.models import StarDist3D

    with quiet():
        return StarDist3D(conf, name=name, basedir=None)


def rays_golden(n_rays, anisotropy=None):
    from stardist import Rays_GoldenSpiral

    return Rays_GoldenSpiral(int(n_rays), anisotropy=None if anisotropy is None else tuple(anisotropy))


def config3d(**kwargs):
    """``stardist.models.Config3D(**kwargs)``, quietly."""
    from stardist.models import Config3D

    with quiet():
        return Config3D(**kwargs)


def config_with(conf, **overrides):
    """A copy of a Config3D with fields replaced (``n_rays``, ``n_channel_in``, ``grid``,
    ``anisotropy``, ``train_*``, ...); derived fields (rays, input shape) follow."""
    if not overrides:
        return conf
    d = vars(conf).copy()
    for k in ("net_input_shape", "net_mask_shape", "n_dim", "n_channel_out"):
        d.pop(k, None)
    d.update(overrides)
    if "n_rays" in overrides or "anisotropy" in overrides:
        n_rays = int(d.pop("n_rays"))
        d.pop("rays_json", None)
        d["rays"] = rays_golden(n_rays, d.get("anisotropy"))
    return config3d(**d)


def patch_sampler(X, Y, config, batch_size, length, augmenter=None):
    """StarDist's 3D patch sampler (``StarDistData3D``) for images ``X`` (ZYXC) and labels ``Y``
    (ZYX): patches of ``config.train_patch_size``, ``config.train_foreground_only`` of them
    around labelled voxels."""
    from stardist.models.model3d import StarDistData3D
    from stardist.rays3d import rays_from_json

    return StarDistData3D(X, Y, batch_size=batch_size, length=length, augmenter=augmenter,
                          rays=rays_from_json(config.rays_json), grid=config.grid,
                          patch_size=config.train_patch_size, anisotropy=config.anisotropy, use_gpu=False,
                          foreground_prob=config.train_foreground_only, n_classes=None,
                          sample_ind_cache=config.train_sample_cache,
                          keras_kwargs=dict(workers=1, use_multiprocessing=False))


def prepare_for_training(sd, optimizer):
    """StarDist's loss/metrics compilation of the Keras model with ``optimizer``."""
    with quiet():
        sd.prepare_for_training(optimizer=optimizer)


def example_nuclei():
    """StarDist's synthetic 3D nuclei (ships in the stardist wheel): (image ZYX, labels ZYX)."""
    from stardist.data import test_image_nuclei_3d

    return test_image_nuclei_3d(return_mask=True)
