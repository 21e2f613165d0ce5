"""The one detection function: a volume in, kinetochore points out.

::

    raw volume ─ prepare (defect repair, rescale, normalise) ─ screen ─ blocks around candidates
      ─ network (predict_sparse, b=0) ─ NMS per block, each detection kept by the block owning
      its centre ─ points ≥ prob threshold (and those down to the confirm band's floor)
      ─ back to image px ─ refine (raw intensities) ─ sister search ─ the band's points kept
      only where their fits confirm them ─ duplicates dropped ─▶ points table

:func:`detect` is what ``kt-stardist predict``, the demo, the napari widget, the threshold search
and model evaluation all run. It is split in three steps so that the threshold search can run
the network once per validation volume and still go through the same code for every threshold:
:func:`~kt_stardist.predict.preprocess.prepare`, :func:`network_candidates` (NMS is greedy in
probability order, so NMS at a low floor filtered to ``prob >= p`` equals NMS at ``p``: one
network pass and one NMS per NMS threshold serve every probability threshold) and
:func:`finish` (threshold, refinement, sister search, points table).

Axis order z, y, x; positions px (of the image unless a name says model px), sizes µm.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kt_stardist.model import SHIPPED_MODELS
from kt_stardist.predict.blocks import block_geometry, owns, plan_blocks
from kt_stardist.predict.preprocess import Prepared, prepare
from kt_stardist.predict.refine import EXTENDED_COLUMN, refine_and_split
from kt_stardist.predict.screen import screen, screen_lazy
from kt_stardist.settings import DetectSettings, replace

__all__ = ["Candidates", "Detection", "detect", "network_candidates", "finish", "thresholds_of",
           "adaptive_threshold", "candidate_floor", "confirmed", "calibration_warning", "texture_warning",
           "points_frame"]


@dataclass
class Candidates:
    """Network detections of one prepared volume after NMS at ``nms_thresh``, each kept by the
    block owning its centre: ``points`` (N, 3) **model px**, ``prob`` (N,), ``dist`` (N, rays),
    with everything at or above ``prob_floor``; ``n_blocks``, ``n_voxels_read`` (sent to the
    network), ``n_voxels`` (of the volume), ``seconds`` per step."""

    points: np.ndarray
    prob: np.ndarray
    dist: np.ndarray
    nms_thresh: float
    prob_floor: float
    n_blocks: int = 0
    n_voxels_read: int = 0
    n_voxels: int = 0
    seconds: dict = field(default_factory=dict)

    def above(self, prob_thresh):
        """The candidates with ``prob >= prob_thresh``: (points model px, prob, dist)."""
        keep = self.prob >= prob_thresh
        return self.points[keep], self.prob[keep], self.dist[keep]


@dataclass
class Detection:
    """What :func:`detect` found in one volume.

    ``points``: DataFrame ``z, y, x`` (float px of the image), ``z_um, y_um, x_um``, ``prob``,
    ``split`` (True for a close sister found inside another detection), the refinement's
    ``fit_ok, sigma_z_nm, sigma_y_nm, sigma_x_nm, photons, background``
    (:func:`kt_stardist.predict.refine.refine_and_split`), sorted by z, y, x.
    ``instances``: (points model px, prob, dist) of the network's detections (for label images);
    ``prepared``: the :class:`~kt_stardist.predict.preprocess.Prepared` volume (``zoom``,
    ``defects``); ``prob_thresh`` / ``nms_thresh`` used; ``n_near``: network detections just
    below the threshold (within ``near_band``); ``diagnostics``: counts and seconds per step;
    ``warnings``: one-line messages for the user.
    """

    points: pd.DataFrame
    instances: tuple
    prepared: Prepared
    prob_thresh: float
    nms_thresh: float
    n_near: int = 0
    diagnostics: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def thresholds_of(model, settings: DetectSettings) -> tuple:
    """(prob, nms): the settings' thresholds, else the model's stored ones."""
    th = model.thresholds
    p = th.prob if settings.prob_thresh is None else settings.prob_thresh
    n = th.nms if settings.nms_thresh is None else settings.nms_thresh
    return float(p), float(n)


def adaptive_threshold(prob, stored: float, adaptive) -> tuple:
    """(probability threshold, how it was chosen) for one volume whose network detections (after
    NMS, every one at or above ``adaptive.floor``) have probabilities ``prob``; ``stored``: the
    model's threshold; ``adaptive``: :class:`kt_stardist.settings.AdaptiveThreshold` (its
    docstring gives the rule). How: ``"gap"`` (lowered into a clean gap) or ``"stored"``."""
    if not adaptive.enabled:
        return float(stored), "stored"
    p = np.sort(np.asarray(prob, np.float64))
    lo, hi = adaptive.range_prob
    centres = lo + adaptive.step * np.arange(int(np.floor((hi - lo) / adaptive.step + 1e-9)) + 1)
    counts = (np.searchsorted(p, centres + adaptive.half_width, side="left")
              - np.searchsorted(p, centres - adaptive.half_width, side="left"))
    n_above = max(int(len(p) - np.searchsorted(p, stored, side="left")), 1)
    if counts.min() > adaptive.max_ratio * n_above:
        return float(stored), "stored"
    top = float(centres[np.flatnonzero(counts == counts.min())[-1]]) + adaptive.half_width  # the gap's upper edge
    return (round(top, 4), "gap") if top < stored else (float(stored), "stored")


def candidate_floor(prob_thresh: float, settings: DetectSettings, adapt: bool = True, confirm: bool = True) -> float:
    """The lowest probability the network's detections are kept at for a run at ``prob_thresh``:
    the band just below it that the calibration warning watches (``near_band``), with
    ``confirm`` and ``settings.confirm`` on the confirm band (:func:`confirmed`) and, with
    ``adapt`` and ``settings.adaptive`` on, everything :func:`adaptive_threshold` looks at."""
    floor = max(float(prob_thresh) - settings.near_band, 0.01)
    if confirm and settings.confirm.enabled:
        floor = min(floor, settings.confirm.floor_prob)
    return min(floor, settings.adaptive.floor) if adapt and settings.adaptive.enabled else floor


def network_candidates(model, prep: Prepared, prob_floor: float, nms_threshs, settings: DetectSettings,
                       spot_channel: int = 0, show_progress: bool = False) -> dict:
    """NMS'ed network detections of a prepared volume, one :class:`Candidates` per NMS threshold.

    Blocks are planned around the screen's candidates (:func:`kt_stardist.predict.blocks.plan_blocks`);
    each block goes through the network once (``predict_sparse`` at ``prob_floor``, ``b=0``),
    then NMS per threshold in ``nms_threshs``, and each detection is kept by the one block whose
    core holds its centre.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    backend, x, vs = model.backend, prep.x, prep.model_voxel_um
    if prep.lazy:
        mask = screen_lazy(x, vs, settings.screen, channel=spot_channel)
    else:
        mask = screen(x[..., spot_channel], vs, settings.screen, sparse=True)  # no full-size mask
    t_screen = time.perf_counter() - t0
    geometry = block_geometry(backend, settings.block_size_px, 2 * model.info.label_radius_um, vs)
    todo = plan_blocks(mask, *geometry)
    nms_threshs = [float(v) for v in np.atleast_1d(nms_threshs)]
    found = {n: ([], [], []) for n in nms_threshs}
    n_vox, t_net, t_nms = 0, 0.0, 0.0
    for b, read in tqdm(todo, desc="blocks", disable=not show_progress, leave=False):
        n_vox += int(np.prod([s.stop - s.start for s in read]))
        t1 = time.perf_counter()
        prob, dist, pts = backend.candidates(x[read], prob_floor)
        t_net += time.perf_counter() - t1
        if len(prob) == 0:
            continue
        t1 = time.perf_counter()
        offset = np.array([s.start for s in read], np.float64)
        for n in nms_threshs:
            p, pr, d = backend.nms(prob, dist, pts, n)
            g = p.astype(np.float64) + offset
            keep = owns(b, g)
            found[n][0].append(g[keep]), found[n][1].append(pr[keep]), found[n][2].append(d[keep])
        t_nms += time.perf_counter() - t1
    n_rays = len(backend.rays)
    out = {}
    for n, (p, pr, d) in found.items():
        out[n] = Candidates(
            points=np.concatenate(p) if p else np.zeros((0, 3)),
            prob=np.concatenate(pr) if pr else np.zeros(0, np.float32),
            dist=np.concatenate(d) if d else np.zeros((0, n_rays), np.float32),
            nms_thresh=n, prob_floor=float(prob_floor), n_blocks=len(todo), n_voxels_read=n_vox,
            n_voxels=int(np.prod(prep.model_shape)),
            seconds=dict(screen=t_screen, network=t_net, nms=t_nms))
    return out


