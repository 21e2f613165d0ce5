"""The model: a folder on disk, a :class:`KtModel` in memory.

A kt-stardist model folder is a StarDist 3D model folder (``config.json``, ``thresholds.json``,
``weights_best.h5`` / ``weights_last.h5``, exactly as StarDist writes and reads them) plus
``model.json`` (:class:`~kt_stardist.model.info.ModelInfo`: voxel size, channel layout,
normalisation, receptive field, training history, validation). A plain StarDist folder (no
``model.json``) loads too, with defaults.

:class:`KtModel` holds the network behind a backend (:class:`~kt_stardist.model.stardist_backend.StarDistBackend`,
the only code that touches StarDist's internals), the typed info and the thresholds. Prediction
needs only the backend's small interface (``candidates``, ``nms``, ``context_px``, ``grid``,
``rays``, ``labels``), so tests can give it a stand-in network.

TensorFlow and StarDist are imported inside the functions that need them.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from kt_stardist import __version__
from kt_stardist.channels import layout_for
from kt_stardist.errors import InputError
from kt_stardist.model.info import ModelInfo, Normalization, Thresholds, read_info, read_thresholds, write_json

__all__ = [
    "KtModel", "ModelInfo", "Normalization", "Thresholds", "PRETRAINED_DIR", "DEFAULT_MODEL_DIR",
    "SHIPPED_MODELS", "model_folder",
    "load_model", "build_model", "check_model_folder", "transfer_weights", "weighted_layers", "save_weights",
    "write_json", "MAX_RAYS",
]

#: the shipped default model (package data)
PRETRAINED_DIR = Path(__file__).resolve().parents[1] / "pretrained"
DEFAULT_MODEL_DIR = PRETRAINED_DIR / "kt-default"
#: shipped models by name (``--model NAME``): ``default`` (EGFP, 1 channel), ``nuclei`` (EGFP, 1
#: channel, trained with more bright textured nuclei and dense clusters: for spots over bright
#: nuclear backgrounds), ``temporal`` (EGFP of frames t-1, t, t+1: better recall on very dim
#: time-lapses), ``2ch`` (EGFP + mCherry) and ``6ch`` (EGFP + mCherry of frames t-1, t, t+1);
#: see the README's layout table and robustness panel
SHIPPED_MODELS = {"default": DEFAULT_MODEL_DIR, "nuclei": PRETRAINED_DIR / "kt-nuclei",
                  "temporal": PRETRAINED_DIR / "kt-temporal", "2ch": PRETRAINED_DIR / "kt-2ch",
                  "6ch": PRETRAINED_DIR / "kt-6ch"}

#: weights files looked for, in order (Keras 3's own format ends in .weights.h5)
WEIGHT_FILES = ("weights_best.h5", "weights_best.weights.h5", "weights_last.h5", "weights_last.weights.h5")

#: more rays than this in a config.json is refused (StarDist's own examples use up to 256)
MAX_RAYS = 1024


class KtModel:
    """A network (``backend``), its :class:`ModelInfo` and :class:`Thresholds`, and its folder.

    ``backend`` is a :class:`~kt_stardist.model.stardist_backend.StarDistBackend` (or a stand-in
    with ``candidates(x, prob_thresh)``, ``nms(prob, dist, points, nms_thresh)``, ``context_px()``,
    ``grid``, ``rays``, ``n_channel_in`` and ``labels(...)``).
    """

    def __init__(self, backend, info: ModelInfo, thresholds: Thresholds | None = None, folder=None):
        self.backend = backend
        self.info = info
        self.thresholds = thresholds or Thresholds()
        self.folder = None if folder is None else Path(folder)
        if backend is not None and info.layout.n_channel_in != int(backend.n_channel_in):
            raise InputError(f"model {info.name}: layout {info.channels!r} needs {info.layout.n_channel_in} "
                             f"input channels, the network takes {backend.n_channel_in}")

    # -- facts -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.info.name

    @property
    def layout(self):
        return self.info.layout

    @property
    def voxel_size_um(self) -> tuple:
        return tuple(self.info.voxel_size_um)

    @property
    def n_channel_in(self) -> int:
        return self.info.layout.n_channel_in

    @property
    def stardist(self):
        """The StarDist3D (training and export need it)."""
        return getattr(self.backend, "sd", None)

    def describe(self) -> str:
        """One line: name, layout, voxel size, thresholds."""
        vs = " × ".join(f"{v:g}" for v in self.voxel_size_um)
        return (f"{self.name} ({self.info.channels}, {vs} µm, prob {self.thresholds.prob:g}, "
                f"nms {self.thresholds.nms:g})")

    # -- writing -----------------------------------------------------------------------------
    def save_info(self, **changes) -> ModelInfo:
        """Update ``info`` fields (``training=``/``validation=`` dicts are merged) and write
        model.json atomically when the model has a folder."""
        for k in ("training", "validation"):
            if k in changes:
                changes[k] = {**getattr(self.info, k), **changes[k]}
        self.info = replace(self.info, **changes)
        if self.folder is not None:
            write_json(self.folder / "model.json", self.info.to_dict())
        return self.info

    def save_thresholds(self, prob: float, nms: float) -> Thresholds:
        """Set the thresholds and write ``thresholds.json`` (StarDist's format), atomically."""
        self.thresholds = Thresholds(float(prob), float(nms))
        sd = self.stardist
        if sd is not None:
            sd.thresholds = {"prob": float(prob), "nms": float(nms)}
        if self.folder is not None:
            write_json(self.folder / "thresholds.json", {"prob": float(prob), "nms": float(nms)})
        return self.thresholds


# --------------------------------------------------------------------------------------------
# load
# --------------------------------------------------------------------------------------------

def _kernel_shapes(path) -> list:
    """Shapes of the 3D convolution kernels (5D arrays) in a Keras weights file (legacy HDF5 or
    Keras 3 ``.weights.h5``), read without building the network."""
    import h5py

    shapes = []
    try:
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset) and obj.ndim == 5:
                    shapes.append(tuple(int(v) for v in obj.shape))
            f.visititems(visit)
    except OSError as e:
        raise InputError(f"{path}: cannot read the weights ({str(e).splitlines()[0]})") from None
    return shapes


