"""Microscope vendor formats (Zeiss CZI, Nikon ND2, Leica LIF, OME-TIFF series) through ``bioio``.

``bioio`` and its plugins (``bioio-czi``, ``bioio-nd2``, ``bioio-lif``, ``bioio-ome-tiff``) are
the optional extra ``[formats]``; without them a one-line error says
``pip install "kt-stardist[formats]"``. bioio hands every image over as ``TCZYX`` (a dask
array, one chunk per plane stack, read on demand) with ``physical_pixel_sizes`` ``(Z, Y, X)``
in µm. A file holding several images (scenes, series, positions) is read at scene 0 unless
the path names one: ``FILE.lif:2`` (index) or ``FILE.lif:NAME``; ``FILE.ome.tif:1`` reads the
second series of an OME-TIFF (a plain ``FILE.ome.tif`` stays with the TIFF reader).
"""

from __future__ import annotations

import re
from pathlib import Path

from kt_stardist.errors import InputError, KtError
from kt_stardist.io.units import unit_factor

__all__ = ["INSTALL_HINT", "VENDOR_SUFFIXES", "split_scene", "read_bioio"]

INSTALL_HINT = 'pip install "kt-stardist[formats]"'
#: file suffixes that go to bioio (OME-TIFF only with a scene, ``FILE.ome.tif:N``)
VENDOR_SUFFIXES = (".czi", ".nd2", ".lif")
_SCENE_RE = re.compile(r"^(?P<file>.+?\.(?:czi|nd2|lif|ome\.tiff?))(?::(?P<scene>[^/\\]*))?$", re.I)


def split_scene(name: str):
    """``"a/b.lif:2"`` → ``(Path("a/b.lif"), "2")``; ``"b.czi"`` → ``(Path("b.czi"), None)``;
    None when ``name`` is no vendor file (a plain OME-TIFF without a scene included)."""
    m = _SCENE_RE.match(str(name))
    if not m:
        return None
    scene = m.group("scene")
    if scene is None and m.group("file").lower().endswith((".ome.tif", ".ome.tiff")):
        return None
    return Path(m.group("file")), (scene or None)


def read_bioio(file, scene=None):
    """Open ``file`` with bioio without reading pixels.

    Returns ``(data, axes, voxel_size_um, reader)``: ``data`` a dask array laid out ``TCZYX``,
    ``axes`` ``"TCZYX"``, ``voxel_size_um`` ``(z, y, x)`` µm (None when the file does not give
    all three), ``reader`` e.g. ``"bioio-czi"`` (plus the scene when the file has several).
    ``scene`` is an index (``"2"``) or a scene name.
    """
    try:
        from bioio import BioImage
        from bioio_base.exceptions import UnsupportedFileFormatError
    except ImportError:
        raise KtError(f"{file}: reading {Path(file).suffix or 'this format'} files needs bioio: {INSTALL_HINT}") from None
    try:
        img = BioImage(str(file))
    except UnsupportedFileFormatError:
        raise InputError(f"{file}: no installed bioio plugin reads this file (damaged, or a format "
                         f"without a plugin); the [formats] extra has CZI, ND2, LIF, OME-TIFF: {INSTALL_HINT}") from None
    except Exception as e:
        raise InputError(f"{file}: cannot read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    scenes = list(img.scenes)
    if scene is not None:
        key = int(scene) if str(scene).isdigit() else str(scene)
        if (isinstance(key, int) and not 0 <= key < len(scenes)) or (isinstance(key, str) and key not in scenes):
            raise InputError(f"{file}: no scene {scene!r}; the file has {len(scenes)}: "
                             f"{', '.join(f'{i}={s}' for i, s in enumerate(scenes[:12]))}")
        img.set_scene(key)
    try:
        data = img.dask_data
        order = img.dims.order
        pps = img.physical_pixel_sizes
    except Exception as e:
        raise InputError(f"{file}: cannot read ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    if order != "TCZYX":  # bioio's standard layout; anything else (e.g. RGB samples) is refused
        raise InputError(f"{file}: bioio gives dimensions {order}; kt-stardist reads TCZYX (no RGB samples)")
    if data.shape[2] < 2:
        raise InputError(f"{file}: 2D image (one z plane) given; kt-stardist needs a 3D volume")
    vs = (pps.Z, pps.Y, pps.X)
    vs = None if any(v is None for v in vs) else tuple(float(v) for v in vs)
    plugin = type(img.reader).__module__.split(".")[0].replace("_", "-")
    if vs is not None and plugin == "bioio-ome-tiff":
        vs = _ome_units(img, vs)
    where = f", scene {img.current_scene_index} of {len(scenes)} ({img.current_scene})" if len(scenes) > 1 else ""
    return data, "TCZYX", vs, plugin + where


def _ome_units(img, vs):
    """``vs`` converted to µm with the OME ``PhysicalSize*Unit`` of the current image (bioio's
    OME-TIFF reader hands over the bare values: 0.3 with unit nm stays 0.3); None when a unit is
    not a length."""
    try:
        px = img.metadata.images[img.current_scene_index].pixels
        units = [getattr(getattr(px, f"physical_size_{a}_unit"), "value", "µm") for a in "zyx"]
    except Exception:
        return vs
    factors = [unit_factor(u) for u in units]
    return None if any(f is None for f in factors) else tuple(v * f for v, f in zip(vs, factors))
