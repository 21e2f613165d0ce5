"""Synthetic kinetochore volumes and time-lapses with ground truth.

No real kinetochore images are public, so every model is trained on this simulator. It renders

- kinetochores as sub-voxel, anisotropic Gaussian spots integrated over each voxel (erf
  differences per axis, separable, a local window per spot), brightness varying several-fold;
- layouts: sister pairs straddling a metaphase-like plate (:func:`layout_plate`), real annotated
  positions (:func:`layout_from_real`) or a user's points;
- what makes real data hard: a hazy cell body, out-of-focus blobs, uneven illumination,
  autofluorescence texture, Poisson shot noise, camera offset, gain and Gaussian read noise;
- an optional second channel (mCherry: chromatin texture on the plate or spindle fibres);
- time-lapses (plate drift and oscillation, sister breathing, bleaching, blinking) with stable
  ``track_id``.

Units: positions and sizes in µm inside the simulator, points tables in px (z, y, x; voxel
centres at integer coordinates). Images are in camera counts, float32, ZYXC (TZYXC for
time-lapses). Intensities before the camera are photons per voxel.

SNR (as :func:`measure_snr` computes it): (mean over spots of the peak signal above the local
background, counts) / (root-mean-square over spots of the background noise std around the spot,
counts). Peak signal is the value at the voxel nearest the point minus the median of a shell
0.8-1.6 µm (lateral scale) around it; background noise is 1.4826 × MAD of that shell with every
voxel near any point left out.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.special import erf

from kt_stardist.defaults import FRAME_SHAPE_PX, VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.validate import check_shape

REAL_POINTS_CSV = Path(__file__).resolve().parent / "data" / "real_kinetochores_t00_t04.csv"

#: SNR presets: ``peak_photons`` is the expected photon count above background in the brightest
#: voxel of a spot of median brightness centred on a voxel; ``cell_photons`` the haze of the cell
#: body the spots sit on (photons/voxel). ``snr_range`` is the range that :func:`measure_snr`
#: gives for 48x128x128 volumes of the default plate layout (checked by the tests).
SNR_PRESETS = {
    "easy": {"peak_photons": 300.0, "cell_photons": 15.0, "snr_range": (20.0, 80.0)},
    "mid": {"peak_photons": 90.0, "cell_photons": 25.0, "snr_range": (8.0, 20.0)},
    "hard": {"peak_photons": 36.0, "cell_photons": 35.0, "snr_range": (3.0, 8.0)},
    "very_hard": {"peak_photons": 12.0, "cell_photons": 40.0, "snr_range": (1.0, 3.0)},
}


@dataclass
class SimParams:
    """Every parameter of one simulated volume or time-lapse (µm, photons, camera counts).

    Round-trips to JSON with :meth:`to_dict` / :meth:`from_dict`.
    """

    voxel_size_um: tuple = VOXEL_SIZE_UM
    snr: str = "mid"
    # --- spots (kinetochores)
    peak_photons: float = 90.0          # median spot peak above background, photons/voxel
    brightness_spread: float = 0.45     # sd of log(brightness) between spots (several-fold)
    sigma_lateral_um: float = 0.15      # PSF sigma, y and x
    sigma_axial_um: float = 0.40        # PSF sigma, z
    sigma_spread: float = 0.10          # sd of log(sigma) between spots
    # --- layout
    layout: str = "plate"               # "plate", "real" or "points"
    n_pairs: int = 40
    plate_diameter_um: float = 9.0
    plate_thickness_um: float = 0.3     # sd of the pair centres along the plate normal
    sister_distance_um: tuple = (0.7, 1.2)
    pair_tilt_deg: float = 20.0         # sd of the sister axis around the plate normal
    min_pair_spacing_um: float = 0.9    # pair centres closer than this are redrawn (when possible)
    off_plate_fraction: float = 0.08    # pairs displaced 1.5-4 µm off the plate, random axis
    plate_offset_um: float = 1.0        # sd of the plate centre from the volume centre (y, x; z/2)
    missing_sister: bool = False        # one member of one pair absent (as in real annotations)
    real_jitter_um: float = 0.05        # real layouts: jitter of each position
    real_rotate: str = "z"              # real layouts: "z" (about the optical axis), "3d" or "none"
    # --- background (photons/voxel)
    dark_photons: float = 2.0           # outside the cell
    cell_photons: float = 25.0          # haze of the cell body
    cell_radius_um: tuple = (7.0, 12.0, 12.0)  # semi-axes z, y, x of the cell body
    cell_edge_um: float = 1.5
    n_blobs: int = 4                    # out-of-focus blobs
    blob_photons: float = 20.0
    blob_sigma_um: tuple = (1.0, 3.0)
    autofluor_photons: float = 8.0      # low-frequency texture inside the cell
    autofluor_scale_um: float = 1.0
    illumination_variation: float = 0.25  # uneven illumination: relative range of a smooth field
    # --- camera (counts)
    offset: float = 100.0
    gain: float = 2.0                   # counts per photon
    read_noise: float = 3.0             # Gaussian read noise, counts (sd)
    # --- second channel (mCherry)
    ch2_structure: str = "chromatin"    # "chromatin" or "spindle"
    ch2_photons: float = 40.0
    ch2_background_photons: float = 10.0
    # --- time-lapse (per frame)
    drift_um: float = 0.08              # plate drift per frame, random direction
    oscillation_um: float = 0.4         # amplitude of plate oscillation along its normal
    oscillation_period: float = 10.0    # frames
    pair_oscillation_um: float = 0.2    # each pair's own oscillation along the normal
    breathing_um: float = 0.15          # amplitude of sister distance changes
    breathing_period: float = 6.0       # frames
    spot_drift_um: float = 0.04         # random walk of each pair, per frame
    rotation_deg: float = 1.0           # plate rotation per frame
    bleach_rate: float = 0.01           # brightness × exp(-rate·t)
    blink_prob: float = 0.03            # per spot and frame: dimmer by 0.3-0.6×

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "SimParams":
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(names)
        if unknown:
            raise InputError(f"SimParams: unknown parameter(s) {sorted(unknown)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "SimParams":
        return cls.from_dict(json.loads(text))

    @classmethod
    def preset(cls, snr: str = "mid", **overrides) -> "SimParams":
        """Parameters of a named SNR preset (``easy``, ``mid``, ``hard``, ``very_hard``)."""
        if snr not in SNR_PRESETS:
            raise InputError(f"snr: expected one of {sorted(SNR_PRESETS)} or 'random', got {snr!r}")
        p = SNR_PRESETS[snr]
        kw = dict(snr=snr, peak_photons=p["peak_photons"], cell_photons=p["cell_photons"])
        kw.update(overrides)
        return cls(**kw)


def random_params(rng: np.random.Generator, **overrides) -> SimParams:
    """Domain randomisation: every parameter drawn from wide ranges (for training)."""
    lu = lambda a, b: float(np.exp(rng.uniform(np.log(a), np.log(b))))  # noqa: E731
    peak = lu(8, 600)
    dense = rng.random() < 0.25  # tight clusters of touching spots
    gain = lu(0.5, 5.0)
    kw = dict(
        snr="random",
        peak_photons=peak,
        brightness_spread=float(rng.uniform(0.2, 0.8)),
        sigma_lateral_um=float(rng.uniform(0.10, 0.25)),
        sigma_axial_um=float(rng.uniform(0.25, 0.70)),
        sigma_spread=float(rng.uniform(0.0, 0.2)),
        layout="real" if rng.random() < 0.3 else "plate",
        n_pairs=int(rng.integers(40, 120) if dense else rng.integers(3, 60)),
        plate_diameter_um=float(rng.uniform(3.0, 6.0) if dense else rng.uniform(4.0, 12.0)),
        plate_thickness_um=float(rng.uniform(0.1, 1.5)),
        sister_distance_um=tuple(sorted(rng.uniform(0.45, 1.4, 2).tolist())),
        pair_tilt_deg=float(rng.uniform(0, 45)),
        min_pair_spacing_um=float(rng.uniform(0.2, 0.5) if dense else rng.uniform(0.5, 1.2)),
        off_plate_fraction=float(rng.uniform(0, 0.3)),
        plate_offset_um=float(rng.uniform(0.5, 3.0)),
        missing_sister=bool(rng.random() < 0.3),
        real_rotate="3d" if rng.random() < 0.5 else "z",
        dark_photons=float(rng.uniform(0, 10)),
        cell_photons=float(peak * lu(0.01, 3.0)),
        cell_radius_um=(float(rng.uniform(4, 10)), float(rng.uniform(7, 15)), float(rng.uniform(7, 15))),
        cell_edge_um=float(rng.uniform(0.5, 3.0)),
        n_blobs=int(rng.integers(0, 12)),
        blob_photons=float(peak * lu(0.05, 2.0)),
        blob_sigma_um=(float(rng.uniform(0.5, 1.0)), float(rng.uniform(1.0, 4.0))),
        autofluor_photons=float(peak * lu(0.01, 1.0)),
        autofluor_scale_um=float(rng.uniform(0.4, 2.5)),
        illumination_variation=float(rng.uniform(0, 0.6)),
        offset=float(rng.uniform(100, 3000)),
        gain=gain,
        read_noise=float(gain * rng.uniform(0.5, 4.0)),
        ch2_structure="chromatin" if rng.random() < 0.5 else "spindle",
        ch2_photons=lu(5, 300),
        ch2_background_photons=lu(1, 50),
        drift_um=float(rng.uniform(0, 0.2)),
        oscillation_um=float(rng.uniform(0, 0.8)),
        oscillation_period=float(rng.uniform(5, 20)),
        pair_oscillation_um=float(rng.uniform(0, 0.4)),
        breathing_um=float(rng.uniform(0, 0.25)),
        spot_drift_um=float(rng.uniform(0, 0.08)),
        rotation_deg=float(rng.uniform(0, 3)),
        bleach_rate=float(rng.uniform(0, 0.03)),
        blink_prob=float(rng.uniform(0, 0.08)),
    )
    kw.update(overrides)
    return SimParams(**kw)


# --------------------------------------------------------------------------- geometry helpers

def _unit(v):
    v = np.asarray(v, float)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _random_unit(rng, n=None):
    v = rng.normal(size=(3,) if n is None else (n, 3))
    return _unit(v)


def _rotation(axis, angle_rad):
    """Rotation matrix (Rodrigues) about ``axis`` (z, y, x components)."""
    a = _unit(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * (k @ k)


def _random_rotation(rng):
    q = _unit(rng.normal(size=4))
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _plane_basis(normal):
    n = _unit(normal)
    helper = np.array([1.0, 0, 0]) if abs(n[0]) < 0.9 else np.array([0, 1.0, 0])
    u = _unit(np.cross(n, helper))
    return u, np.cross(n, u)


# --------------------------------------------------------------------------- layouts

def layout_plate(rng: np.random.Generator, params: SimParams | None = None,
                 centre_um=(0.0, 0.0, 0.0), normal=None) -> pd.DataFrame:
    """Sister pairs in a metaphase-like plate.

    Pair centres are spread over a disc (``plate_diameter_um``) with sd ``plate_thickness_um``
    along the plate normal; sisters straddle the plate along the normal (tilted by
    ``pair_tilt_deg``), ``sister_distance_um`` apart; ``off_plate_fraction`` of the pairs sit
    1.5-4 µm off the plate with a random axis. Random plate orientation unless ``normal`` (z, y, x)
    is given.

    Returns a DataFrame with ``z_um, y_um, x_um`` (absolute, µm), ``pair_id``, ``sister`` (1/2)
    and per-pair geometry (``cz_um, cy_um, cx_um`` pair centre, ``az, ay, ax`` unit sister axis,
    ``dist_um``) used by the time-lapse.
    """
    p = params or SimParams()
    n = int(p.n_pairs)
    normal = _random_unit(rng) if normal is None else _unit(normal)
    u, v = _plane_basis(normal)
    radius = p.plate_diameter_um / 2
    centres = []
    tries = 0
    while len(centres) < n:
        r = radius * math.sqrt(rng.random())
        phi = rng.uniform(0, 2 * math.pi)
        c = r * math.cos(phi) * u + r * math.sin(phi) * v + rng.normal(0, p.plate_thickness_um) * normal
        tries += 1
        if tries < 200 * n and centres:
            if np.min(np.linalg.norm(np.asarray(centres) - c, axis=1)) < p.min_pair_spacing_um:
                continue
        centres.append(c)
    centres = np.asarray(centres).reshape(-1, 3)
    tilt = np.deg2rad(p.pair_tilt_deg)
    axes = []
    for i in range(n):
        if rng.random() < p.off_plate_fraction:
            centres[i] += normal * rng.choice([-1, 1]) * rng.uniform(1.5, 4.0)
            axes.append(_random_unit(rng))
            continue
        a = normal + np.tan(min(abs(rng.normal(0, tilt)), 1.3)) * _unit(
            math.cos(t := rng.uniform(0, 2 * math.pi)) * u + math.sin(t) * v)
        axes.append(_unit(a))
    axes = np.asarray(axes).reshape(-1, 3)
    lo, hi = p.sister_distance_um
    dist = rng.uniform(lo, hi, n)
    centres = centres + np.asarray(centre_um, float)
    return _pairs_frame(centres, axes, dist)


def _pairs_frame(centres, axes, dist):
    rows = []
    for i, (c, a, d) in enumerate(zip(centres, axes, dist)):
        for s, sign in ((1, -1), (2, 1)):
            q = c + sign * d / 2 * a
            rows.append((q[0], q[1], q[2], i, s, c[0], c[1], c[2], a[0], a[1], a[2], d))
    cols = ["z_um", "y_um", "x_um", "pair_id", "sister", "cz_um", "cy_um", "cx_um",
            "az", "ay", "ax", "dist_um"]
    df = pd.DataFrame(rows, columns=cols)
    return df.astype({"pair_id": int, "sister": int})


def pair_nearest(points_um: np.ndarray, max_dist_um: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Optimal nearest-neighbour pairing of points (µm): the most pairs closer than
    ``max_dist_um``, and among those the smallest total distance (maximum-weight matching,
    networkx, which scikit-image depends on). Returns (pair_id, sister) arrays; points left
    over get -1 and 0. Pair ids are numbered in the order of the first member."""
    import networkx as nx
    from scipy.spatial.distance import pdist, squareform

    n = len(points_um)
    pair_id = np.full(n, -1, int)
    sister = np.zeros(n, int)
    if n < 2:
        return pair_id, sister
    d = squareform(pdist(points_um))
    g = nx.Graph()
    i, j = np.nonzero(np.triu(d <= max_dist_um, 1))
    g.add_weighted_edges_from((int(a), int(b), float(max_dist_um - d[a, b] + 1e-3)) for a, b in zip(i, j))
    pairs = sorted(tuple(sorted(e)) for e in nx.max_weight_matching(g, maxcardinality=True))
    for k, (a, b) in enumerate(pairs):
        pair_id[[a, b]] = k
        sister[a], sister[b] = 1, 2
    return pair_id, sister