def points_frame(points_px, prob, voxel_size_um, split=None, fit=None) -> pd.DataFrame:
    """The points table of one volume: ``z, y, x`` px, ``z_um, y_um, x_um``, ``prob``, ``split``
    and the refinement's ``fit`` columns (a DataFrame, one row per point:
    :data:`kt_stardist.predict.refine.FIT_COLUMNS`), sorted by z, y, x."""
    df = pd.DataFrame(np.asarray(points_px, np.float64).reshape(-1, 3), columns=["z", "y", "x"])
    for c, v in zip("zyx", voxel_size_um):
        df[f"{c}_um"] = df[c] * float(v)
    df["prob"] = np.asarray(prob, np.float64)
    df["split"] = np.zeros(len(df), bool) if split is None else np.asarray(split, bool)
    if fit is not None:
        for c in fit.columns:
            df[c] = fit[c].to_numpy()
    return df.sort_values(["z", "y", "x"], kind="stable").reset_index(drop=True)


def duplicates(points_px, prob, voxel_size_um, min_separation_um) -> np.ndarray:
    """(N,) bool: the points that lie closer than ``min_separation_um`` (µm) to a more probable
    kept point (the same spot found twice; ties: the earlier point stays). ``points_px``
    (N, 3) z, y, x px; ``prob`` (N,)."""
    from scipy.spatial import cKDTree

    pts = np.asarray(points_px, np.float64).reshape(-1, 3) * np.asarray(voxel_size_um, np.float64)
    drop = np.zeros(len(pts), bool)
    if len(pts) < 2 or min_separation_um <= 0:
        return drop
    tree = cKDTree(pts)
    for i in np.argsort(-np.asarray(prob, np.float64), kind="stable"):
        if drop[i]:
            continue
        for j in tree.query_ball_point(pts[i], float(min_separation_um) - 1e-12):
            if j != i:
                drop[j] = True
    return drop


