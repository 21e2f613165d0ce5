"""Reading and writing images and point tables; every write is atomic.

Images in memory are 5D ``(T, Z, Y, X, C)`` (channel last, as StarDist wants ``ZYXC`` per
frame). Voxel sizes are ``(z, y, x)`` in µm. Point tables are pandas DataFrames with columns
``t`` (int, when there is time), ``z, y, x`` (float, px, sub-voxel), optional
``z_um, y_um, x_um``, ``prob`` and ids ``point_id, pair_id, sister, track_id``.

Bad input raises :class:`kt_stardist.errors.InputError` with one line naming the file.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError

__all__ = [
    "atomic_write", "atomic_path", "Image", "read_image", "write_image", "check_volume",
    "voxel_size_or_default", "check_voxel_size", "read_points", "read_arivis", "write_points",
    "write_napari_points", "points_zyx", "POINT_COLUMNS",
]

# --------------------------------------------------------------------------------------------
# atomic writes
# --------------------------------------------------------------------------------------------


def _file_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (temp files are created 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _prepare_target(path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a file name to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_kwargs):
    """Open a temporary file beside ``path`` for writing; move it onto ``path`` on success.

    Yields the open file object. On normal exit the file is flushed, fsynced and renamed onto
    ``path`` with :func:`os.replace` (atomic on one file system); if the block raises, the
    temporary file is deleted and the exception re-raised, so ``path`` is either the old file
    or the complete new one, never half-written. Text modes default to UTF-8.
    Missing parent folders are created.
    """
    if not any(c in mode for c in "wax"):
        raise ValueError(f"atomic_write: mode must be a write mode, got {mode!r}")
    path = _prepare_target(path)
    if "b" not in mode:
        open_kwargs.setdefault("encoding", "utf-8")
    tmp = tempfile.NamedTemporaryFile(
        mode=mode.replace("x", "w").replace("a", "w"), delete=False, dir=path.parent,
        prefix=f".{path.name}.", suffix=".tmp", **open_kwargs,
    )
    try:
        with tmp as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp.name, _file_mode())
        os.replace(tmp.name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp.name)
        raise


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` (same suffix) for writers that need a path.

    For tifffile, h5py, ``matplotlib.savefig`` and the like: write to the yielded path; on
    success it is fsynced and renamed onto ``path``, on error it is deleted and the error
    re-raised. The suffix (e.g. ``.ome.tif``, ``.png``) is kept, so writers that pick the
    format from the name still work.
    """
    path = _prepare_target(path)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(
        (".ome.tif", ".ome.tiff")) else path.suffix
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.tmp-", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        if not os.path.exists(tmp):
            raise OSError(f"{path}: the writer produced no file")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------------

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_HDF5_RE = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|he5))(?::(?P<dataset>.*))?$", re.I)
_UNIT_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
    "millimeter": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6,
}