def layout_from_real(rng: np.random.Generator, params: SimParams | None = None,
                     centre_um=(0.0, 0.0, 0.0), frame: int | None = None,
                     path=REAL_POINTS_CSV) -> pd.DataFrame:
    """Layout from the shipped real positions (79 kinetochores of a HeLa cell, t = 0 or 4).

    The chosen frame is re-centred on ``centre_um``, rotated (``params.real_rotate``: about the
    z axis, in 3D or not at all) and jittered (``real_jitter_um``). Pair ids are assigned by
    optimal nearest-neighbour pairing (most pairs within 2 µm, then least total distance, see
    :func:`pair_nearest`: 38-39 pairs of the 79 points); points left over get ``pair_id`` -1. Same columns as
    :func:`layout_plate`.
    """
    p = params or SimParams()
    df = pd.read_csv(path)
    frames = sorted(df["t"].unique())
    t = frames[int(rng.integers(len(frames)))] if frame is None else frame
    g = df[df["t"] == t]
    pts = g[["z", "y", "x"]].to_numpy(float) * np.asarray(VOXEL_SIZE_UM)
    pts -= pts.mean(axis=0)
    if p.real_rotate == "3d":
        pts = pts @ _random_rotation(rng).T
    elif p.real_rotate == "z":
        pts = pts @ _rotation((1, 0, 0), rng.uniform(0, 2 * math.pi)).T
    pts += rng.normal(0, p.real_jitter_um, pts.shape)
    pts += np.asarray(centre_um, float)
    pair_id, sister = pair_nearest(pts)
    out = pd.DataFrame(pts, columns=["z_um", "y_um", "x_um"])
    out["pair_id"], out["sister"] = pair_id, sister
    # per-pair geometry for time-lapses
    cen = pts.copy()
    ax = np.tile([1.0, 0, 0], (len(pts), 1))
    dist = np.zeros(len(pts))
    for k in range(pair_id.max() + 1):
        i, j = np.flatnonzero(pair_id == k)
        c = (pts[i] + pts[j]) / 2
        a = pts[j] - pts[i]
        d = np.linalg.norm(a)
        cen[[i, j]] = c
        ax[[i, j]] = a / max(d, 1e-9)
        dist[[i, j]] = d
    out[["cz_um", "cy_um", "cx_um"]] = cen
    out[["az", "ay", "ax"]] = ax
    out["dist_um"] = dist
    return out


