"""Physical image formation: named conditions for a robustness panel, and a training mix.

Where :mod:`kt_stardist.simulate` draws Gaussian spots, this module images kinetochores through
a microscope model (:mod:`kt_stardist.optics`: psfmodels PSFs, objects 0.1–0.2 µm across,
voxel integration on an oversampled grid) and a camera model (:mod:`kt_stardist.camera`:
sCMOS maps, EMCCD excess noise, hot/dead pixel columns, 8-bit clipping). The layouts (plates,
the real HeLa positions) and the background (cell haze, out-of-focus blobs, autofluorescence,
uneven illumination) are :mod:`kt_stardist.simulate`'s.

Axis order z, y, x; positions in px (voxel centres at integers) in the tables, µm inside;
voxel sizes (z, y, x) µm. Intensities are photons per voxel before the camera, raw counts
(ADU) after it.

Ground truth: each point is the **centre of mass of its spot's core** (the intensity at or
above half its maximum, as a segmentation keeps it; the position snapped to the oversampled
grid, :func:`kt_stardist.optics.render_points`), before the volume's faces cut it. With an
index mismatch the axial profile is asymmetric around that point, as in real data. ``photons`` is the total of a spot within its kernel, ``peak_photons`` the
photons in its brightest voxel (before QE; brightness is set as the median brightest-voxel
photons of a spot, like :data:`kt_stardist.simulate.SNR_PRESETS`).

Aberration varies with depth: each spot is imaged with the PSF at its own depth (the
condition's ``depth_um`` at the plate centre, plus its z offset, in :data:`DEPTH_STEP_UM`
steps). The layout is in image (stage) coordinates: the axial scaling of a mismatched sample
is not applied to positions, only the PSF's focal shift (absorbed by the core's centre).

Seeds: panel volumes (:func:`simulate_condition`) take integer seeds ≥
:data:`PANEL_SEED_MIN` and draw from ``SeedSequence(seed, spawn_key=(PANEL_KEY,))``; the
training mix (:func:`physical_training_pairs`) from children of ``SeedSequence(seed,
spawn_key=(TRAIN_KEY,))``. Different spawn keys: the two streams never coincide, whatever the
seeds. The same panel seed gives the same bytes, and the same layout draw in conditions whose
recipes agree on it (a paired panel).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import ndimage

from kt_stardist.camera import Camera, apply_camera
from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.optics import KERNEL_HALF_UM, Optics, _voxel, render_points, spot_kernel
from kt_stardist.settings import to_dict
from kt_stardist.simulate import (SimParams, _background, _background_scene, _Grid, _points_table, _Scene,
                                  _smooth_noise, layout_from_real, layout_plate)
from kt_stardist.validate import check_shape

__all__ = ["Sample", "Condition", "CONDITIONS", "simulate_condition", "simulate_physical",
           "random_condition", "physical_training_pairs", "training_shape", "default_shape",
           "PANEL_SEED_MIN"]

#: panel seeds are integers ≥ this (training uses a separate SeedSequence stream)
PANEL_SEED_MIN = 10_000
PANEL_KEY = 0x9A4E1
TRAIN_KEY = 0x7EA1
#: spots are imaged with the PSF at their own depth, in steps of this (µm); coarser in the
#: training mix, where new kernels dominate the time per example
DEPTH_STEP_UM = 1.0
TRAIN_DEPTH_STEP_UM = 2.0
#: lateral field of the default shapes, µm (about a HeLa cell)
FIELD_UM = 29.0
#: deconvolved data: Gaussian smoothing of the noise, µm (z, y, x)
DECON_SMOOTH_UM = (0.15, 0.05, 0.05)


@dataclass(frozen=True)
class Sample:
    """What is imaged (µm, photons per voxel before QE). Plain-JSON via :meth:`to_dict`.

    layout : ``'plate'`` (sister pairs on a metaphase plate, :func:`simulate.layout_plate`) or
        ``'real'`` (the shipped HeLa positions, :func:`simulate.layout_from_real`).
    n_pairs, plate_diameter_um, plate_thickness_um, sister_distance_um, min_pair_spacing_um,
    off_plate_fraction, plate_offset_um : the plate (see :class:`simulate.SimParams`).
    peak_photons : median photons in a spot's brightest voxel (centred), above background.
    brightness_spread : sd of log brightness between spots.
    diameter_um : kinetochore diameter (uniform ball; 0: a point).
    dark_photons, cell_photons, n_blobs, blob_photons, autofluor_photons,
    illumination_variation : background, as :class:`simulate.SimParams`.
    nucleus_photons : mean photons of a bright textured nucleus beside the plate (0: none).
    deconvolved : deconvolved-looking output (squared PSF, smoothed noise, floor removed,
        float32).
    """

    layout: str = "plate"
    n_pairs: int = 40
    plate_diameter_um: float = 9.0
    plate_thickness_um: float = 0.3
    sister_distance_um: tuple = (0.7, 1.2)
    min_pair_spacing_um: float = 0.9
    off_plate_fraction: float = 0.08
    plate_offset_um: float = 1.0
    peak_photons: float = 90.0
    brightness_spread: float = 0.45
    diameter_um: float = 0.15
    dark_photons: float = 2.0
    cell_photons: float = 25.0
    n_blobs: int = 4
    blob_photons: float = 20.0
    autofluor_photons: float = 8.0
    illumination_variation: float = 0.25
    nucleus_photons: float = 0.0
    deconvolved: bool = False

    def __post_init__(self):
        if self.layout not in ("plate", "real"):
            raise InputError(f"Sample.layout: expected 'plate' or 'real', got {self.layout!r}")
        if not self.peak_photons > 0:
            raise InputError(f"Sample.peak_photons: expected > 0, got {self.peak_photons!r}")
        object.__setattr__(self, "sister_distance_um", tuple(float(v) for v in self.sister_distance_um))

    def to_dict(self) -> dict:
        return to_dict(self)


@dataclass(frozen=True)
class Condition:
    """A full recipe: optics, camera, sample, voxel size (z, y, x µm) and default shape (px)."""

    name: str
    optics: Optics = field(default_factory=Optics)
    camera: Camera = field(default_factory=Camera)
    sample: Sample = field(default_factory=Sample)
    voxel_size_um: tuple = VOXEL_SIZE_UM
    shape_px: tuple = (40, 224, 224)
    description: str = ""

    def to_dict(self) -> dict:
        return to_dict(self)


def default_shape(voxel_size_um, z_um=12.0, field_um=FIELD_UM) -> tuple:
    """(Z, Y, X) px covering ``z_um`` × ``field_um`` × ``field_um`` (Y, X multiples of 16)."""
    v = _voxel(voxel_size_um)
    xy = int(16 * round(field_um / v[1] / 16))
    return (max(1, int(round(z_um / v[0]))), xy, xy)


# --------------------------------------------------------------------------- the panel

def _cond(name, description, optics=None, camera=None, sample=None, voxel=VOXEL_SIZE_UM, z_um=12.0, shape=None):
    voxel = tuple(float(v) for v in voxel)
    return Condition(name, optics or _BASE_OPTICS, camera or Camera(), sample or Sample(), voxel,
                     tuple(shape or default_shape(voxel, z_um)), description)


#: reference microscope: widefield, oil NA 1.4, spots 3 µm deep in an aqueous cell
_BASE_OPTICS = Optics(depth_um=3.0)

#: named scenarios; each a full recipe. Brightness as ``SNR_PRESETS['mid']`` (peak ~90 photons
#: over ~25 photons/voxel of cell haze) unless the condition is about brightness.
CONDITIONS: dict[str, Condition] = {c.name: c for c in (
    _cond("reference", "widefield oil NA 1.4, 3 µm into water, sCMOS, mid SNR"),
    _cond("aberrated_widefield", "oil NA 1.4 widefield, spots 4-8 µm deep in water: aberrated, "
          "axially asymmetric PSF", optics=Optics(depth_um=6.0)),
    _cond("confocal_water", "confocal (1 AU pinhole), water NA 1.2, 6 µm deep; less haze",
          optics=Optics(modality="confocal", na=1.2, immersion="water", depth_um=6.0),
          sample=Sample(cell_photons=10.0, blob_photons=5.0, autofluor_photons=4.0)),
    _cond("silicone_deep", "silicone NA 1.35 widefield, 10 µm deep in water",
          optics=Optics(na=1.35, immersion="silicone", depth_um=10.0)),
    _cond("hot_pixels", "sCMOS with 150 hot and 15 dead pixel columns per 256² px",
          camera=Camera(hot_pixels=150, dead_pixels=15, seed=7)),
    _cond("emccd", "EMCCD (EM gain 200, excess noise √2), low photons (peak ~25)",
          camera=Camera(kind="emccd", qe=0.95, em_gain=200.0, gain=0.05, read_noise=40.0),
          sample=Sample(peak_photons=25.0, cell_photons=7.0, dark_photons=0.5, blob_photons=5.0,
                        autofluor_photons=2.0)),
    _cond("clipped_8bit", "8-bit, offset subtracted and clipped at 0: mostly-zero background",
          camera=Camera(bit_depth=8, clip_offset=True, gain=0.2, offset_sd=0.3),
          sample=Sample(cell_photons=1.5, dark_photons=0.2, blob_photons=1.5, autofluor_photons=0.8)),
    _cond("bright_nuclei", "a bright textured nucleus (~4× the cell haze) beside and under the plate",
          sample=Sample(nucleus_photons=100.0)),
    _cond("dense_clusters", "100 spots in a 4.5 µm plate, nearest neighbours 0.35-0.7 µm apart",
          sample=Sample(n_pairs=50, plate_diameter_um=4.5, plate_thickness_um=0.15,
                        sister_distance_um=(0.35, 0.7), min_pair_spacing_um=0.5, off_plate_fraction=0.0)),
    _cond("thin_stack", "10 slices at 0.5 µm: the top and bottom faces cut spots",
          voxel=(0.5, 0.13, 0.13), shape=(10, 224, 224)),
    _cond("fine_pixels", "0.065 µm pixels, 0.2 µm steps", voxel=(0.2, 0.065, 0.065), z_um=9.6),
    _cond("deconvolved", "deconvolved-looking: sharper PSF, low background, near-zero noise floor, float",
          camera=Camera(kind="ideal", qe=1.0, gain=1.0, offset=0.0),
          sample=Sample(deconvolved=True, cell_photons=5.0, dark_photons=0.5, blob_photons=4.0,
                        autofluor_photons=2.0)),
)}


# --------------------------------------------------------------------------- rendering

def _nucleus(rng, shape, vox, centre_um, photons):
    """A bright textured nucleus (photons/voxel): an ellipsoid 3-6 µm beside the plate centre
    (so that it lies under part of the plate), chromatin-like texture ~0.5 µm."""
    grid = _Grid(shape, vox, step_um=(0.4, 0.25, 0.25))
    z, y, x = grid.mesh_um()
    ang, off = rng.uniform(0, 2 * math.pi), rng.uniform(3.0, 6.0)
    c = np.asarray(centre_um) + np.array([rng.normal(0, 0.5), off * math.sin(ang), off * math.cos(ang)])
    semi = np.array([3.0, rng.uniform(4.5, 6.5), rng.uniform(4.5, 6.5)])
    r = np.sqrt(((z - c[0]) / semi[0]) ** 2 + ((y - c[1]) / semi[1]) ** 2 + ((x - c[2]) / semi[2]) ** 2)
    body = 1 / (1 + np.exp((r - 1) / 0.06))
    tex = _smooth_noise(rng, grid, 0.5) ** 2
    tex /= tex.mean()
    return grid.upsample(photons * body * tex)


def _sim_params(smp: Sample, vox) -> SimParams:
    return SimParams(voxel_size_um=tuple(vox), layout=smp.layout, n_pairs=int(smp.n_pairs),
                     plate_diameter_um=smp.plate_diameter_um, plate_thickness_um=smp.plate_thickness_um,
                     sister_distance_um=smp.sister_distance_um, min_pair_spacing_um=smp.min_pair_spacing_um,
                     off_plate_fraction=smp.off_plate_fraction, plate_offset_um=smp.plate_offset_um,
                     real_rotate="z", dark_photons=smp.dark_photons, cell_photons=smp.cell_photons,
                     n_blobs=int(smp.n_blobs), blob_photons=smp.blob_photons,
                     autofluor_photons=smp.autofluor_photons, illumination_variation=smp.illumination_variation)


def _simulate(cond: Condition, rng, shape, depth_step_um=DEPTH_STEP_UM, n_frames=None, motion_rng=None):
    """One volume (``n_frames`` None) or a movie of ``n_frames`` (motion from ``motion_rng``, so
    frame 0 is the bytes of the single volume): ``(counts, points, voxel size, info)``; a movie's
    counts are (T, Z, Y, X) and its points have a ``t`` column and ``track_id``."""
    vox = np.asarray(cond.voxel_size_um, float)
    smp, optics = cond.sample, cond.optics
    p = _sim_params(smp, vox)
    # layout (µm), near the centre as in real cells
    centre_um = (np.asarray(shape) - 1) / 2 * vox + rng.normal(0, smp.plate_offset_um, 3) * np.array([0.5, 1, 1])
    df = layout_from_real(rng, p, centre_um) if smp.layout == "real" else layout_plate(rng, p, centre_um)
    pos_um = df[["z_um", "y_um", "x_um"]].to_numpy(float)
    n = len(pos_um)
    peak = smp.peak_photons * np.exp(rng.normal(0, smp.brightness_spread, n))
    # background: simulate.py's cell haze, blobs, autofluorescence and illumination field
    grid = _Grid(shape, vox)
    scene_bg = _background_scene(rng, p, centre_um, np.asarray(shape) * vox)
    nucleus = _nucleus(rng, shape, vox, centre_um, smp.nucleus_photons) if smp.nucleus_photons > 0 else None
    scene = None if n_frames is None else _Scene.of_layout(motion_rng, df, centre_um, peak, vox,
                                                           smp.plate_diameter_um / 2)
    frames, tables = [], []
    for t in range(1 if n_frames is None else int(n_frames)):
        shift = np.zeros(3)
        if scene is not None:
            pos_um, peak, _, shift = scene.frame(motion_rng, t, p)
        bg_c, illum_c = _background(grid, p, scene_bg, shift)
        photons = grid.upsample(bg_c)
        if nucleus is not None:
            photons += nucleus
        illum = grid.upsample(illum_c)
        photons *= illum
        truth, total, peak_ph = _render_spots(photons, pos_um, peak, illum, cond, centre_um, depth_step_um)
        counts, defects = apply_camera(photons, cond.camera, rng)
        if smp.deconvolved:
            img = ndimage.gaussian_filter(counts.astype(np.float32), np.asarray(DECON_SMOOTH_UM) / vox)
            img -= np.median(img)
            counts = np.maximum(img, 0, out=img)
        points = _points_table(truth, df, 1.0, shape, photons=total, peak_photons=peak_ph)
        if scene is not None:
            points.insert(0, "t", t)
            points["track_id"] = points["point_id"]
        frames.append(counts)
        tables.append(points)
    info = dict(condition=cond.name, description=cond.description, optics=optics.to_dict(),
                camera=cond.camera.to_dict(), sample=smp.to_dict(), voxel_size_um=tuple(vox.tolist()),
                shape_px=tuple(shape), hot_yx=defects["hot_yx"], dead_yx=defects["dead_yx"],
                peak_photons_median=float(np.median(peak_ph)) if n else 0.0,
                truth="centre of mass of each spot's core (>= half its maximum), px (z, y, x)")
    if scene is None:
        return frames[0], tables[0], tuple(vox.tolist()), info
    return np.stack(frames), pd.concat(tables, ignore_index=True), tuple(vox.tolist()), info


def _render_spots(photons, pos_um, peak, illum, cond, centre_um, depth_step_um):
    """Add each spot through the PSF at its own depth to ``photons`` (in place); ``peak``: its
    brightest voxel's photons before the illumination field. Returns (truth px, total photons,
    peak photons) per spot (NaN / 0 for spots whose kernel cannot reach the volume)."""
    vox = np.asarray(cond.voxel_size_um, float)
    smp, optics, shape = cond.sample, cond.optics, photons.shape
    n = len(pos_um)
    pts_px = pos_um / vox
    if optics.mismatched:
        depth = np.clip(optics.depth_um + pos_um[:, 0] - centre_um[0], 0, 30)
        dbin = np.round(depth / depth_step_um) * depth_step_um
    else:
        dbin = np.full(n, float(optics.depth_um))
    near = np.clip(np.rint(pts_px).astype(int), 0, np.asarray(shape) - 1)
    gain = illum[near[:, 0], near[:, 1], near[:, 2]]
    truth, total, peak_ph = np.full((n, 3), np.nan), np.zeros(n), np.zeros(n)
    # spots whose kernel cannot reach the volume are left out (they are not in the table either)
    gap_um = np.abs(pts_px - np.clip(pts_px, 0, np.asarray(shape) - 1)) * vox
    reach = np.all(gap_um < np.array(KERNEL_HALF_UM)[[0, 1, 1]] + 0.5, axis=1)
    for d in np.unique(dbin[reach]):
        i = np.flatnonzero((dbin == d) & reach)
        k = spot_kernel(dataclasses.replace(optics, depth_um=float(d)), vox, smp.diameter_um,
                        sharpen=2.0 if smp.deconvolved else 1.0)
        total[i] = peak[i] / k.peak_fraction * gain[i]
        _, truth[i], peak_ph[i] = render_points(shape, pts_px[i], total[i], k, out=photons)
    return truth, total, peak_ph


def simulate_physical(condition: Condition, seed=None, shape_px=None, n_frames=None):
    """Simulate one volume of a :class:`Condition` (any recipe), or a movie of ``n_frames``.
    ``seed``: anything :func:`numpy.random.default_rng` takes. Returns as
    :func:`simulate_condition`."""
    if not isinstance(condition, Condition):
        raise InputError(f"condition: expected a Condition, got {type(condition).__name__}")
    shape = check_shape(condition.shape_px if shape_px is None else shape_px, "shape_px")
    if n_frames is not None and (isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer))
                                 or n_frames < 1):
        raise InputError(f"n_frames: expected a positive integer, got {n_frames!r}")
    rng = np.random.default_rng(seed)
    motion = None if n_frames is None else rng.spawn(1)[0]  # its own stream: frame 0 is the volume's bytes
    return _simulate(condition, rng, shape, n_frames=n_frames, motion_rng=motion)


def simulate_condition(name: str, seed: int, shape_px=None, n_frames=None):
    """Simulate one volume of the named condition (:data:`CONDITIONS`), or a movie.

    Parameters
    ----------
    name : a key of :data:`CONDITIONS`.
    seed : integer ≥ :data:`PANEL_SEED_MIN`; the same seed gives the same bytes.
    shape_px : (Z, Y, X) to override the condition's default shape.
    n_frames : None (one volume) or the frames of a movie of the same cell: the spots move as
        in :func:`kt_stardist.simulate.simulate_timelapse` (plate drift, rotation and
        oscillation, pair oscillation, sister breathing, random walk, bleaching, blinking, at
        its default amplitudes), the cell's haze and blobs follow the plate, a nucleus stays;
        every frame has its own camera noise on the same sensor (maps, hot and dead pixels).
        Frame 0 is the single volume of the same seed, byte for byte.

    Returns
    -------
    image : (Z, Y, X) raw counts, uint16 (uint8 for 8-bit cameras); float32 for ``deconvolved``;
        (T, Z, Y, X) for a movie.
    points : DataFrame ``z, y, x`` (px, float: centre of mass of each spot's core), ``pair_id``,
        ``sister``, ``point_id``, ``photons`` (total), ``peak_photons``; points inside the volume;
        a movie's also ``t`` and ``track_id`` (stable over frames).
    voxel_size_um : (z, y, x).
    info : dict: ``condition``, ``description``, ``optics``, ``camera``, ``sample`` (dicts),
        ``voxel_size_um``, ``shape_px``, ``hot_yx``, ``dead_yx`` ((N, 2) px),
        ``peak_photons_median`` (of the last frame), ``truth``.
    """
    if name not in CONDITIONS:
        raise InputError(f"condition: unknown name {name!r}; expected one of {sorted(CONDITIONS)}")
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < PANEL_SEED_MIN:
        raise InputError(f"seed: panel seeds are integers ≥ {PANEL_SEED_MIN} (training uses its own stream), "
                         f"got {seed!r}")
    ss = np.random.SeedSequence(int(seed), spawn_key=(PANEL_KEY,))
    return simulate_physical(CONDITIONS[name], ss, shape_px, n_frames=n_frames)


# --------------------------------------------------------------------------- training mix

_LATERAL_UM = (0.05, 0.065, 0.08, 0.1, 0.11, 0.13, 0.16, 0.2)
_AXIAL_UM = (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
_NA = {"oil": (1.3, 1.35, 1.4, 1.45), "silicone": (1.3, 1.35), "water": (1.2, 1.25)}


def training_shape(shape_px, voxel_size_um) -> tuple:
    """The shape covering about the µm extent of ``shape_px`` at 0.3 × 0.13 × 0.13 µm at
    ``voxel_size_um``, scaled down (all axes alike) to at most 2× its voxel count; each axis
    ≥ 8 px."""
    s0 = np.asarray(check_shape(shape_px, "shape_px"), float)
    v = np.asarray(_voxel(voxel_size_um))
    s = s0 * np.asarray(VOXEL_SIZE_UM) / v
    cap = 2 * np.prod(s0)
    if np.prod(s) > cap:
        s *= (cap / np.prod(s)) ** (1 / 3)
    return tuple(int(max(8, math.floor(k + 1e-9))) for k in s)


def random_condition(rng: np.random.Generator, shape_px=(32, 96, 96), p_dense=0.2, p_nucleus=0.2) -> Condition:
    """A random recipe for training: optics, camera, sample and voxel size drawn within the
    panel's ranges (NA 1.2–1.45, depth 0–10 µm, voxels 0.05–0.2 × 0.15–0.5 µm, sCMOS/EMCCD/
    ideal, 8/12/16 bits, hot pixels, nuclei, dense clusters, thin stacks, deconvolved), with
    its shape from :func:`training_shape` (``shape_px`` at the reference voxel size). Discrete
    steps keep the kernel cache useful. ``p_dense`` and ``p_nucleus``: the chance of a dense
    cluster and of a bright textured nucleus (the draws are the same whatever they are)."""
    lu = lambda a, b: float(np.exp(rng.uniform(np.log(a), np.log(b))))  # noqa: E731
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    immersion = str(rng.choice(["oil", "silicone", "water"], p=[0.6, 0.25, 0.15]))
    optics = Optics(model="vectorial" if rng.random() < 0.7 else "scalar",
                    modality="confocal" if rng.random() < 0.35 else "widefield",
                    na=pick(_NA[immersion]), immersion=immersion,
                    sample_index=1.333 if rng.random() < 0.8 else 1.37,
                    depth_um=float(rng.integers(0, 11)), wavelength_um=pick((0.51, 0.525)),
                    pinhole_au=pick((0.7, 1.0, 1.5)))
    if rng.random() < 0.3:
        vox = tuple(VOXEL_SIZE_UM)
    else:
        vox = (pick(_AXIAL_UM), pick(_LATERAL_UM))
        vox = (vox[0], vox[1], vox[1])
    # sample
    peak = lu(15, 500)
    cell = peak * lu(0.03, 1.0)
    dense = rng.random() < p_dense
    deconvolved = rng.random() < 0.1
    sample = Sample(
        layout="real" if rng.random() < 0.3 else "plate",
        n_pairs=int(rng.integers(40, 100) if dense else rng.integers(5, 60)),
        plate_diameter_um=float(rng.uniform(3, 6) if dense else rng.uniform(5, 12)),
        plate_thickness_um=float(rng.uniform(0.1, 0.3) if dense else rng.uniform(0.1, 1.2)),
        sister_distance_um=(0.35, 0.7) if dense else tuple(sorted(rng.uniform(0.5, 1.4, 2).tolist())),
        min_pair_spacing_um=float(rng.uniform(0.35, 0.5) if dense else rng.uniform(0.5, 1.2)),
        off_plate_fraction=float(rng.uniform(0, 0.2)), plate_offset_um=float(rng.uniform(0.5, 2.0)),
        peak_photons=peak, brightness_spread=float(rng.uniform(0.2, 0.7)),
        diameter_um=pick((0.1, 0.125, 0.15, 0.175, 0.2)),
        dark_photons=float(rng.uniform(0, 5)), cell_photons=cell * (0.2 if deconvolved else 1.0),
        n_blobs=int(rng.integers(0, 10)), blob_photons=cell * float(rng.uniform(0.2, 1.5)),
        autofluor_photons=cell * float(rng.uniform(0.05, 0.5)),
        illumination_variation=float(rng.uniform(0, 0.5)),
        nucleus_photons=cell * float(rng.uniform(2, 6)) if rng.random() < p_nucleus else 0.0,
        deconvolved=deconvolved)
    # camera
    bits = int(rng.choice([16, 12, 8], p=[0.7, 0.2, 0.1]))
    common = dict(hot_pixels=0 if rng.random() < 0.5 else int(lu(5, 300)),
                  dead_pixels=0 if rng.random() < 0.7 else int(rng.integers(1, 30)),
                  bit_depth=bits, clip_offset=bool(rng.random() < (0.8 if bits == 8 else 0.15)),
                  seed=int(rng.integers(2 ** 31)), offset=float(rng.uniform(90, 500)))
    kind = "ideal" if deconvolved else str(rng.choice(["scmos", "emccd", "ideal"], p=[0.55, 0.2, 0.25]))
    if deconvolved:
        camera = Camera(kind="ideal", qe=1.0, gain=1.0, offset=0.0)
    elif kind == "emccd":
        em = lu(50, 500)
        camera = Camera(kind="emccd", qe=float(rng.uniform(0.85, 0.95)), em_gain=em, gain=lu(5, 20) / em,
                        read_noise=float(rng.uniform(20, 80)), **common)
    else:
        camera = Camera(kind=kind, qe=float(rng.uniform(0.6, 0.95)),
                        gain=lu(0.1, 0.6) if bits == 8 else lu(0.5, 4.0),
                        read_noise=float(rng.uniform(0.8, 2.5)), offset_sd=float(rng.uniform(0, 3)),
                        gain_sd=float(rng.uniform(0, 0.04)), read_noise_spread=float(rng.uniform(0.2, 0.6)),
                        **common)
    shape = training_shape(shape_px, vox)
    if rng.random() < 0.15:  # thin stack
        shape = (int(rng.integers(8, 21)),) + shape[1:]
    return Condition("random", optics, camera, sample, vox, shape, "training mix")


def physical_training_pairs(shape_px=(32, 96, 96), seed=None, p_dense=0.2, p_nucleus=0.2, temporal=False):
    """Endless training examples from a random mix of conditions (:func:`random_condition`,
    with its ``p_dense`` and ``p_nucleus``):
    ``(image ZYX float32 raw counts, points DataFrame z, y, x px, voxel_size_um)``; with
    ``temporal`` the image is ZYXC, frames t-1, t, t+1 of one cell (:func:`simulate_condition`'s
    movies) as 3 channels, and the points are frame t's.

    ``shape_px`` is the size at 0.3 × 0.13 × 0.13 µm; other voxel sizes get the shape that
    covers about the same µm extent (at most 2× the voxel count, :func:`training_shape`).
    Example i draws from child i of ``SeedSequence(seed, spawn_key=(TRAIN_KEY,))``: never the
    panel's stream (:func:`simulate_condition`). Depth bins of :data:`TRAIN_DEPTH_STEP_UM`.
    About 0.3–4 s per example at (32, 96, 96) on one CPU core, mostly new PSF kernels (random
    optics and voxel sizes rarely hit the cache).
    """
    shape0 = check_shape(shape_px, "shape_px")
    ss = np.random.SeedSequence(seed, spawn_key=(TRAIN_KEY,))
    while True:
        rng = np.random.default_rng(ss.spawn(1)[0])
        cond = random_condition(rng, shape0, p_dense=p_dense, p_nucleus=p_nucleus)
        if not temporal:
            image, points, vox, _ = _simulate(cond, rng, cond.shape_px, TRAIN_DEPTH_STEP_UM)
            yield np.ascontiguousarray(image, dtype=np.float32), points, vox
            continue
        movie, pts, vox, _ = _simulate(cond, rng, cond.shape_px, TRAIN_DEPTH_STEP_UM, n_frames=3,
                                       motion_rng=rng.spawn(1)[0])
        points = pts[pts["t"] == 1].drop(columns=["t"]).reset_index(drop=True)
        yield np.ascontiguousarray(np.moveaxis(movie, 0, -1), dtype=np.float32), points, vox
