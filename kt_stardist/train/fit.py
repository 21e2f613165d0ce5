"""The training loop around StarDist's Keras model: patches, checkpoints, history, resume.

Each epoch writes ``weights_last.h5``, ``weights_best.h5`` (best ``val_loss``), the optimiser's
state (Adam's step count and moments, :data:`OPTIMIZER_STATE`) and ``history.csv`` into the
model folder, atomically, so an interrupted run resumes as the run it interrupted.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np

from kt_stardist.errors import InputError

__all__ = ["pad_to_patch", "fit", "LEARNING_RATE", "OPTIMIZER_STATE", "HEAD_LAYERS", "check_patch_size", "cap_patch",
           "write_history", "plot_history", "optimizer_state", "set_optimizer_state", "save_optimizer_state",
           "load_optimizer_state", "log"]

#: learning rate that learns (1e-4 and lower collapsed to background in trials)
LEARNING_RATE = 1e-3
#: layers that are output heads (never frozen)
HEAD_LAYERS = ("features", "prob", "dist")
#: the optimiser's state (Adam's step count and moments) after the last epoch, beside weights_last.h5
OPTIMIZER_STATE = "optimizer_last.npz"


def log(msg):
    """One progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


def check_patch_size(sd, X):
    """Raise InputError unless every image is at least one training patch large."""
    ps = tuple(sd.config.train_patch_size)
    for i, x in enumerate(X):
        if any(s < p for s, p in zip(x.shape[:3], ps)):
            raise InputError(f"training image {i}: shape {x.shape[:3]} px smaller than the patch {ps} px")


def pad_to_patch(X, Y, patch_px):
    """Volumes smaller than the patch on some axis, padded (at the end of it) to the patch: the
    image with 0 (normalised background), the labels with 0 (no object). Others unchanged.
    Used for the simulated mix (thin stacks), whose patch is fixed; a user's images cap the
    patch instead (:func:`cap_patch`)."""
    outX, outY = [], []
    for x, y in zip(X, Y):
        pad = [(0, max(0, int(p) - s)) for p, s in zip(patch_px, x.shape[:3])]
        if any(b for _, b in pad):
            x = np.pad(x, pad + [(0, 0)] * (x.ndim - 3))
            y = np.pad(y, pad)
        outX.append(x), outY.append(y)
    return outX, outY


def cap_patch(patch_px, images, divisible_by) -> tuple:
    """``patch_px`` (z, y, x) capped at the smallest image (each axis a multiple of
    ``divisible_by``, the U-Net's pooling): ``(patch, capped?)``."""
    small = np.min([x.shape[:3] for x in images], axis=0)
    out = tuple(int(max(d, min(p, s // d * d))) for p, s, d in zip(patch_px, small, divisible_by))
    return out, out != tuple(int(p) for p in patch_px)


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
            log(f"epoch {epoch + 1}/{epochs}: loss {logs.get('loss', float('nan')):.4f}, "
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

    from kt_stardist.model.stardist_backend import patch_sampler, prepare_for_training

    sd = model.stardist
    check_patch_size(sd, X)
    check_patch_size(sd, X_val)
    folder = model.folder
    np.random.seed(seed)
    keras.utils.set_random_seed(seed)
    history, initial_epoch, opt_state = [], 0, None
    if resume and folder is not None:
        history = _read_history(folder)
        initial_epoch = len(history)
        if (folder / "weights_last.h5").is_file():
            sd.keras_model.load_weights(str(folder / "weights_last.h5"))
            log(f"resuming after epoch {initial_epoch} from {folder / 'weights_last.h5'}")
            opt_state = load_optimizer_state(folder)
        if history and "learning_rate" in history[-1]:
            lr = float(history[-1]["learning_rate"])
    best = [min((h.get("val_loss", math.inf) for h in history), default=math.inf)]
    if initial_epoch >= epochs:
        log(f"nothing to do: {initial_epoch} of {epochs} epochs done")
        return history

    reps = max(1, math.ceil(n_val_patches / len(X_val)))
    Xv, Yv = list(X_val) * reps, list(Y_val) * reps
    data_val = patch_sampler(Xv, Yv, sd.config, batch_size=len(Xv), length=1)[0]
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
        data_train = patch_sampler(Xt, Yt, sd.config, batch_size=sd.config.train_batch_size, augmenter=augmenter,
                                   length=(e1 - e0 + 2) * steps_per_epoch)
        _set_backbone_trainable(model, trainable, keep)
        if not trainable:
            n_frozen = sum(1 for layer in sd.keras_model.layers if layer.weights and not layer.trainable)
            log(f"epochs {e0 + 1}-{e1}: backbone frozen ({n_frozen} layers)")
        if warm:
            log(f"epochs {e0 + 1}-{e1}: warm-up on {len(Xt)} easy volumes")
        prepare_for_training(sd, keras.optimizers.Adam(lr))
        if opt_state is not None:
            restored = set_optimizer_state(sd.keras_model, opt_state)
            if e0 == initial_epoch and resume:
                log("optimiser state restored" if restored else
                     f"optimiser starts afresh (no matching {OPTIMIZER_STATE})")
        cbs = _callbacks(model, folder, epochs, steps_per_epoch, patience, reduce_lr_patience, tensorboard,
                         history, best, progress)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*shuffle=True.*")  # StarDist's sampler shuffles
            hist = sd.keras_model.fit(iter(data_train), validation_data=data_val, epochs=e1, initial_epoch=e0,
                                         steps_per_epoch=steps_per_epoch, callbacks=cbs, verbose=0,
                                         validation_batch_size=sd.config.train_batch_size)
        stopped = len(hist.epoch) < (e1 - e0)
        opt_state = optimizer_state(sd.keras_model.optimizer) if e1 != freeze_epochs else None
        lr = float(history[-1]["learning_rate"]) if history else lr
    _set_backbone_trainable(model, True, keep)
    if folder is not None:
        plot_history(folder)
        if (folder / "weights_best.h5").is_file():
            sd.keras_model.load_weights(str(folder / "weights_best.h5"))
    return history
