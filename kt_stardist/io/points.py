"""Point tables: canonical CSV, arivis exports and napari CSVs; written atomically.

A points table is a DataFrame with ``t`` (int, when there is time), ``z, y, x`` (float px,
sub-voxel), optional ``z_um, y_um, x_um``, ``prob`` and ids ``point_id, pair_id, sister,
track_id``, sorted by t, z, y, x. Tables from ``kt-stardist predict`` also carry ``split`` and
the refinement's fit (:func:`kt_stardist.predict.refine.refine_and_split`): ``fit_ok`` (the
maximum-likelihood fit passed its checks; False: the position fell back to the centroid),
``sigma_z_nm, sigma_y_nm, sigma_x_nm`` (the position's uncertainty, Cramér–Rao standard
deviation, nm), ``photons`` (the spot's total photons) and ``background`` (photons per voxel).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from kt_stardist.errors import InputError
from kt_stardist.io.atomic import atomic_write
from kt_stardist.validate import check_voxel_size

__all__ = ["POINT_COLUMNS", "read_points", "read_arivis", "write_points", "write_napari_points", "points_zyx"]


#: canonical column order of a points table (others follow)
POINT_COLUMNS = ["t", "z", "y", "x", "z_um", "y_um", "x_um", "prob",
                 "point_id", "pair_id", "sister", "track_id"]
_ARIVIS_TAG_RE = re.compile(r"Pair(\d+)_(\d+)$", re.I)


#: a points table has a handful of columns; more than this is not one (refused before parsing)
MAX_COLUMNS = 1000


def _check_header_width(path):
    """Refuse a CSV whose first line has more than :data:`MAX_COLUMNS` fields, reading only the
    first 1 MB of it."""
    with open(path, "rb") as f:
        head = f.read(2**20)
    whole_line = b"\n" in head
    n = head.split(b"\n", 1)[0].count(b",") + 1
    if n > MAX_COLUMNS or not whole_line and len(head) == 2**20:
        count = str(n) if whole_line else f"over {n}"
        raise InputError(f"{path}: {count} columns in the header; a points table has a few (t, z, y, x, ...)")


def _read_csv(path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a points CSV file")
    _check_header_width(path)
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise InputError(f"{path}: empty file; expected a points CSV with a header") from None
    except Exception as e:
        raise InputError(f"{path}: cannot read as CSV ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None


def _numeric(df, column, name, integer=False):
    """Column as float64 (or int64), with NaN / non-numbers reported on one line."""
    import pandas as pd

    values = pd.to_numeric(df[column], errors="coerce")
    bad = values.isna() | ~np.isfinite(values.astype(float))
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{name}: column {column!r} has a missing or non-numeric value "
                         f"{df[column].iloc[row]!r} (data row {row + 1}); expected numbers")
    if integer:
        if not (values == np.round(values)).all():
            raise InputError(f"{name}: column {column!r} must hold whole numbers (frame index)")
        return values.astype(np.int64)
    return values.astype(np.float64)


def _finish_points(df, name):
    """Check and type the coordinate columns; put canonical columns first."""
    for c in ("z", "y", "x"):
        df[c] = _numeric(df, c, name)
    if "t" in df.columns:
        df["t"] = _numeric(df, "t", name, integer=True)
    for c in ("z_um", "y_um", "x_um", "prob"):
        if c in df.columns:
            import pandas as pd

            df[c] = pd.to_numeric(df[c], errors="coerce").astype(np.float64)
    first = [c for c in POINT_COLUMNS if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]].reset_index(drop=True)


def read_points(path):
    """Read a points table; the layout is detected. Returns a DataFrame (rows in file order).

    Layouts: canonical (``[t,] z, y, x`` in px plus any other columns; this includes the
    shared ``t,index,z,y,x`` file), arivis export (a ``Tags`` column, see :func:`read_arivis`)
    and napari's points CSV (``index, axis-0, axis-1, axis-2[, axis-3]``: z, y, x or
    t, z, y, x). Coordinates are float px, ``t`` int.
    """
    name = str(path)
    df = _read_csv(path)
    cols = set(df.columns)
    if "Tags" in cols:
        return _arivis_from_df(df, name)
    if {"z", "y", "x"} <= cols:
        return _finish_points(df.copy(), name)
    axis_cols = sorted((c for c in cols if re.fullmatch(r"axis-\d+", str(c))),
                       key=lambda c: int(c.split("-")[1]))
    if axis_cols:
        n = len(axis_cols)
        if axis_cols != [f"axis-{i}" for i in range(n)] or n not in (3, 4):
            raise InputError(f"{name}: napari points CSV with {n} axes ({', '.join(axis_cols)})"
                             "; expected axis-0..axis-2 (z, y, x) or axis-0..axis-3 (t, z, y, x)")
        names = ["z", "y", "x"] if n == 3 else ["t", "z", "y", "x"]
        clash = [c for c in names if c in cols]
        if clash:
            raise InputError(f"{name}: napari CSV also has column(s) {clash}; ambiguous")
        df = df.rename(columns=dict(zip(axis_cols, names)))
        df = df.drop(columns=[c for c in ("index",) if c in df.columns])
        return _finish_points(df, name)
    cols = ", ".join(map(str, df.columns[:12])) + (f", ... ({len(df.columns)} columns)" if len(df.columns) > 12 else "")
    raise InputError(f"{name}: unknown points layout (columns {cols}); "
                     "expected z,y,x columns, an arivis export (Tags) or a napari CSV (axis-0..)")


def read_arivis(path):
    """Read an arivis export: ``Tags`` like ``Group.Channel.PairN_k`` and px centres of mass.

    Coordinates come from the ``X/Y/Z (px), Center of Mass (Intensities) #1`` columns (or
    the first ``X (px)...`` column). Time is implicit: rows are in frame order and a tag seen
    again starts the next frame. Returns columns ``t, z, y, x`` (px), ``point_id`` (the
    ``#`` column, else row number), ``pair_id`` (N), ``sister`` (k), ``track_id`` (one per
    tag, the same kinetochore across frames), ``tag``, plus other columns (snake_case).
    """
    return _arivis_from_df(_read_csv(path), str(path))


def _arivis_coordinate_column(df, axis, name):
    preferred = f"{axis} (px), Center of Mass (Intensities) #1"
    if preferred in df.columns:
        return preferred
    for c in df.columns:
        if str(c).startswith(f"{axis} (px)"):
            return c
    raise InputError(f"{name}: arivis export has no {preferred!r} column (px coordinates)")


def _arivis_from_df(df, name):
    import pandas as pd

    if "Tags" not in df.columns:
        raise InputError(f"{name}: not an arivis export (no 'Tags' column)")
    coords = {a.lower(): _arivis_coordinate_column(df, a, name) for a in "ZYX"}
    tags = df["Tags"].astype(str).str.strip()
    if df["Tags"].isna().any():
        row = int(np.flatnonzero(df["Tags"].isna().to_numpy())[0])
        raise InputError(f"{name}: empty Tags value (data row {row + 1})")

    frames, seen, t = [], set(), 0
    for tag in tags:
        if tag in seen:
            t, seen = t + 1, set()
        seen.add(tag)
        frames.append(t)
    parsed = tags.str.extract(_ARIVIS_TAG_RE)
    out = pd.DataFrame({
        "t": frames,
        "z": df[coords["z"]], "y": df[coords["y"]], "x": df[coords["x"]],
        "point_id": (_numeric(df, "#", name, integer=True) if "#" in df.columns
                     else np.arange(len(df), dtype=np.int64)),
        "pair_id": pd.to_numeric(parsed[0]).astype("Int64"),
        "sister": pd.to_numeric(parsed[1]).astype("Int64"),
        "track_id": pd.factorize(tags)[0].astype(np.int64),
        "tag": tags,
    })
    used = {"#", "Tags", *coords.values()}
    for c in df.columns:
        if c not in used:
            snake = re.sub(r"[^0-9a-z]+", "_", str(c).lower()).strip("_") or "column"
            out[snake if snake not in out.columns else f"arivis_{snake}"] = df[c].to_numpy()
    return _finish_points(out, name)


def points_zyx(df) -> np.ndarray:
    """The ``z, y, x`` columns of a points table as an ``(N, 3)`` float64 array, px."""
    missing = [c for c in ("z", "y", "x") if c not in getattr(df, "columns", ())]
    if missing:
        raise InputError(f"points table lacks column(s) {', '.join(missing)}; expected z, y, x px")
    return df[["z", "y", "x"]].to_numpy(dtype=np.float64)


def _sorted_points(df, name):
    missing = [c for c in ("z", "y", "x") if c not in df.columns]
    if missing:
        raise InputError(f"{name}: points table lacks column(s) {', '.join(missing)}")
    keys = [c for c in ("t", "z", "y", "x") if c in df.columns]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def write_points(df, path, voxel_size_um=None, float_format: str = "%.4f") -> None:
    """Write a points table as CSV, atomically, sorted by ``(t,) z, y, x``.

    With ``voxel_size_um`` ``(z, y, x)`` the columns ``z_um, y_um, x_um`` are (re)computed
    from the px columns. Floats are written with ``float_format`` (default ``%.4f``:
    0.0001 px, well below the sub-voxel precision of any detector).
    """
    out = _sorted_points(df, str(path)).copy()
    if voxel_size_um is not None:
        vs = check_voxel_size(voxel_size_um, f"{path}: voxel_size_um")
        for c, v in zip("zyx", vs):
            out[f"{c}_um"] = out[c].astype(np.float64) * v
    first = [c for c in POINT_COLUMNS if c in out.columns]
    out = out[first + [c for c in out.columns if c not in first]]
    with atomic_write(path, "w", newline="") as f:
        out.to_csv(f, index=False, float_format=float_format, lineterminator="\n")


def write_napari_points(df, path, float_format: str = "%.4f") -> None:
    """Write napari's points CSV (``index, axis-0, ...``; axes t, z, y, x or z, y, x), atomically.

    ``prob`` and the id columns, when present, follow as napari point properties.
    Drag the file onto napari (or ``viewer.open(path, plugin="napari")``) to see the points.
    """
    import pandas as pd

    pts = _sorted_points(df, str(path))
    axes = [c for c in ("t", "z", "y", "x") if c in pts.columns]
    out = pd.DataFrame({"index": np.arange(len(pts))})
    for i, c in enumerate(axes):
        out[f"axis-{i}"] = pts[c].to_numpy()
    for c in ("prob", "point_id", "pair_id", "sister", "track_id"):
        if c in pts.columns:
            out[c] = pts[c].to_numpy()
    with atomic_write(path, "w", newline="") as f:
        out.to_csv(f, index=False, float_format=float_format, lineterminator="\n")
