"""The model folder: load, build, save, describe, transfer weights.

A kt-stardist model is a StarDist 3D model folder (``config.json``, ``thresholds.json``,
``weights_best.h5`` / ``weights_last.h5``, exactly as StarDist writes and reads them) plus
``model.json``, which says what StarDist does not know: the voxel size the model was trained
at (µm, z, y, x), the label radius (µm), the channel layout, the normalisation, and how it was
trained. A plain StarDist folder (no ``model.json``) loads too, with defaults.

Input layout (channel last, ZYXC): ``n_fluor`` fluorophore channels, optionally with temporal
context. With temporal context the channels are ordered by time then fluorophore:
``[c0(t-1), c1(t-1), c0(t), c1(t), c0(t+1), c1(t+1)]``; at the first and last frame the edge
frame is repeated (see :func:`model_input`).

TensorFlow and StarDist are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import io as _pyio
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from kt_stardist import __version__
from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError

#: the shipped default model (package data)
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
DEFAULT_MODEL_DIR = PRETRAINED_DIR / "kt-default"

#: channel layouts by number of network input channels -> (name in kt_stardist.configs, fluorophore
#: channels, temporal)
CHANNEL_LAYOUTS = {
    1: ("egfp", 1, False),
    2: ("egfp+mcherry", 2, False),
    3: ("egfp@t-1,t,t+1", 1, True),
    6: ("egfp+mcherry@t-1,t,t+1", 2, True),
}

#: normalisation every model of this package is trained with (kt_stardist.normalize.normalize)
NORMALIZE_DEFAULTS = {"function": "kt_stardist.normalize.normalize", "pmin": 1.0, "pmax": 99.8,
                      "region": "signal"}

WEIGHT_FILES = ("weights_best.h5", "weights_last.h5")


def channel_layout(n_channel_in: int) -> tuple:
    """``(name, n_fluor, temporal)`` for a number of network input channels (1, 2, 3 or 6)."""
    try:
        return CHANNEL_LAYOUTS[int(n_channel_in)]
    except (KeyError, ValueError, TypeError):
        raise InputError(f"channels: expected one of 1, 2, 3, 6 (3 and 6: t-1, t, t+1), got {n_channel_in!r}")


def n_channel_in_for(n_fluor: int, temporal: bool) -> int:
    """Network input channels for ``n_fluor`` fluorophore channels, with or without time context."""
    return int(n_fluor) * (3 if temporal else 1)


def model_input(frames, t: int = 0, temporal: bool = False):
    """The network input for frame ``t``: ZYXC, with temporal context when asked.

    Parameters
    ----------
    frames : ndarray (T, Z, Y, X, C) or (Z, Y, X, C)
        Raw (or normalised) intensities.
    t : int
        Frame index.
    temporal : bool
        Stack frames t-1, t, t+1 (edge frame repeated at the ends) along the channel axis,
        ordered by time then channel.

    Returns
    -------
    ndarray (Z, Y, X, C) or (Z, Y, X, 3 C).
    """
    a = np.asarray(frames)
    if a.ndim == 4:
        a = a[None]
    if a.ndim != 5:
        raise InputError(f"model_input: expected TZYXC or ZYXC, got shape {np.shape(frames)}")
    n = a.shape[0]
    if not 0 <= t < n:
        raise InputError(f"model_input: frame {t} outside 0..{n - 1}")
    if not temporal:
        return a[t]
    idx = [min(max(t + d, 0), n - 1) for d in (-1, 0, 1)]
    return np.concatenate([a[i] for i in idx], axis=-1)


# --------------------------------------------------------------------------------------------
# model.json
# --------------------------------------------------------------------------------------------

def default_info(n_channel_in: int = 1) -> dict:
    """model.json content assumed for a folder that has none (a plain StarDist model)."""
    name, _, temporal = CHANNEL_LAYOUTS.get(int(n_channel_in), (f"{n_channel_in}-channel", n_channel_in, False))
    return {
        "kt_stardist_version": None,
        "voxel_size_um": list(VOXEL_SIZE_UM),
        "label_radius_um": LABEL_RADIUS_UM,
        "channels": name,
        "n_channel_in": int(n_channel_in),
        "temporal": bool(temporal),
        "normalize": dict(NORMALIZE_DEFAULTS),
        "config_name": None,
        "training_data": None,
        "seed": None,
        "steps": None,
    }


def _folder(model_or_path) -> Path | None:
    if isinstance(model_or_path, (str, os.PathLike)):
        return Path(model_or_path)
    return getattr(model_or_path, "logdir", None) if getattr(model_or_path, "basedir", None) is not None else None


def read_info(folder) -> dict:
    """model.json of a folder merged over :func:`default_info` (n_channel_in from config.json)."""
    folder = Path(folder)
    n_in = 1
    cfg = folder / "config.json"
    if cfg.is_file():
        with open(cfg, encoding="utf-8") as f:
            n_in = int(json.load(f).get("n_channel_in", 1))
    info = default_info(n_in)
    mj = folder / "model.json"
    if mj.is_file():
        try:
            with open(mj, encoding="utf-8") as f:
                info.update(json.load(f))
        except json.JSONDecodeError as e:
            raise InputError(f"{mj}: not valid JSON ({e})")
    return info


def model_info(model) -> dict:
    """What a model was trained for: model.json content (defaults for plain StarDist folders).

    ``model`` is a loaded StarDist model or a model folder. Keys: ``kt_stardist_version``,
    ``voxel_size_um`` [z, y, x] µm, ``label_radius_um`` µm, ``channels`` (layout name),
    ``n_channel_in``, ``temporal``, ``normalize``, ``config_name``, ``training_data``, ``seed``,
    ``steps``, plus ``thresholds`` {prob, nms} when known.
    """
    info = getattr(model, "kt_info", None)
    if info is None:
        folder = _folder(model)
        if folder is not None:
            info = read_info(folder)
        else:
            info = default_info(getattr(getattr(model, "config", None), "n_channel_in", 1))
    info = dict(info)
    th = getattr(model, "thresholds", None)
    if th is not None and not isinstance(model, (str, os.PathLike)):
        info["thresholds"] = {"prob": float(th.prob), "nms": float(th.nms)}
    elif isinstance(model, (str, os.PathLike)) and (Path(model) / "thresholds.json").is_file():
        with open(Path(model) / "thresholds.json", encoding="utf-8") as f:
            info["thresholds"] = json.load(f)
    return info


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    from kt_stardist.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def update_info(model, **changes) -> dict:
    """Merge ``changes`` into the model's model.json (written atomically) and return it."""
    info = model_info(model)
    info.pop("thresholds", None)
    info.update(changes)
    model.kt_info = info
    folder = _folder(model)
    if folder is not None:
        write_json(folder / "model.json", info)
    return info