def confirmed(prob, fit, prob_thresh: float, band) -> np.ndarray:
    """(N,) bool: the points kept, those at or above ``prob_thresh`` and those of the confirm
    band (``band``: :class:`kt_stardist.settings.ConfirmBand`, its docstring gives the rule)
    whose fit confirms them; ``prob`` (N,), ``fit`` the refinement's table
    (:data:`kt_stardist.predict.refine.FIT_COLUMNS`, one row per point; where it has the
    :data:`kt_stardist.predict.refine.EXTENDED_COLUMN` and ``band.reject_extended``, fits spread
    to their width bound are not confirmed)."""
    prob = np.asarray(prob, np.float64)
    keep = prob >= prob_thresh
    if not band.enabled or len(prob) == 0:
        return keep
    sigma = np.maximum(fit["sigma_y_nm"].to_numpy(np.float64), fit["sigma_x_nm"].to_numpy(np.float64))
    fit_ok = fit["fit_ok"].to_numpy(bool)
    limit = float(band.max_sigma_nm)
    sure = keep & fit_ok
    if band.rel_sigma > 0 and sure.sum() >= band.rel_min_points:  # dim images: relative to their confident points
        rel = float(band.rel_sigma) * float(np.median(sigma[sure]))
        limit = max(limit, min(rel, float(band.rel_max_sigma_nm)))
    ok = fit_ok & (sigma <= limit)  # NaN sigma: not confirmed
    if band.reject_extended and EXTENDED_COLUMN in fit:  # spread to its width bound: structure, not a spot
        ok &= ~fit[EXTENDED_COLUMN].to_numpy(bool)
    return keep | ((prob >= band.floor_prob) & ok)


def calibration_warning(n_near: int, n_above: int, prob_thresh: float, reference, near_band: float,
                        where: str = "", suggest: bool = True) -> str | None:
    """A one-line warning when far more network detections sit just below the probability
    threshold (within ``near_band``) than in the model's validation data (``reference``: the
    validation share ``near / above``, from ``model.json``), or None. ``suggest``: name a lower
    ``--prob-thresh`` to try; not where :func:`texture_warning` speaks (on a bright textured
    nucleus a lower threshold adds the nucleus's grains: panel volume, F1 0.33 -> 0.19)."""
    if reference is None or n_near < 10:
        return None
    ratio = n_near / max(n_above, 1)
    if ratio <= max(3.0 * float(reference), float(reference) + 0.5):
        return None
    lo = max(round(prob_thresh - near_band, 2), 0.05)
    tail = (f" and try --prob-thresh {lo:.2f}" if suggest else
            "; a lower --prob-thresh mostly adds the bright structure's grains here, not spots")
    return (f"{where}{n_near} detections lie just below the probability threshold {prob_thresh:.2f} for "
            f"{n_above} above it ({ratio:.1f} per detection; validation data: {float(reference):.2f}): this "
            f"image looks unlike the model's validation data; check the result (e.g. --report){tail}")


