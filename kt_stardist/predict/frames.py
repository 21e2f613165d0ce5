"""Frames of an image through :func:`kt_stardist.predict.detect.detect`.

An :class:`kt_stardist.io.Image` holds ``(T, Z, Y, X, C)`` data, possibly lazy. For frame ``t``
the model input is built by :func:`kt_stardist.channels.stack_frames` (the spot channel of
1-fluorophore models, frames t-1, t, t+1 for temporal models; only those frames are read). Frames
whose model input is larger than ``settings.max_in_memory_gb`` stay lazy and are predicted block
by block (same points). Every frame's table has a ``t`` column, 3D volumes included (t = 0).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kt_stardist.channels import stack_frames
from kt_stardist.errors import InputError
from kt_stardist.predict.detect import Detection, detect
from kt_stardist.predict.preprocess import exceeds_memory
from kt_stardist.settings import DetectSettings

__all__ = ["check_image_for_model", "frame_input", "detect_frame", "detect_image", "iter_detect_image", "label_image"]


def check_image_for_model(image, model, channel=None) -> list:
    """One-line :class:`InputError` when an image's channels do not fit a model; returns notes
    (one-line warnings) where the model can still run: a temporal model given one frame sees it
    repeated as its own neighbours (:func:`kt_stardist.channels.frame_indices`; a movie's ends
    see their one neighbour on both sides)."""
    name = getattr(image, "path", None) or "image"
    T, C = image.data.shape[0], image.data.shape[-1]
    lay = model.layout
    notes = []
    if lay.temporal and T < 2:
        notes.append(f"{name}: model {model.name} is temporal (frames t-1, t, t+1) but the image has one frame: "
                     f"it is repeated as its own neighbours, whose identical noise can look like spots "
                     f"(on a whole simulated frame 143 points for 79 spots): use the default model "
                     f"for single volumes")
    if lay.n_fluor > 1 and C != lay.n_fluor:
        raise InputError(f"{name}: image has {C} channel(s), model {model.name} takes {lay.n_fluor} per frame")
    if lay.n_fluor == 1 and channel is not None and not 0 <= int(channel) < C:
        raise InputError(f"{name}: --channel {channel} out of range, the image has {C} channel(s)")
    return notes


def frame_input(image, t, model, channel=None, max_in_memory_gb=4.0):
    """The model input of frame ``t``: a numpy ``(Z, Y, X, C_in)`` array, or a lazy dask array
    when it is larger than ``max_in_memory_gb`` (nothing read)."""
    data = image.data
    if exceeds_memory(data.shape[1:4], model.n_channel_in, max_in_memory_gb):
        from kt_stardist import outofcore as O
        from kt_stardist.io.images import dask_view

        if not O.is_lazy(data):  # wrapped, not copied (dask's from_array copies arrays and memmaps)
            data = dask_view(data, (1,) + tuple(O.CHUNK_PX) + (-1,))
        return stack_frames(data, t, model.layout, channel)

    class _Frames:  # reads frame by frame (Image.frame computes lazy frames here)
        shape = tuple(data.shape)

        def __getitem__(self, i):
            return np.asarray(image.frame(i)) if hasattr(image, "frame") else np.asarray(data[i])

    return stack_frames(_Frames(), t, model.layout, channel)


def detect_frame(model, image, t: int, settings: DetectSettings | None = None, channel=None, voxel_size_um=None,
                 show_progress: bool = False) -> Detection:
    """:func:`~kt_stardist.predict.detect.detect` on frame ``t`` of an :class:`kt_stardist.io.Image`;
    the points get a ``t`` column. ``voxel_size_um`` overrides the image's (without either: the
    model's)."""
    settings = settings or DetectSettings()
    notes = check_image_for_model(image, model, channel)
    vs = voxel_size_um if voxel_size_um is not None else getattr(image, "voxel_size_um", None)
    x = frame_input(image, t, model, channel, settings.max_in_memory_gb)
    if isinstance(x, np.ndarray):  # a frame read into memory: NaN/Inf or constant → this frame fails, named
        from kt_stardist.validate import check_volume

        where = getattr(image, "path", None) or "image"
        check_volume(x, f"{where} frame {t}" if image.data.shape[0] > 1 else str(where))
    det = detect(model, x, vs, settings, spot_channel=model.layout.spot_channel, show_progress=show_progress)
    det.points.insert(0, "t", int(t))
    det.warnings = notes + [f"frame {t}: {w}" if image.data.shape[0] > 1 else w for w in det.warnings]
    return det


def iter_detect_image(model, image, settings: DetectSettings | None = None, channel=None, voxel_size_um=None,
                      show_progress: bool = False):
    """Generator: every frame of an image, yielding ``(t, T)`` before frame ``t``; returns
    ``(points DataFrame with t, [Detection per frame])`` (for callers that report progress)."""
    check_image_for_model(image, model, channel)
    T = image.data.shape[0]
    dets = []
    for t in range(T):
        yield t, T
        dets.append(detect_frame(model, image, t, settings, channel, voxel_size_um, show_progress=show_progress and T == 1))
    return pd.concat([d.points for d in dets], ignore_index=True), dets


def detect_image(model, image, settings: DetectSettings | None = None, channel=None, voxel_size_um=None,
                 show_progress: bool = True):
    """Every frame of an image: ``(points DataFrame with t, [Detection per frame])``
    (:func:`iter_detect_image` with a progress bar over frames)."""
    from tqdm.auto import tqdm

    steps = iter_detect_image(model, image, settings, channel, voxel_size_um, show_progress)
    T = image.data.shape[0]
    with tqdm(total=T, desc="frames", disable=not show_progress or T == 1) as bar:
        while True:
            try:
                t, _ = next(steps)
            except StopIteration as stop:
                bar.update(T - bar.n)
                return stop.value
            bar.update(t - bar.n)


def label_image(model, det: Detection) -> np.ndarray:
    """int32 ``(Z, Y, X)`` label image (image px) of a detection's network instances (polyhedra
    drawn by StarDist, rescaled back to image px when the model's voxel size differs)."""
    pts, prob, dist = det.instances
    zoom = det.prepared.zoom
    scale = None if zoom is None else 1.0 / np.asarray(zoom)
    return model.backend.labels(dist, pts, prob, det.prepared.image_shape, scale)
