"""A kt-stardist model folder → a bioimage.io model package (``bioimageio.spec`` format 0.5).

The package holds the StarDist *network* only, so that deepImageJ, ilastik, QuPath or
``bioimageio.core`` can run it; what turns its two outputs into kinetochore points stays in
kt-stardist (see ``documentation`` written into the package, :data:`LIMITS`).

Contents (one zip, written atomically):

- ``weights.h5``: the whole Keras model (``keras_hdf5``, saved by Keras 3 in the legacy HDF5
  format, loadable by ``keras.models.load_model(..., compile=False)``), and
  ``tf_saved_model.zip``: the same network as a TensorFlow SavedModel bundle
  (``tensorflow_saved_model_bundle``, signature ``serving_default``; Keras ``model.export``),
  which needs no Keras/Python (deepImageJ).
- input ``raw``: ``batch, z, y, x, channel`` (one channel, the kinetochore/EGFP channel of the
  model's layout; the temporal and two-channel layouts have 3 or 2), float32, at the model's
  voxel size (axis ``scale`` in nanometer). Sizes: any multiple of the network's ``div_by``
  (``unet_pool ** unet_n_depth × grid``) per axis, at least twice it and large enough that the
  output is more than two halos.
- outputs ``prob`` (1 channel, object probability) and ``dist`` (``n_rays`` channels, ray
  lengths in px of the model grid) at the model grid (``scale`` = voxel × ``grid``), with a
  ``halo`` of StarDist's tile overlap (receptive field) in output px.
- preprocessing ``scale_range`` with the model's percentiles (``pmin``, ``pmax``) over the whole
  z, y, x volume, per channel. kt-stardist's own normalisation takes the percentiles over the
  *signal region* (cells, not the empty background) and first repairs hot/dead camera columns
  and rescales the volume to the model's voxel size: none of that can be said in the spec, so
  other tools get an approximation; they must rescale the image to the model's voxel size
  themselves.
- test tensors ``test_input.npy`` (a simulated volume, raw counts) and ``test_prob.npy``,
  ``test_dist.npy`` computed by this network after the same ``scale_range``; a cover image;
  ``README.md`` (documentation); the kt-stardist files (``model.json``, ``thresholds.json``,
  ``config.json``) as attachments.

Needs ``bioimageio.spec`` (``pip install "kt-stardist[bioimageio]"``) and TensorFlow (loaded
through :func:`kt_stardist.model.load_model`).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from kt_stardist.errors import InputError, KtError

__all__ = ["export_bioimageio", "validate_package", "INSTALL_HINT", "LIMITS", "TEST_SHAPE_PX", "EPS"]

INSTALL_HINT = 'pip install "kt-stardist[bioimageio]"'
#: (Z, Y, X) px of the test input (a multiple of every shipped configuration's div_by)
TEST_SHAPE_PX = (16, 64, 64)
#: ``eps`` of the scale_range preprocessing (bioimage.io's default)
EPS = 1e-6

LIMITS = """\
## What runs outside kt-stardist, and what does not

This package holds the StarDist network of a kt-stardist model. deepImageJ, ilastik, QuPath
and bioimageio.core can run it and show its two outputs: `prob` (per voxel of the model grid,
the probability of being near a kinetochore centre) and `dist` (32 ray lengths of the
star-convex shape). They **cannot** do what makes kt-stardist's points:

- **non-maximum suppression** of the StarDist candidates with the model's calibrated thresholds
  (`thresholds.json`: prob, nms), which turns `prob`/`dist` into objects;
- **sub-voxel refinement** (Gaussian fit of each spot) and the **close-sister search** (two
  kinetochores merged into one detection split apart);
- the **preprocessing** kt-stardist applies: camera-defect repair (hot/dead pixel columns),
  rescaling to the model's voxel size, and percentile normalisation over the signal region
  (here approximated by percentiles over the whole volume);
- **sister pairing** and **tracking** over time.

