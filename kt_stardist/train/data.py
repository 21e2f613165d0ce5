"""Training data: (raw image, points) pairs from the user's files or the simulator, turned into
network inputs and sphere labels **exactly as prediction sees images**.

A pair is ``(image ZYXC raw counts, points (N, 3) px of that image, voxel size (z, y, x) µm,
kind)``. :func:`to_arrays` sends every image through
:func:`kt_stardist.predict.preprocess.prepare` (camera-defect repair, rescaling to the model's
voxel size, normalisation) and draws the labels at the model's voxel size, so a model trained on
0.07 µm images still works at its recorded voxel size, as ``predict`` assumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError

__all__ = ["example_data", "folder_data", "read_pairs", "simulated_pairs", "to_arrays", "SIM_KINDS",
           "WARMUP_KINDS"]

#: physical kinds of simulated volume and what they change in
#: :func:`kt_stardist.physical.physical_training_pairs`: ``physical_crowded`` draws a dense
#: cluster and a bright textured nucleus each with chance 0.5 (0.2 in ``physical``)
PHYSICAL_KINDS = {"physical": {}, "physical_crowded": dict(p_dense=0.5, p_nucleus=0.5)}
#: kinds of simulated volume :func:`simulated_pairs` knows besides the SNR presets
SIM_KINDS = ("random",) + tuple(PHYSICAL_KINDS)
#: presets the warm-up epochs train on (spots clearly visible: a network starting from scratch
#: on the full mix keeps its probability map flat for hundreds of steps)
WARMUP_KINDS = ("easy", "mid")


def example_data():
    """StarDist's synthetic 3D nuclei: ([image ZYXC normalised], [labels ZYX int32])."""
    from kt_stardist.model.stardist_backend import example_nuclei
    from kt_stardist.normalize import normalize

    img, lbl = example_nuclei()
    x = normalize(img.astype(np.float32)[..., None], region="all")
    return [x], [lbl.astype(np.int32)]


def folder_data(img_dir, lbl_dir):
    """Image/label pairs from two folders of TIFFs matched by sorted file name:
    ([images ZYXC normalised], [labels ZYX int32])."""
    from kt_stardist.io import read_image
    from kt_stardist.normalize import normalize

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


def read_pairs(image_paths, points_paths, lay, axes=None, voxel_size_um=None):
    """User training data: one pair per annotated frame (module docstring).

    ``lay``: the model's :class:`kt_stardist.channels.ChannelLayout` (temporal layouts stack
    frames t-1, t, t+1). The voxel size comes from the file, else ``voxel_size_um``, else the
    default (0.3 × 0.13 × 0.13 µm).
    """
    from kt_stardist.channels import stack_frames
    from kt_stardist.io import points_zyx, read_image, read_points

    if len(image_paths) != len(points_paths):
        raise InputError(f"--images/--points: {len(image_paths)} images but {len(points_paths)} point files")
    pairs = []
    for ip, pp in zip(image_paths, points_paths):
        im = read_image(ip, axes=axes)
        if lay.n_fluor > 1 and im.data.shape[-1] != lay.n_fluor:
            raise InputError(f"{ip}: {im.data.shape[-1]} channels, the model takes {lay.n_fluor}")
        df = read_points(pp)
        vs = tuple(im.voxel_size_um or voxel_size_um or VOXEL_SIZE_UM)
        frames = sorted(df["t"].unique()) if "t" in df.columns else [0]
        for t in frames:
            t = int(t)
            if not 0 <= t < im.data.shape[0]:
                raise InputError(f"{pp}: points at frame {t} but {ip} has {im.data.shape[0]} frames")
            sub = df[df["t"] == t] if "t" in df.columns else df
            pairs.append((np.asarray(stack_frames(im.data, t, lay), np.float32), points_zyx(sub), vs, "user"))
    return pairs


def simulated_pairs(n, shape_px, seed, lay=None, kinds=("easy", "mid")):
    """``n`` simulated pairs (module docstring) from :func:`kt_stardist.simulate.training_pairs`.

    ``kinds`` are cycled: SNR preset names, ``random`` (every parameter drawn from wide ranges)
    or ``physical`` (physical PSFs, cameras and samples; drawn voxel sizes; ``physical_crowded``:
    more dense clusters and bright nuclei, :data:`PHYSICAL_KINDS`). Each kind has its
    own reproducible stream of seeds. ``lay``: the model's channel layout (None: EGFP only).
    """
    from kt_stardist.channels import layout
    from kt_stardist.io import points_zyx
    from kt_stardist.simulate import SNR_PRESETS, training_pairs

    if n <= 0:
        return []
    lay = lay or layout("egfp")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    bad = [s for s in kinds if s not in SIM_KINDS and s not in SNR_PRESETS]
    if not kinds or bad:
        raise InputError(f"simulation kinds: expected names from {', '.join(SNR_PRESETS)}, "
                         f"{', '.join(SIM_KINDS)}; got {list(kinds)}")
    phys = [s for s in kinds if s in PHYSICAL_KINDS]
    if phys and lay.n_fluor > 1:
        raise InputError(f"simulation kind {phys[0]!r} renders EGFP only; the model takes the {lay.name} layout")

    def stream(kind, k):
        if kind in PHYSICAL_KINDS:
            from kt_stardist.physical import physical_training_pairs

            for img, df, vs in physical_training_pairs(tuple(shape_px), seed=[seed, k], temporal=lay.temporal,
                                                       **PHYSICAL_KINDS[kind]):
                yield (img if lay.temporal else img[..., None]), df, vs
            return
        for img, df in training_pairs(tuple(shape_px), seed=[seed, k], randomize=kind == "random",
                                      snr="mid" if kind == "random" else kind, channels=lay.n_fluor,
                                      temporal=lay.temporal):
            yield img, df, VOXEL_SIZE_UM

    gens = {s: stream(s, k) for k, s in enumerate(dict.fromkeys(kinds))}
    out = []
    for i in range(n):
        s = kinds[i % len(kinds)]
        img, df, vs = next(gens[s])
        out.append((np.asarray(img, np.float32), points_zyx(df), tuple(vs), s))
    return out


def to_arrays(pairs, model_voxel_um=VOXEL_SIZE_UM, normalization=None, radius_um=LABEL_RADIUS_UM):
    """Network inputs and sphere labels of pairs, at the model's voxel size:
    ``(X list ZYXC float32, Y list ZYX int32, points list (N, 3) model px)``.

    Images go through :func:`kt_stardist.predict.preprocess.prepare` (as in prediction);
    points are mapped onto the rescaled grid and drawn as spheres of ``radius_um`` µm.
    """
    from kt_stardist.labels import points_to_labels
    from kt_stardist.predict.preprocess import prepare

    X, Y, P = [], [], []
    for img, pts, vs, *_ in pairs:
        prep = prepare(img, vs, model_voxel_um, normalization, repair=True, max_in_memory_gb=None)
        x = np.asarray(prep.x, np.float32)
        p = prep.to_model_px(pts)
        X.append(x)
        Y.append(points_to_labels(p, x.shape[:3], voxel_size_um=model_voxel_um, radius_um=radius_um).astype(np.int32))
        P.append(p)
    return X, Y, P
