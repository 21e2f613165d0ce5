"""From raw intensities to what the network sees: camera-defect repair, rescaling, normalisation.

One function, :func:`prepare`, used by prediction *and* training (so a training crop and a
frame are seen alike)::

    raw (image px, any voxel size) ─ repair camera defects (hot/dead pixel columns, per channel)
      ─ rescale to the model's voxel size (linear zoom) ─ normalise (percentiles of the signal
      region, the model's pmin/pmax) ─▶ network input, float32 ZYXC

Refinement later fits the *repaired raw* spot channel at the image's own px. Frames larger than
``max_in_memory_gb`` are not read: the same steps are applied block by block on read
(:mod:`kt_stardist.outofcore`). Axis order z, y, x, channel last.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from kt_stardist.errors import InputError
from kt_stardist.normalize import PMAX, PMIN

__all__ = ["Prepared", "prepare", "zoom_factors", "rescale_volume", "points_to_image_px", "exceeds_memory",
           "repair_channels"]


def exceeds_memory(shape_zyx, n_channels, max_in_memory_gb) -> bool:
    """True when a ``(Z, Y, X)`` volume of ``n_channels`` float32 channels is larger than
    ``max_in_memory_gb`` (GB, 1e9 bytes; None: never), i.e. goes out of core."""
    nbytes = 4.0 * int(n_channels) * np.prod([int(v) for v in shape_zyx], dtype=np.float64)
    return max_in_memory_gb is not None and nbytes > float(max_in_memory_gb) * 1e9


def zoom_factors(image_voxel_um, model_voxel_um, tol=1e-3) -> tuple | None:
    """Zoom factors (z, y, x) that bring an image to the model's voxel size; None if equal."""
    f = tuple(float(i) / float(m) for i, m in zip(image_voxel_um, model_voxel_um))
    return None if all(abs(v - 1.0) < tol for v in f) else f


def rescale_volume(volume, factors):
    """Zoom a ``(Z, Y, X[, C])`` volume by ``factors`` (z, y, x), linear interpolation, float32."""
    vol = np.asarray(volume, np.float32)
    if factors is None:
        return vol
    if vol.ndim == 4:
        return np.stack([ndimage.zoom(vol[..., c], factors, order=1) for c in range(vol.shape[-1])], -1)
    return ndimage.zoom(vol, factors, order=1)


def points_to_image_px(points_model_px, shape_image, shape_model):
    """Map ``(N, 3)`` positions from the rescaled grid back to the image's own px.

    Follows :func:`scipy.ndimage.zoom` (corners aligned): model index ``o`` came from image
    coordinate ``o * (in - 1) / (out - 1)``.
    """
    p = np.asarray(points_model_px, np.float64).reshape(-1, 3)
    s = np.array([(i - 1) / max(o - 1, 1) for i, o in zip(shape_image, shape_model)], np.float64)
    return p * s


@dataclass
class Prepared:
    """A volume ready for the network.

    ``x``: normalised ``(Z', Y', X', C)`` float32 at the model's voxel size, a
    :class:`kt_stardist.outofcore.NormalizedView` normalising what is read (``x[z, y, x]``
    blocks, ``x[..., c]`` a channel, ``np.asarray(x)`` all; over the frame in memory or, when
    ``lazy``, read block by block from the file); ``raw``: the repaired raw ``(Z, Y, X, C)`` volume at the
    image's px (refinement reads its spot channel); ``image_voxel_um`` / ``model_voxel_um``
    (z, y, x) µm; ``zoom``: image → model factors or None; ``lazy``; ``defects``: one
    :class:`kt_stardist.defects.Defects` per channel (None when repair is off); ``notes``:
    one-line warnings for the user; ``seconds``: time per step.
    """

    x: object
    raw: object
    image_voxel_um: tuple
    model_voxel_um: tuple
    zoom: tuple | None
    lazy: bool = False
    defects: list | None = None
    notes: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple:
        return tuple(int(s) for s in self.raw.shape[:3])

    @property
    def model_shape(self) -> tuple:
        return tuple(int(s) for s in self.x.shape[:3])

    def to_model_px(self, points_image_px):
        """Positions in the image's px → the network's grid (inverse of :meth:`to_image_px`)."""
        p = np.asarray(points_image_px, np.float64).reshape(-1, 3)
        if self.zoom is None:
            return p
        s = points_to_image_px(np.ones((1, 3)), self.image_shape, self.model_shape)[0]
        return p / s

    def to_image_px(self, points_model_px):
        """Positions on the network's grid → the image's own px."""
        if self.zoom is None:
            return np.asarray(points_model_px, np.float64).reshape(-1, 3)
        return points_to_image_px(points_model_px, self.image_shape, self.model_shape)