def check_model_folder(folder, weights: str | None = None) -> Path:
    """Raise :class:`InputError` unless ``folder`` is a model folder whose files agree.

    Checks: config.json is a JSON object with sane ``n_rays`` (1..:data:`MAX_RAYS`),
    ``n_channel_in`` (1, 2, 3 or 6), ``grid`` (3 positive ints); a weights file exists and its
    layers fit the config (the dist head has ``n_rays`` outputs, the first convolution
    ``n_channel_in`` inputs); model.json (if any) agrees on the channels.
    """
    import json

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"{folder}: not a model folder (no config.json)")
    candidates = [weights] if weights else ([w for w in WEIGHT_FILES if (folder / w).is_file()]
                                            or sorted(p.name for p in folder.glob("*.h5")))
    if not candidates or not (folder / candidates[0]).is_file():
        raise InputError(f"{folder}: model folder has no weights ({weights or 'weights_best.h5 or weights_last.h5'})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: expected a JSON object")
    try:
        n_rays, n_in = int(cfg.get("n_rays")), int(cfg.get("n_channel_in", 1))
        grid = tuple(int(g) for g in cfg.get("grid", (1, 1, 1)))
    except (TypeError, ValueError):
        raise InputError(f"{cfg_path}: n_rays, n_channel_in and grid must be integers") from None
    if not 1 <= n_rays <= MAX_RAYS:
        raise InputError(f"{cfg_path}: n_rays = {n_rays}; expected 1..{MAX_RAYS}")
    layout_for(n_in)  # 1, 2, 3 or 6
    if len(grid) != 3 or min(grid) < 1 or max(grid) > 64:
        raise InputError(f"{cfg_path}: grid = {list(grid)}; expected 3 integers in 1..64")
    shapes = _kernel_shapes(folder / candidates[0])
    heads = sorted({s[-1] for s in shapes if s[:3] == (1, 1, 1)})  # prob (1 output) and dist (rays) heads
    convs = [s for s in shapes if s[:3] != (1, 1, 1)]
    if not heads or not convs:
        raise InputError(f"{folder / candidates[0]}: not StarDist 3D weights (no convolution heads)")
    if n_rays not in heads:
        raise InputError(f"{folder}: config.json says n_rays = {n_rays} but the weights' distance head has "
                         f"{max(heads)} rays")
    n_in_weights = min(s[-2] for s in convs)  # the first convolution's input channels
    if n_in_weights != n_in:
        raise InputError(f"{folder}: config.json says n_channel_in = {n_in} but the weights take {n_in_weights} "
                         "input channel(s)")
    read_info(folder)  # model.json agrees with config.json (raises otherwise)
    return folder


def model_folder(path=None) -> Path:
    """The folder of a model given as a folder or as the name of a shipped model
    (:data:`SHIPPED_MODELS`; an existing folder of that name wins); None: the default."""
    if path is None:
        return DEFAULT_MODEL_DIR
    if not Path(path).is_dir() and str(path) in SHIPPED_MODELS:
        return SHIPPED_MODELS[str(path)]
    return Path(path)


