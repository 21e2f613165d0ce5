"""Training: pretrain on StarDist's example nuclei, finetune on kinetochores, choose thresholds.

Flow::

    (image, points px) pairs ─ normalize ─ labels.points_to_labels (spheres, µm) ─▶ X, Y
      ─ fit (StarDist's patch sampler, foreground-favouring; augment; checkpoints; history)
      ─▶ choose_thresholds (point F1 with evaluate.match_points) ─▶ thresholds.json

Images are ZYXC float32 (channel last), points are (N, 3) px in z, y, x. Every file written goes
through :mod:`kt_stardist.io`'s atomic writers. TensorFlow/StarDist are imported lazily.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from kt_stardist.defaults import LABEL_RADIUS_UM, MATCH_CUTOFF_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.normalize import normalize

#: learning rate that learns (1e-4 and lower collapsed to background in trials)
LEARNING_RATE = 1e-3
#: NMS thresholds tried when choosing thresholds by point F1
NMS_THRESHS = (0.1, 0.3, 0.5)
#: probability thresholds tried
PROB_THRESHS = tuple(np.round(np.arange(0.05, 0.951, 0.025), 3))

#: most NMS candidates per validation volume in the threshold search (see choose_thresholds)
MAX_NMS_CANDIDATES = 3000
#: layers that are output heads (never frozen)
HEAD_LAYERS = ("features", "prob", "dist")
#: the optimiser's state (Adam's step count and moments) after the last epoch, beside weights_last.h5
OPTIMIZER_STATE = "optimizer_last.npz"


def _log(msg):
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------------------------

def get_config(name_or_path):
    """A named configuration or JSON path (:func:`kt_stardist.configs.load_config`)."""
    from kt_stardist.configs import load_config

    return load_config(name_or_path)


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------

def example_data():
    """StarDist's synthetic 3D nuclei (ships in the stardist wheel): ([image ZYXC], [labels ZYX]).

    The image is normalised with :func:`kt_stardist.normalize.normalize`.
    """
    from stardist.data import test_image_nuclei_3d

    img, lbl = test_image_nuclei_3d(return_mask=True)
    x = normalize(img.astype(np.float32)[..., None], region="all")
    return [x], [lbl.astype(np.int32)]


def folder_data(img_dir, lbl_dir):
    """Image/label pairs from two folders of TIFFs matched by sorted file name.

    Returns ([images ZYXC normalised], [labels ZYX int32]).
    """
    from kt_stardist.io import read_image

    img_dir, lbl_dir = Path(img_dir), Path(lbl_dir)
    for d in (img_dir, lbl_dir):
        if not d.is_dir():
            raise InputError(f"{d}: folder not found")
    imgs = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    lbls = sorted(p for p in lbl_dir.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not imgs or len(imgs) != len(lbls):
        raise InputError(f"{img_dir}, {lbl_dir}: need the same (non-zero) number of TIFFs, got {len(imgs)} and {len(lbls)}")
    X, Y = [], []
    for pi, pl in zip(imgs, lbls):
        x = read_image(pi).data[0]
        y = read_image(pl).data[0, ..., 0]
        if x.shape[:3] != y.shape:
            raise InputError(f"{pl}: label shape {y.shape} differs from image {x.shape[:3]}")
        X.append(normalize(x.astype(np.float32), region="all"))
        Y.append(y.astype(np.int32))
    return X, Y


def read_pairs(image_paths, points_paths, n_fluor=1, temporal=False, axes=None):
    """User training data: (raw image ZYXC, points (N, 3) px, voxel size µm) per annotated frame.

    Parameters
    ----------
    image_paths, points_paths : lists of equal length (TIFF/HDF5 images; CSV/arivis points)
    n_fluor : fluorophore channels the model takes
    temporal : stack frames t-1, t, t+1 (see :func:`kt_stardist.model.model_input`)
    """
    from kt_stardist.io import points_zyx, read_image, read_points
    from kt_stardist.model import model_input

    if len(image_paths) != len(points_paths):
        raise InputError(f"--images/--points: {len(image_paths)} images but {len(points_paths)} point files")
    pairs = []
    for ip, pp in zip(image_paths, points_paths):
        im = read_image(ip, axes=axes)
        if im.data.shape[-1] != n_fluor:
            raise InputError(f"{ip}: {im.data.shape[-1]} channels, the model takes {n_fluor}")
        df = read_points(pp)
        vs = tuple(im.voxel_size_um) if im.voxel_size_um is not None else VOXEL_SIZE_UM
        frames = sorted(df["t"].unique()) if "t" in df.columns else [0]
        for t in frames:
            t = int(t)
            if t >= im.data.shape[0]:
                raise InputError(f"{pp}: points at frame {t} but {ip} has {im.data.shape[0]} frames")
            sub = df[df["t"] == t] if "t" in df.columns else df
            pairs.append((model_input(im.data, t, temporal), points_zyx(sub), vs))
    return pairs


#: simulated training mix, cycled: SNR presets and/or ``"random"`` (domain-randomised). The
#: shipped model learned on easy + mid; with random and hard volumes added (after a warm-up) its
#: probability map fell back to background in our trial
SIM_SNRS = ("easy", "mid")
#: augmentation of finetune by default: y-x flips and 90° rotations, no intensity changes
GEOMETRIC_AUGMENT = dict(gamma=None, scale=None, noise=None, offset=None)
#: presets the warm-up epochs train on (spots clearly visible: a network starting from scratch
#: on the full mix keeps its probability map flat for hundreds of steps)
WARMUP_SNRS = ("easy", "mid")


def simulated_pairs(n, shape_px, seed, n_fluor=1, temporal=False, snrs=SIM_SNRS):
    """``n`` simulated (image ZYXC, points (N, 3) px, voxel size µm, snr) from ``simulate.training_pairs``.

    ``snrs``: the kinds of volume, cycled: SNR preset names (``easy``, ``mid``, ``hard``,
    ``very_hard``) or ``random`` (every parameter drawn from wide ranges, incl. bright uneven
    background). Each kind has its own reproducible stream of seeds.
    """
    from kt_stardist.io import points_zyx
    from kt_stardist.simulate import SNR_PRESETS, training_pairs

    if n <= 0:
        return []
    snrs = (snrs,) if isinstance(snrs, str) else tuple(snrs)
    bad = [s for s in snrs if s != "random" and s not in SNR_PRESETS]
    if not snrs or bad:
        raise InputError(f"simulation kinds: expected names from {', '.join(SNR_PRESETS)} or random, got {list(snrs)}")
    gens = {s: training_pairs(tuple(shape_px), seed=[seed, k], randomize=s == "random",
                              snr="mid" if s == "random" else s, channels=n_fluor, temporal=temporal)
            for k, s in enumerate(dict.fromkeys(snrs))}
    out = []
    for i in range(n):
        s = snrs[i % len(snrs)]
        img, df = next(gens[s])
        out.append((np.asarray(img, np.float32), points_zyx(df), VOXEL_SIZE_UM, s))
    return out


def to_arrays(pairs, radius_um=LABEL_RADIUS_UM):
    """Normalise images and draw sphere labels: (X list ZYXC float32, Y list ZYX int32, points list)."""
    from kt_stardist.labels import points_to_labels

    X, Y, P = [], [], []
    for img, pts, vs, *_ in pairs:
        X.append(normalize(img, voxel_size_um=vs))
        Y.append(points_to_labels(pts, img.shape[:3], voxel_size_um=vs, radius_um=radius_um).astype(np.int32))
        P.append(np.asarray(pts, float).reshape(-1, 3))
    return X, Y, P


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------

def make_augmenter(flip=True, rotate=True, scale=(0.7, 1.4), gamma=(0.75, 1.35), noise=0.04, offset=0.08,
                   rng=None):
    """Augmentation for microscopy patches ``augment(x ZYXC, y ZYX) -> (x, y)``.

    Geometry only in y-x (flips; 90° rotations when the patch is square in y-x), since z has
    another voxel size. Intensity, per channel: gamma on |x| (sign kept), scale, background
    offset, Gaussian noise of a random level up to ``noise`` (units of the normalised range).
    Pass ``None``/``0`` to switch a part off. ``rng`` defaults to numpy's global state (seeded
    with the training seed, as StarDist's patch sampler).
    """
    r = np.random if rng is None else rng

    def augment(x, y):
        if flip:
            if r.uniform() < 0.5:
                x, y = x[:, ::-1], y[:, ::-1]
            if r.uniform() < 0.5:
                x, y = x[:, :, ::-1], y[:, :, ::-1]
        if rotate and x.shape[1] == x.shape[2]:
            k = int(r.integers(4) if hasattr(r, "integers") else r.randint(4))
            x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
        x = np.array(x, np.float32)
        nc = x.shape[-1] if x.ndim == 4 else 1
        xc = x if x.ndim == 4 else x[..., None]
        for c in range(nc):
            v = xc[..., c]
            if gamma:
                g = r.uniform(*gamma)
                v = np.sign(v) * np.abs(v) ** g
            if scale:
                v = v * r.uniform(*scale)
            if offset:
                v = v + r.uniform(-offset, offset)
            if noise:
                v = v + r.normal(0, r.uniform(0, noise), v.shape).astype(np.float32)
            xc[..., c] = v
        return x, np.ascontiguousarray(y)

    return augment


# --------------------------------------------------------------------------------------------
# fitting
# --------------------------------------------------------------------------------------------

def _data_kwargs(config):
    from stardist.rays3d import rays_from_json

    return dict(rays=rays_from_json(config.rays_json), grid=config.grid, patch_size=config.train_patch_size,
                anisotropy=config.anisotropy, use_gpu=False, foreground_prob=config.train_foreground_only,
                n_classes=None, sample_ind_cache=config.train_sample_cache,
                keras_kwargs=dict(workers=1, use_multiprocessing=False))


def check_patch_size(model, X):
    """Raise InputError unless every image is at least one training patch large."""
    ps = tuple(model.config.train_patch_size)
    for i, x in enumerate(X):
        if any(s < p for s, p in zip(x.shape[:3], ps)):
            raise InputError(f"training image {i}: shape {x.shape[:3]} px smaller than the patch {ps} px")


def _callbacks(model, folder, epochs, steps_per_epoch, patience, reduce_lr_patience, tensorboard, history, best,
               progress):
    import keras

    from kt_stardist.model import save_weights

    cbs = [keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=reduce_lr_patience,
                                             min_lr=1e-5, verbose=0)]
    if patience:
        cbs.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience, min_delta=0))

    class Keeper(keras.callbacks.Callback):
        """weights_last.h5 every epoch, weights_best.h5 on a new best val_loss, history.csv (atomic)."""

        def on_epoch_end(self, epoch, logs=None):
            logs = dict(logs or {})
            if "learning_rate" not in logs:
                lr = self.model.optimizer.learning_rate
                logs["learning_rate"] = float(np.asarray(lr.numpy() if hasattr(lr, "numpy") else lr))
            row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}}
            history.append(row)
            if folder is not None:
                save_weights(model, "weights_last.h5")
                save_optimizer_state(self.model.optimizer, folder)
                vl = row.get("val_loss", math.inf)
                if vl < best[0]:
                    best[0] = vl
                    save_weights(model, "weights_best.h5")
                write_history(history, folder)

    cbs.append(Keeper())
    if progress:
        cbs.append(_TqdmCallback(epochs, steps_per_epoch))
    if tensorboard and folder is not None:
        cbs.append(keras.callbacks.TensorBoard(log_dir=str(Path(folder) / "logs"), write_graph=False, profile_batch=0))
    return cbs


def _TqdmCallback(epochs, steps):
    import keras
    from tqdm import tqdm

    class Cb(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", file=sys.stderr, leave=False,
                            dynamic_ncols=True)

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(1)
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}")

        def on_epoch_end(self, epoch, logs=None):
            self.bar.close()
            logs = logs or {}
            _log(f"epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}, "
                 f"val_loss {logs.get('val_loss', float('nan')):.4f}")

    return Cb()


def write_history(history, folder):
    """history.csv and history.png (loss curves) in the model folder, atomically."""
    import pandas as pd

    from kt_stardist.io import atomic_write

    df = pd.DataFrame(history)
    with atomic_write(Path(folder) / "history.csv", "w") as f:
        df.to_csv(f, index=False, float_format="%.6g")
    return df


def plot_history(folder):
    """history.png: training and validation losses per epoch (from history.csv), atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from kt_stardist.io import atomic_path

    folder = Path(folder)
    if not (folder / "history.csv").is_file():
        return None
    df = pd.read_csv(folder / "history.csv")
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key in zip(axes, ("loss", "prob_loss", "dist_loss")):
        for k, style in ((key, "-"), ("val_" + key, "--")):
            if k in df:
                ax.plot(df["epoch"], df[k], style, label=k)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=8)
    if "val_loss" in df and df["val_loss"].notna().any():
        axes[0].axvline(df.loc[df["val_loss"].idxmin(), "epoch"], color="0.7", lw=0.8)
    fig.tight_layout()
    with atomic_path(folder / "history.png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return folder / "history.png"


def _read_history(folder):
    import pandas as pd

    p = Path(folder) / "history.csv"
    if not p.is_file():
        return []
    return pd.read_csv(p).to_dict("records")


def optimizer_state(optimizer) -> list:
    """The optimiser's variables (step count, learning rate, Adam's moments) as numpy arrays."""
    return [np.array(v.numpy()) for v in optimizer.variables]


def set_optimizer_state(keras_model, state) -> bool:
    """Load ``state`` (from :func:`optimizer_state`) into the compiled model's optimiser.

    The optimiser is built for the currently trainable variables first; returns False (and leaves
    the optimiser fresh) when the state was saved for other variables, e.g. across a freeze.
    """
    opt = keras_model.optimizer
    opt.build(keras_model.trainable_variables)
    if len(state) != len(opt.variables) or any(tuple(a.shape) != tuple(v.shape)
                                                for a, v in zip(state, opt.variables)):
        return False
    for v, a in zip(opt.variables, state):
        v.assign(a)
    return True


def save_optimizer_state(optimizer, folder) -> Path:
    """Write :data:`OPTIMIZER_STATE` into the model folder (atomically)."""
    from kt_stardist.io import atomic_write

    path = Path(folder) / OPTIMIZER_STATE
    with atomic_write(path) as f:
        np.savez(f, *optimizer_state(optimizer))
    return path


def load_optimizer_state(folder):
    """The arrays saved by :func:`save_optimizer_state`, or None when there is no (readable) file."""
    path = Path(folder) / OPTIMIZER_STATE
    try:
        with np.load(path) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]
    except (OSError, ValueError, KeyError):
        return None