For kinetochore points, run `kt-stardist predict IMAGE --out points.csv` (it reads the model
folder this package was exported from). Use this package to look at the network's output in
another tool, to share the network, or to build on it.
"""


def _spec():
    try:
        import bioimageio.spec  # noqa: F401
        from bioimageio.spec.model import v0_5
    except ImportError:
        raise KtError(f"exporting a bioimage.io package needs bioimageio.spec: {INSTALL_HINT}") from None
    return v0_5


def _scale_range(x: np.ndarray, pmin: float, pmax: float) -> np.ndarray:
    """bioimage.io ``scale_range`` over z, y, x per channel: ``(x - p_lo) / (p_hi - p_lo + eps)``
    (x: ``(Z, Y, X, C)``)."""
    lo = np.percentile(x, pmin, axis=(0, 1, 2), keepdims=True)
    hi = np.percentile(x, pmax, axis=(0, 1, 2), keepdims=True)
    return ((x - lo) / (hi - lo + EPS)).astype(np.float32)


def _test_input(n_channels: int, voxel_size_um) -> np.ndarray:
    """A simulated kinetochore volume ``(Z, Y, X, C)`` float32 (raw camera counts) of
    :data:`TEST_SHAPE_PX`; channels after the first repeat it (frames t-1, t, t+1 or a second
    fluorophore are not what the test checks)."""
    from kt_stardist.simulate import simulate_volume

    img = np.asarray(simulate_volume(TEST_SHAPE_PX, seed=0, snr="easy", voxel_size_um=tuple(voxel_size_um))[0],
                     np.float32)
    img = img[..., :1] if img.ndim == 4 else img[..., None]
    return np.repeat(img, n_channels, axis=-1)


def _cover(path: Path, raw: np.ndarray, prob: np.ndarray) -> None:
    """A 2:1 PNG: max projection of the test input (left) and of ``prob`` (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 4), dpi=80)
    for ax, im, title in zip(axes, (raw.max(axis=0), prob.max(axis=0)), ("input (max over z)", "prob (max over z)")):
        ax.imshow(im, cmap="magma", interpolation="nearest")
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _readme(path: Path, kt, info, thresholds, div_by, halo) -> None:
    vz, vy, vx = info.voxel_size_um
    text = f"""# kt-stardist model `{kt.name}`: StarDist 3D network for kinetochores

Finds kinetochores (diffraction-limited spots in sister pairs ~1 µm apart) in 3D fluorescence
microscopy. Exported by kt-stardist from its model folder: `kt-stardist export`.

- **Input** `raw`: `batch, z, y, x, channel` ({kt.n_channel_in} channel(s), layout `{info.channels}`), float32,
  at the model's voxel size **{vz:g} × {vy:g} × {vx:g} µm (z, y, x)**: rescale other images first.
  Sizes: multiples of {div_by[0]}, {div_by[1]}, {div_by[2]} px (z, y, x).
- **Preprocessing**: percentile normalisation `scale_range` ({info.normalize.pmin:g}, {info.normalize.pmax:g}
  percentiles over z, y, x). kt-stardist takes these percentiles over the signal region only and
  repairs camera defects first; this package approximates that with the whole volume.
- **Outputs** at the model grid {tuple(kt.backend.grid)} (z, y, x): `prob` (object probability) and `dist`
  ({kt.backend.config.n_rays} ray lengths, px of the grid). Tiles need a halo of {halo[0]}, {halo[1]}, {halo[2]}
  output px (z, y, x).
- **Thresholds** calibrated by kt-stardist: prob {thresholds.prob:g}, nms {thresholds.nms:g}
  (`thresholds.json`, attached).

{LIMITS}
## Validation

The package was checked with `bioimageio.spec`'s validator when it was written (format, files,
hashes). The test tensors are this network's outputs for `test_input.npy` after `scale_range`
as above. How well the model finds kinetochores (F1, localisation error on simulated and real
data) is measured by kt-stardist: see `evaluation.csv` in its model folder and
`kt-stardist evaluate`.

## Reference

Weigert, Schmidt, Haase, Sugawara, Myers. Star-convex Polyhedra for 3D Object Detection and
Segmentation in Microscopy. WACV 2020.
"""
    path.write_text(text, encoding="utf-8")