def load_model(path=None, weights: str | None = None) -> KtModel:
    """Load a model folder or shipped model by name (:func:`model_folder`; None: the shipped
    default ``kt_stardist/pretrained/kt-default``).

    The folder is checked first (:func:`check_model_folder`: config, weights and model.json must
    agree). ``weights``: a weights file inside the folder (default: StarDist's choice,
    ``weights_best.h5`` first).
    """
    from kt_stardist.model.stardist_backend import StarDistBackend, load_stardist

    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").is_file():
            raise InputError(f"{path}: the shipped default model is missing (scripts/train_default_model.py makes it)")
    folder = check_model_folder(model_folder(path), weights).resolve()
    info = read_info(folder)
    try:
        sd = load_stardist(folder, weights)
    except (ValueError, OSError, KeyError) as e:
        raise InputError(f"{folder}: cannot load model ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
    backend = StarDistBackend(sd, receptive_field_px=info.receptive_field_px)
    return KtModel(backend, info, read_thresholds(folder), folder)


# --------------------------------------------------------------------------------------------
# build
# --------------------------------------------------------------------------------------------

def _attach_folder(sd, folder: Path) -> None:
    """Give a StarDist3D built without a folder one (config.json written atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    sd.basedir, sd.name, sd.logdir = folder.parent, folder.name, folder
    write_json(folder / "config.json", vars(sd.config))


def build_model(kt_config, folder=None, *, voxel_size_um=None, label_radius_um=None, training=None,
                **overrides) -> KtModel:
    """A fresh model for a configuration, in ``folder`` (config.json + model.json) or in memory.

    Parameters
    ----------
    kt_config : KtConfig (:func:`kt_stardist.configs.load_config`) or a StarDist Config3D
    folder : model folder to create (None: in memory only)
    voxel_size_um, label_radius_um : override what the configuration says (µm)
    training : dict for ``model.json``'s ``training`` record
    **overrides : Config3D fields (``n_rays=256``, ``grid=(1,2,2)``, ``n_channel_in=3``, ``train_*``)
    """
    from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM
    from kt_stardist.model.stardist_backend import StarDistBackend, config_with, new_stardist

    if hasattr(kt_config, "to_stardist"):
        conf = kt_config.to_stardist(**overrides)
        vs = voxel_size_um or kt_config.voxel_size_um
        radius = label_radius_um or kt_config.label_radius_um
        cname = kt_config.name
    else:
        conf = config_with(kt_config, **overrides)
        vs, radius, cname = voxel_size_um or VOXEL_SIZE_UM, label_radius_um or LABEL_RADIUS_UM, None
    folder = None if folder is None else Path(folder)
    sd = new_stardist(conf, name=folder.name if folder is not None else "model")
    info = ModelInfo(name=folder.name if folder is not None else "model", voxel_size_um=tuple(vs),
                     label_radius_um=float(radius), channels=layout_for(conf.n_channel_in).name,
                     config_name=cname, kt_stardist_version=__version__, training=dict(training or {}))
    model = KtModel(StarDistBackend(sd), info, Thresholds(), folder)
    if folder is not None:
        _attach_folder(sd, folder)
        write_json(folder / "model.json", info.to_dict())
    return model


def save_weights(model: KtModel, name: str = "weights_last.h5") -> Path:
    """Save the network weights into the model folder (legacy HDF5, StarDist's format), atomically."""
    from kt_stardist.io import atomic_path

    path = model.folder / name
    with atomic_path(path) as tmp:
        os.unlink(tmp)  # h5py refuses to overwrite some empty files; let it create a fresh one
        model.stardist.keras_model.save_weights(tmp)
    return path


# --------------------------------------------------------------------------------------------
# weight transfer
# --------------------------------------------------------------------------------------------

def weighted_layers(model) -> list:
    """Layers of the Keras model that hold weights, in topological order (as HDF5 saving sees them)."""
    km = model.stardist.keras_model if isinstance(model, KtModel) else model.keras_model
    return [layer for layer in km.layers if layer.weights]


def transfer_weights(src, dst: KtModel, log=None) -> dict:
    """Copy every layer of ``src`` whose weight shapes match ``dst``; the others stay fresh.

    Uses ``keras_model.load_weights(h5, skip_mismatch=True)`` (layers matched in topological
    order), then compares arrays: a layer is copied when all its arrays equal the source's; any
    other layer is put back to its fresh initial weights (Keras would copy e.g. the bias of a
    layer whose kernel does not fit), so a layer is either wholly transferred or wholly fresh.

    ``src``: a KtModel or model folder; ``dst``: a KtModel (same U-Net depth; rays, channels may
    differ). Returns ``dict(copied=[...], fresh=[...])`` of ``"<k>:<layer name>"`` (k: index
    among weighted layers).
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
        src.stardist.keras_model.save_weights(h5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dst.stardist.keras_model.load_weights(h5, skip_mismatch=True)
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