def _set_backbone_trainable(model, trainable, keep):
    """Set ``trainable`` on the weighted layers except the heads and the indices in ``keep``."""
    from kt_stardist.model import weighted_layers

    for k, layer in enumerate(weighted_layers(model)):
        if layer.name not in HEAD_LAYERS and k not in keep:
            layer.trainable = trainable


def fit(model, X, Y, X_val, Y_val, *, epochs, steps_per_epoch, lr=LEARNING_RATE, augmenter=None, seed=0,
        freeze_epochs=0, fresh=(), warmup_epochs=0, warmup_data=None, patience=10, reduce_lr_patience=5,
        n_val_patches=8, resume=False, tensorboard=True, progress=True):
    """Train ``model`` on normalised images ``X`` (ZYXC) and labels ``Y`` (ZYX).

    Patches come from StarDist's sampler (``config.train_patch_size``; a fraction
    ``config.train_foreground_only`` of patches is drawn around labelled voxels), augmented by
    ``augmenter(x, y)``. Each epoch writes ``weights_last.h5``, ``weights_best.h5`` (best
    ``val_loss``) and ``history.csv`` into the model folder (atomically). ``freeze_epochs``
    keeps the U-Net backbone (layers other than the heads and the ``fresh`` ones) fixed for the
    first epochs. ``warmup_data=(X_warm, Y_warm)`` replaces the training data for the first
    ``warmup_epochs`` (a curriculum: easy examples first). ``resume`` continues after the epochs
    in ``history.csv`` from ``weights_last.h5`` and the optimiser state saved beside it (a fresh
    Adam at the full learning rate would kick the weights out of their minimum). The optimiser
    state also carries over from the warm-up to the main epochs; only a change of the trainable
    layers (end of ``freeze_epochs``) starts it afresh. Early stopping after ``patience`` epochs
    without a better val_loss.

    Returns the training history (list of dicts, one per epoch, also earlier epochs on resume).
    """
    import keras
    from stardist.models.model3d import StarDistData3D

    check_patch_size(model, X)
    check_patch_size(model, X_val)
    folder = Path(model.logdir) if getattr(model, "basedir", None) is not None else None
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    history, initial_epoch, opt_state = [], 0, None
    if resume and folder is not None:
        history = _read_history(folder)
        initial_epoch = len(history)
        if (folder / "weights_last.h5").is_file():
            model.keras_model.load_weights(str(folder / "weights_last.h5"))
            _log(f"resuming after epoch {initial_epoch} from {folder / 'weights_last.h5'}")
            opt_state = load_optimizer_state(folder)
        if history and "learning_rate" in history[-1]:
            lr = float(history[-1]["learning_rate"])
    best = [min((h.get("val_loss", math.inf) for h in history), default=math.inf)]
    if initial_epoch >= epochs:
        _log(f"nothing to do: {initial_epoch} of {epochs} epochs done")
        return history

    kw = _data_kwargs(model.config)
    reps = max(1, math.ceil(n_val_patches / len(X_val)))
    Xv, Yv = list(X_val) * reps, list(Y_val) * reps
    data_val = StarDistData3D(Xv, Yv, batch_size=len(Xv), length=1, **kw)[0]
    if warmup_data is None or not len(warmup_data[0]):
        warmup_epochs = 0
    cuts = sorted({initial_epoch, epochs} | {e for e in (freeze_epochs, warmup_epochs) if initial_epoch < e < epochs})
    keep = {int(str(name).split(":", 1)[0]) for name in fresh}  # "k:layer name" -> k
    stopped = False
    for e0, e1 in zip(cuts[:-1], cuts[1:]):
        if stopped:
            break
        trainable = e0 >= freeze_epochs
        warm = e0 < warmup_epochs
        Xt, Yt = warmup_data if warm else (X, Y)
        data_train = StarDistData3D(Xt, Yt, batch_size=model.config.train_batch_size, augmenter=augmenter,
                                    length=(e1 - e0 + 2) * steps_per_epoch, **kw)
        _set_backbone_trainable(model, trainable, keep)
        if not trainable:
            n_frozen = sum(1 for layer in model.keras_model.layers if layer.weights and not layer.trainable)
            _log(f"epochs {e0 + 1}-{e1}: backbone frozen ({n_frozen} layers)")
        if warm:
            _log(f"epochs {e0 + 1}-{e1}: warm-up on {len(Xt)} easy volumes")
        model.prepare_for_training(optimizer=keras.optimizers.Adam(lr))
        if opt_state is not None:
            restored = set_optimizer_state(model.keras_model, opt_state)
            if e0 == initial_epoch and resume:
                _log("optimiser state restored" if restored else
                     f"optimiser starts afresh (no matching {OPTIMIZER_STATE})")
        cbs = _callbacks(model, folder, epochs, steps_per_epoch, patience, reduce_lr_patience, tensorboard,
                         history, best, progress)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # StarDist's sampler shuffles
            hist = model.keras_model.fit(iter(data_train), validation_data=data_val, epochs=e1, initial_epoch=e0,
                                         steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=0,
                                         validation_batch_size=model.config.train_batch_size)
        stopped = len(hist.epoch) < (e1 - e0)
        opt_state = optimizer_state(model.keras_model.optimizer) if e1 != freeze_epochs else None
        lr = float(history[-1]["learning_rate"]) if history else lr
    _set_backbone_trainable(model, True, keep)
    if folder is not None:
        plot_history(folder)
        if (folder / "weights_best.h5").is_file():
            model.keras_model.load_weights(str(folder / "weights_best.h5"))
    return history