def export_bioimageio(model_dir, out, *, name: str | None = None, authors=("kt-stardist developers",),
                      license: str = "BSD-3-Clause", saved_model: bool = True) -> Path:
    """Write the bioimage.io model package (zip, format 0.5) of the model folder ``model_dir``
    (None: the shipped model) to ``out``; returns ``out``. ``saved_model``: also add the
    TensorFlow SavedModel bundle (for deepImageJ). The package is validated by
    ``bioimageio.spec`` (format, files and hashes; no network) before it is moved into place.
    """
    v = _spec()
    from kt_stardist import __version__
    from kt_stardist.io.atomic import atomic_path
    from kt_stardist.model import load_model
    from kt_stardist.validate import check_output_file

    out = check_output_file(out, "OUT")
    if out.suffix.lower() != ".zip":
        raise InputError(f"OUT {out}: a bioimage.io package is a .zip file")
    kt = load_model(model_dir)
    info, th, sd = kt.info, kt.thresholds, kt.stardist
    cfg = sd.config
    grid = tuple(int(g) for g in cfg.grid)
    div_by = tuple(int(p) ** int(cfg.unet_n_depth) * g for p, g in zip(cfg.unet_pool, grid))
    context = kt.backend.context_px()
    halo = tuple(-(-int(c) // g) for c, g in zip(context, grid))
    # smallest input: a multiple of div_by, at least twice it, whose output is larger than 2 halos
    min_px = tuple(max(2 * n, -(-(2 * h * g + 1) // n) * n) for n, h, g in zip(div_by, halo, grid))
    if any(s % d or s < m for s, d, m in zip(TEST_SHAPE_PX, div_by, min_px)):
        raise InputError(f"{kt.folder}: the network needs sizes of at least {min_px}, divisible by {div_by}; "
                         f"the test shape {TEST_SHAPE_PX} is not")
    vz, vy, vx = (float(x) for x in info.voxel_size_um)
    pmin, pmax = float(info.normalize.pmin), float(info.normalize.pmax)
    km = kt.backend.keras_model

    with tempfile.TemporaryDirectory(prefix="kt-bioimageio-") as tmp:
        d = Path(tmp)
        raw = _test_input(kt.n_channel_in, info.voxel_size_um)
        prob, dist = (np.asarray(o) for o in km.predict(_scale_range(raw, pmin, pmax)[None], verbose=0))
        np.save(d / "test_input.npy", raw[None])
        np.save(d / "test_prob.npy", prob.astype(np.float32))
        np.save(d / "test_dist.npy", dist.astype(np.float32))
        import logging

        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.ERROR)  # Keras' "HDF5 is legacy" line: HDF5 is what the spec's keras_hdf5 means
        try:
            km.save(d / "weights.h5")
        finally:
            absl.setLevel(level)
        if saved_model:
            km.export(str(d / "saved_model"), format="tf_saved_model", verbose=False)
            shutil.make_archive(str(d / "tf_saved_model"), "zip", d / "saved_model")
        _cover(d / "cover.png", raw[..., 0], prob[0, ..., 0])
        _readme(d / "README.md", kt, info, th, div_by, halo)
        folder = Path(kt.folder)
        attachments = [v.FileDescr(source=folder / f) for f in ("model.json", "thresholds.json", "config.json")
                       if (folder / f).is_file()]

        # axis scales in nanometer: whole numbers, so the validator's halo arithmetic (halo × scale
        # ratio must be an integer) is exact (0.3 µm gave 7 × 0.3 / 0.3 = 7.000000000000001)
        sp = dict(type="space", unit="nanometer")
        vnm = tuple(round(x * 1000.0, 3) for x in (vz, vy, vx))
        in_axes = [v.BatchAxis(),
                   *[v.SpaceInputAxis(id=v.AxisId(a), size=v.ParameterizedSize(min=m, step=n), scale=s, **sp)
                     for a, n, m, s in zip("zyx", div_by, min_px, vnm)],
                   v.ChannelAxis(channel_names=[v.Identifier(f"c{i}") for i in range(kt.n_channel_in)])]

        def out_axes(channels):
            return [v.BatchAxis(),
                    *[v.SpaceOutputAxisWithHalo(id=v.AxisId(a), size=v.SizeReference(tensor_id=v.TensorId("raw"),
                                                                                        axis_id=v.AxisId(a)),
                                                scale=s * g, halo=h, **sp)
                      for a, s, g, h in zip("zyx", vnm, grid, halo)],
                    v.ChannelAxis(channel_names=[v.Identifier(c) for c in channels])]

        inputs = [v.InputTensorDescr(
            id=v.TensorId("raw"), axes=in_axes, test_tensor=v.FileDescr(source=d / "test_input.npy"),
            description="fluorescence volume at the model's voxel size (raw counts)",
            data=v.IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[v.ScaleRangeDescr(kwargs=v.ScaleRangeKwargs(
                axes=[v.AxisId(a) for a in "zyx"], min_percentile=pmin, max_percentile=pmax, eps=EPS))])]
        outputs = [
            v.OutputTensorDescr(id=v.TensorId("prob"), axes=out_axes(["prob"]),
                                test_tensor=v.FileDescr(source=d / "test_prob.npy"),
                                description="object probability per grid voxel",
                                data=v.IntervalOrRatioDataDescr(type="float32")),
            v.OutputTensorDescr(id=v.TensorId("dist"), axes=out_axes([f"ray{i}" for i in range(int(cfg.n_rays))]),
                                test_tensor=v.FileDescr(source=d / "test_dist.npy"),
                                description="star-convex ray lengths (px of the grid)",
                                data=v.IntervalOrRatioDataDescr(type="float32")),
        ]
        import tensorflow as tf

        tf_version = tf.__version__.split("-")[0]
        weights = v.WeightsDescr(
            keras_hdf5=v.KerasHdf5WeightsDescr(source=d / "weights.h5", tensorflow_version=tf_version),
            tensorflow_saved_model_bundle=(v.TensorflowSavedModelBundleWeightsDescr(
                source=d / "tf_saved_model.zip", tensorflow_version=tf_version, parent="keras_hdf5")
                if saved_model else None))
        descr = v.ModelDescr(
            name=name or f"kt-stardist {kt.name} kinetochores",
            description=("StarDist 3D network of kt-stardist: kinetochore probability and star-convex distances; "
                         "NMS, sub-voxel refinement and sister search stay in kt-stardist"),
            authors=[v.Author(name=a) for a in authors],
            cite=[v.CiteEntry(text="Weigert et al. Star-convex Polyhedra for 3D Object Detection and Segmentation "
                                   "in Microscopy. WACV 2020", doi=v.Doi("10.1109/WACV45572.2020.9093435"))],
            license=license,
            documentation=v.FileDescr(source=d / "README.md"),
            covers=[v.FileDescr(source=d / "cover.png")],
            tags=["stardist", "kinetochore", "3d", "fluorescence-light-microscopy", "instance-segmentation",
                  "kt-stardist"],
            inputs=inputs, outputs=outputs, weights=weights,
            attachments=attachments,
            version=__version__,
            config={"kt_stardist": dict(version=__version__, model=kt.name, thresholds=dict(prob=th.prob, nms=th.nms),
                                        voxel_size_um=[vz, vy, vx], grid=list(grid), n_rays=int(cfg.n_rays),
                                        normalize=dict(pmin=pmin, pmax=pmax, region="whole volume (kt-stardist: "
                                                       "signal region)"))},
        )
        from bioimageio.spec import save_bioimageio_package

        with atomic_path(out) as tmp_zip:
            save_bioimageio_package(descr, output_path=Path(tmp_zip))  # (the temporary name ends in .zip)
            summary = validate_package(tmp_zip)
            if summary.status not in ("passed", "valid-format"):
                raise KtError(f"{out}: the package does not validate: {summary.format()}")
    return out


def validate_package(path):
    """``bioimageio.spec``'s own validation of the package at ``path`` (format and local files,
    hashes included; nothing is downloaded): its :class:`ValidationSummary`."""
    _spec()
    from bioimageio.spec import load_description

    if not Path(path).is_file():  # (else bioimageio.spec looks the name up online as a model id)
        raise InputError(f"{path}: no such file")

    descr = load_description(str(path), perform_io_checks=True, format_version="latest")
    return descr.validation_summary
