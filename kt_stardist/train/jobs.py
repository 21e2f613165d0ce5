"""The two training jobs: :func:`pretrain` (StarDist's example nuclei or labelled folders) and
:func:`finetune` (kinetochore points: the user's annotated frames and/or simulations).

Both take a settings object (:class:`kt_stardist.settings.PretrainSettings`,
:class:`kt_stardist.settings.FinetuneSettings`), saved as ``train_settings.json`` in the model
folder beside the weights, and record what they did in ``model.json``'s ``training`` record.
Finetuning chooses the thresholds through the prediction path
(:func:`kt_stardist.train.thresholds.choose_thresholds`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from kt_stardist.errors import InputError
from kt_stardist.settings import FinetuneSettings, PretrainSettings, to_dict
from kt_stardist.train.augment import GEOMETRIC_AUGMENT, make_augmenter
from kt_stardist.train.data import WARMUP_KINDS, example_data, folder_data, read_pairs, simulated_pairs, to_arrays
from kt_stardist.train.fit import cap_patch, fit, log, pad_to_patch
from kt_stardist.train.thresholds import choose_thresholds

__all__ = ["pretrain", "finetune", "TRAIN_SETTINGS"]

#: the settings file of a training run, in the model folder
TRAIN_SETTINGS = "train_settings.json"


def _config(name_or_path):
    from kt_stardist.configs import load_config

    return load_config(name_or_path) if isinstance(name_or_path, (str, Path)) else name_or_path


def _save_settings(model, settings):
    from kt_stardist.model import write_json

    if model.folder is not None:
        write_json(model.folder / TRAIN_SETTINGS, {"job": type(settings).__name__, **to_dict(settings)})


def _patch(kt, settings_patch, images, overrides, what):
    """The training patch: given, or the config's capped at the smallest image (logged)."""
    if settings_patch is not None:
        return tuple(int(p) for p in settings_patch)
    ps = tuple(kt.stardist.get("train_patch_size", (24, 64, 64)))
    patch, capped = cap_patch(ps, images, kt.patch_divisible_by(**overrides))
    if capped:
        log(f"patch {ps} px capped at {patch} px: the smallest {what} is {tuple(np.min([x.shape[:3] for x in images], 0))} px")
    return patch


def pretrain(out, data="example", settings: PretrainSettings = PretrainSettings(), resume=False, tensorboard=True,
             progress=True):
    """Train StarDist 3D on the example nuclei (``data="example"``) or ``(image_dir, label_dir)``
    and write a model folder ``out``. Returns the :class:`kt_stardist.model.KtModel`."""
    from kt_stardist.model import build_model, load_model

    t0 = time.time()
    tr = settings.train
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
    kt = _config(settings.config)
    overrides = dict(settings.config_overrides)
    overrides["train_patch_size"] = _patch(kt, tr.patch_size_px, X + X_val, overrides, "training image")
    if tr.batch_size is not None:
        overrides["train_batch_size"] = int(tr.batch_size)
    overrides.setdefault("train_learning_rate", tr.lr)
    overrides.setdefault("n_channel_in", X[0].shape[-1])
    if resume and (Path(out) / "config.json").is_file():
        model = load_model(out)
    else:
        model = build_model(kt, out, **overrides)
    _save_settings(model, settings)
    aug = make_augmenter(gamma=None, noise=0.02, offset=0.05)
    hist = fit(model, X, Y, X_val, Y_val, epochs=tr.epochs, steps_per_epoch=tr.steps_per_epoch, lr=tr.lr,
               augmenter=aug, seed=tr.seed, resume=resume, tensorboard=tensorboard, progress=progress,
               patience=tr.patience)
    model.save_info(receptive_field_px=tuple(map(tuple, model.backend.receptive_field_px())),
                    training=dict(job="pretrain", training_data=desc, seed=tr.seed,
                                  steps=len(hist) * tr.steps_per_epoch, train_seconds=round(time.time() - t0, 1)))
    return model


def _split_user(user, val_fraction, seed):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(user))
    n_val = max(1, int(round(len(user) * val_fraction))) if len(user) > 1 else 0
    return [user[i] for i in order[n_val:]], [user[i] for i in order[:n_val]]


