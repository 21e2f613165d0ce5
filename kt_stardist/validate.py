"""Input checks, in one place (in the style of Big-FISH's ``check_parameter`` / ``check_array``).

Every public function of kt-stardist that takes user input checks it here, once, at the edge
(io readers, the CLI, the library's entry points); inner functions may assume checked values.
A failed check raises :class:`kt_stardist.errors.InputError` with one line that names what was
wrong (the file, argument or column) and what was expected.

Axis order z, y, x; coordinates in px, sizes in µm unless a name says otherwise.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from kt_stardist.errors import InputError

__all__ = [
    "check_parameter", "check_triple", "check_voxel_size", "check_shape", "check_points_px",
    "check_points_table", "check_volume", "check_labels", "check_fraction", "check_choice", "check_output_file",
    "check_output_dir",
]

_KINDS = {
    int: (numbers.Integral,),
    float: (numbers.Real,),
    bool: (bool, np.bool_),
    str: (str,),
}


def check_parameter(**checks) -> bool:
    """Check argument types: ``check_parameter(n=(value, int), thr=(value, (float, None)))``.

    ``bool`` is not accepted where ``int`` or ``float`` is asked. Raises :class:`InputError`
    naming the first argument of the wrong type; returns True.
    """
    for name, (value, kinds) in checks.items():
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        ok = False
        for k in kinds:
            if k is None:
                ok = ok or value is None
            elif k in (int, float):
                ok = ok or (isinstance(value, _KINDS[k]) and not isinstance(value, (bool, np.bool_)))
            else:
                ok = ok or isinstance(value, _KINDS.get(k, (k,)))
        if not ok:
            want = " or ".join("None" if k is None else k.__name__ for k in kinds)
            raise InputError(f"{name}: expected {want}, got {type(value).__name__} {value!r}")
    return True


def check_triple(value, name: str, kind=float, positive: bool = True) -> tuple:
    """Three numbers (z, y, x) as a tuple of ``kind``; positive unless ``positive=False``."""
    try:
        t = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected three numbers (z, y, x), got {value!r}") from None
    if len(t) != 3 or not all(math.isfinite(v) for v in t) or (positive and not all(v > 0 for v in t)):
        what = "positive numbers" if positive else "finite numbers"
        raise InputError(f"{name}: expected three {what} (z, y, x), got {value!r}")
    return t


def check_voxel_size(voxel_size_um, name: str = "--voxel-size") -> tuple:
    """A voxel size as a tuple of three positive floats ``(z, y, x)`` µm."""
    try:
        return check_triple(voxel_size_um, name)
    except InputError:
        raise InputError(f"{name}: voxel size must be 3 positive numbers Z Y X in µm, "
                         f"got {voxel_size_um!r}") from None


def check_shape(shape_px, name: str = "shape") -> tuple:
    """A volume shape as a tuple of three positive ints ``(Z, Y, X)`` px."""
    try:
        shape = tuple(int(s) for s in shape_px)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected 3 positive integers (Z, Y, X), got {shape_px!r}") from None
    if len(shape) != 3 or min(shape) < 1 or any(float(s) != float(v) for s, v in zip(shape, shape_px)):
        raise InputError(f"{name}: expected 3 positive integers (Z, Y, X), got {shape_px!r}")
    return shape


def available_memory_bytes() -> int:
    """Memory this process can still allocate (psutil's ``available``), bytes."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_memory(shape, dtype, name: str = "shape", copies: float = 1.0) -> None:
    """Refuse up front an array of ``shape`` × ``dtype`` (times ``copies`` working copies) that
    cannot fit in the available memory, with one line saying what it would need."""
    n = 1
    for s in shape:
        n *= int(s)
    need = n * np.dtype(dtype).itemsize * float(copies)
    have = available_memory_bytes()
    if need > have:
        raise InputError(f"{name}: {' x '.join(str(int(s)) for s in shape)} would need {_gb(need)} of memory, "
                         f"{_gb(have)} available")


def _gb(n_bytes) -> str:
    return f"{n_bytes / 1e9:.3g} GB" if n_bytes < 1e12 else f"{n_bytes / 1e12:,.1f} TB"


def check_points_px(points_px, name: str = "points_px") -> np.ndarray:
    """An ``(N, 3)`` float array of finite z, y, x px (an empty input gives shape (0, 3))."""
    pts = np.asarray(points_px, dtype=float)
    if pts.size == 0:
        return pts.reshape(0, 3)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise InputError(f"{name}: expected an (N, 3) array of z, y, x in px, got shape {pts.shape}")
    if not np.all(np.isfinite(pts)):
        raise InputError(f"{name}: contains NaN or Inf coordinates")
    return pts


def check_points_table(df, name: str = "points", n_frames: int | None = None):
    """A points table (DataFrame) with finite ``z, y, x`` (px) and, if present, integer ``t``.

    With ``n_frames``, every ``t`` must lie in ``0 .. n_frames - 1``. Returns ``df`` unchanged.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise InputError(f"{name}: expected a points table (DataFrame), got {type(df).__name__}")
    missing = [c for c in ("z", "y", "x") if c not in df.columns]
    if missing:
        raise InputError(f"{name}: missing column(s) {', '.join(missing)} (expected z, y, x in px)")
    if not np.all(np.isfinite(df[["z", "y", "x"]].to_numpy(dtype=float))):
        raise InputError(f"{name}: z, y, x contain NaN or Inf")
    if "t" in df.columns:
        t = df["t"].to_numpy(dtype=float)
        if not np.all(np.isfinite(t)):
            raise InputError(f"{name}: column t contains NaN or Inf")
        if n_frames is not None and len(t) and (t.min() < 0 or t.max() >= n_frames):
            bad = sorted(set(t[(t < 0) | (t >= n_frames)].astype(int).tolist()))
            raise InputError(f"{name}: frame(s) t={bad[:5]} outside the image's {n_frames} frame(s)")
    return df


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


def check_labels(labels, name: str = "labels") -> np.ndarray:
    """A 3D integer label image (Z, Y, X) with at most 65535 objects (StarDist's uint16);
    relabelled sequentially when the ids are larger."""
    lab = np.asarray(labels)
    if lab.ndim != 3 or not np.issubdtype(lab.dtype, np.integer):
        raise InputError(f"{name}: expected a 3D integer label image (z, y, x), got {lab.dtype} {lab.shape}")
    if lab.min() < 0:
        raise InputError(f"{name}: label values must be >= 0")
    if lab.max() > 65535:
        from skimage.segmentation import relabel_sequential

        lab = relabel_sequential(lab)[0]
        if lab.max() > 65535:
            raise InputError(f"{name}: more than 65535 objects; StarDist labels are uint16")
    return lab


def check_fraction(value, name: str, open_interval: bool = True) -> float:
    """A number in (0, 1) (``open_interval``) or [0, 1]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name}: expected a number between 0 and 1, got {value!r}") from None
    ok = (0 < v < 1) if open_interval else (0 <= v <= 1)
    if not ok:
        raise InputError(f"{name} must be in {'(0, 1)' if open_interval else '[0, 1]'}, got {value}")
    return v


def check_choice(value, choices, name: str):
    """``value`` if it is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _existing_ancestor(path):
    from pathlib import Path

    p = Path(path).absolute()
    for a in [p.parent, *p.parent.parents]:
        if a.exists():
            return a
    return None


def check_output_file(path, name: str = "output"):
    """A file path that can be written: not an existing folder, and its nearest existing
    ancestor is a folder (missing folders are created by the writers). Returns a Path."""
    from pathlib import Path

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{name} {p}: is a folder; expected a file name to write")
    a = _existing_ancestor(p)
    if a is not None and not a.is_dir():
        raise InputError(f"{name} {p}: {a} is a file, not a folder")
    return p


def check_output_dir(path, name: str = "output folder"):
    """A folder path that can be written into: not an existing file, no ancestor a file."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"{name} {p}: is a file; expected a folder")
    a = _existing_ancestor(p)
    if a is not None and not a.is_dir():
        raise InputError(f"{name} {p}: {a} is a file, not a folder")
    return p