# --------------------------------------------------------------------------- rendering

def _peak_fraction(sigma_px):
    """Fraction of a spot's photons in the voxel it is centred on (per spot, all axes)."""
    return np.prod(erf(0.5 / (np.sqrt(2) * np.asarray(sigma_px))), axis=-1)


def render_spots(shape_px, points_px, peak, sigma_px, out=None, truncate=4.0) -> np.ndarray:
    """Add integrated anisotropic Gaussian spots to a volume (photons per voxel).

    Each voxel receives the Gaussian integrated over it (erf differences per axis, separable):
    the per-spot 1D profiles along z, y, x are computed for all spots at once and their outer
    product is added into a local window of ±``truncate`` sigma around the spot.

    Parameters
    ----------
    shape_px : (Z, Y, X)
    points_px : (N, 3) float, spot centres in px (z, y, x), voxel centres at integers.
    peak : (N,) or scalar, photons in the brightest voxel of the spot were it centred on a voxel
        (the total is ``peak / prod(erf(0.5 / (sqrt(2) sigma)))``).
    sigma_px : (N, 3) or (3,), Gaussian sigma in px (z, y, x).
    out : float32 array of ``shape_px`` to add into (else a new zero volume).
    """
    shape = tuple(int(s) for s in shape_px)
    if out is None:
        out = np.zeros(shape, np.float32)
    pts = np.asarray(points_px, float).reshape(-1, 3)
    n = len(pts)
    if n == 0:
        return out
    sig = np.broadcast_to(np.asarray(sigma_px, float), (n, 3))
    total = np.broadcast_to(np.asarray(peak, float), (n,)) / _peak_fraction(sig)
    half = np.ceil(truncate * sig.max(axis=0)).astype(int) + 1  # per axis, same for all spots
    start = np.round(pts).astype(int) - half                       # (N, 3)
    profiles = []
    for ax in range(3):
        idx = start[:, ax, None] + np.arange(2 * half[ax] + 1)[None, :]  # (N, W)
        s2 = np.sqrt(2) * sig[:, ax, None]
        e = erf((idx[..., None] + np.array([-0.5, 0.5]) - pts[:, ax, None, None]) / s2[..., None])
        profiles.append(0.5 * (e[..., 1] - e[..., 0]))
    prof_z = profiles[0] * total[:, None]
    windows = np.einsum("nz,ny,nx->nzyx", prof_z, profiles[1], profiles[2]).astype(np.float32)
    for i in range(n):
        lo = start[i]
        hi = lo + windows.shape[1:]
        a = np.maximum(lo, 0)
        b = np.minimum(hi, shape)
        if np.any(b <= a):
            continue
        out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] += windows[
            i, a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]]
    return out