#: :func:`texture_warning` speaks from this many band points refused as wider than a spot
MIN_EXTENDED_WARN = 10
#: the name (its folder's) of the shipped model trained with bright nuclei (``--model nuclei``)
NUCLEI_MODEL_NAME = SHIPPED_MODELS["nuclei"].name


def texture_warning(n_extended: int, n_above: int, where: str = "", model_name: str | None = None) -> str | None:
    """A one-line warning when many of the confirm band's detections were refused because their
    fits spread wider than a spot (``n_extended``, at least :data:`MIN_EXTENDED_WARN` and at
    least half the ``n_above`` detections above the threshold): the image has bright structure
    at about a spot's scale (a textured nucleus), where spots are easily missed; or None. Unless
    ``model_name`` is the nuclei model's, it says to try that model (``--model nuclei``)."""
    if n_extended < MIN_EXTENDED_WARN or n_extended < 0.5 * n_above:
        return None
    hint = "" if model_name == NUCLEI_MODEL_NAME else "; the model trained with such backgrounds may find more: --model nuclei"
    return (f"{where}{n_extended} detections below the probability threshold lie on bright structure wider "
            f"than a spot (a textured nucleus?) and were not kept ({n_above} above it): spots on such "
            f"structure are easily missed here; check the result (e.g. --report){hint}")


def finish(model, prep: Prepared, cands: Candidates, prob_thresh: float, settings: DetectSettings,
           spot_channel: int = 0, threshold_by: str = "given", confirm: bool = True,
           cache: dict | None = None) -> Detection:
    """Points of the candidates at or above ``prob_thresh``: mapped to image px, refined on the
    repaired raw spot channel, close sisters searched (``settings.refine`` / ``settings.split``);
    with ``confirm`` and ``settings.confirm`` on, the candidates of the confirm band below
    ``prob_thresh`` are refined with them and kept where their fits confirm them
    (:func:`confirmed`). ``threshold_by``: how ``prob_thresh`` was chosen (recorded in the
    diagnostics). ``cache``: a dict kept by a caller that finishes the same ``prep`` and
    ``cands`` at many thresholds (the threshold search): the refinement of the same candidates
    (with the confirm band, all those above its floor whatever the threshold) is reused."""
    t0 = time.perf_counter()
    band = settings.confirm if confirm else replace(settings.confirm, enabled=False)
    lowest = min(prob_thresh, band.floor_prob) if band.enabled else prob_thresh
    pts_m, prob, dist = cands.above(lowest)
    n_near = int(np.sum((cands.prob < prob_thresh) & (cands.prob >= prob_thresh - settings.near_band)))
    pts = prep.to_image_px(pts_m)
    key = len(pts)  # candidates above a threshold are nested sets: their number names them
    if cache is not None and key in cache:
        refined, parent, fit = cache[key]
    else:
        refined, parent, fit = refine_and_split(prep.raw[..., spot_channel], pts, prep.image_voxel_um,
                                                settings.refine, settings.split, return_fit=True)
        if cache is not None:
            cache[key] = refined, parent, fit
    split = np.arange(len(refined)) >= len(pts)
    p_all = np.asarray(prob, np.float64)[parent]
    n_above = int(np.sum(np.asarray(prob) >= prob_thresh))
    kept = confirmed(p_all, fit, prob_thresh, band)  # the band's points only where their fits confirm them
    n_confirmed = int(np.sum(kept & (p_all < prob_thresh) & ~split))
    wide = fit[EXTENDED_COLUMN].to_numpy(bool) & (p_all < prob_thresh) & (p_all >= band.floor_prob) & ~split
    n_extended = int(wide.sum()) if band.enabled and band.reject_extended else 0  # refused: wider than a spot
    dup, idx = np.zeros(len(refined), bool), np.flatnonzero(kept)
    dup[idx] = duplicates(refined[idx], p_all[idx], prep.image_voxel_um, settings.min_separation_um)
    if dup.any() or not kept.all():
        keep = kept & ~dup
        attrs = dict(fit.attrs)  # the measured PSF (spline refinement), the bounds per row
        if "crlb_nm" in attrs:
            attrs["crlb_nm"] = [c for c, k in zip(attrs["crlb_nm"], keep) if k]
        refined, p_all, split, fit = refined[keep], p_all[keep], split[keep], fit[keep].reset_index(drop=True)
        fit.attrs = attrs
    df = points_frame(refined, p_all, prep.image_voxel_um, split, fit.drop(columns=[EXTENDED_COLUMN], errors="ignore"))
    t_refine = time.perf_counter() - t0
    diag = dict(n_blocks=cands.n_blocks, n_voxels_read=cands.n_voxels_read, n_voxels=cands.n_voxels,
                n_detections=n_above, n_confirmed=n_confirmed, n_extended=n_extended, n_split=int(split.sum()),
                n_duplicates=int(dup.sum()), n_near=n_near,
                prob_thresh=float(prob_thresh), threshold_by=threshold_by,
                seconds={**prep.seconds, **cands.seconds, "refine": t_refine})
    warnings = list(prep.notes)
    if settings.refine.method == "spline":  # the measured PSF, stored with the run (pipeline.run_frame)
        diag.update(psf=fit.attrs.get("psf"), psf_note=fit.attrs.get("psf_note"))
        if fit.attrs.get("psf") is None and fit.attrs.get("psf_note"):
            warnings.append("refine spline: too few isolated well-fitted spots to measure the PSF, Gaussian "
                            "fits kept (run.json 'psf' says how many per frame)")
    if fit.attrs.get("psf_bias_note"):  # refine gauss with psf_bias: what was taken off (pipeline.run_frame)
        diag.update(psf_bias_nm=fit.attrs.get("psf_bias_nm"), psf_bias_note=fit.attrs["psf_bias_note"])
    ref = model.info.validation.get("near_ratio") if hasattr(model, "info") else None
    textured = texture_warning(n_extended, n_above, model_name=getattr(getattr(model, "info", None), "name", None))
    calibration = calibration_warning(n_near, n_above, prob_thresh, ref, settings.near_band, suggest=textured is None)
    warnings += [w for w in (calibration, textured) if w]
    inst = kept[:len(pts)]  # the network's instances kept (label images); split points come after them
    return Detection(df, (pts_m[inst], prob[inst], dist[inst]), prep, float(prob_thresh), cands.nms_thresh, n_near,
                     diag, warnings)