def repair_channels(vol):
    """Camera-defect repair of every channel of an in-memory ``(Z, Y, X, C)`` volume:
    ``(repaired float32 copy or the input, [Defects per channel])``."""
    from kt_stardist.defects import find_defects, repair_defects

    found = [find_defects(vol[..., c]) for c in range(vol.shape[-1])]
    if not any(len(d) for d in found):
        return vol, found
    out = np.array(vol, np.float32, copy=True)
    for c, d in enumerate(found):
        if len(d):
            out[..., c] = repair_defects(vol[..., c], d)
    return out, found


def prepare(volume, voxel_size_um, model_voxel_um, normalization=None, repair=True,
            max_in_memory_gb=4.0) -> Prepared:
    """Repair, rescale and normalise one volume for the network (module docstring).

    Parameters
    ----------
    volume : ndarray or lazy array (dask, h5py/zarr dataset) ``(Z, Y, X[, C])``, raw intensities,
        image px, the model's input channels (temporal models: frames already stacked).
    voxel_size_um : (z, y, x) µm of ``volume``; None: the model's.
    model_voxel_um : (z, y, x) µm the network works at.
    normalization : :class:`kt_stardist.model.info.Normalization` (pmin, pmax); None: defaults.
    repair : repair camera-defect columns first.
    max_in_memory_gb : larger volumes (float32 GB) are prepared lazily, block by block.
    """
    from kt_stardist import outofcore as O
    from kt_stardist.defects import summary_line
    from kt_stardist.normalize import normalization_info

    t0 = time.perf_counter()
    pmin = getattr(normalization, "pmin", PMIN)
    pmax = getattr(normalization, "pmax", PMAX)
    shape = tuple(int(s) for s in volume.shape)
    if len(shape) == 3:
        volume = volume[..., None]
        shape = shape + (1,)
    if len(shape) != 4:
        raise InputError(f"expected a (Z, Y, X[, C]) volume, got shape {shape}")
    vs_model = tuple(float(v) for v in model_voxel_um)
    vs_img = vs_model if voxel_size_um is None else tuple(float(v) for v in voxel_size_um)
    f = zoom_factors(vs_img, vs_model)
    seconds = {}
    if exceeds_memory(shape[:3], shape[3], max_in_memory_gb):
        if f is not None:
            fmt = " × ".join(f"{v:g}" for v in vs_img), " × ".join(f"{v:g}" for v in vs_model)
            raise InputError(f"volume too large for memory at voxel size {fmt[0]} µm: resample it to the model's "
                             f"{fmt[1]} µm first (out-of-core prediction does not rescale)")
        vol = O.as_lazy(volume, O.CHUNK_PX)
        found = None
        if repair:
            from kt_stardist.defects import find_defects_lazy

            found = [find_defects_lazy(vol, channel=c) for c in range(shape[3])]
        ranges = O.normalization(vol, voxel_size_um=vs_model, pmin=pmin, pmax=pmax, defects=found)
        x = O.NormalizedView(vol, ranges, defects=found)
        raw = O.RepairedView(vol, found) if found and any(len(d) for d in found) else vol
        seconds["prepare"] = time.perf_counter() - t0
        notes = [n for n in [summary_line(found)] if n]
        return Prepared(x, raw, vs_img, vs_model, None, lazy=True, defects=found, notes=notes, seconds=seconds)

    vol = np.asarray(volume)
    found = None
    if repair:
        vol, found = repair_channels(vol)
    seconds["defects"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    x = vol if f is None else rescale_volume(vol, f)  # no float32 copy of the frame: read as it is
    seconds["rescale"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    info = normalization_info(x, pmin=pmin, pmax=pmax, voxel_size_um=vs_model)
    x = O.NormalizedView.of(x, info)  # normalised where read (screen, network blocks): equal to normalize(x)
    seconds["normalize"] = time.perf_counter() - t1
    notes = [n for n in [summary_line(found, info)] if n]  # defects repaired, planes left out
    return Prepared(x, vol, vs_img, vs_model, f, lazy=False, defects=found, notes=notes, seconds=seconds)