class _Grid:
    """A coarse grid over a volume (steps ~0.5 µm) for smooth fields, upsampled with zoom."""

    def __init__(self, shape, voxel_um, step_um=(0.6, 0.5, 0.5), origin_px=(0, 0, 0), full=None):
        self.shape = tuple(int(s) for s in shape)
        self.voxel = np.asarray(voxel_um, float)
        step_px = np.maximum(1, np.round(np.asarray(step_um) / self.voxel)).astype(int)
        self.cshape = tuple(int(max(2, math.ceil(s / st))) for s, st in zip(self.shape, step_px))
        # coarse cell centres in fine px (grid_mode zoom maps cell extents onto each other)
        self.coords_px = [((np.arange(c) + 0.5) * s / c - 0.5) + o
                          for c, s, o in zip(self.cshape, self.shape, origin_px)]
        self.coords_um = [c * v for c, v in zip(self.coords_px, self.voxel)]
        self.step_um = np.array([s / c for s, c in zip(self.shape, self.cshape)]) * self.voxel

    def mesh_um(self):
        return np.meshgrid(*self.coords_um, indexing="ij", sparse=True)

    def upsample(self, coarse):
        """Linear interpolation of a coarse field to the full shape (float32), separable, axis
        by axis (x, then y, then z), with the same geometry as ``ndimage.zoom(grid_mode=True)``
        but several times faster."""
        out = np.asarray(coarse, np.float32)
        for ax in (2, 1, 0):
            c, s = self.cshape[ax], self.shape[ax]
            pos = np.clip((np.arange(s) + 0.5) * c / s - 0.5, 0, c - 1)  # fine px → coarse index
            i0 = np.minimum(np.floor(pos).astype(int), c - 2)
            w = (pos - i0).astype(np.float32)
            bshape = [1] * out.ndim
            bshape[ax] = s
            w = w.reshape(bshape)
            a0 = np.take(out, i0, axis=ax)
            a1 = np.take(out, i0 + 1, axis=ax)
            a1 -= a0
            a1 *= w
            a0 += a1
            out = a0
        return out


def _smooth_noise(rng, grid, scale_um):
    """Positive low-frequency texture with mean ~1 on the coarse grid."""
    g = rng.normal(size=grid.cshape)
    g = ndimage.gaussian_filter(g, np.asarray(scale_um) / grid.step_um, mode="wrap")
    g -= g.mean()
    g /= max(g.std(), 1e-6)  # a grid smaller than the texture scale gives a flat field
    return np.exp(0.5 * g - 0.125)


def _background_scene(rng, params, centre_um, shape_um):
    """Draw the random geometry of the background (fixed over a time-lapse)."""
    p = params
    blobs = []
    for _ in range(int(p.n_blobs)):
        pos = np.asarray(centre_um) + rng.normal(0, 1, 3) * np.asarray(p.cell_radius_um) * 0.6
        sig = rng.uniform(*p.blob_sigma_um) * np.array([2.0, 1.0, 1.0])  # out of focus: longer in z
        blobs.append((pos, sig, rng.uniform(0.3, 1.0) * p.blob_photons))
    grad_dir = _random_unit(rng) * np.array([0.2, 1.0, 1.0])  # illumination mostly varies laterally
    return dict(
        cell_centre=np.asarray(centre_um) + rng.normal(0, 1.0, 3),
        blobs=blobs,
        grad_dir=grad_dir,
        grad_phase=rng.uniform(0, 2 * math.pi),
        illum_scale_um=rng.uniform(0.7, 1.5) * max(shape_um[1], shape_um[2], 20.0),
        tex_seed=int(rng.integers(2**63)),
    )