def detect(model, volume, voxel_size_um=None, settings: DetectSettings | None = None, spot_channel: int = 0,
           show_progress: bool = False) -> Detection:
    """Kinetochore points of one volume (module docstring).

    Parameters
    ----------
    model : :class:`kt_stardist.model.KtModel`
    volume : ndarray or lazy array (dask, h5py/zarr dataset) ``(Z, Y, X[, C])``, raw intensities,
        image px; C == the model's input channels (temporal models: frames t-1, t, t+1 already
        stacked, :func:`kt_stardist.channels.stack_frames`).
    voxel_size_um : (z, y, x) µm of ``volume``; None: the model's. Another voxel size is
        rescaled to the model's and the points mapped back.
    settings : :class:`kt_stardist.settings.DetectSettings` (None: defaults, the model's thresholds).
    spot_channel : the input channel refined on and screened (the EGFP channel of the centre frame).

    Returns
    -------
    :class:`Detection` (``.points``: the points table).
    """
    from kt_stardist.errors import InputError

    settings = settings or DetectSettings()
    shape = tuple(volume.shape) + ((1,) if len(volume.shape) == 3 else ())
    if len(shape) != 4 or shape[-1] != model.n_channel_in:
        raise InputError(f"volume of shape {tuple(volume.shape)} does not fit model {model.name}: "
                         f"it takes {model.n_channel_in} channel(s) (Z, Y, X, C)")
    prob, nms = thresholds_of(model, settings)
    adapt = settings.adaptive.enabled and settings.prob_thresh is None
    prep = prepare(volume, voxel_size_um, model.voxel_size_um, model.info.normalize, settings.repair_defects,
                   settings.max_in_memory_gb)
    model_thresholds = settings.prob_thresh is None  # the adaptive threshold and the confirm band apply
    floor = candidate_floor(prob, settings, adapt, confirm=model_thresholds)
    cands = network_candidates(model, prep, floor, (nms,), settings, spot_channel,
                               show_progress)[nms]
    how = "given" if settings.prob_thresh is not None else "stored"
    if adapt:
        prob, how = adaptive_threshold(cands.prob, prob, settings.adaptive)
    return finish(model, prep, cands, prob, settings, spot_channel, threshold_by=how, confirm=model_thresholds)
