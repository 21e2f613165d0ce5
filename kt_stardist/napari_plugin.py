"""napari plugin functions (npe2 manifest: ``kt_stardist/napari.yaml``).

napari is *not* a dependency: nothing here imports napari (or magicgui, or TensorFlow) at
module level. Readers return napari "layer data tuples", plain Python ``(data, meta, layer_type)``:

- points CSV (canonical ``[t,] z, y, x`` px, or an arivis export) → a ``points`` layer, data
  ``(N, 3)`` z, y, x or ``(N, 4)`` t, z, y, x px, with ``properties`` prob, pair_id, sister,
  track_id, point_id (those present); plus a ``tracks`` layer (``track_id, t, z, y, x``) when
  the table has ``t`` and ``track_id``.
- label TIFF (file name containing ``label``) → a ``labels`` layer, ``(Z, Y, X)`` or ``(T, Z, Y, X)``.

Layers are in px (napari's ``scale`` left at 1), like an image opened with napari's own TIFF
reader, so points, labels and image overlay. Set ``layer.scale`` to the voxel size (µm,
z, y, x) on all layers for a true-aspect 3D view.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

__all__ = ["get_points_reader", "get_labels_reader", "points_layers", "labels_layers",
           "write_points", "layer_voxel_size_um", "layer_image", "points_in_image_px", "predict_steps",
           "predict_job", "finetune_steps", "in_process"]

#: id columns carried as napari point properties (and written back)
PROPERTY_COLUMNS = ("prob", "point_id", "pair_id", "sister", "track_id")
POINT_COLOR = "#E69F00"


def _single_path(path):
    if isinstance(path, (list, tuple)):
        return str(path[0]) if len(path) == 1 else None
    return str(path)


def _csv_header(path) -> list:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


# --------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------


def get_points_reader(path):
    """npe2 reader: a function reading a kt-stardist points CSV, or None for other files.

    Accepted: a canonical points CSV (columns ``z, y, x`` px, optional ``t`` and ids) or an
    arivis export (a ``Tags`` column). napari's own points CSV (``axis-0, ...``) is left to
    napari.
    """
    p = _single_path(path)
    if p is None or not p.lower().endswith(".csv"):
        return None
    cols = {c.strip() for c in _csv_header(p)}
    if {"z", "y", "x"} <= cols or "Tags" in cols:
        return read_points_layers
    return None


def read_points_layers(path) -> list:
    """Read a points CSV (see :func:`get_points_reader`) into napari layer data tuples."""
    from kt_stardist import io

    p = _single_path(path)
    return points_layers(io.read_points(p), name=Path(p).stem)


def _property(series, column):
    """A plain numpy column for napari: prob float, ids int with -1 where missing."""
    values = np.asarray(series.to_numpy(dtype=float, na_value=np.nan))
    if column == "prob":
        return values
    return np.where(np.isfinite(values), values, -1).astype(np.int64)


def points_layers(df, name: str = "kinetochores") -> list:
    """Layer data tuples for a points table: ``points`` (+ ``tracks`` with t and track_id).

    Points data: ``(N, 4)`` t, z, y, x px when the table has ``t``, else ``(N, 3)`` z, y, x px.
    Tracks data: ``(M, 5)`` track_id, t, z, y, x (rows with ``track_id >= 0``, sorted).
    """
    axes = [c for c in ("t", "z", "y", "x") if c in df.columns]
    data = df[axes].to_numpy(dtype=float)
    props = {c: _property(df[c], c) for c in PROPERTY_COLUMNS if c in df.columns}
    meta = {"name": name, "properties": props, "size": 6, "symbol": "ring", "face_color": POINT_COLOR,
            "metadata": {"axes": "".join(axes), "units": "px"}}
    layers = [(data, meta, "points")]
    if "t" in df.columns and "track_id" in df.columns:
        tid = np.asarray(df["track_id"].to_numpy(dtype=float, na_value=np.nan))
        keep = np.isfinite(tid) & (tid >= 0)
        if keep.any():
            tracks = np.column_stack([tid[keep], df.loc[keep, ["t", "z", "y", "x"]].to_numpy(dtype=float)])
            tracks = tracks[np.lexsort((tracks[:, 1], tracks[:, 0]))]
            layers.append((tracks, {"name": f"{name} tracks", "tail_length": 5}, "tracks"))
    return layers


def get_labels_reader(path):
    """npe2 reader for label TIFFs written by kt-stardist (``labels``); None for other files."""
    p = _single_path(path)
    if p is None or "label" not in Path(p).name.lower() or not p.lower().endswith((".tif", ".tiff")):
        return None
    return read_labels_layers


def read_labels_layers(path) -> list:
    """Read a label TIFF into a ``labels`` layer tuple: ``(Z, Y, X)`` or ``(T, Z, Y, X)`` int."""
    from kt_stardist import io

    p = _single_path(path)
    return labels_layers(io.read_image(p, check=False), name=Path(p).stem)


def labels_layers(image, name: str = "labels") -> list:
    """Layer data tuple for an :class:`kt_stardist.io.Image` holding labels (one channel)."""
    from kt_stardist.errors import InputError

    data = np.asarray(image.data)
    if data.shape[-1] != 1:
        raise InputError(f"{image.path or name}: labels must have one channel, got {data.shape[-1]}")
    if not np.issubdtype(data.dtype, np.integer):
        raise InputError(f"{image.path or name}: labels must be integers, got {data.dtype}")
    data = data[..., 0]
    if data.shape[0] == 1:
        data = data[0]
    vs = image.voxel_size_um
    meta = {"name": name, "metadata": {"voxel_size_um": None if vs is None else [float(v) for v in vs]}}
    return [(data, meta, "labels")]


# --------------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------------


def write_points(path, data, attributes) -> list:
    """npe2 single-layer writer: a points layer → kt-stardist points CSV (atomic). Returns [path].

    ``data`` is ``(N, 3)`` z, y, x or ``(N, 4)`` t, z, y, x px (napari's data coordinates);
    the properties prob, point_id, pair_id, sister, track_id are kept.
    """
    import pandas as pd

    from kt_stardist import io
    from kt_stardist.errors import InputError

    arr = np.asarray(data, dtype=float).reshape(len(data), -1) if len(data) else np.zeros((0, 3))
    if arr.shape[1] not in (3, 4):
        raise InputError(f"{path}: a points layer with {arr.shape[1]} dimensions; expected z, y, x or t, z, y, x")
    axes = ["z", "y", "x"] if arr.shape[1] == 3 else ["t", "z", "y", "x"]
    df = pd.DataFrame(arr, columns=axes)
    if "t" in df.columns:
        df["t"] = np.round(df["t"]).astype(np.int64)
    props = (attributes or {}).get("properties") or {}
    features = (attributes or {}).get("features")
    if not props and features is not None and len(getattr(features, "columns", ())):
        props = {c: features[c].to_numpy() for c in features.columns}
    for c in PROPERTY_COLUMNS:
        if c in props and len(props[c]) == len(df):
            df[c] = np.asarray(props[c])
    io.write_points(df, path)
    return [str(path)]


# --------------------------------------------------------------------------------------------
# what the dock widgets run (kt_stardist.napari_widgets), without Qt: layer data in, steps out
# --------------------------------------------------------------------------------------------


def layer_voxel_size_um(scale, z_um: float = 0.0, yx_um: float = 0.0) -> tuple:
    """Voxel size (z, y, x) µm for an image layer: ``z_um``/``yx_um`` when both are > 0, else the
    layer's ``scale`` (last three axes) unless it is all 1 (napari's default: px), else the
    default 0.3 × 0.13 × 0.13 µm."""
    from kt_stardist.defaults import VOXEL_SIZE_UM
    from kt_stardist.validate import check_voxel_size

    if z_um > 0 and yx_um > 0:
        return check_voxel_size((float(z_um), float(yx_um), float(yx_um)), "voxel size")
    scale = [float(s) for s in np.asarray(scale if scale is not None else np.ones(3), float)[-3:]]
    if all(s == 1.0 for s in scale):
        return tuple(VOXEL_SIZE_UM)
    return check_voxel_size(tuple(scale), "layer scale")


def layer_image(data, voxel_size_um, name: str = "layer"):
    """An image layer's data, ``(Z, Y, X)`` or ``(T, Z, Y, X)``, one channel, as an
    :class:`kt_stardist.io.Image` ``(T, Z, Y, X, 1)`` with ``voxel_size_um`` (z, y, x µm)."""
    from kt_stardist import io
    from kt_stardist.errors import InputError

    data = np.asarray(data)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise InputError(f"layer {name!r}: expected (Z, Y, X) or (T, Z, Y, X) with one channel, "
                         f"got shape {data.shape}")
    return io.Image(data=data[..., None], voxel_size_um=tuple(voxel_size_um), axes="TZYXC", path=None)


def points_in_image_px(points, points_scale, points_translate, image_scale, image_translate, image_shape,
                       name: str = "points"):
    """Points clicked in napari, in the image's px: a DataFrame ``[t,] z, y, x``.

    ``points``: ``(N, 3)`` z, y, x or ``(N, 4)`` t, z, y, x in the points layer's data
    coordinates; both layers' ``scale``/``translate`` map data to world coordinates (an affine
    or rotation is not applied). ``image_shape``: the image layer's data shape, ``(Z, Y, X)`` or
    ``(T, Z, Y, X)`` (same number of axes as the points). Points outside the image are refused.
    """
    import pandas as pd

    from kt_stardist.errors import InputError

    pts = np.asarray(points, float)
    nd = len(image_shape)
    if pts.ndim != 2 or len(pts) == 0:
        raise InputError(f"layer {name!r}: no points; click the kinetochores on the image first")
    if pts.shape[1] != nd:
        raise InputError(f"layer {name!r}: points have {pts.shape[1]} axes, the image {nd}; "
                         "add the points layer while the image is shown")
    world = pts * np.asarray(points_scale, float)[-nd:] + np.asarray(points_translate, float)[-nd:]
    px = (world - np.asarray(image_translate, float)[-nd:]) / np.asarray(image_scale, float)[-nd:]
    outside = np.any((px < -0.5) | (px > np.asarray(image_shape) - 0.5), axis=1)
    if outside.any():
        raise InputError(f"layer {name!r}: {int(outside.sum())} of {len(px)} points lie outside the image")
    df = pd.DataFrame(px, columns=["t", "z", "y", "x"][4 - nd:])
    if "t" in df.columns:
        df["t"] = np.round(df["t"]).astype(np.int64)
    return df


def predict_steps(model, image, settings=None):
    """Generator: :func:`kt_stardist.pipeline.iter_find_points` (frames, then pairs/tracks),
    yielding ``(done, total, message)``; returns ``(points DataFrame with t (px), [warnings])``."""
    from kt_stardist.pipeline import iter_find_points

    df, dets = yield from iter_find_points(model, image, settings)
    return df, [w for d in dets for w in d.warnings]


def predict_job(model_folder, image, settings=None):
    """Generator: load the model (``model_folder``; None or "": the shipped one), then
    :func:`predict_steps`; the same steps and return value."""
    from kt_stardist.model import load_model

    yield 0, 1, "loading the model"
    model = load_model(model_folder or None)
    return (yield from predict_steps(model, image, settings))


def _child(queue, job, args):
    """In the child process: run generator ``job(*args)``, sending its steps, then its return
    value or its exception, through ``queue``."""
    try:
        steps = job(*args)
        while True:
            queue.put(("step", next(steps)))
    except StopIteration as stop:
        queue.put(("done", stop.value))
    except BaseException as exc:  # noqa: BLE001 (handed to the parent, which raises it)
        try:
            queue.put(("error", exc))
        except Exception:  # an exception that does not pickle
            queue.put(("error", RuntimeError(f"{type(exc).__name__}: {exc}")))


def in_process(job, *args, poll_s: float = 0.5):
    """Generator: run generator function ``job(*args)`` (module-level; arguments and results
    pickled) in a fresh Python process and yield its steps; returns its return value and
    raises its exception.

    TensorFlow runs there, not in napari's process: TensorFlow and Mesa's OpenGL driver each
    carry an LLVM, and loaded into one process they crash it (segmentation fault) as soon as
    napari draws (seen with tensorflow-cpu 2.21 and Mesa's llvmpipe; tensorflow issue #109933).
    """
    import multiprocessing
    import queue as queues

    ctx = multiprocessing.get_context("spawn")
    channel = ctx.Queue()
    child = ctx.Process(target=_child, args=(channel, job, args), daemon=True, name="kt-stardist")
    child.start()
    try:
        while True:
            try:
                kind, value = channel.get(timeout=poll_s)
            except queues.Empty:
                if not child.is_alive():
                    raise RuntimeError(f"the kt-stardist worker process ended unexpectedly "
                                       f"(exit code {child.exitcode})") from None
                continue
            if kind == "step":
                yield value
            elif kind == "done":
                return value
            else:
                raise value
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.terminate()


def _epochs_done(folder) -> int:
    """Epochs recorded in ``history.csv`` of a model folder being trained (written atomically
    after every epoch by :func:`kt_stardist.train.fit`); 0 before the first."""
    try:
        with open(Path(folder) / "history.csv", encoding="utf-8") as f:
            return max(0, sum(1 for line in f if line.strip()) - 1)
    except OSError:
        return 0


def finetune_steps(out, image, points, settings=None, from_model=None, poll_s: float = 0.5):
    """Generator: finetune a model on one annotated image, through :func:`kt_stardist.train.finetune`
    (what ``kt-stardist finetune`` runs), yielding ``(epochs done, epochs, message)`` while it trains.

    ``image``: :class:`kt_stardist.io.Image` (its voxel size is recorded with the data);
    ``points``: DataFrame ``[t,] z, y, x`` px of that image (:func:`points_in_image_px`);
    ``from_model``: folder to start from (None: the shipped model). The image and points are
    saved in ``out/training_data/`` (image.tif, points.csv) and trained on from there; the model
    folder ``out`` must not hold a model yet. Returns ``(out Path, report of train.finetune)``.
    """
    import concurrent.futures

    from kt_stardist import io, train
    from kt_stardist.errors import InputError
    from kt_stardist.model import DEFAULT_MODEL_DIR
    from kt_stardist.settings import FinetuneSettings

    out = Path(out)
    if (out / "config.json").exists():
        raise InputError(f"{out}: already holds a model; choose another name or folder")
    settings = settings or FinetuneSettings()
    data_dir = out / "training_data"
    data_dir.mkdir(parents=True, exist_ok=True)
    vs = tuple(image.voxel_size_um)
    io.write_image(data_dir / "image.tif", image, voxel_size_um=vs)
    io.write_points(points, data_dir / "points.csv", voxel_size_um=vs)
    epochs = settings.train.epochs
    yield 0, epochs, "preparing the training data"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        job = pool.submit(train.finetune, out, settings, from_model=from_model or DEFAULT_MODEL_DIR,
                          images=[data_dir / "image.tif"], points=[data_dir / "points.csv"],
                          tensorboard=False, progress=False)
        while True:
            try:
                _, report = job.result(timeout=poll_s)
                break
            except concurrent.futures.TimeoutError:
                done = _epochs_done(out)
                yield done, epochs, (f"epoch {done + 1} of {epochs}" if done < epochs else "choosing thresholds")
    return out, report