def _background(grid, params, scene, shift_um=(0, 0, 0)):
    """(photons background, illumination field) on the coarse grid."""
    p = params
    z, y, x = grid.mesh_um()
    c = scene["cell_centre"] + np.asarray(shift_um)
    r = np.sqrt(((z - c[0]) / p.cell_radius_um[0]) ** 2 + ((y - c[1]) / p.cell_radius_um[1]) ** 2
                + ((x - c[2]) / p.cell_radius_um[2]) ** 2)
    edge = p.cell_edge_um / float(np.mean(p.cell_radius_um))
    cell = 1.0 / (1.0 + np.exp((r - 1.0) / max(edge, 1e-3)))
    tex = _smooth_noise(np.random.default_rng(scene["tex_seed"]), grid, p.autofluor_scale_um)
    bg = p.dark_photons + cell * (p.cell_photons + p.autofluor_photons * tex)
    for pos, sig, amp in scene["blobs"]:
        pos = pos + np.asarray(shift_um)
        bg = bg + amp * np.exp(-0.5 * (((z - pos[0]) / sig[0]) ** 2 + ((y - pos[1]) / sig[1]) ** 2
                                       + ((x - pos[2]) / sig[2]) ** 2))
    d = scene["grad_dir"]
    proj = (z * d[0] + y * d[1] + x * d[2]) / scene["illum_scale_um"]
    illum = 1.0 - p.illumination_variation * 0.5 * (1 + np.sin(2 * math.pi * proj + scene["grad_phase"]))
    return np.broadcast_to(bg, grid.cshape), np.broadcast_to(illum, grid.cshape)


def _chromatin(grid, params, plate, tex_seed):
    """mCherry-H2B-like chromatin: a textured slab around the plate (coarse grid, photons)."""
    z, y, x = grid.mesh_um()
    c, n, radius = plate["centre"], plate["normal"], plate["radius"]
    dz, dy, dx = z - c[0], y - c[1], x - c[2]
    along = dz * n[0] + dy * n[1] + dx * n[2]
    radial = np.sqrt(np.maximum(dz * dz + dy * dy + dx * dx - along * along, 0))
    half = 1.0
    slab = 1 / (1 + np.exp((np.abs(along) - half) / 0.3)) * 1 / (1 + np.exp((radial - radius - 1.0) / 0.5))
    tex = _smooth_noise(np.random.default_rng(tex_seed), grid, 0.4)
    return params.ch2_photons * slab * tex


def _fibre_points(plate, pos_um, sister, voxel_um, rng):
    """Spindle fibres: points along lines from each kinetochore to the pole on its side."""
    c, n = plate["centre"], plate["normal"]
    half_len = plate["radius"] + rng.uniform(1.0, 3.0)
    poles = [c - half_len * n, c + half_len * n]
    pts = []
    step = 0.5 * float(np.min(voxel_um))
    for q in pos_um:
        side = 1 if np.dot(q - c, n) > 0 else 0
        pole = poles[side]
        L = np.linalg.norm(pole - q)
        k = max(2, int(L / step))
        pts.append(q + np.linspace(0.05, 0.85, k)[:, None] * (pole - q))  # fibres converge; stop short of the pole
    return np.concatenate(pts) if pts else np.zeros((0, 3))


# --------------------------------------------------------------------------- one frame