def save_thresholds(model, prob: float, nms: float) -> None:
    """Set the model's thresholds and write ``thresholds.json`` (StarDist's format), atomically."""
    model.thresholds = {"prob": float(prob), "nms": float(nms)}
    folder = _folder(model)
    if folder is not None:
        write_json(folder / "thresholds.json", {"prob": float(prob), "nms": float(nms)})


def save_weights(model, name: str = "weights_last.h5") -> Path:
    """Save the network weights into the model folder (legacy HDF5, StarDist's format), atomically."""
    from kt_stardist.io import atomic_path

    path = Path(model.logdir) / name
    with atomic_path(path) as tmp:
        os.unlink(tmp)  # h5py refuses to overwrite some empty files; let it create a fresh one
        model.keras_model.save_weights(tmp)
    return path


# --------------------------------------------------------------------------------------------
# load / build
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet():
    """Silence StarDist's/csbdeep's prints (loading messages) on stdout."""
    with contextlib.redirect_stdout(_pyio.StringIO()):
        yield


def check_model_folder(folder) -> Path:
    """Raise InputError unless ``folder`` holds config.json and at least one weights file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found")
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a model folder (no config.json)")
    if not any(folder.glob("*.h5")):
        raise InputError(f"{folder}: model folder has no weights (weights_best.h5 or weights_last.h5)")
    return folder


def load_model(path=None, weights: str | None = None):
    """Load a model folder as a StarDist3D model (with ``.kt_info`` = :func:`model_info`).

    Parameters
    ----------
    path : str or Path or None
        Model folder; None loads the shipped default ``kt_stardist/pretrained/kt-default``.
    weights : str, optional
        Weights file inside the folder (default: StarDist's choice, ``weights_best.h5`` first).
    """
    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: the shipped default model is missing (scripts/train_default_model.py makes it)")
    folder = check_model_folder(path).resolve()
    if weights is not None and not (folder / weights).is_file():
        raise InputError(f"{folder / weights}: weights file not found")
    from stardist.models import StarDist3D

    try:
        with _quiet():
            model = StarDist3D(None, name=folder.name, basedir=str(folder.parent))
            if weights is not None:
                model.load_weights(weights)
    except (ValueError, OSError, KeyError) as e:
        raise InputError(f"{folder}: cannot load model ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    model.kt_info = read_info(folder)
    rf = model.kt_info.get("receptive_field_px")
    if isinstance(rf, list) and len(rf) == 3 and all(isinstance(p, list) and len(p) == 2 for p in rf):
        model._tile_overlap = tuple(tuple(int(a) for a in p) for p in rf)  # StarDist's cache of it
    return model


def receptive_field(model) -> list:
    """The network's receptive field, px ``[[before, after]] * 3`` (z, y, x): StarDist's tile
    overlap and our block context. StarDist measures it with a forward pass (~1 s on CPU) the
    first time; training stores it in ``model.json`` (``receptive_field_px``) and
    :func:`load_model` gives it back, so prediction does not measure it again."""
    if not hasattr(model, "_tile_overlap"):
        with _quiet():
            model._tile_overlap = model._compute_receptive_field()
    return [[int(a) for a in p] for p in model._tile_overlap]


def _attach_folder(model, folder: Path) -> None:
    """Give a model built with basedir=None a folder (config.json written atomically)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.basedir = folder.parent
    model.name = folder.name
    model.logdir = folder
    write_json(folder / "config.json", vars(model.config))


def config_with(conf, **overrides):
    """A copy of a StarDist Config3D with fields replaced (``n_rays``, ``n_channel_in``, ``grid``,
    ``anisotropy``, ``train_*``, ...); derived fields (rays, input shape) follow."""
    from stardist.models import Config3D
    from stardist.rays3d import Rays_GoldenSpiral

    if not overrides:
        return conf
    d = vars(conf).copy()
    for k in ("net_input_shape", "net_mask_shape", "n_dim", "n_channel_out"):
        d.pop(k, None)
    d.update(overrides)
    if "n_rays" in overrides or "anisotropy" in overrides:
        n_rays = int(d.pop("n_rays"))
        d.pop("rays_json", None)
        aniso = d.get("anisotropy")
        d["rays"] = Rays_GoldenSpiral(n_rays, anisotropy=None if aniso is None else tuple(aniso))
    with _quiet():
        return Config3D(**d)


def build_model(kt_config, basedir, name, *, voxel_size_um=None, label_radius_um=None, config_name=None,
                info=None, **overrides):
    """Build a fresh StarDist3D model in folder ``basedir/name`` (config.json + model.json).

    Parameters
    ----------
    kt_config : KtConfig or stardist Config3D
        A named configuration (``kt_stardist.configs.load_config``; ``to_stardist(**overrides)``
        gives the Config3D) or a Config3D directly.
    basedir, name : the model folder is ``basedir/name``; None basedir keeps it in memory only.
    voxel_size_um, label_radius_um : override what the configuration says (µm).
    info : dict, optional
        Extra model.json entries (training data, seed, ...).
    **overrides : Config3D fields (e.g. ``n_rays=256``, ``grid=(1,2,2)``, ``n_channel_in=3``).

    Returns
    -------
    StarDist3D with ``.kt_info``.
    """
    from stardist.models import Config3D, StarDist3D

    if isinstance(kt_config, Config3D):
        conf = config_with(kt_config, **overrides)
        vs = voxel_size_um or VOXEL_SIZE_UM
        radius = label_radius_um or LABEL_RADIUS_UM
        cname = config_name
    else:
        conf = kt_config.to_stardist(**overrides)
        vs = voxel_size_um or getattr(kt_config, "voxel_size_um", None) or VOXEL_SIZE_UM
        radius = label_radius_um or getattr(kt_config, "label_radius_um", None) or LABEL_RADIUS_UM
        cname = config_name or getattr(kt_config, "name", None)
    with _quiet():
        model = StarDist3D(conf, name=name, basedir=None)
    layout, _, temporal = channel_layout(conf.n_channel_in)
    model.kt_info = {
        **default_info(conf.n_channel_in),
        "kt_stardist_version": __version__,
        "voxel_size_um": [float(v) for v in vs],
        "label_radius_um": float(radius),
        "channels": layout,
        "temporal": temporal,
        "config_name": cname,
        **(info or {}),
    }
    if basedir is not None:
        _attach_folder(model, Path(basedir) / name)
        write_json(model.logdir / "model.json", model.kt_info)
    return model


# --------------------------------------------------------------------------------------------
# weight transfer
# --------------------------------------------------------------------------------------------

def weighted_layers(model) -> list:
    """Layers of the Keras model that hold weights, in topological order (as HDF5 saving sees them)."""
    return [layer for layer in model.keras_model.layers if layer.weights]


def transfer_weights(src, dst, log=None) -> dict:
    """Copy every layer of ``src`` whose weight shapes match ``dst``; the others stay fresh.

    Uses ``keras_model.load_weights(h5, skip_mismatch=True)`` (layers matched in topological
    order), then compares arrays: a layer is copied when all its arrays equal the source's;
    any other layer is put back to its fresh initial weights (Keras would copy e.g. the bias of
    a layer whose kernel does not fit), so a layer is either wholly transferred or wholly fresh.

    Parameters
    ----------
    src : StarDist model or model folder
    dst : StarDist model (same backbone depth; rays, channels may differ)
    log : callable, optional
        Called with one summary line.

    Returns
    -------
    dict(copied=[layer names of dst], fresh=[layer names of dst]); names are ``"<k>:<name>"``
    with ``k`` the index among weighted layers.
    """
    import warnings

    if isinstance(src, (str, os.PathLike)):
        src = load_model(src)
    src_layers, dst_layers = weighted_layers(src), weighted_layers(dst)
    if len(src_layers) != len(dst_layers):
        raise InputError(
            f"transfer: source has {len(src_layers)} weighted layers, target {len(dst_layers)} "
            "(U-Net depth and grid must match; rays and channels may differ)")
    initial = [layer.get_weights() for layer in dst_layers]
    with tempfile.TemporaryDirectory() as tmp:
        h5 = os.path.join(tmp, "src_weights.h5")
        src.keras_model.save_weights(h5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dst.keras_model.load_weights(h5, skip_mismatch=True)
    copied, fresh = [], []
    for k, (ls, ld) in enumerate(zip(src_layers, dst_layers)):
        ws, wd = ls.get_weights(), ld.get_weights()
        same = len(ws) == len(wd) and all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(ws, wd))
        if not same:  # keras copies matching arrays of a mismatched layer too (its bias): undo, all fresh
            ld.set_weights(initial[k])
        (copied if same else fresh).append(f"{k}:{ld.name}")
    if log is not None:
        log(f"weights: copied {len(copied)} of {len(dst_layers)} layers; fresh: {', '.join(fresh) or 'none'}")
    return {"copied": copied, "fresh": fresh}
