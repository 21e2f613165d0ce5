"""Deep-learning peers of kt-stardist for the comparison benchmark (``scripts/benchmark_peers.py``).

Not simple baselines (LoG and Big-FISH live in :mod:`kt_stardist.baselines`):

- **U-Net heatmap** (the seed's supervised approach): csbdeep's 3D U-Net (the framework StarDist
  builds on) regresses a Gaussian heatmap of the points (peak 1 at each point, sigma
  :data:`kt_stardist.defaults.SPOT_SIGMA_UM` µm) with a Dice + mean-squared-error loss
  (:func:`dice_gaussian_loss`); spots are the heatmap's local maxima
  (``skimage.feature.peak_local_max``) above a threshold chosen on validation simulations by point
  F1 (:func:`choose_heatmap_threshold`), optionally refined by
  :func:`kt_stardist.predict.refine.refine_points`. Inputs are prepared exactly as kt-stardist's
  (:func:`kt_stardist.predict.preprocess.prepare`: defect repair, rescaling to the model's voxel
  size, percentile normalisation). :func:`train_heatmap` trains it on the simulations kt-stardist
  trains on (:func:`kt_stardist.train.data.simulated_pairs`); :func:`save_heatmap_model` /
  :func:`load_heatmap_model` keep a folder of ``weights.weights.h5`` + ``heatmap.json``.
- **Spotiflow** (optional ``[peers]`` extra, PyTorch): trained from scratch in 3D
  (:func:`train_spotiflow`), no pretrained weights. Its 3D grid is isotropic, so volumes are
  prepared exactly as the heatmap peer's, by :func:`kt_stardist.predict.preprocess.prepare` with
  an isotropic model voxel (:attr:`SpotiflowSettings.voxel_size_um`: z 0.3 → 0.13 µm, linear
  zoom), and points go between the grids only through that ``Prepared``'s ``to_model_px`` /
  ``to_image_px`` (the zoom's own corner-aligned convention, one place for both peers).

TensorFlow/Keras and torch are imported inside functions only. Axis order z, y, x; positions in
px (float), voxel sizes in µm.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kt_stardist.defaults import MATCH_CUTOFF_UM, SPOT_SIGMA_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError

__all__ = ["HeatmapSettings", "HeatmapModel", "heatmap_target", "dice_gaussian_loss", "heatmap_peaks",
           "build_heatmap_unet", "predict_heatmap", "heatmap_detect", "choose_heatmap_threshold",
           "train_heatmap", "calibrate_heatmap", "best_threshold", "save_heatmap_model", "load_heatmap_model", "HEATMAP_JSON", "HEATMAP_WEIGHTS",
           "SpotiflowSettings", "spotiflow_available", "train_spotiflow", "spotiflow_detect"]

HEATMAP_JSON = "heatmap.json"
HEATMAP_WEIGHTS = "weights.weights.h5"


@dataclass(frozen=True)
class HeatmapSettings:
    """The U-Net heatmap peer. ``sigma_um`` (z, y, x) µm: width of the Gaussian target;
    ``n_depth``/``n_filter_base``: csbdeep U-Net (2/16 as kt-default's backbone); ``patch_size_px``
    (z, y, x), ``batch_size``, ``steps``, ``lr``: training (kt-default's patch, batch and lr);
    ``mse_weight``: weight of the MSE term beside Dice; ``prior_prob``: the output's starting value
    (bias of the last layer; at 0.5 the MSE term drove the sigmoid to 0 everywhere before Dice
    could act, and it never recovered in 240 steps); ``warmup_fraction``: share of the steps on the
    easy/mid simulations only (as kt-stardist's warm-up epochs); ``foreground_prob``: share of
    patches centred on a spot; ``thresholds``: heatmap values tried on the validation volumes;
    ``min_distance_px``: peak_local_max's minimum distance between peaks."""

    sigma_um: tuple = SPOT_SIGMA_UM
    voxel_size_um: tuple = VOXEL_SIZE_UM
    n_depth: int = 2
    n_filter_base: int = 16
    patch_size_px: tuple = (24, 64, 64)
    batch_size: int = 2
    steps: int = 480
    lr: float = 1e-3
    mse_weight: float = 1.0
    prior_prob: float = 0.01
    warmup_fraction: float = 0.25
    foreground_prob: float = 0.9
    thresholds: tuple = (0.01, 0.02, 0.03) + tuple(round(float(t), 2) for t in np.arange(0.05, 0.96, 0.05))
    min_distance_px: int = 1
    seed: int = 0

    @property
    def sigma_px(self) -> tuple:
        return tuple(float(s) / float(v) for s, v in zip(self.sigma_um, self.voxel_size_um))

    @property
    def block_px(self) -> int:
        """Every network input side must be a multiple of this (2 ** n_depth)."""
        return 2 ** int(self.n_depth)


# --------------------------------------------------------------------------------------------
# targets, loss, peaks
# --------------------------------------------------------------------------------------------

def heatmap_target(points_px, shape_px, sigma_px, truncate=3.0) -> np.ndarray:
    """Gaussian heatmap ``(Z, Y, X)`` float32 of ``points_px`` ((N, 3) float px, z, y, x):
    ``exp(-d² / 2σ²)`` per point with anisotropic ``sigma_px`` (z, y, x), combined by maximum,
    so every point is a peak of value 1 (at its voxel when it sits on one) and close sisters stay
    two peaks. Points outside the volume contribute their tails only."""
    shape = tuple(int(s) for s in shape_px)
    out = np.zeros(shape, np.float32)
    sig = np.asarray(sigma_px, float)
    rad = np.ceil(truncate * sig).astype(int)
    for p in np.asarray(points_px, float).reshape(-1, 3):
        c = np.round(p).astype(int)
        lo = np.maximum(c - rad, 0)
        hi = np.minimum(c + rad + 1, shape)
        if np.any(hi <= lo):
            continue
        ax = [np.exp(-0.5 * ((np.arange(lo[i], hi[i]) - p[i]) / sig[i]) ** 2) for i in range(3)]
        g = ax[0][:, None, None] * ax[1][None, :, None] * ax[2][None, None, :]
        win = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.maximum(win, g.astype(np.float32), out=win)
    return out


def dice_gaussian_loss(y_true, y_pred, mse_weight=1.0, xp=np, eps=1e-6):
    """Soft Dice loss + ``mse_weight`` × mean squared error between heatmaps (any shape).

    ``1 - 2 Σ t·p / (Σ t² + Σ p²) + w · mean((t - p)²)``: 0 for a perfect prediction. ``xp`` is
    the array module: numpy, or ``keras.ops`` inside training (one formula for both)."""
    inter = xp.sum(y_true * y_pred)
    denom = xp.sum(xp.square(y_true)) + xp.sum(xp.square(y_pred))
    dice = 1.0 - (2.0 * inter + eps) / (denom + eps)
    return dice + mse_weight * xp.mean(xp.square(y_true - y_pred))


def heatmap_peaks(heat, threshold, min_distance_px=1):
    """Local maxima of a ``(Z, Y, X)`` heatmap above ``threshold`` (``peak_local_max``):
    (positions (N, 3) int px, values (N,)), highest first."""
    from skimage.feature import peak_local_max

    h = np.asarray(heat, np.float32)
    pos = peak_local_max(h, min_distance=int(min_distance_px), threshold_abs=float(threshold),
                         exclude_border=False).reshape(-1, 3)
    val = h[tuple(pos.T)] if len(pos) else np.zeros(0, np.float32)
    order = np.argsort(-val, kind="stable")
    return pos[order], val[order]


# --------------------------------------------------------------------------------------------
# the network
# --------------------------------------------------------------------------------------------

@dataclass
class HeatmapModel:
    """A U-Net heatmap peer: the Keras ``net`` (ZYXC → ZYX1 in [0, 1]), its ``settings``, the
    peak ``threshold`` and the ``training`` record (steps, seconds, validation F1)."""

    net: object
    settings: HeatmapSettings
    threshold: float = 0.5
    training: dict | None = None

    @property
    def voxel_size_um(self) -> tuple:
        return tuple(self.settings.voxel_size_um)


def _keras():
    """Keras, TensorFlow imported as kt-stardist imports it (its settings, quietly)."""
    from kt_stardist.model.stardist_backend import import_tensorflow

    import_tensorflow()
    import keras

    return keras


def build_heatmap_unet(settings: HeatmapSettings):
    """csbdeep's 3D U-Net, one input and one sigmoid output channel (fully convolutional); the
    last layer's bias starts the output at ``settings.prior_prob``."""
    keras = _keras()
    from csbdeep.internals.nets import custom_unet

    net = custom_unet((None, None, None, 1), last_activation="sigmoid", n_depth=settings.n_depth,
                      n_filter_base=settings.n_filter_base, kernel_size=(3, 3, 3),
                      pool_size=(2, 2, 2), n_channel_out=1)
    last = [la for la in net.layers if isinstance(la, keras.layers.Conv3D)][-1]
    w, b = last.get_weights()
    p = float(settings.prior_prob)
    last.set_weights([w, np.full_like(b, np.log(p / (1 - p)))])
    return net


def predict_heatmap(model: HeatmapModel, x, tile_px=(32, 256, 256)):
    """Heatmap ``(Z, Y, X)`` float32 of a normalised ``(Z, Y, X[, 1])`` volume at the model's voxel
    size. Padded to a multiple of 2**depth; run in overlapping tiles of about ``tile_px`` (csbdeep's
    ``tile_iterator``) so large frames fit in memory."""
    from csbdeep.internals.predict import tile_iterator

    x = np.asarray(x, np.float32)
    x = x[..., 0] if x.ndim == 4 else x
    b = model.settings.block_px
    shape = x.shape
    pad = [(0, (-s) % b) for s in shape]
    xp = np.pad(x, pad, mode="reflect") if any(p[1] for p in pad) else x
    n_tiles = [max(1, int(np.ceil(s / t))) for s, t in zip(xp.shape, tile_px)]
    overlap = [min(4, s // b) if n > 1 else 0 for s, n in zip(xp.shape, n_tiles)]
    out = np.zeros(xp.shape, np.float32)
    for tile, s_src, s_dst in tile_iterator(xp, n_tiles, b, overlap, guarantee="n_tiles"):
        pred = model.net(tile[None, ..., None], training=False)
        out[s_dst] = np.asarray(pred)[0, ..., 0][s_src]
    return out[tuple(slice(0, s) for s in shape)]


def _one_channel(volume, who) -> np.ndarray:
    """A raw ``(Z, Y, X[, 1])`` volume as ``(Z, Y, X)``; one-line InputError naming ``who`` otherwise."""
    vol = np.asarray(volume)
    if vol.ndim == 4:
        if vol.shape[-1] != 1:
            raise InputError(f"{who} takes one channel, got shape {vol.shape}")
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise InputError(f"{who} needs a (Z, Y, X) volume, got shape {vol.shape}")
    return vol


def heatmap_detect(model: HeatmapModel, volume, voxel_size_um=None, threshold=None, refine=True,
                   return_heatmap=False):
    """Spots of a raw ``(Z, Y, X[, 1])`` volume: DataFrame ``z, y, x`` (image px), ``prob``.

    The volume is prepared like kt-stardist's input (``predict.preprocess.prepare``), the heatmap
    predicted at the model's voxel size, peaks taken above ``threshold`` (None: the model's), mapped
    to image px and, with ``refine``, refined by ``refine_points`` on the raw volume (else the
    peak voxels, no sub-voxel step)."""
    from kt_stardist.predict.preprocess import prepare
    from kt_stardist.predict.refine import refine_points

    vol = _one_channel(volume, "heatmap peer")
    vs = tuple(voxel_size_um or model.voxel_size_um)
    prep = prepare(vol, vs, model.voxel_size_um, repair=True, max_in_memory_gb=None)
    heat = predict_heatmap(model, prep.x)
    thr = model.threshold if threshold is None else threshold
    pos, val = heatmap_peaks(heat, thr, model.settings.min_distance_px)
    pts = prep.to_image_px(pos.astype(np.float64))
    if refine and len(pts):
        pts = refine_points(np.asarray(prep.raw)[..., 0], pts, vs)
    df = pd.DataFrame(np.asarray(pts, float).reshape(-1, 3), columns=["z", "y", "x"])
    df["prob"] = val
    return (df, heat) if return_heatmap else df


def choose_heatmap_threshold(heats, truths, voxel_size_um, thresholds, min_distance_px=1,
                             cutoff_um=MATCH_CUTOFF_UM):
    """Threshold with the best summed-count point F1 of the heatmap peaks (model px, no
    refinement) against ``truths`` ((N, 3) model px) over the validation ``heats``:
    (threshold, f1, table of every threshold tried), by :func:`best_threshold`."""
    cands = [heatmap_peaks(h, min(thresholds), min_distance_px) for h in heats]
    return best_threshold(cands, truths, voxel_size_um, thresholds, cutoff_um)


def best_threshold(cands, truths, voxel_size_um, thresholds, cutoff_um=MATCH_CUTOFF_UM):
    """Score threshold with the best summed-count point F1: ``cands`` one (positions (N, 3) px,
    scores (N,)) per volume, ``truths`` (M, 3) px in the same grid. Returns (threshold, f1,
    table of every threshold tried)."""
    from kt_stardist.evaluate import score_thresholds

    table = score_thresholds(cands, truths, voxel_size_um, thresholds, cutoff_um)
    best = table.loc[table.f1.idxmax()]
    return float(best.threshold), float(best.f1), table


def _prepared(pairs, voxel_size_um):
    """(normalised ZYX volumes at the model's voxel size, points in model px) of raw pairs."""
    from kt_stardist.predict.preprocess import prepare

    X, P = [], []
    for img, pts, vs, *_ in pairs:
        prep = prepare(img, vs, voxel_size_um, repair=True, max_in_memory_gb=None)
        X.append(np.asarray(prep.x, np.float32)[..., 0])
        P.append(prep.to_model_px(pts))
    return X, P


def _patches(X, H, P, patch, n, rng, foreground_prob):
    """``n`` random (input, target) patches ``(n, *patch, 1)``; a ``foreground_prob`` share is
    centred (± a quarter patch) on a random point; y-x flips and 90° rotations."""
    xs, hs = [], []
    for _ in range(n):
        i = int(rng.integers(len(X)))
        shape = np.asarray(X[i].shape)
        if len(P[i]) and rng.random() < foreground_prob:
            c = P[i][rng.integers(len(P[i]))] + rng.uniform(-0.25, 0.25, 3) * np.asarray(patch)
            lo = np.clip(np.round(c - np.asarray(patch) / 2).astype(int), 0, shape - patch)
        else:
            lo = np.array([rng.integers(0, s - p + 1) for s, p in zip(shape, patch)])
        sl = tuple(slice(a, a + p) for a, p in zip(lo, patch))
        x, h = X[i][sl], H[i][sl]
        k = int(rng.integers(4))
        x, h = np.rot90(x, k, axes=(1, 2)), np.rot90(h, k, axes=(1, 2))
        if rng.random() < 0.5:
            x, h = x[:, :, ::-1], h[:, :, ::-1]
        xs.append(x)
        hs.append(h)
    return np.stack(xs)[..., None].astype(np.float32), np.stack(hs)[..., None].astype(np.float32)


def train_heatmap(train_pairs, val_pairs, settings: HeatmapSettings = HeatmapSettings(), log=None):
    """Train the U-Net heatmap peer from scratch on raw pairs ``(image ZYXC, points (N, 3) px,
    voxel size µm, kind)`` (as :func:`kt_stardist.train.data.simulated_pairs` makes them) for
    ``settings.steps`` × ``settings.batch_size`` patches (Adam, ``settings.lr``; the first
    ``warmup_fraction`` of the steps on the easy/mid pairs only when harder kinds are mixed in), then choose the
    peak threshold on ``val_pairs`` by point F1. Returns a :class:`HeatmapModel`; its
    ``training`` records steps, batch, seconds (training only), validation F1 and threshold."""
    keras = _keras()

    from kt_stardist.train.data import WARMUP_KINDS

    s = settings
    patch = np.asarray(s.patch_size_px, int)
    if np.any(patch % s.block_px):
        raise InputError(f"patch_size_px {tuple(s.patch_size_px)}: every side must be a multiple of {s.block_px}")
    X, P = _prepared(train_pairs, s.voxel_size_um)
    for x in X:
        if np.any(np.asarray(x.shape) < patch):
            raise InputError(f"training volume {x.shape} px is smaller than the patch {tuple(patch)}")
    H = [heatmap_target(p, x.shape, s.sigma_px) for x, p in zip(X, P)]
    keras.utils.set_random_seed(int(s.seed))
    net = build_heatmap_unet(s)
    net.compile(optimizer=keras.optimizers.Adam(s.lr),
                loss=lambda t, p: dice_gaussian_loss(t, p, s.mse_weight, xp=keras.ops))
    rng = np.random.default_rng(s.seed)
    warm = [i for i, p in enumerate(train_pairs) if len(p) > 3 and p[3] in WARMUP_KINDS]
    n_warm = int(round(s.warmup_fraction * s.steps)) if warm and len(warm) < len(X) else 0
    sub = ([X[i] for i in warm], [H[i] for i in warm], [P[i] for i in warm])
    losses = []
    t0 = time.perf_counter()
    for step in range(int(s.steps)):
        xb, hb = _patches(*(sub if step < n_warm else (X, H, P)), patch, s.batch_size, rng, s.foreground_prob)
        losses.append(float(np.asarray(net.train_on_batch(xb, hb))))
        if log and (step + 1) % max(1, s.steps // 10) == 0:
            log(f"heatmap U-Net step {step + 1}/{s.steps}: loss {np.mean(losses[-max(1, s.steps // 10):]):.4f}")
    seconds = time.perf_counter() - t0
    model = HeatmapModel(net, s)
    f1 = calibrate_heatmap(model, val_pairs)
    model.training = dict(steps=int(s.steps), batch_size=int(s.batch_size), warmup_steps=n_warm, train_seconds=round(seconds, 1),
                          final_loss=round(float(np.mean(losses[-10:])), 5) if losses else None,
                          train_volumes=len(X), val_volumes=len(val_pairs), validation_f1=round(f1, 4),
                          threshold_by="point F1 of heatmap peaks on validation simulations, 0.5 µm")
    return model


def calibrate_heatmap(model: HeatmapModel, val_pairs) -> float:
    """Set ``model.threshold`` to the value with the best point F1 on raw ``val_pairs``
    (:func:`choose_heatmap_threshold`); returns that F1."""
    s = model.settings
    Xv, Pv = _prepared(val_pairs, s.voxel_size_um)
    heats = [predict_heatmap(model, x) for x in Xv]
    thr, f1, _ = choose_heatmap_threshold(heats, Pv, s.voxel_size_um, s.thresholds, s.min_distance_px)
    model.threshold = thr
    return f1


def save_heatmap_model(model: HeatmapModel, folder):
    """Write ``folder/weights.weights.h5`` and ``folder/heatmap.json`` (settings, threshold,
    training record), each atomically."""
    from kt_stardist.io import atomic_path, atomic_write
    from kt_stardist.settings import to_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / HEATMAP_WEIGHTS) as tmp:
        keras_name = tmp + HEATMAP_WEIGHTS[len("weights"):]  # Keras wants names ending .weights.h5
        model.net.save_weights(keras_name)
        os.replace(keras_name, tmp)
    rec = dict(kind="unet-heatmap", settings=to_dict(model.settings), threshold=model.threshold,
               training=model.training)
    with atomic_write(folder / HEATMAP_JSON, "w") as f:
        f.write(json.dumps(rec, indent=2))
    return folder


def load_heatmap_model(folder) -> HeatmapModel:
    """A :class:`HeatmapModel` from a folder of :func:`save_heatmap_model`."""
    from kt_stardist.settings import from_dict

    folder = Path(folder)
    for name in (HEATMAP_JSON, HEATMAP_WEIGHTS):
        if not (folder / name).is_file():
            raise InputError(f"{folder}: not a heatmap model folder ({name} missing)")
    rec = json.loads((folder / HEATMAP_JSON).read_text())
    settings = from_dict(HeatmapSettings, rec["settings"], "heatmap.json settings")
    net = build_heatmap_unet(settings)
    net.load_weights(str(folder / HEATMAP_WEIGHTS))
    return HeatmapModel(net, settings, float(rec["threshold"]), rec.get("training"))


# --------------------------------------------------------------------------------------------
# Spotiflow
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SpotiflowSettings:
    """Spotiflow from scratch in 3D: ``iso_um`` (µm) the isotropic voxel the volumes are resampled
    to (z only, the lateral 0.13 µm kept); ``sigma_px``: its heatmap sigma (isotropic px);
    ``crop_px``: training crop (z, y, x isotropic px); ``epochs``, ``batch_size``, ``lr``;
    ``grid``: its output subsampling (1: full resolution); ``levels``, ``initial_fmaps``,
    ``n_convs_per_level``: its U-Net, cut down from Spotiflow's default (4, 32, 3) to about
    kt-default's size so that both train on the same budget on CPU."""

    iso_um: float = 0.13
    levels: int = 3
    initial_fmaps: int = 16
    n_convs_per_level: int = 2
    sigma_px: float = 1.0
    crop_px: tuple = (32, 64, 64)
    epochs: int = 20
    batch_size: int = 2
    lr: float = 3e-4
    thresholds: tuple = tuple(t for t in HeatmapSettings.thresholds if t >= 0.05)
    grid: int = 1
    seed: int = 0

    @property
    def voxel_size_um(self) -> tuple:
        """The isotropic grid Spotiflow works on, (z, y, x) µm."""
        return (float(self.iso_um),) * 3


def spotiflow_available() -> str | None:
    """None when Spotiflow and torch are installed, else a one-line reason. Looks them up
    without importing them (torch must not be loaded into a process that runs TensorFlow: the
    two crashed together here, so the benchmark runs Spotiflow in a separate process)."""
    from importlib.util import find_spec

    missing = [m for m in ("spotiflow", "torch") if find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed; pip install '.[peers]' (see pyproject.toml for a CPU torch)"
    return None


def train_spotiflow(train_pairs, val_pairs, out_dir, settings: SpotiflowSettings = SpotiflowSettings(), log=None):
    """Train Spotiflow from scratch in 3D (CPU) on raw pairs (see :func:`train_heatmap`), prepared
    as :func:`spotiflow_detect` prepares a frame (z resampled to isotropic, normalised once: its own
    re-normalisation is off, in training as at prediction). Spotiflow's 3D target puts each
    point's heatmap peak on its floor voxel and leaves the sub-voxel part, in [0, 1) px per axis,
    to the stereographic flow; returns (model, training seconds, probability threshold with the best
    point F1 on ``val_pairs``, that F1). Weights stay under ``out_dir``."""
    import torch
    from spotiflow.model import Spotiflow, SpotiflowModelConfig, SpotiflowTrainingConfig

    torch.manual_seed(int(settings.seed))
    Xt, Pt = _prepared(train_pairs, settings.voxel_size_um)
    Xv, Pv = _prepared(val_pairs, settings.voxel_size_um)
    cfg = SpotiflowModelConfig(is_3d=True, grid=(settings.grid,) * 3, sigma=settings.sigma_px, in_channels=1,
                               levels=settings.levels, initial_fmaps=settings.initial_fmaps,
                               n_convs_per_level=settings.n_convs_per_level)
    model = Spotiflow(cfg)
    tcfg = SpotiflowTrainingConfig(num_epochs=int(settings.epochs), batch_size=int(settings.batch_size),
                                   crop_size=int(settings.crop_px[1]), crop_size_depth=int(settings.crop_px[0]),
                                   lr=float(settings.lr), optimize_threshold=True)
    t0 = time.perf_counter()
    model.fit(Xt, Pt, Xv, Pv, save_dir=str(out_dir), train_config=tcfg, device="cpu", logger="tensorboard",
              deterministic=False, augment_train=True, num_workers=0,
              normalizer=None)  # normalised once, by prepare, as at prediction (its default re-normalises)
    seconds = time.perf_counter() - t0
    # the probability threshold by point F1 on the validation volumes, as for the heatmap peer
    # (Spotiflow's own optimised threshold left no spot on held-out frames after a short training)
    cands = []
    for x in Xv:
        pts, det = model.predict(x, prob_thresh=min(settings.thresholds), device="cpu", verbose=False, normalizer=None)
        cands.append((np.asarray(pts, float).reshape(-1, 3), np.asarray(det.prob, float).reshape(-1)))
    thr, f1, _ = best_threshold(cands, Pv, settings.voxel_size_um, settings.thresholds)
    return model, seconds, thr, f1


def spotiflow_detect(model, volume, voxel_size_um=VOXEL_SIZE_UM, settings: SpotiflowSettings = SpotiflowSettings(),
                     threshold=None):
    """Spotiflow's points of a raw ``(Z, Y, X[, 1])`` volume (probability ``threshold``, None: its
    own; sub-pixel flow), in the volume's own px: (N, 3) float."""
    from kt_stardist.predict.preprocess import prepare

    prep = prepare(_one_channel(volume, "Spotiflow"), voxel_size_um, settings.voxel_size_um, repair=True,
                   max_in_memory_gb=None)
    pts, _ = model.predict(np.asarray(prep.x, np.float32)[..., 0], prob_thresh=threshold, device="cpu", verbose=False,
                           normalizer=None)
    return prep.to_image_px(pts)
