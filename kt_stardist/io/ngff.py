"""OME-Zarr (OME-NGFF 0.4 and 0.5) images through the ``ome-zarr`` library: read lazily, write.

Reading gives the full-resolution level of the image's multiscale pyramid as a dask array, one
task per stored zarr chunk, so a frame or a block is read from disk only when computed. The
axes come from the NGFF ``axes`` metadata (names t, c, z, y, x, or types time/channel) mapped
onto kt-stardist's letters ``TCZYX``; the voxel size ``(z, y, x)`` µm from the ``scale``
coordinate transformations of the first dataset (times the multiscale's own, if any) and the
axes' units (UDUNITS-2 names such as ``micrometer``, ``nanometer``; converted to µm). Without
units, a scale other than all ones is taken as µm (the NGFF default writers' convention); all
ones without units means the file does not say.

Writing (:func:`write_ngff`) makes a one-level OME-Zarr image (NGFF 0.4 by default, which
Fiji, napari and the ome-zarr tools all read) or, when the path is ``IMAGE.zarr/labels/NAME``
inside an existing OME-Zarr image, a label image of that image (ome-zarr ``write_labels``).
Both are written beside the target under a temporary name and renamed into place.

Needs the ``ome-zarr`` package (``pip install "kt-stardist[formats]"``). Callers wrap errors:
this module raises :class:`kt_stardist.errors.InputError` with one line naming the path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kt_stardist.errors import InputError, KtError
from kt_stardist.io.units import unit_factor

__all__ = ["INSTALL_HINT", "check_ngff_output", "is_ngff", "is_ngff_target", "read_ngff", "write_ngff", "ngff_axes",
           "ngff_voxel_size", "NGFF_VERSIONS"]

INSTALL_HINT = 'pip install "kt-stardist[formats]"'
#: NGFF versions :func:`write_ngff` writes
NGFF_VERSIONS = ("0.4", "0.5")
#: chunk edge in y and x for written images (px)
_CHUNK_YX_PX = 256
#: files that make a folder a zarr group (zarr v3, v2)
_ZARR_META = ("zarr.json", ".zattrs", ".zgroup")


def is_ngff(path) -> bool:
    """True for a path that names an OME-Zarr store: ``*.zarr``, or a folder holding zarr
    metadata (``zarr.json``, ``.zattrs``, ``.zgroup``)."""
    p = Path(str(path))
    if p.name.lower().endswith(".zarr"):
        return True
    return p.is_dir() and _is_zarr_group(p)


def _is_zarr_group(folder: Path) -> bool:
    return any((folder / f).is_file() for f in _ZARR_META)


def is_ngff_target(path) -> bool:
    """True for an output path that :func:`write_ngff` writes: ``*.zarr``, or
    ``IMAGE.zarr/labels/NAME`` inside an existing OME-Zarr image."""
    p = Path(str(path))
    return p.name.lower().endswith(".zarr") or _labels_parent(p) is not None


def check_ngff_output(path, name: str = "output") -> Path:
    """An OME-Zarr output (:func:`is_ngff_target`) that can be written: nothing there yet, or a
    zarr store from an earlier run, which :func:`write_ngff` replaces once the new one is
    complete (a rerun overwrites it). A file, or a folder that is no zarr store, is refused with
    one line and never replaced. Checks that ome-zarr is installed. Returns a Path."""
    from kt_stardist.validate import check_output_file

    p = Path(str(path))
    _ome_zarr(p)
    if p.is_dir():
        if not _is_zarr_group(p):
            raise InputError(f"{name} {p}: a folder that is not a zarr store is there; it is not replaced "
                             "(remove it or choose another name)")
        return p
    if p.exists():
        raise InputError(f"{name} {p}: is a file; an OME-Zarr store is a folder (remove it or choose another name)")
    return check_output_file(p, name)


def _ome_zarr(path):
    try:
        import ome_zarr.format  # noqa: F401
        import ome_zarr.io  # noqa: F401
        import ome_zarr.reader  # noqa: F401
        import ome_zarr.writer  # noqa: F401
        import zarr  # noqa: F401
    except ImportError:
        raise KtError(f"{path}: reading/writing OME-Zarr needs the ome-zarr package: {INSTALL_HINT}") from None
    return ome_zarr


def ngff_axes(axes_meta, ndim: int, name: str) -> str:
    """NGFF ``axes`` metadata (dicts with ``name``/``type``, or plain names in NGFF 0.3; None
    before 0.3, meaning ``tczyx``) → kt-stardist axis letters, e.g. ``"TCZYX"``, ``"ZYX"``."""
    if axes_meta is None:
        return "TCZYX"[-ndim:]
    letters = []
    for a in axes_meta:
        nm, typ = (a, None) if isinstance(a, str) else (a.get("name"), a.get("type"))
        n = str(nm).strip().lower()
        if n in ("t", "c", "z", "y", "x"):
            letters.append(n.upper())
        elif typ == "time":
            letters.append("T")
        elif typ == "channel":
            letters.append("C")
        else:
            raise InputError(f"{name}: OME-Zarr axis {nm!r} (type {typ or 'not given'}) is none of "
                             "t, c, z, y, x; pass --axes to name the dimensions")
    if len(letters) != ndim:
        raise InputError(f"{name}: OME-Zarr metadata names {len(letters)} axes for a {ndim}D array")
    return "".join(letters)


def _scale(transforms) -> list | None:
    """The product of the ``scale`` transformations in a coordinateTransformations list."""
    out = None
    for tr in transforms or []:
        if tr.get("type") == "scale" and tr.get("scale") is not None:
            s = [float(v) for v in tr["scale"]]
            out = s if out is None else [a * b for a, b in zip(out, s)]
    return out


def ngff_voxel_size(multiscale: dict, axes: str) -> tuple | None:
    """Voxel size ``(z, y, x)`` µm of the first (full-resolution) dataset of an NGFF
    ``multiscales`` entry laid out as ``axes``; None when the file does not say or uses a unit
    that is not a length."""
    ds = (multiscale.get("datasets") or [{}])[0]
    scale = _scale(ds.get("coordinateTransformations"))
    outer = _scale(multiscale.get("coordinateTransformations"))
    if scale is None or len(scale) != len(axes) or "Z" not in axes:
        return None
    if outer is not None and len(outer) == len(scale):
        scale = [a * b for a, b in zip(scale, outer)]
    meta = multiscale.get("axes") or []
    units = [None if isinstance(a, str) else a.get("unit") for a in meta] if len(meta) == len(axes) else [None] * len(axes)
    zyx = [axes.index(a) for a in "ZYX"]
    if all(units[i] is None for i in zyx):
        if all(scale[i] == 1.0 for i in zyx):
            return None  # the writers' default: nothing known
        return tuple(scale[i] for i in zyx)  # no units: µm, as the NGFF writers assume
    factors = [unit_factor(units[i] if units[i] is not None else "micrometer") for i in zyx]
    if any(f is None for f in factors):
        return None
    return tuple(scale[i] * f for i, f in zip(zyx, factors))


def read_ngff(path):
    """Open the OME-Zarr image at ``path`` without reading pixels.

    Returns ``(data, axes, voxel_size_um, version)``: ``data`` a dask array of the
    full-resolution level, chunked as stored; ``axes`` letters as :func:`ngff_axes`;
    ``voxel_size_um`` ``(z, y, x)`` µm or None; ``version`` the NGFF version (e.g. ``"0.4"``).
    """
    _ome_zarr(path)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader

    name = str(path)
    try:
        loc = parse_url(name)
        nodes = list(Reader(loc)()) if loc is not None else []
    except Exception as e:  # zarr/ome-zarr raise many kinds for broken stores
        raise InputError(f"{name}: cannot read as OME-Zarr ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if loc is None or not nodes:
        raise InputError(f"{name}: not an OME-Zarr image (no zarr metadata found)")
    node = nodes[0]
    if not any(isinstance(s, Multiscales) for s in node.specs) or not node.data:
        kinds = ", ".join(type(s).__name__ for s in node.specs) or "no multiscales"
        raise InputError(f"{name}: not an OME-Zarr image ({kinds}); give the path of one image, "
                         "e.g. plate.zarr/A/1/0")
    data = node.data[0]
    multiscales = loc.root_attrs.get("multiscales") or [{}]
    ms = multiscales[0]
    axes = ngff_axes(ms.get("axes", node.metadata.get("axes")), data.ndim, name)
    vs = ngff_voxel_size(ms, axes)
    return data, axes, vs, str(loc.version)


def _labels_parent(path: Path) -> Path | None:
    """The OME-Zarr image that ``path`` = ``IMAGE/labels/NAME`` belongs to, if it exists."""
    if path.parent.name != "labels":
        return None
    image = path.parent.parent
    return image if image.is_dir() and is_ngff(image) else None


def write_ngff(path, data: np.ndarray, axes: str, voxel_size_um, version: str = "0.4") -> None:
    """Write ``data`` laid out as ``axes`` (letters of ``TCZYX``, Z, Y, X required) to the
    OME-Zarr at ``path``, NGFF ``version`` ``"0.4"`` or ``"0.5"``, one resolution level,
    scale ``(z, y, x)`` = ``voxel_size_um`` in micrometer, chunks of one frame, one channel
    and up to 256 × 256 px in y, x. A ``path`` of the form ``IMAGE.zarr/labels/NAME`` inside
    an existing OME-Zarr image writes a label image of it (its version); anything at
    ``path`` is replaced only once the new store is complete."""
    _ome_zarr(path)
    import zarr
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    path = Path(str(path))
    if version not in NGFF_VERSIONS:
        raise InputError(f"{path}: NGFF version {version!r} not written; use one of {', '.join(NGFF_VERSIONS)}")
    order = [a for a in "TCZYX" if a in axes]
    arr = np.transpose(np.asarray(data), [axes.index(a) for a in order])
    ngff_ax = [dict(name=a.lower(), type={"T": "time", "C": "channel"}.get(a, "space"))
               | ({"unit": "micrometer"} if a in "ZYX" else {}) for a in order]
    scale = {a.lower(): 1.0 for a in order if a in "TC"} | dict(zip("zyx", (float(v) for v in voxel_size_um)))
    chunks = tuple(min(n, _CHUNK_YX_PX) if a in "YX" else (n if a == "Z" else 1) for a, n in zip(order, arr.shape))
    parent = _labels_parent(path)
    if parent is not None:
        _write_labels_into(parent, path.name, arr, ngff_ax, scale, chunks)
        return
    fmt = FormatV04() if version == "0.4" else FormatV05()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=fmt.zarr_format)
        write_image(arr, group, fmt=fmt, axes=ngff_ax, scale=scale, scale_factors=[],
                    storage_options=dict(chunks=chunks), name=path.name)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Move the complete folder ``new`` onto ``target`` (the old one, if any, removed after)."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_labels_into(image: Path, name: str, arr, ngff_ax, scale, chunks) -> None:
    """``image/labels/name`` as an NGFF label image: written under a temporary name, then
    renamed and listed under that name in ``image/labels``."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_labels

    loc = parse_url(str(image))
    fmt = loc.fmt
    group = zarr.open_group(str(image), mode="a", zarr_format=fmt.zarr_format)
    tmp = f".{name}.tmp-{os.getpid()}"
    try:
        write_labels(arr, group, name=tmp, fmt=fmt, axes=ngff_ax, scale=scale, scaler=None, scale_factors=[],
                     storage_options=dict(chunks=chunks))
        _rename_multiscale(image / "labels" / tmp, name, fmt.zarr_format)
        _replace_dir(image / "labels" / tmp, image / "labels" / name)
    finally:
        shutil.rmtree(image / "labels" / tmp, ignore_errors=True)
        labels = zarr.open_group(str(image / "labels"), mode="a", zarr_format=fmt.zarr_format)
        attrs = labels.attrs.asdict()
        ome = attrs.get("ome", attrs)
        names = [n for n in ome.get("labels", []) if n != tmp]
        if (image / "labels" / name).exists() and name not in names:
            names.append(name)
        ome["labels"] = names
        labels.attrs.put(attrs)


def _rename_multiscale(group_path: Path, name: str, zarr_format: int) -> None:
    """Set the ``name`` of the multiscale image at ``group_path`` (NGFF 0.4 and 0.5 layouts)."""
    import zarr

    g = zarr.open_group(str(group_path), mode="a", zarr_format=zarr_format)
    attrs = g.attrs.asdict()
    ome = attrs.get("ome", attrs)
    for ms in ome.get("multiscales", []):
        ms["name"] = name
    g.attrs.put(attrs)
