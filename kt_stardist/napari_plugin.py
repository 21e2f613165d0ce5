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
           "write_points", "predict_widget"]

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
# widget (autogenerated by napari with magicgui from this signature)
# --------------------------------------------------------------------------------------------


def predict_widget(
    image: "napari.layers.Image",  # noqa: F821 (resolved by magicgui when napari runs it)
    model_folder: str = "",
    voxel_size_z_um: float = 0.0,
    voxel_size_yx_um: float = 0.0,
) -> "napari.types.LayerDataTuple":  # noqa: F821
    """Find kinetochores in the selected image layer (:func:`kt_stardist.pipeline.find_points`,
    the detection ``predict`` runs); adds a points layer (px).

    The layer must be one channel, ``(Z, Y, X)`` or ``(T, Z, Y, X)``. ``model_folder`` empty:
    the shipped model. Voxel size 0: taken from the layer's scale when it is set (µm), else
    0.3 × 0.13 × 0.13 µm.
    """
    from kt_stardist import io
    from kt_stardist.defaults import VOXEL_SIZE_UM
    from kt_stardist.errors import InputError
    from kt_stardist.model import load_model
    from kt_stardist.pipeline import find_points

    if image is None:
        raise InputError("select an image layer")
    data = np.asarray(image.data)
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise InputError(f"layer {image.name!r}: expected (Z, Y, X) or (T, Z, Y, X), got shape {data.shape}")
    scale = [float(s) for s in np.asarray(getattr(image, "scale", np.ones(data.ndim)))[-3:]]
    voxel = tuple(VOXEL_SIZE_UM) if all(s == 1.0 for s in scale) else tuple(scale)
    if voxel_size_z_um > 0 and voxel_size_yx_um > 0:
        voxel = (float(voxel_size_z_um), float(voxel_size_yx_um), float(voxel_size_yx_um))
    img = io.Image(data=data[..., None], voxel_size_um=voxel, axes="TZYXC", path=None)
    model = load_model(model_folder or None)
    df, _ = find_points(model, img, show_progress=False)
    if np.asarray(image.data).ndim == 3 and "t" in df.columns:
        df = df.drop(columns="t")
    data_out, meta, kind = points_layers(df, name=f"{image.name} kinetochores")[0]
    meta["scale"] = tuple(np.asarray(image.scale)[-data_out.shape[1]:]) if hasattr(image, "scale") else None
    if meta["scale"] is None:
        del meta["scale"]
    return (data_out, meta, kind)