@dataclass
class Image:
    """A 3D or 4D (time-lapse) image, held as ``data`` of shape ``(T, Z, Y, X, C)``.

    ``voxel_size_um``: ``(z, y, x)`` in µm, or None when the file does not say.
    ``axes``: the layout found in the file (e.g. ``"ZYX"``, ``"TZCYX"``); ``path``: source.
    """

    data: np.ndarray
    voxel_size_um: tuple | None = None
    axes: str = "TZYXC"
    path: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[4])

    @property
    def shape_zyx(self) -> tuple:
        """``(Z, Y, X)`` in px."""
        return tuple(int(s) for s in self.data.shape[1:4])

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as a ``(Z, Y, X, C)`` array (a view; read from disk for lazy images)."""
        if not -self.n_frames <= t < self.n_frames:
            raise IndexError(f"frame {t} out of range (image has {self.n_frames} frames)")
        f = self.data[t]
        if hasattr(f, "compute"):  # lazy (dask): read just this frame, here, in this process
            return np.asarray(f.compute(scheduler="synchronous"))
        return f


def _normalize_axes(axes: str, name: str) -> str:
    """Check an axes string (letters T, Z, C, Y, X; Z, Y and X required); upper-case it."""
    if not isinstance(axes, str) or not axes:
        raise InputError(f"{name}: axes must be a string like 'ZYX' or 'TZCYX', got {axes!r}")
    ax = axes.upper()
    bad = sorted(set(ax) - set("TZCYX"))
    if bad:
        raise InputError(f"{name}: unknown axis letter(s) {''.join(bad)!r} in axes {axes!r}; "
                         "use T, Z, C, Y, X (e.g. 'TZYX', 'ZCYX')")
    if len(set(ax)) != len(ax):
        raise InputError(f"{name}: repeated axis letter in axes {axes!r}")
    if not set("YX") <= set(ax):
        raise InputError(f"{name}: axes {axes!r} must contain Y and X")
    if "Z" not in ax:
        raise InputError(f"{name}: 2D image ({', '.join(ax)}) given; "
                         "kt-stardist needs a 3D volume (axes must contain Z)")
    return ax


def _to_tzyxc(data, axes: str):
    """Reorder ``data`` laid out as ``axes`` (subset of TZCYX) to 5D ``(T, Z, Y, X, C)``
    (numpy or dask arrays; lazy arrays stay lazy)."""
    for a in "TC":
        if a not in axes:
            data = data[None]
            axes = a + axes
    return data.transpose([axes.index(a) for a in "TZYXC"])


def _unit_factor(unit) -> float | None:
    if unit is None:
        return None
    u = str(unit).strip().lower().replace("\u00b5", "µ")
    return _UNIT_UM.get(u)


def _imagej_voxel_size(tif) -> tuple | None:
    md = tif.imagej_metadata or {}
    factor = _unit_factor(md.get("unit"))
    spacing = md.get("spacing")
    if factor is None or spacing is None:
        return None
    tags = tif.pages.first.tags
    try:
        sizes = []
        for key in ("YResolution", "XResolution"):
            num, den = tags[key].value
            if num <= 0:
                return None
            sizes.append(den / num * factor)  # px per unit -> unit per px -> µm
    except (KeyError, TypeError, ValueError):
        return None
    return (float(spacing) * factor, *sizes)


def _ome_voxel_size(tif) -> tuple | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    out = []
    for a in "ZYX":
        value = pixels.get(f"PhysicalSize{a}")
        factor = _unit_factor(pixels.get(f"PhysicalSize{a}Unit", "µm"))
        if value is None or factor is None:
            return None
        out.append(float(value) * factor)
    return tuple(out)


def _clean_voxel(vs) -> tuple | None:
    if vs is None:
        return None
    vs = tuple(round(float(v), 9) for v in vs)
    if not all(np.isfinite(v) and v > 0 for v in vs):
        return None
    return vs


def check_voxel_size(voxel_size_um, name: str = "--voxel-size") -> tuple:
    """Return ``voxel_size_um`` as a tuple of 3 positive floats ``(z, y, x)`` µm, or raise."""
    try:
        vs = tuple(float(v) for v in voxel_size_um)
    except (TypeError, ValueError):
        raise InputError(f"{name}: voxel size must be 3 numbers Z Y X in µm, "
                         f"got {voxel_size_um!r}") from None
    if len(vs) != 3 or not all(np.isfinite(v) and v > 0 for v in vs):
        raise InputError(f"{name}: voxel size must be 3 positive numbers Z Y X in µm, "
                         f"got {voxel_size_um!r}")
    return vs


def _read_tiff(path: Path, lazy: bool = False):
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            file_axes = series.axes
            data = None
            if lazy:
                try:  # uncompressed, contiguous data: map it, read frames on demand
                    data = tifffile.memmap(path, mode="r")
                    if data.shape != tuple(series.shape):
                        data = None
                except Exception:
                    data = None
            if data is None:
                data = series.asarray()
            if tif.is_imagej:
                kind, vs = "imagej", _imagej_voxel_size(tif)
            elif tif.is_ome:
                kind, vs = "ome", _ome_voxel_size(tif)
            else:
                kind, vs = "plain", None
    except Exception as e:  # tifffile raises many kinds for broken files
        raise InputError(f"{path}: cannot read as TIFF ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    return data, file_axes, kind, vs


def _split_h5(path: str):
    m = _HDF5_RE.match(str(path))
    if not m:
        return None
    return Path(m.group("file")), (m.group("dataset") or None)


def _read_h5(file: Path, dataset: str | None, lazy: bool = False):
    import h5py

    try:
        f = h5py.File(file, "r")
        with contextlib.ExitStack() if lazy else f:
            if dataset is None:
                names = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                if len(names) != 1:
                    raise InputError(f"{file}: name the HDF5 dataset as FILE.h5:/dataset "
                                     f"(found {', '.join('/' + n for n in names) or 'none'})")
                dataset = names[0]
            if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
                raise InputError(f"{file}: no HDF5 dataset {dataset!r}")
            ds = f[dataset]
            data = ds if lazy else ds[()]
            vs = ds.attrs.get("element_size_um")
            vs = tuple(np.ravel(vs)) if vs is not None and np.size(vs) == 3 else None
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"{file}: cannot read as HDF5 ({type(e).__name__})") from None
    return data, vs


def read_image(path, axes: str | None = None, voxel_size_um=None, check: bool = True,
               lazy: bool = False) -> Image:
    """Read a 3D or 4D image into an :class:`Image` with ``data`` of shape ``(T, Z, Y, X, C)``.

    Formats: TIFF (ImageJ hyperstacks, OME-TIFF, plain) and HDF5 as ``file.h5:/dataset``.
    The layout comes from the file (ImageJ/OME axes; plain 3D → ``ZYX``) unless ``axes``
    (e.g. ``"TZYX"``, ``"ZCYX"``, ``"CZYX"``; letters T, Z, C, Y, X) says otherwise; it is
    required for plain 4D/5D files. Voxel size ``(z, y, x)`` µm comes from ImageJ
    ``spacing`` + X/YResolution, OME ``PhysicalSize*`` or HDF5 ``element_size_um``;
    ``voxel_size_um`` overrides it. With ``check`` the values are checked by
    :func:`check_volume` (NaN/Inf, constant frame or channel).

    With ``lazy``, ``data`` is a dask array over a memory map (uncompressed TIFF) or the HDF5
    dataset, chunked one frame at a time: :meth:`Image.frame` reads only that frame, so
    time-lapses larger than memory can be processed frame by frame (values are then checked
    per frame by the caller, not here).
    """
    name = str(path)
    h5 = _split_h5(name)
    file = h5[0] if h5 else Path(name)
    if not file.exists():
        raise InputError(f"{file}: no such file")
    if file.is_dir():
        raise InputError(f"{file}: is a folder; expected an image file (.tif or .h5:/dataset)")

    if h5:
        data, vs = _read_h5(file, h5[1], lazy)
        file_axes, kind = None, "hdf5"
    elif file.suffix.lower() in _TIFF_SUFFIXES:
        data, file_axes, kind, vs = _read_tiff(file, lazy)
    else:
        raise InputError(f"{file}: unknown image format {file.suffix!r}; "
                         "expected .tif/.tiff or .h5:/dataset")

    if data.dtype.kind not in "biuf":
        raise InputError(f"{name}: image values must be numbers, got dtype {data.dtype}")
    if axes is not None:
        ax = _normalize_axes(axes, name)
        if len(ax) != data.ndim:
            raise InputError(f"{name}: axes {axes!r} has {len(ax)} letters but the image has "
                             f"{data.ndim} dimensions, shape {data.shape}")
    else:
        ax = _infer_axes(name, data.shape, file_axes, kind)
    if vs is not None and len(vs) != 3:
        vs = None
    if voxel_size_um is not None:
        vs = check_voxel_size(voxel_size_um)
    if lazy:
        import dask.array as da

        # one frame per chunk, y-x tiled: a block read slices a few chunks, not the whole frame
        chunks = tuple(1 if a == "T" else 256 if a in "YX" else -1 for a in ax)
        data = da.from_array(data, chunks=chunks, name=f"kt-image-{name}", asarray=True)
    image = Image(data=_to_tzyxc(data, ax), voxel_size_um=_clean_voxel(vs),
                  axes=ax, path=name)
    if check and not lazy:
        check_volume(image.data, name)
    return image


def _infer_axes(name: str, shape: tuple, file_axes: str | None, kind: str) -> str:
    ndim = len(shape)
    if ndim < 3:
        raise InputError(f"{name}: 2D image ({', '.join('YX'[-ndim:]) if ndim else 'scalar'})"
                         " given; kt-stardist needs a 3D volume")
    if file_axes and kind in ("imagej", "ome") and set(file_axes) <= set("TZCYX"):
        if "Z" not in file_axes:
            raise InputError(f"{name}: 2D image ({', '.join(file_axes)}) given; "
                             "kt-stardist needs a 3D volume (pass --axes if a dimension is Z)")
        return file_axes
    if file_axes and file_axes.endswith("YXS") and ndim == 3:
        raise InputError(f"{name}: 2D colour image (Y, X, samples) given; "
                         "kt-stardist needs a 3D volume")
    if ndim == 3:
        return "ZYX"
    raise InputError(f"{name}: cannot tell what the {ndim} dimensions {shape} are "
                     f"(file says {file_axes or 'nothing'!r}); pass axes, e.g. --axes TZYX "
                     "or --axes ZCYX")


def check_volume(array, name: str = "image") -> None:
    """Raise :class:`InputError` if ``array`` holds NaN/Inf or a constant frame/channel.

    ``array``: ``(T, Z, Y, X, C)``, ``(Z, Y, X, C)`` or ``(Z, Y, X)``; each frame and channel
    (each 3D volume) is checked separately. ``name`` (a file or argument) starts the message.
    """
    a = np.asarray(array)
    if a.ndim == 3:
        a = a[np.newaxis, ..., np.newaxis]
    elif a.ndim == 4:
        a = a[np.newaxis]
    elif a.ndim != 5:
        raise InputError(f"{name}: expected a 3D volume (Z, Y, X), got shape {np.shape(array)}")
    if a.size == 0:
        raise InputError(f"{name}: empty image, shape {np.shape(array)}")
    if a.dtype.kind not in "biuf":
        raise InputError(f"{name}: image values must be numbers, got dtype {a.dtype}")
    multi_t, multi_c = a.shape[0] > 1, a.shape[4] > 1
    for t in range(a.shape[0]):
        vol = a[t]
        where = f" in frame {t}" if multi_t else ""
        if vol.dtype.kind == "f" and not np.isfinite(vol).all():
            kind = "NaN" if np.isnan(vol).any() else "Inf"
            raise InputError(f"{name}: image has {kind} values{where}; "
                             "replace them (e.g. with 0) before detection")
        lo, hi = vol.min(axis=(0, 1, 2)), vol.max(axis=(0, 1, 2))
        for c in np.flatnonzero(lo == hi):
            ch = f" channel {c}" if multi_c else ""
            raise InputError(f"{name}: constant volume{where}{ch} (every voxel is {lo[c]}); "
                             "expected a fluorescence image")


def _imagej_dtype(data: np.ndarray) -> np.ndarray:
    """Cast to a dtype ImageJ reads: uint8, uint16 or float32."""
    if data.dtype in (np.uint8, np.uint16, np.float32):
        return data
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype.kind in "iu" and data.size and data.min() >= 0 and data.max() <= 65535:
        return data.astype(np.uint16)
    return data.astype(np.float32)


def write_image(path, data, axes: str = "TZCYX", voxel_size_um=VOXEL_SIZE_UM) -> None:
    """Write ``data`` (laid out as ``axes``) as an ImageJ hyperstack TIFF, atomically.

    ``data`` may also be an :class:`Image` (then ``axes`` is ignored and, when the image has
    one, its voxel size is used unless ``voxel_size_um`` is given explicitly as something
    other than the default). The file is ``TZCYX`` with X/YResolution from the y/x voxel
    size, ``spacing`` = z voxel size, unit µm; dtype uint8, uint16 or float32 (others cast).
    """
    if isinstance(data, Image):
        if data.voxel_size_um is not None and voxel_size_um is VOXEL_SIZE_UM:
            voxel_size_um = data.voxel_size_um
        data, axes = data.data, "TZYXC"
    data = np.asarray(data)
    ax = _normalize_axes(axes, str(path))
    if len(ax) != data.ndim:
        raise InputError(f"{path}: axes {axes!r} has {len(ax)} letters but data has "
                         f"{data.ndim} dimensions, shape {data.shape}")
    vz, vy, vx = check_voxel_size(voxel_size_um, f"{path}: voxel_size_um")
    tzyxc = _to_tzyxc(data, ax)
    tzcyx = _imagej_dtype(np.ascontiguousarray(np.moveaxis(tzyxc, 4, 2)))

    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(
            tmp, tzcyx, imagej=True, resolution=(1.0 / vx, 1.0 / vy),
            metadata={"axes": "TZCYX", "spacing": vz, "unit": "um"},
        )


def voxel_size_or_default(image: Image | None, override=None, require: bool = False) -> tuple:
    """Voxel size ``(z, y, x)`` µm: ``override`` if given, else the image's, else the default.

    With ``require=True`` a missing voxel size raises :class:`InputError`
    ("no voxel size in FILE; pass --voxel-size Z Y X") instead of falling back to
    ``defaults.VOXEL_SIZE_UM``.
    """
    if override is not None:
        return check_voxel_size(override)
    vs = getattr(image, "voxel_size_um", None)
    if vs is not None:
        return tuple(float(v) for v in vs)
    if require:
        where = getattr(image, "path", None) or "the image"
        raise InputError(f"no voxel size in {where}; pass --voxel-size Z Y X (µm)")
    return tuple(VOXEL_SIZE_UM)


# --------------------------------------------------------------------------------------------
# points
# --------------------------------------------------------------------------------------------

#: canonical column order of a points table (others follow)
POINT_COLUMNS = ["t", "z", "y", "x", "z_um", "y_um", "x_um", "prob",
                 "point_id", "pair_id", "sister", "track_id"]
_ARIVIS_TAG_RE = re.compile(r"Pair(\d+)_(\d+)$", re.I)


def _read_csv(path):
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder; expected a points CSV file")
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
    raise InputError(f"{name}: unknown points layout (columns {', '.join(map(str, df.columns))}); "
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