# --------------------------------------------------------------------------------------------
# thresholds by point F1
# --------------------------------------------------------------------------------------------

def candidates(model, x, prob_min=0.05):
    """StarDist's sparse prediction on a normalised volume (ZYXC), no border exclusion (b=0):
    (prob (N,), dist (N, rays), points (N, 3) px)."""
    from kt_stardist.model import _quiet

    with _quiet():
        prob, dist, points = model.predict_sparse(x, prob_thresh=prob_min, b=0, show_tile_progress=False)
    return np.asarray(prob), np.asarray(dist), np.asarray(points, float).reshape(-1, 3)


def nms_points(model, prob, dist, points, nms_thresh):
    """NMS (StarDist's sparse 3D) -> (points (M, 3) px, prob (M,)), most probable first."""
    from stardist.nms import non_maximum_suppression_3d_sparse
    from stardist.rays3d import rays_from_json

    if len(prob) == 0:
        return np.zeros((0, 3)), np.zeros(0)
    pts, pr, _, _ = non_maximum_suppression_3d_sparse(dist, prob, points, rays_from_json(model.config.rays_json),
                                                      nms_thresh=nms_thresh, verbose=False)
    return np.asarray(pts, float).reshape(-1, 3), np.asarray(pr)


def choose_thresholds(model, X_val, points_val, voxel_size_um=VOXEL_SIZE_UM, cutoff_um=MATCH_CUTOFF_UM,
                      nms_threshs=NMS_THRESHS, prob_threshs=PROB_THRESHS, save=True,
                      max_candidates=MAX_NMS_CANDIDATES):
    """Choose (prob, nms) thresholds maximising point F1 on validation volumes.

    Greedy NMS keeps a candidate only against kept candidates of higher probability, so the
    result at threshold p equals NMS at the lowest threshold filtered to prob >= p: one NMS per
    ``nms_thresh``, then a sweep over ``prob_threshs``. Points are matched with
    :func:`kt_stardist.evaluate.match_points` (``cutoff_um``), counts summed over volumes.

    Parameters
    ----------
    X_val : list of normalised volumes ZYXC
    points_val : list of (N, 3) px ground-truth points
    voxel_size_um : (z, y, x) µm, one for all, or a list (one per volume)
    max_candidates : NMS cost grows with candidates × rays (a half-trained 256-ray model can
        leave tens of thousands above 0.05 per volume); when a volume has more, the sweep starts
        at the lowest ``prob_threshs`` value that keeps at most this many in every volume (the
        results above it are unchanged: NMS is greedy in probability order)

    Returns
    -------
    dict(prob, nms, f1, precision, recall, table=pandas DataFrame of every pair tried); with
    ``save`` the model's thresholds are set and ``thresholds.json`` written.
    """
    import pandas as pd

    from kt_stardist.evaluate import match_points
    from kt_stardist.model import save_thresholds

    vss = voxel_size_um if (len(voxel_size_um) == len(X_val) and np.ndim(voxel_size_um[0]) == 1) else [voxel_size_um] * len(X_val)
    prob_threshs = np.sort(np.asarray(prob_threshs, float))
    cands = [candidates(model, x, float(prob_threshs[0])) for x in X_val]
    floor = max((-np.partition(-c[0], max_candidates)[max_candidates] for c in cands if len(c[0]) > max_candidates),
                default=-np.inf)  # the (max_candidates + 1)-th highest probability
    if np.isfinite(floor):
        higher = prob_threshs[prob_threshs > floor]
        prob_threshs = higher if len(higher) else prob_threshs[-1:]
        cands = [tuple(a[c[0] >= prob_threshs[0]] for a in c) for c in cands]
        _log(f"thresholds: more than {max_candidates} candidates in a volume, sweep from prob {prob_threshs[0]:.3f}")
    rows = []
    for nms in nms_threshs:
        kept = [nms_points(model, *c, nms_thresh=nms) for c in cands]
        for p in prob_threshs:
            tp = fp = fn = 0
            for (pts, pr), gt, vs in zip(kept, points_val, vss):
                m = match_points(gt, pts[pr >= p], vs, cutoff_um)
                tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
            f1 = 2 * tp / max(2 * tp + fp + fn, 1)
            rows.append(dict(nms=nms, prob=float(p), tp=tp, fp=fp, fn=fn, f1=f1,
                             precision=tp / max(tp + fp, 1), recall=tp / max(tp + fn, 1)))
    table = pd.DataFrame(rows)
    # best F1; ties -> the middle of the best plateau in prob (robust), then the lower nms
    top = table[table.f1 >= table.f1.max() - 1e-12]
    nms_best = float(top.nms.min())
    plateau = top[top.nms == nms_best].prob.to_numpy()
    prob_best = float(plateau[len(plateau) // 2])
    best = table[(table.nms == nms_best) & (table.prob == prob_best)].iloc[0]
    if save:
        save_thresholds(model, prob_best, nms_best)
    return dict(prob=prob_best, nms=nms_best, f1=float(best.f1), precision=float(best.precision),
                recall=float(best.recall), table=table)


def predict_points(model, x, prob_thresh=None, nms_thresh=None):
    """Grid-level points of a normalised volume (ZYXC) with the model's thresholds: (M, 3) px."""
    th = model.thresholds
    p = th.prob if prob_thresh is None else prob_thresh
    n = th.nms if nms_thresh is None else nms_thresh
    prob, dist, pts = candidates(model, x, p)
    keep = prob >= p
    return nms_points(model, prob[keep], dist[keep], pts[keep], n)[0]


# --------------------------------------------------------------------------------------------
# the two jobs
# --------------------------------------------------------------------------------------------

def _out_folder(out):
    out = Path(out)
    return out.parent, out.name


def pretrain(out, *, config="nuclei-pretrain", data="example", epochs=10, steps_per_epoch=20, seed=0,
             patch_size=None, batch_size=None, lr=LEARNING_RATE, resume=False, tensorboard=True, progress=True,
             **overrides):
    """Train StarDist 3D on the example nuclei (or folders of images/labels) and save a model folder.

    Parameters
    ----------
    out : model folder to write
    config : configuration name or KtConfig
    data : ``"example"`` or ``(image_dir, label_dir)``
    epochs, steps_per_epoch : training length
    patch_size : (z, y, x) px, default from the config (capped at the image size)
    **overrides : Config3D fields
    """
    from kt_stardist.model import build_model, load_model, receptive_field, update_info

    t0 = time.time()
    if isinstance(data, str) and data == "example":
        X, Y = example_data()
        desc = "stardist.data.test_image_nuclei_3d (synthetic nuclei), flips/rot90 y-x, intensity"
        X_val, Y_val = X, Y  # one volume only: validation patches are other crops of it
    else:
        X, Y = folder_data(*data)
        desc = f"images {data[0]}, labels {data[1]}"
        n_val = max(1, len(X) // 8) if len(X) > 1 else 0
        X_val, Y_val = (X[-n_val:], Y[-n_val:]) if n_val else (X, Y)
        X, Y = (X[:-n_val], Y[:-n_val]) if n_val else (X, Y)
    kt = get_config(config) if isinstance(config, str) else config
    if patch_size is None:  # the config's patch, capped at the smallest image (divisibility kept)
        ps = tuple(kt.stardist.get("train_patch_size", (24, 64, 64)))
        div = kt.patch_divisible_by(**overrides)
        small = np.min([x.shape[:3] for x in X + X_val], axis=0)
        patch_size = tuple(int(min(p, s // d * d)) for p, s, d in zip(ps, small, div))
    overrides["train_patch_size"] = tuple(int(p) for p in patch_size)
    if batch_size is not None:
        overrides["train_batch_size"] = int(batch_size)
    overrides.setdefault("train_learning_rate", lr)
    overrides.setdefault("n_channel_in", X[0].shape[-1])
    basedir, name = _out_folder(out)
    if resume and (Path(out) / "config.json").is_file():
        model = load_model(out)
    else:
        model = build_model(kt, basedir, name, **overrides)
    aug = make_augmenter(gamma=None, noise=0.02, offset=0.05)
    hist = fit(model, X, Y, X_val, Y_val, epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr, augmenter=aug,
               seed=seed, resume=resume, tensorboard=tensorboard, progress=progress, patience=0)
    update_info(model, training_data=desc, seed=seed, steps=len(hist) * steps_per_epoch,
                job="pretrain", train_seconds=round(time.time() - t0, 1), receptive_field_px=receptive_field(model))
    return model


def finetune(out, *, from_model=None, config="kt-default", n_rays=None, grid=None, channels=None, images=(),
             points=(), simulate=0, sim_shape=(32, 128, 128), val_fraction=0.2, n_val_sim=None, epochs=20,
             steps_per_epoch=50, freeze=0, seed=0, lr=LEARNING_RATE, patch_size=None, batch_size=None,
             patience=10, resume=False, tensorboard=True, progress=True, sim_snrs=SIM_SNRS, warmup=None, axes=None,
             augment=None,
             **overrides):
    """Finetune on kinetochores: user (image, points) pairs and/or ``simulate`` simulated volumes.

    Points become sphere labels of the config's label radius (µm). Weights come from
    ``from_model`` (every layer whose shape matches; the log lists fresh layers). Thresholds are
    chosen by point F1 on the validation volumes (``thresholds.json``). The model folder gets
    config.json, model.json, weights_best.h5, weights_last.h5, thresholds.json, history.csv,
    history.png and TensorBoard logs.

    Parameters
    ----------
    out : model folder to write
    from_model : model folder or loaded model to transfer weights from (None: from scratch)
    config : configuration name (``kt-default``, ``kt-256``, ...) or KtConfig
    n_rays, grid : override the config's rays / grid (z, y, x)
    channels : network input channels 1, 2, 3 or 6 (3, 6: t-1, t, t+1); default from the config
    images, points : user training files (equal length)
    simulate : number of simulated training volumes of ``sim_shape`` px (z, y, x)
    sim_snrs : kinds of simulated volume, cycled (SNR presets and/or ``random``; :data:`SIM_SNRS`)
    warmup : epochs trained only on the simulated volumes of the :data:`WARMUP_SNRS` presets
        (plus the user's frames) before the full mix; default ``max(2, epochs // 4)`` when the
        mix has both kinds (a resumed run continues the same schedule)
    val_fraction : share of user pairs held out for validation; simulations add
        ``n_val_sim`` (default max(2, simulate // 5)) validation volumes of their own
    epochs, steps_per_epoch, freeze : training length; ``freeze`` epochs with the backbone fixed
    augment : keyword arguments of :func:`make_augmenter`; default :data:`GEOMETRIC_AUGMENT` (y-x
        flips and rotations only: with intensity augmentation from the first step a fresh network
        had not started learning after 320 steps, without it it had after ~200); pass ``{}`` for
        make_augmenter's intensity defaults too

    Returns
    -------
    (model, report dict: transfer, thresholds, history, seconds, steps)
    """
    from kt_stardist.model import build_model, channel_layout, load_model, receptive_field, transfer_weights, update_info

    t0 = time.time()
    kt = get_config(config) if isinstance(config, str) else config
    n_in = int(channels) if channels is not None else int(kt.stardist.get("n_channel_in", 1))
    _, n_fluor, temporal = channel_layout(n_in)
    radius = float(getattr(kt, "label_radius_um", None) or LABEL_RADIUS_UM)
    if not images and not simulate:
        raise InputError("finetune: no training data (give --images/--points and/or --simulate N)")

    user = read_pairs(list(images), list(points), n_fluor, temporal, axes=axes) if images else []
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(user))
    n_uval = int(round(len(user) * val_fraction)) if len(user) > 1 else 0
    if len(user) > 1:
        n_uval = max(1, n_uval)
    u_val = [user[i] for i in order[:n_uval]]
    u_train = [user[i] for i in order[n_uval:]]
    n_val_sim = (max(2, simulate // 5) if simulate else 0) if n_val_sim is None else n_val_sim
    if not u_val and not n_val_sim:  # one user pair only, no simulations: validate on it
        u_val = u_train
    s_train = simulated_pairs(simulate, sim_shape, seed, n_fluor, temporal, sim_snrs)
    s_val = simulated_pairs(n_val_sim, sim_shape, seed + 100_003, n_fluor, temporal, sim_snrs)
    train_pairs, val_pairs = u_train + s_train, u_val + s_val
    X, Y, _ = to_arrays(train_pairs, radius)
    is_warm = [i < len(u_train) or train_pairs[i][3] in WARMUP_SNRS for i in range(len(train_pairs))]
    warm_data = ([x for x, w in zip(X, is_warm) if w], [y for y, w in zip(Y, is_warm) if w])
    if warmup is None:
        warmup = max(2, epochs // 4) if (s_train and any(is_warm) and not all(is_warm)) else 0
    X_val, Y_val, P_val = to_arrays(val_pairs, radius)
    vs_val = [p[2] for p in val_pairs]

    if n_rays is not None:
        overrides["n_rays"] = int(n_rays)
    if grid is not None:
        overrides["grid"] = tuple(int(g) for g in grid)
    if patch_size is not None:
        overrides["train_patch_size"] = tuple(int(p) for p in patch_size)
    if batch_size is not None:
        overrides["train_batch_size"] = int(batch_size)
    overrides["n_channel_in"] = n_in
    overrides.setdefault("train_learning_rate", lr)
    basedir, name = _out_folder(out)
    desc = []
    if user:
        desc.append(f"{len(u_train)} user frames ({', '.join(str(p) for p in images)}), {len(u_val)} for validation")
    if simulate:
        desc.append(f"{simulate} simulated volumes {tuple(sim_shape)} px ({'/'.join(sim_snrs)}, seed {seed}; "
                    f"warm-up {warmup} epochs on {'/'.join(WARMUP_SNRS)}), "
                    f"{n_val_sim} for validation")
    transfer = None
    if resume and (Path(out) / "config.json").is_file():
        model = load_model(out)
    else:
        model = build_model(kt, basedir, name, label_radius_um=radius, **overrides)
        if from_model is not None:
            transfer = transfer_weights(from_model, model, log=_log)
            update_info(model, transferred_from=str(from_model), transfer=transfer)
    fresh = transfer["fresh"] if transfer else model.kt_info.get("transfer", {}).get("fresh", ())
    aug = make_augmenter(**(GEOMETRIC_AUGMENT if augment is None else augment))
    hist = fit(model, X, Y, X_val, Y_val, epochs=epochs, steps_per_epoch=steps_per_epoch, lr=lr, augmenter=aug,
               seed=seed, freeze_epochs=freeze if (from_model is not None or fresh) else 0, fresh=fresh,
               warmup_epochs=warmup, warmup_data=warm_data, patience=patience,
               resume=resume, tensorboard=tensorboard, progress=progress)
    th = choose_thresholds(model, X_val, P_val, vs_val)
    _log(f"thresholds: prob {th['prob']:.3f}, nms {th['nms']:.2f} (validation point F1 {th['f1']:.3f})")
    info = update_info(model, training_data="; ".join(desc), seed=seed, steps=len(hist) * steps_per_epoch,
                       job="finetune", thresholds_by=f"point F1, match_points cutoff {MATCH_CUTOFF_UM} µm",
                       validation_f1=round(th["f1"], 4), train_seconds=round(time.time() - t0, 1),
                       receptive_field_px=receptive_field(model))
    if model.basedir is not None:
        from kt_stardist.io import atomic_write

        with atomic_write(Path(model.logdir) / "thresholds_search.csv", "w") as f:
            th["table"].to_csv(f, index=False, float_format="%.4f")
    return model, dict(transfer=transfer, thresholds={k: th[k] for k in ("prob", "nms", "f1")}, history=hist,
                       seconds=time.time() - t0, steps=info["steps"])


def evaluate_simulated(model, snrs=None, n=4, shape_px=(48, 128, 128), seed=20261125):
    """Point scores on held-out simulated volumes, one row per SNR preset.

    Volumes come from ``simulate.simulate_volume`` (or a 3-frame ``simulate_timelapse`` for
    temporal models, scored at the middle frame) with seeds unlike training's; points from
    :func:`predict_points` (grid-level, the model's thresholds), matched with
    :func:`kt_stardist.evaluate.match_points` at 0.5 µm. Returns a DataFrame: snr, volumes, tp,
    fp, fn, precision, recall, f1, rmse_nm.
    """
    import pandas as pd

    from kt_stardist.evaluate import match_points
    from kt_stardist.io import points_zyx
    from kt_stardist.model import channel_layout, model_input
    from kt_stardist.simulate import SNR_PRESETS, simulate_timelapse, simulate_volume

    _, n_fluor, temporal = channel_layout(model.config.n_channel_in)
    rows = []
    for snr in snrs or list(SNR_PRESETS):
        tp = fp = fn = 0
        d = []
        for i in range(n):
            s = seed + 1000 * i
            if temporal:
                img, pts = simulate_timelapse(3, shape_px, seed=s, snr=snr, channels=n_fluor)
                x = model_input(img, 1, temporal=True)
                pts = pts[pts["t"] == 1]
            else:
                x, pts = simulate_volume(shape_px, seed=s, snr=snr, channels=n_fluor)
            pred = predict_points(model, normalize(x, voxel_size_um=VOXEL_SIZE_UM))
            m = match_points(points_zyx(pts), pred, VOXEL_SIZE_UM, MATCH_CUTOFF_UM)
            tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
            d.append(np.asarray(m.dist_um, float) * 1000)
        dist = np.concatenate(d) if d else np.zeros(0)
        rows.append(dict(snr=snr, volumes=n, tp=tp, fp=fp, fn=fn, precision=tp / max(tp + fp, 1),
                         recall=tp / max(tp + fn, 1), f1=2 * tp / max(2 * tp + fp + fn, 1),
                         rmse_nm=float(np.sqrt(np.mean(dist ** 2))) if dist.size else float("nan")))
    return pd.DataFrame(rows)