def _camera(rng, photons, params, noise_free):
    """photons (float32) → counts, in place, chunked over z to keep memory low."""
    out = photons
    zstep = max(1, int(4e6 // max(1, out[0].size)))
    for z0 in range(0, out.shape[0], zstep):
        sl = out[z0:z0 + zstep]
        if not noise_free:
            sl[...] = rng.poisson(np.maximum(sl, 0)).astype(np.float32)
            sl *= params.gain
            sl += rng.normal(0, params.read_noise, sl.shape).astype(np.float32)
        else:
            sl *= params.gain
        sl += params.offset
    return out


def _render_frame(rng, shape, params, scene, kt, bright, sig_um, plate, shift_um, channels,
                  noise_free, origin_px=(0, 0, 0)):
    """Render one frame: (image ZYXC float32 counts)."""
    vox = np.asarray(params.voxel_size_um, float)
    grid = _Grid(shape, vox, origin_px=origin_px)
    bg_c, illum_c = _background(grid, params, scene, shift_um)
    illum = grid.upsample(illum_c)
    photons = grid.upsample(bg_c)
    pts_px = kt / vox - np.asarray(origin_px)
    render_spots(shape, pts_px, bright, sig_um / vox, out=photons)
    photons *= illum
    chans = [_camera(rng, photons, params, noise_free)]
    if channels == 2:
        ch2 = grid.upsample(np.full(grid.cshape, params.ch2_background_photons, np.float32)
                            + 0.3 * (bg_c - params.dark_photons))
        if params.ch2_structure == "spindle":
            fp = _fibre_points(plate, kt, None, vox, np.random.default_rng(scene["tex_seed"] + 1))
            fine = 0.15 * params.ch2_photons
            render_spots(shape, fp / vox - np.asarray(origin_px), fine,
                         np.array([0.35, 0.15, 0.15]) / vox, out=ch2)
            # diffuse spindle haze
            pgrid = grid
            z, y, x = pgrid.mesh_um()
            c, n = plate["centre"], plate["normal"]
            d = np.stack(np.broadcast_arrays(z - c[0], y - c[1], x - c[2]))
            along = np.tensordot(n, d, 1)
            radial2 = np.maximum((d ** 2).sum(0) - along ** 2, 0)
            L = plate["radius"] + 2.0
            haze = np.exp(-radial2 / (2 * (plate["radius"] * (1 - np.minimum(np.abs(along) / L, 1)) + 0.5) ** 2))
            haze *= np.abs(along) < L
            ch2 += grid.upsample(0.3 * params.ch2_photons * haze)
        else:
            ch2 += grid.upsample(_chromatin(grid, params, plate, scene["tex_seed"] + 2))
        ch2 *= illum
        chans.append(_camera(rng, ch2, params, noise_free))
    return np.stack(chans, axis=-1)


# --------------------------------------------------------------------------- public API

def _make_params(rng, snr, randomize, voxel_size_um, params, missing_sister, layout_name):
    if params is not None:
        p = dataclasses.replace(params)
    elif randomize or snr == "random":
        p = random_params(rng)
    else:
        p = SimParams.preset(snr)
    p.voxel_size_um = tuple(float(v) for v in voxel_size_um)
    if missing_sister is not None:
        p.missing_sister = bool(missing_sister)
    if layout_name is not None:
        p.layout = layout_name
    return p


def _layout_name(layout, randomize):
    """Layout kind to force on the parameters (None: keep the parameters' / random choice)."""
    if isinstance(layout, pd.DataFrame):
        return "points"
    if layout is None:
        return None if randomize else "plate"
    if layout not in ("plate", "real"):
        raise InputError(f"layout: expected 'plate', 'real' or a points DataFrame, got {layout!r}")
    return layout


def _least_spread_axis(pos_um):
    """Unit direction (z, y, x) along which points spread least (a plate's normal); z for
    fewer than 3 points."""
    pos = np.asarray(pos_um, float).reshape(-1, 3)
    if len(pos) < 3:
        return np.array([1.0, 0.0, 0.0])
    return np.linalg.svd(pos - pos.mean(0), full_matrices=False)[2][-1]


class _Scene:
    """Kinetochores and background geometry of one simulation (µm), evolving over frames."""

    def __init__(self, rng, shape, params, layout, centre_px=None):
        p = params
        vox = np.asarray(p.voxel_size_um, float)
        self.vox = vox
        shape_um = np.asarray(shape) * vox
        if centre_px is None:
            centre_um = (np.asarray(shape) - 1) / 2 * vox
            centre_um = centre_um + rng.normal(0, p.plate_offset_um, 3) * np.array([0.5, 1, 1])
        else:
            centre_um = np.asarray(centre_px, float) * vox
        if isinstance(layout, pd.DataFrame):
            df = _user_layout(layout, vox)
            normal = np.array([1.0, 0, 0])
        elif p.layout == "real":
            df = layout_from_real(rng, p, centre_um)
            normal = _least_spread_axis(df[["z_um", "y_um", "x_um"]].to_numpy())
        else:
            normal = _random_unit(rng)
            df = layout_plate(rng, p, centre_um, normal=normal)
        if p.missing_sister and len(df):
            paired = df.index[df["pair_id"] >= 0]
            if len(paired):
                df = df.drop(index=paired[int(rng.integers(len(paired)))]).reset_index(drop=True)
        n = len(df)
        self.df = df
        self.pos0 = df[["z_um", "y_um", "x_um"]].to_numpy(float)
        self.plate = dict(centre=np.asarray(centre_um, float), normal=_unit(normal),
                          radius=float(p.plate_diameter_um / 2))
        self.bright = p.peak_photons * np.exp(rng.normal(0, p.brightness_spread, n))
        s = np.array([p.sigma_axial_um, p.sigma_lateral_um, p.sigma_lateral_um])
        self.sig_um = s * np.exp(rng.normal(0, p.sigma_spread, (n, 1)))
        self.bg = _background_scene(rng, p, centre_um, shape_um)
        self._init_motion(rng)

    @classmethod
    def of_layout(cls, rng, df, centre_um, bright, vox, radius_um):
        """A scene of a layout drawn elsewhere (``df`` as :func:`layout_plate` returns it,
        ``bright`` photons per spot): only the motion is drawn, from ``rng``; the plate's
        normal is the layout's direction of least spread. No background scene, no widths."""
        self = cls.__new__(cls)
        self.vox = np.asarray(vox, float)
        self.df = df
        self.pos0 = df[["z_um", "y_um", "x_um"]].to_numpy(float)
        self.plate = dict(centre=np.asarray(centre_um, float), normal=_unit(_least_spread_axis(self.pos0)),
                          radius=float(radius_um))
        self.bright = np.asarray(bright, float)
        self.sig_um = self.bg = None
        self._init_motion(rng)
        return self

    def _init_motion(self, rng):
        """The time-lapse state: drift direction, phases of pairs and plate, rotation axis."""
        n = len(self.df)
        self.drift_dir = _random_unit(rng)
        self.pair_phase = rng.uniform(0, 2 * math.pi, n)
        self.breathe_phase = rng.uniform(0, 2 * math.pi, n)
        self.osc_phase = rng.uniform(0, 2 * math.pi)
        self.rot_axis = _random_unit(rng)
        pair = self.df["pair_id"].to_numpy()
        # phases shared by the two sisters of a pair
        for k in np.unique(pair[pair >= 0]):
            idx = np.flatnonzero(pair == k)
            self.pair_phase[idx] = self.pair_phase[idx[0]]
            self.breathe_phase[idx] = self.breathe_phase[idx[0]]
        self.walk = np.zeros((n, 3))

    def frame(self, rng, t, params):
        """Positions (µm), brightness (photons) and the plate/background shift at frame t."""
        p = params
        df = self.df
        c0 = self.plate["centre"]
        n0 = self.plate["normal"]
        if t == 0:
            return self.pos0.copy(), self.bright.copy(), dict(self.plate), np.zeros(3)
        rot = _rotation(self.rot_axis, np.deg2rad(p.rotation_deg) * t)
        normal = rot @ n0
        shift = self.drift_dir * p.drift_um * t + normal * p.oscillation_um * (
            math.sin(2 * math.pi * t / p.oscillation_period + self.osc_phase) - math.sin(self.osc_phase))
        self.walk += rng.normal(0, p.spot_drift_um, self.walk.shape)
        pair = df["pair_id"].to_numpy()
        for k in np.unique(pair[pair >= 0]):  # sisters drift together
            idx = np.flatnonzero(pair == k)
            self.walk[idx] = self.walk[idx[0]]
        cen = df[["cz_um", "cy_um", "cx_um"]].to_numpy()
        ax = df[["az", "ay", "ax"]].to_numpy()
        d0 = df["dist_um"].to_numpy()
        sign = np.where(df["sister"].to_numpy() == 1, -1.0, np.where(df["sister"].to_numpy() == 2, 1.0, 0.0))
        breathe = p.breathing_um * (np.sin(2 * math.pi * t / p.breathing_period + self.breathe_phase)
                                    - np.sin(self.breathe_phase))
        d = np.maximum(d0 + breathe, 0.3)
        own = p.pair_oscillation_um * (np.sin(2 * math.pi * t / p.oscillation_period + self.pair_phase)
                                       - np.sin(self.pair_phase))
        rel = (cen - c0) @ rot.T + own[:, None] * normal + (sign * d / 2)[:, None] * (ax @ rot.T)
        pos = c0 + shift + rel + self.walk
        bright = self.bright * math.exp(-p.bleach_rate * t)
        blink = rng.random(len(pos)) < p.blink_prob
        bright = np.where(blink, bright * rng.uniform(0.3, 0.6, len(pos)), bright)
        plate = dict(centre=c0 + shift, normal=normal, radius=self.plate["radius"])
        return pos, bright, plate, shift


def _user_layout(df, vox):
    for c in ("z", "y", "x"):
        if c not in df.columns:
            raise InputError(f"layout: points table needs columns z, y, x (px); missing {c!r}")
    if "t" in df.columns and df["t"].nunique() > 1:
        df = df[df["t"] == df["t"].min()]
    pts = df[["z", "y", "x"]].to_numpy(float) * vox
    if "pair_id" in df.columns:
        pair_id = df["pair_id"].fillna(-1).to_numpy(int)
        sister = (df["sister"].fillna(0).to_numpy(int) if "sister" in df.columns
                  else np.zeros(len(df), int))
    else:
        pair_id, sister = np.full(len(df), -1), np.zeros(len(df), int)
    out = pd.DataFrame(pts, columns=["z_um", "y_um", "x_um"])
    out["pair_id"], out["sister"] = pair_id, sister
    out[["cz_um", "cy_um", "cx_um"]] = pts
    out[["az", "ay", "ax"]] = np.tile([1.0, 0, 0], (len(pts), 1))
    out["dist_um"] = 0.0
    return out.reset_index(drop=True)


def _points_table(pos_um, df, vox, shape, origin_px=(0, 0, 0), **columns):
    """The truth table of the points inside a volume of ``shape`` px: ``z, y, x`` px (positions
    ``pos_um`` µm / voxel, minus ``origin_px``), ``pair_id`` and ``sister`` of the layout ``df``,
    ``point_id`` (layout order) and any further per-point ``columns``."""
    pts = pos_um / vox - np.asarray(origin_px)
    inside = np.all((pts >= -0.5) & (pts < np.asarray(shape) - 0.5), axis=1)
    out = pd.DataFrame(pts, columns=["z", "y", "x"])
    out["pair_id"] = df["pair_id"].to_numpy(int)
    out["sister"] = df["sister"].to_numpy(int)
    out["point_id"] = np.arange(len(out))
    for name, values in columns.items():
        out[name] = values
    return out[inside].reset_index(drop=True)


def _default_centre_px(shape):
    """Full frames: spots near the centre as in real data (z 20-52, y/x 400-600 px)."""
    if tuple(shape) == tuple(FRAME_SHAPE_PX):
        return (36.0, 500.0, 500.0)
    return None


def simulate_volume(shape_px=(48, 128, 128), seed=None, snr="mid", channels=1, layout=None,
                    randomize=False, voxel_size_um=VOXEL_SIZE_UM, missing_sister=None,
                    noise_free=False, params: SimParams | None = None, return_params=False):
    """Simulate one kinetochore volume with ground truth.

    Parameters
    ----------
    shape_px : (Z, Y, X) volume shape, px.
    seed : int, sequence or SeedSequence; the same seed gives the same bytes.
    snr : ``easy``, ``mid``, ``hard``, ``very_hard`` (see :data:`SNR_PRESETS`) or ``random``
        (domain randomisation, as ``randomize=True``).
    channels : 1 (EGFP kinetochores) or 2 (+ mCherry chromatin or spindle).
    layout : ``"plate"``, ``"real"`` or a points DataFrame (``z, y, x`` px, optional ``pair_id``,
        ``sister``). None: ``"plate"``, or drawn (30 % real) with ``randomize``/``params``' own.
    randomize : draw every parameter from wide ranges (:func:`random_params`).
    voxel_size_um : (z, y, x) µm.
    missing_sister : drop one member of one pair (None: the parameters' choice, off by default).
    noise_free : no shot or read noise (counts = offset + gain · photons).
    params : explicit :class:`SimParams` (overrides ``snr`` and ``randomize``).
    return_params : also return the :class:`SimParams` used.

    Returns
    -------
    image : float32 (Z, Y, X, C), camera counts.
    points : DataFrame ``z, y, x`` (px), ``pair_id`` (-1: unpaired), ``sister`` (1/2, 0:
        unpaired), ``point_id``; only points whose centre lies inside the volume.
    """
    shape = check_shape(shape_px, "shape_px")
    if channels not in (1, 2):
        raise InputError(f"channels: expected 1 or 2, got {channels!r}")
    rng = np.random.default_rng(seed)
    p = _make_params(rng, snr, randomize, voxel_size_um, params, missing_sister,
                     _layout_name(layout, randomize or snr == "random" or params is not None))
    scene = _Scene(rng, shape, p, layout, centre_px=_default_centre_px(shape))
    pos, bright, plate, shift = scene.frame(rng, 0, p)
    image = _render_frame(rng, shape, p, scene.bg, pos, bright, scene.sig_um, plate, shift,
                          channels, noise_free)
    points = _points_table(pos, scene.df, scene.vox, shape)
    return (image, points, p) if return_params else (image, points)


def simulate_timelapse(n_frames=5, shape_px=(48, 128, 128), seed=None, snr="mid", channels=1,
                       layout=None, randomize=False, voxel_size_um=VOXEL_SIZE_UM,
                       missing_sister=None, noise_free=False, params: SimParams | None = None,
                       return_params=False):
    """Simulate a time-lapse: the plate drifts, rotates and oscillates along its normal, pairs
    oscillate, sisters breathe, spots random-walk, bleach and occasionally blink dimmer.

    Arguments as :func:`simulate_volume`; ``n_frames`` frames.

    Returns
    -------
    image : float32 (T, Z, Y, X, C), camera counts.
    points : DataFrame ``t, z, y, x`` (px), ``track_id`` (stable over frames), ``pair_id``,
        ``sister``, ``point_id``; a point outside the volume in a frame is left out there.
    """
    shape = check_shape(shape_px, "shape_px")
    if channels not in (1, 2):
        raise InputError(f"channels: expected 1 or 2, got {channels!r}")
    if int(n_frames) < 1:
        raise InputError(f"n_frames: expected a positive integer, got {n_frames!r}")
    rng = np.random.default_rng(seed)
    p = _make_params(rng, snr, randomize, voxel_size_um, params, missing_sister,
                     _layout_name(layout, randomize or snr == "random" or params is not None))
    scene = _Scene(rng, shape, p, layout, centre_px=_default_centre_px(shape))
    frames, tables = [], []
    for t in range(int(n_frames)):
        pos, bright, plate, shift = scene.frame(rng, t, p)
        frames.append(_render_frame(rng, shape, p, scene.bg, pos, bright, scene.sig_um, plate,
                                    shift, channels, noise_free))
        pts = _points_table(pos, scene.df, scene.vox, shape)
        pts.insert(0, "t", t)
        pts["track_id"] = pts["point_id"]
        tables.append(pts)
    image = np.stack(frames)
    points = pd.concat(tables, ignore_index=True)
    return (image, points, p) if return_params else (image, points)


def training_pairs(shape_px=(32, 96, 96), seed=None, randomize=True, channels=1, temporal=False,
                   snr="mid", voxel_size_um=VOXEL_SIZE_UM, n=None):
    """Endless (or ``n``) training examples: (image ZYXC float32 counts, points DataFrame px).

    Each example has its own child seed of ``seed`` (reproducible). With ``randomize`` every
    parameter is drawn from wide ranges. With ``temporal`` the image holds EGFP at t-1, t, t+1 as
    3 channels (6 with ``channels=2``), stacked time-major as every model input is
    (``kt_stardist.configs.CHANNEL_LAYOUTS``: egfp t-1, mCherry t-1, egfp t, mCherry t, ...), and
    the points are those of frame t.
    """
    shape = check_shape(shape_px, "shape_px")
    ss = np.random.SeedSequence(seed)
    i = 0
    while n is None or i < n:
        child = ss.spawn(1)[0]
        if temporal:
            img, pts = simulate_timelapse(3, shape, seed=child, snr=snr, channels=channels,
                                          randomize=randomize, voxel_size_um=voxel_size_um)
            image = np.concatenate([img[0], img[1], img[2]], axis=-1)  # time-major
            points = pts[pts["t"] == 1].drop(columns=["t"]).reset_index(drop=True)
        else:
            image, points = simulate_volume(shape, seed=child, snr=snr, channels=channels,
                                            randomize=randomize, voxel_size_um=voxel_size_um)
        yield np.ascontiguousarray(image, dtype=np.float32), points
        i += 1


# --------------------------------------------------------------------------- SNR

def measure_snr(image, points, voxel_size_um=VOXEL_SIZE_UM, channel=0, inner_um=0.8,
                outer_um=1.6, exclude_um=0.6, per_spot=False):
    """Measured SNR of spots in an image (camera counts).

    SNR = mean_i(signal_i) / sqrt(mean_i(noise_i²)), where for each point i inside the volume
    signal_i = value at the nearest voxel − median of its background shell and noise_i =
    1.4826 · MAD of the shell. The shell holds voxels between ``inner_um`` and ``outer_um``
    from the point (distance in µm with z scaled by 0.5, since the PSF is ~2.5× longer in z)
    and no voxel within ``exclude_um`` (same metric) of any point.

    Parameters
    ----------
    image : (Z, Y, X) or (Z, Y, X, C) array, counts.
    points : DataFrame with ``z, y, x`` (px) or (N, 3) array.
    per_spot : also return (signal, noise) arrays per spot.
    """
    img = np.asarray(image)
    if img.ndim == 4:
        img = img[..., channel]
    if img.ndim != 3:
        raise InputError(f"image: expected ZYX or ZYXC, got shape {np.shape(image)}")
    pts = points[["z", "y", "x"]].to_numpy(float) if isinstance(points, pd.DataFrame) \
        else np.asarray(points, float).reshape(-1, 3)
    vox = np.asarray(voxel_size_um, float)
    scale = vox * np.array([0.5, 1, 1])  # metric: µm, z compressed
    shape = np.array(img.shape)
    r = np.ceil(outer_um / scale).astype(int)
    sig, noi = [], []
    for i, q in enumerate(pts):
        c = np.round(q).astype(int)
        if np.any(c < 0) or np.any(c >= shape):
            continue
        lo = np.maximum(c - r, 0)
        hi = np.minimum(c + r + 1, shape)
        win = img[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        zz, yy, xx = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij", sparse=True)
        d = np.sqrt(((zz - q[0]) * scale[0]) ** 2 + ((yy - q[1]) * scale[1]) ** 2 + ((xx - q[2]) * scale[2]) ** 2)
        mask = (d >= inner_um) & (d <= outer_um)
        near = pts[np.all(np.abs(pts - q) <= r + exclude_um / scale + 1, axis=1)]
        for o in near:
            do = np.sqrt(((zz - o[0]) * scale[0]) ** 2 + ((yy - o[1]) * scale[1]) ** 2 + ((xx - o[2]) * scale[2]) ** 2)
            mask &= do > max(exclude_um, inner_um if np.all(o == q) else exclude_um)
        vals = win[mask]
        if vals.size < 20:
            continue
        med = np.median(vals)
        sig.append(float(img[tuple(c)]) - med)
        noi.append(1.4826 * np.median(np.abs(vals - med)))
    sig, noi = np.asarray(sig), np.asarray(noi)
    snr = float(np.mean(sig) / np.sqrt(np.mean(noi ** 2))) if len(sig) else float("nan")
    return (snr, sig, noi) if per_spot else snr