def finetune(out, settings: FinetuneSettings = FinetuneSettings(), *, from_model=None, images=(), points=(),
             axes=None, voxel_size_um=None, resume=False, tensorboard=True, progress=True):
    """Finetune on kinetochores: the user's annotated frames (``images`` + ``points``) and/or
    ``settings.simulation.n`` simulated volumes.

    Every image goes through prediction's preprocessing (defect repair, rescaling to the model's
    voxel size, normalisation; :func:`kt_stardist.train.data.to_arrays`), points become spheres of
    the config's label radius (µm) at the model's voxel size. Weights come from ``from_model``
    (every layer whose shape matches; the log lists fresh layers). Thresholds are chosen by point
    F1 of the full detection on the held-out frames and validation simulations. The model folder
    gets config.json, model.json, train_settings.json, weights_best.h5, weights_last.h5,
    thresholds.json, thresholds_search.csv, history.csv, history.png and TensorBoard logs.

    ``voxel_size_um``: the user images' voxel size when their files do not say.
    Returns ``(model, report dict: transfer, thresholds, history, seconds, steps)``.
    """
    from kt_stardist.channels import layout_for
    from kt_stardist.model import build_model, load_model, transfer_weights

    t0 = time.time()
    st, tr, sim = settings, settings.train, settings.simulation
    kt = _config(st.config)
    n_in = int(st.channels) if st.channels is not None else int(kt.stardist.get("n_channel_in", 1))
    lay = layout_for(n_in)
    if not images and not sim.n:
        raise InputError("finetune: no training data (give --images/--points and/or --simulate N)")
    model_vs = tuple(kt.voxel_size_um)

    user = read_pairs(list(images), list(points), lay, axes=axes, voxel_size_um=voxel_size_um) if images else []
    u_train, u_val = _split_user(user, st.val_fraction, tr.seed)
    n_val_sim = (max(2, sim.n // 5) if sim.n else 0) if sim.n_val is None else sim.n_val
    if not u_val and not n_val_sim:  # one user frame only, no simulations: validate on it
        u_val = u_train
    s_train = simulated_pairs(sim.n, sim.shape_px, tr.seed, lay, sim.kinds)
    s_val = simulated_pairs(n_val_sim, sim.val_shape_px or sim.shape_px, tr.seed + 100_003, lay, sim.kinds)
    train_pairs, val_pairs = u_train + s_train, u_val + s_val
    X, Y, _ = to_arrays(train_pairs, model_vs, None, kt.label_radius_um)
    X_val, Y_val, _ = to_arrays(val_pairs, model_vs, None, kt.label_radius_um)
    is_warm = [p[3] == "user" or p[3] in WARMUP_KINDS for p in train_pairs]
    warm_data = ([x for x, w in zip(X, is_warm) if w], [y for y, w in zip(Y, is_warm) if w])
    warmup = tr.warmup_epochs
    if warmup is None:
        warmup = max(2, tr.epochs // 4) if (s_train and any(is_warm) and not all(is_warm)) else 0

    overrides = dict(st.config_overrides)
    if st.n_rays is not None:
        overrides["n_rays"] = int(st.n_rays)
    if st.grid is not None:
        overrides["grid"] = tuple(int(g) for g in st.grid)
    if tr.batch_size is not None:
        overrides["train_batch_size"] = int(tr.batch_size)
    if tr.foreground_prob is not None:
        overrides["train_foreground_only"] = float(tr.foreground_prob)
    overrides["n_channel_in"] = n_in
    overrides["train_patch_size"] = _patch(kt, tr.patch_size_px, X + X_val, overrides, "training volume")
    if tr.patch_size_px is not None:  # a fixed patch: thin simulated stacks are padded to it
        X, Y = pad_to_patch(X, Y, overrides["train_patch_size"])
        X_val, Y_val = pad_to_patch(X_val, Y_val, overrides["train_patch_size"])
    overrides.setdefault("train_learning_rate", tr.lr)
    desc = []
    if user:
        desc.append(f"{len(u_train)} user frames ({', '.join(str(p) for p in images)}), {len(u_val)} for validation")
    if sim.n:
        desc.append(f"{sim.n} simulated volumes {tuple(sim.shape_px)} px ({'/'.join(sim.kinds)}, seed {tr.seed}; "
                    f"warm-up {warmup} epochs on {'/'.join(WARMUP_KINDS)}), {n_val_sim} for validation")
    transfer = None
    if resume and (Path(out) / "config.json").is_file():
        model = load_model(out)
    else:
        model = build_model(kt, out, **overrides)
        if from_model is not None:
            transfer = transfer_weights(from_model, model, log=log)
            model.save_info(training=dict(transferred_from=str(from_model), transfer=transfer))
    _save_settings(model, settings)
    fresh = transfer["fresh"] if transfer else model.info.training.get("transfer", {}).get("fresh", ())
    aug = make_augmenter(**({} if tr.augment_intensity else GEOMETRIC_AUGMENT))
    hist = fit(model, X, Y, X_val, Y_val, epochs=tr.epochs, steps_per_epoch=tr.steps_per_epoch, lr=tr.lr,
               augmenter=aug, seed=tr.seed, freeze_epochs=tr.freeze_epochs if (from_model is not None or fresh) else 0,
               fresh=fresh, warmup_epochs=warmup, warmup_data=warm_data, patience=tr.patience, resume=resume,
               tensorboard=tensorboard, progress=progress)
    if model.folder is not None and not (model.folder / "weights_best.h5").is_file():
        from kt_stardist.model import save_weights

        save_weights(model, "weights_best.h5")  # --epochs 0: the transferred weights, thresholds re-chosen
    model.save_info(receptive_field_px=tuple(map(tuple, model.backend.receptive_field_px())))
    th = choose_thresholds(model, [(p[0], p[1], p[2]) for p in val_pairs], st.thresholds, log=log)
    log(f"thresholds: prob {th['prob']:.3f}, nms {th['nms']:.2f} (validation point F1 {th['f1']:.3f}, "
        f"full detection)")
    steps = len(hist) * tr.steps_per_epoch
    model.save_info(training=dict(job="finetune", training_data="; ".join(desc), seed=tr.seed, steps=steps,
                                  train_seconds=round(time.time() - t0, 1)))
    if model.folder is not None:
        from kt_stardist.io import atomic_write

        with atomic_write(model.folder / "thresholds_search.csv", "w") as f:
            th["table"].to_csv(f, index=False, float_format="%.4f")
    return model, dict(transfer=transfer, thresholds={k: th[k] for k in ("prob", "nms", "f1")}, history=hist,
                       seconds=time.time() - t0, steps=steps)
