"""Images: read TIFF (ImageJ, OME, plain), HDF5, OME-Zarr and vendor formats into ``(T, Z, Y, X, C)``;
write ImageJ hyperstacks or OME-Zarr.

Voxel sizes are ``(z, y, x)`` in µm, read from the file's metadata (ImageJ ``spacing`` +
resolution, OME ``PhysicalSize*``, HDF5 ``element_size_um``, OME-Zarr ``scale`` transformations
and axis units, bioio ``physical_pixel_sizes``) unless given. Axes come from the file's
metadata when it has any (ImageJ/OME-TIFF, OME-Zarr, bioio), else from ``axes``, else plain
3D = ``ZYX``. OME-Zarr is read by :mod:`kt_stardist.io.ngff` (``ome-zarr``), CZI/ND2/LIF and
OME-TIFF series by :mod:`kt_stardist.io.vendor` (``bioio``); both are the ``[formats]`` extra.
Bad input raises :class:`kt_stardist.errors.InputError` with one line naming the file.
"""

from __future__ import annotations

import contextlib
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.io.atomic import atomic_path
from kt_stardist.io.units import unit_factor as _unit_factor
from kt_stardist.validate import check_volume, check_voxel_size

__all__ = ["Image", "read_image", "write_image", "voxel_size_or_default", "check_volume", "check_voxel_size",
           "dask_view"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_HDF5_RE = re.compile(r"^(?P<file>.+?\.(?:h5|hdf5|hdf|he5))(?::(?P<dataset>.*))?$", re.I)


@dataclass
class Image:
    """A 3D or 4D (time-lapse) image, held as ``data`` of shape ``(T, Z, Y, X, C)``.

    ``voxel_size_um``: ``(z, y, x)`` in µm, or None when the file does not say.
    ``axes``: the layout found in the file (e.g. ``"ZYX"``, ``"TZCYX"``); ``path``: source;
    ``reader``: what read it (``"imagej-tiff"``, ``"ome-tiff"``, ``"tiff"``, ``"hdf5"``,
    ``"ome-zarr 0.4"``, ``"bioio-czi"``, ...; None for images made in memory).
    """

    data: np.ndarray
    voxel_size_um: tuple | None = None
    axes: str = "TZYXC"
    path: str | None = None
    reader: str | None = None

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

    def summary(self) -> str:
        """One line: reader, axes, shape ``(T, Z, Y, X, C)`` and voxel size (µm)."""
        vs = ("voxel " + " × ".join(f"{v:g}" for v in self.voxel_size_um) + " µm") if self.voxel_size_um else \
            "no voxel size"
        return (f"{self.reader or 'array'}: axes {self.axes}, shape {tuple(int(s) for s in self.data.shape)} "
                f"(T, Z, Y, X, C), {vs}")

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as a ``(Z, Y, X, C)`` array (a view; read from disk for lazy images)."""
        if not -self.n_frames <= t < self.n_frames:
            raise IndexError(f"frame {t} out of range (image has {self.n_frames} frames)")
        f = self.data[t]
        if hasattr(f, "compute"):  # lazy (dask): read just this frame, here, in this process
            return np.asarray(f.compute(scheduler="synchronous"))
        return f


class _Unread:
    """``data[...]`` on demand, and nothing else (no ``copy``, no array protocol): what
    :func:`dask_view` hands to dask so that it does not copy ``data``."""

    def __init__(self, data):
        self._data, self.shape, self.dtype = data, tuple(int(s) for s in data.shape), data.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        return self._data[key]


def dask_view(data, chunks, name=False):
    """A dask array over the array-like ``data`` (numpy array, memmap, h5py/zarr dataset)
    without reading or copying it: dask's ``from_array`` copies anything with a ``copy`` method,
    so a memory-mapped movie would be read whole on every open. ``chunks`` as dask's;
    ``name``: the graph key prefix (False: a random one)."""
    import dask.array as da

    return da.from_array(_Unread(data), chunks=chunks, name=name, asarray=True)


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

@contextlib.contextmanager
def _quiet_logger(name):
    """A library's warnings about a broken file off while reading it: the reader raises one
    line of its own instead."""
    import logging

    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def _check_declared_size(path, shape, dtype, file_bytes):
    """Refuse, before reading, a header that declares more data than the file could hold
    uncompressed at a plausible ratio (×1000) or than memory can take: one line."""
    from kt_stardist.validate import check_memory

    n = int(np.prod([int(s) for s in shape], dtype=np.float64)) * np.dtype(dtype).itemsize
    if n > 1000 * max(int(file_bytes), 1) + 2**20:
        raise InputError(f"{path}: the header declares a {' x '.join(map(str, shape))} {np.dtype(dtype).name} image "
                         f"({n / 1e9:.3g} GB) in a file of {file_bytes / 1e6:.3g} MB; the file is damaged or hostile")
    check_memory(shape, dtype, str(path))


def _read_tiff(path: Path, lazy: bool = False):
    import tifffile

    try:
        with _quiet_logger("tifffile"), tifffile.TiffFile(path) as tif:
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
                _check_declared_size(path, series.shape, series.dtype, tif.filehandle.size)
                data = series.asarray()
            if tif.is_imagej:
                kind, vs = "imagej", _imagej_voxel_size(tif)
            elif tif.is_ome:
                kind, vs = "ome", _ome_voxel_size(tif)
            else:
                kind, vs = "plain", None
    except InputError:
        raise
    except Exception as e:  # tifffile raises many kinds for broken files
        raise InputError(f"{path}: cannot read as TIFF ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    return data, file_axes, kind, vs


#: reader names in :attr:`Image.reader` for the TIFF/HDF5 kinds
_READER_NAMES = {"imagej": "imagej-tiff", "ome": "ome-tiff", "plain": "tiff", "hdf5": "hdf5"}


def _file_bytes(file: Path) -> int:
    """Size on disk of a file, or of everything in a folder (a zarr store)."""
    if not file.is_dir():
        return file.stat().st_size
    return sum(f.stat().st_size for f in file.rglob("*") if f.is_file())


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

    Formats: TIFF (ImageJ hyperstacks, OME-TIFF, plain), HDF5 as ``file.h5:/dataset``,
    OME-Zarr (NGFF 0.4/0.5; a ``*.zarr`` folder) and, with the ``[formats]`` extra, CZI, ND2,
    LIF (``file.lif:SCENE`` for another scene than the first) and OME-TIFF series
    (``file.ome.tif:N``). The layout comes from the file (ImageJ/OME-TIFF axes; plain 3D →
    ``ZYX``) unless ``axes`` (e.g. ``"TZYX"``, ``"ZCYX"``, ``"CZYX"``; letters T, Z, C, Y, X)
    says otherwise; it is required for plain 4D/5D TIFF and HDF5. OME-Zarr and bioio files
    always state their axes: there a different ``axes`` is refused. Voxel size ``(z, y, x)``
    µm comes from ImageJ ``spacing`` + X/YResolution, OME ``PhysicalSize*``, HDF5
    ``element_size_um``, OME-Zarr ``scale`` × axis unit or bioio ``physical_pixel_sizes``;
    ``voxel_size_um`` overrides it. With ``check`` the values are checked by
    :func:`check_volume` (NaN/Inf, constant frame or channel).

    With ``lazy``, ``data`` is a dask array over a memory map (uncompressed TIFF) or the HDF5
    dataset, chunked one frame at a time (OME-Zarr: as stored; bioio: as its plugin reads): :meth:`Image.frame` reads only that frame, so
    time-lapses larger than memory can be processed frame by frame (values are then checked
    per frame by the caller, not here).
    """
    from kt_stardist.io import ngff, vendor

    name = str(path)
    h5 = _split_h5(name)
    scene = None if h5 else vendor.split_scene(name)
    file = h5[0] if h5 else scene[0] if scene else Path(name)
    if not file.exists():
        raise InputError(f"{file}: no such file")
    zarr = ngff.is_ngff(file)
    if file.is_dir() and not zarr:
        raise InputError(f"{file}: is a folder; expected an image file (.tif, .h5:/dataset, .ome.zarr, .czi, .nd2, .lif)")

    if h5:
        data, vs = _read_h5(file, h5[1], lazy)
        file_axes, kind = None, "hdf5"
    elif zarr:
        with _quiet_logger("ome_zarr"):
            data, file_axes, vs, version = ngff.read_ngff(file)
        kind = f"ome-zarr {version}"
    elif scene:
        with _quiet_logger("bioio"):
            data, file_axes, vs, kind = vendor.read_bioio(file, scene[1])
    elif file.suffix.lower() in _TIFF_SUFFIXES:
        data, file_axes, kind, vs = _read_tiff(file, lazy)
    else:
        raise InputError(f"{file}: unknown image format {file.suffix!r}; expected .tif/.tiff, .h5:/dataset, "
                         f".ome.zarr, or {'/'.join(vendor.VENDOR_SUFFIXES)} (with {vendor.INSTALL_HINT})")
    lazy_file = hasattr(data, "compute")  # OME-Zarr and bioio hand over dask arrays
    if lazy_file and not lazy:
        _check_declared_size(name, data.shape, data.dtype, _file_bytes(file))
        data = np.asarray(data.compute(scheduler="synchronous"))

    if data.dtype.kind not in "biuf":
        raise InputError(f"{name}: image values must be numbers, got dtype {data.dtype}")
    if axes is not None:
        ax = _normalize_axes(axes, name)
        if len(ax) != data.ndim:
            raise InputError(f"{name}: axes {axes!r} has {len(ax)} letters but the image has "
                             f"{data.ndim} dimensions, shape {data.shape}")
        if lazy_file and ax != file_axes:  # OME-Zarr / bioio: the file's own axes are authoritative
            raise InputError(f"{name}: the file says its axes are {file_axes} (shape {tuple(data.shape)}), "
                             f"but axes {axes!r} were given; leave --axes out for this file")
    else:
        ax = _infer_axes(name, data.shape, file_axes, kind)
    if vs is not None and len(vs) != 3:
        vs = None
    if voxel_size_um is not None:
        vs = check_voxel_size(voxel_size_um)
    if lazy and not lazy_file:
        # one frame per chunk, y-x tiled: a block read slices a few chunks, not the whole frame
        chunks = tuple(1 if a == "T" else 256 if a in "YX" else -1 for a in ax)
        data = dask_view(data, chunks, name=f"kt-image-{name}")
    image = Image(data=_to_tzyxc(data, ax), voxel_size_um=_clean_voxel(vs),
                  axes=ax, path=name, reader=_READER_NAMES.get(kind, kind))
    if check and not lazy:
        check_volume(image.data, name)
    return image


def _infer_axes(name: str, shape: tuple, file_axes: str | None, kind: str) -> str:
    ndim = len(shape)
    if ndim < 3:
        raise InputError(f"{name}: 2D image ({', '.join('YX'[-ndim:]) if ndim else 'scalar'})"
                         " given; kt-stardist needs a 3D volume")
    if file_axes and kind not in ("plain", "hdf5") and set(file_axes) <= set("TZCYX"):
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
    """Write ``data`` (laid out as ``axes``) as an ImageJ hyperstack TIFF, atomically; a
    ``path`` ending in ``.zarr`` (or ``IMAGE.zarr/labels/NAME`` inside an OME-Zarr image, for
    a label image) is written as OME-Zarr instead (:func:`kt_stardist.io.ngff.write_ngff`:
    NGFF 0.4, axes in t, c, z, y, x order, dtype kept).

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
    from kt_stardist.io import ngff

    if ngff.is_ngff_target(path):
        ngff.write_ngff(path, data, ax, (vz, vy, vx))
        return
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
