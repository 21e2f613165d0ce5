"""Microscope optics: point spread functions (psfmodels) and spots rendered through them.

Axis order z, y, x everywhere; lengths in µm, positions in px (voxel centres at integers).
The image z axis is the focus (stage) position, increasing away from the coverslip.

- :class:`Optics` describes the microscope (Gibson–Lanni scalar or Aguet vectorial model,
  widefield or confocal, NA, immersion, sample index and the depth of the spots into the
  sample, which with an index mismatch gives an aberrated, axially asymmetric PSF and a focal
  shift).
- :func:`psf_kernel` samples the PSF with :mod:`psfmodels` on a grid oversampled ``oversample``
  times per axis, centred on its intensity peak.
- :func:`spot_kernel` convolves it with the object (a uniform ball, kinetochores are 0.1–0.2 µm
  across) and bins it to voxels at every sub-voxel phase of the oversampled grid.
- :func:`render_points` adds spots to a volume: each position is snapped to the oversampled
  grid and the binned kernel of that phase is added. The reported (snapped) position is the
  **centre of mass of the spot's core**: the intensity-weighted centre of the part of the spot
  at or above :data:`CORE_FRACTION` of its maximum, on the oversampled grid. Annotations are
  centre-of-mass points of a segmented spot, and a segmentation keeps the bright core, not the
  faint axial tails that a widefield PSF spreads over microns (the centre of mass of the whole
  kernel sits ~0.2 µm off the visible spot for oil NA 1.4 into water at 3 µm). For a
  symmetric PSF the core's centre, the whole spot's centre of mass and the peak coincide. With
  an index mismatch the axial profile is asymmetric (a long tail toward the coverslip, rings
  deeper in), as in real data.

The kernel covers ±:data:`KERNEL_HALF_UM` around the PSF's peak with a cosine taper on the
outer :data:`TAPER` of each half-extent: out-of-focus light further out is diffuse haze, left
out (a widefield PSF carries the same total light in every plane, so it has to be cut
somewhere). Each kernel sums to 1, so ``photons`` are the total photons of a spot.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from kt_stardist.errors import InputError

__all__ = ["Optics", "IMMERSION_INDEX", "psf_kernel", "oversample_factors", "SpotKernel",
           "spot_kernel", "render_points", "fwhm_um"]

#: refractive index of each immersion medium (objective design value = actual)
IMMERSION_INDEX = {"oil": 1.515, "silicone": 1.406, "water": 1.333}
MODELS = ("vectorial", "scalar")
MODALITIES = ("widefield", "confocal")
#: largest step of the oversampled grid, µm (z, y=x): the automatic oversampling factor per
#: axis is the smallest odd integer ≥ 3 giving at most this step
FINE_STEP_UM = (0.1, 0.045)
#: half-extent of every kernel, µm (z, y=x), around the PSF's peak
KERNEL_HALF_UM = (2.5, 1.2)
#: outer fraction of each half-extent rolled off with a cosine² taper
TAPER = 0.4
#: the focal shift is searched for within this distance of the nominal depth, µm
FOCAL_SEARCH_UM = 3.0


#: the reported position of a spot is the centre of mass of its intensity at or above this
#: fraction of its maximum (its core, as a segmentation keeps it)
CORE_FRACTION = 0.5


def _finite(x):
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Optics:
    """A microscope (lengths µm). Frozen and hashable (kernels are cached on it); plain-JSON
    via :meth:`to_dict` / :meth:`from_dict`.

    model : ``'vectorial'`` (Aguet) or ``'scalar'`` (Gibson–Lanni).
    modality : ``'widefield'`` or ``'confocal'`` (excitation PSF at ``excitation_um`` × emission
        PSF convolved with a pinhole of ``pinhole_au`` Airy units, as
        :func:`psfmodels.confocal_psf`).
    na : numerical aperture (1.2–1.45 typical), below the immersion index.
    immersion : ``'oil'`` (n 1.515), ``'silicone'`` (1.406) or ``'water'`` (1.333); the
        objective is designed for it (no immersion mismatch).
    sample_index : refractive index of the sample (1.333: aqueous).
    depth_um : depth of the spots below the coverslip (0–10 typical). With
        ``sample_index`` ≠ the immersion index: spherical aberration, asymmetric axial profile,
        focal shift.
    wavelength_um : emission wavelength (0.51: EGFP).
    """

    model: str = "vectorial"
    modality: str = "widefield"
    na: float = 1.4
    immersion: str = "oil"
    sample_index: float = 1.333
    depth_um: float = 0.0
    wavelength_um: float = 0.51
    excitation_um: float = 0.488
    pinhole_au: float = 1.0

    def __post_init__(self):
        if self.model not in MODELS:
            raise InputError(f"Optics.model: expected one of {list(MODELS)}, got {self.model!r}")
        if self.modality not in MODALITIES:
            raise InputError(f"Optics.modality: expected one of {list(MODALITIES)}, got {self.modality!r}")
        if self.immersion not in IMMERSION_INDEX:
            raise InputError(f"Optics.immersion: expected one of {sorted(IMMERSION_INDEX)}, "
                             f"got {self.immersion!r}")
        n = IMMERSION_INDEX[self.immersion]
        if not _finite(self.na) or not 0 < self.na < n:
            raise InputError(f"Optics.na: must be > 0 and below the {self.immersion} immersion index {n}, "
                             f"got {self.na!r}")
        checks = (("sample_index", 1.0, 2.0), ("depth_um", 0.0, 30.0), ("wavelength_um", 0.3, 1.0),
                  ("excitation_um", 0.3, 1.0), ("pinhole_au", 0.05, 100.0))
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not _finite(v) or not lo <= float(v) <= hi:
                raise InputError(f"Optics.{name}: expected a number in [{lo}, {hi}], got {v!r}")

    @property
    def immersion_index(self) -> float:
        return IMMERSION_INDEX[self.immersion]

    @property
    def mismatched(self) -> bool:
        """True when the sample index differs from the immersion index (depth matters)."""
        return abs(float(self.sample_index) - self.immersion_index) > 1e-6

    def to_dict(self) -> dict:
        from kt_stardist.settings import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Optics":
        from kt_stardist.settings import from_dict

        return from_dict(cls, d)


# --------------------------------------------------------------------------- grids

def _voxel(voxel_size_um) -> tuple:
    try:
        v = tuple(float(s) for s in voxel_size_um)
    except (TypeError, ValueError):
        raise InputError(f"voxel_size_um: expected 3 positive numbers (z, y, x) µm, "
                         f"got {voxel_size_um!r}") from None
    if len(v) != 3 or not all(math.isfinite(s) and s > 0 for s in v):
        raise InputError(f"voxel_size_um: expected 3 positive numbers (z, y, x) µm, got {voxel_size_um!r}")
    if abs(v[1] - v[2]) > 1e-9 * v[1]:
        raise InputError(f"voxel_size_um: y and x must be equal (square pixels), got {voxel_size_um!r}")
    return v


def oversample_factors(voxel_size_um, oversample=None) -> tuple:
    """Oversampling factors (z, y, x) for a voxel size (µm): ``oversample`` as an int (all
    axes), a (z, y=x) or (z, y, x) tuple, or None: the smallest odd integer ≥ 3 per axis that
    makes the step at most :data:`FINE_STEP_UM` (0.3 µm → 3, 0.5 µm → 5, 0.13 µm → 3, 0.2 µm →
    5, 0.065 µm → 3). Odd factors put a fine cell on every voxel centre."""
    v = _voxel(voxel_size_um)
    if oversample is None:
        oz, oxy = (max(3, 2 * math.ceil((s / f - 1e-9 - 1) / 2) + 1) for s, f in zip(v[:2], FINE_STEP_UM))
        return (oz, oxy, oxy)
    o = (oversample,) * 3 if np.isscalar(oversample) else tuple(oversample)
    if len(o) == 2:
        o = (o[0], o[1], o[1])
    if len(o) != 3 or any(int(k) != k or not 1 <= k <= 15 for k in o) or o[1] != o[2]:
        raise InputError(f"oversample: expected an integer 1-15 or (z, y=x) integers, got {oversample!r}")
    return tuple(int(k) for k in o)


# --------------------------------------------------------------------------- PSF

def _psf(optics: Optics, zv, nx, step_xy):
    """psfmodels PSF at focus positions ``zv`` (µm), nx × nx px of ``step_xy`` µm, peak-free
    scaling (not normalised). Point samples (oversample_factor=1)."""
    import psfmodels

    n = optics.immersion_index
    depth = float(optics.depth_um) if optics.mismatched else 0.0
    kw = dict(dxy=step_xy, pz=depth, NA=float(optics.na), ns=float(optics.sample_index), ni=n, ni0=n,
              oversample_factor=1, normalize=False, model=optics.model)
    zv = np.asarray(zv, float)
    em = psfmodels.make_psf(zv, nx, wvl=float(optics.wavelength_um), **kw)
    if optics.modality == "widefield":
        return em
    # confocal as psfmodels.confocal_psf (excitation × emission ⊛ pinhole of pinhole_au Airy
    # units), the pinhole convolved by FFT (its convolve2d takes seconds on fine grids)
    from scipy.signal import fftconvolve

    ex = psfmodels.make_psf(zv, nx, wvl=float(optics.excitation_um), **kw)
    radius_px = float(optics.pinhole_au) * 0.61 * float(optics.wavelength_um) / float(optics.na) / step_xy
    h = int(radius_px) + 1
    r = np.arange(-h, h + 1)
    pinhole = (np.hypot(r[:, None], r[None, :]) <= radius_px).astype(float)
    return ex * np.clip(fftconvolve(em, pinhole[None], mode="same", axes=(1, 2)), 0, None)


def _taper(u):
    """1 inside 1 - TAPER, cosine² roll-off to 0 at |u| = 1, 0 beyond."""
    t = np.clip((np.abs(u) - (1 - TAPER)) / TAPER, 0, 1)
    return np.cos(0.5 * np.pi * t) ** 2


@functools.lru_cache(maxsize=8)  # up to ~17 MB each (0.05 µm px); spot kernels keep what they need
def _psf_cached(optics: Optics, step_z: float, step_xy: float) -> np.ndarray:
    hz, hxy = KERNEL_HALF_UM
    nz = 2 * math.ceil(hz / step_z) + 1
    nxy = 2 * math.ceil(hxy / step_xy) + 1
    depth = float(optics.depth_um) if optics.mismatched else 0.0
    # focal shift: the on-axis intensity over a wide range of focus positions
    zs = depth + np.arange(-FOCAL_SEARCH_UM - hz, FOCAL_SEARCH_UM + hz + 1e-9, step_z)
    axial = _psf(optics, zs, 1, step_xy)[:, 0, 0]
    z_peak = zs[int(np.argmax(axial))]
    off = (np.arange(nz) - nz // 2) * step_z
    psf = _psf(optics, z_peak + off, nxy, step_xy)
    r = (np.arange(nxy) - nxy // 2) * step_xy
    radial = _taper(np.hypot(r[:, None], r[None, :]) / hxy)
    psf = np.clip(psf, 0, None) * _taper(off / hz)[:, None, None] * radial[None]
    psf /= psf.sum()
    psf.flags.writeable = False
    return psf


def psf_kernel(optics: Optics, voxel_size_um, oversample=None) -> np.ndarray:
    """The PSF of ``optics`` on the oversampled grid of ``voxel_size_um`` (z, y, x µm).

    Returns a read-only float64 array (nz, n, n), odd sizes, step ``voxel_size_um /
    oversample_factors(voxel_size_um, oversample)`` per axis, centred (middle index) on the
    PSF's intensity peak along z (so after any focal shift) and on the optical axis in y, x;
    ±:data:`KERNEL_HALF_UM` with a cosine taper, summing to 1. Cached per arguments.
    """
    if not isinstance(optics, Optics):
        raise InputError(f"optics: expected an Optics, got {type(optics).__name__}")
    v = _voxel(voxel_size_um)
    o = oversample_factors(v, oversample)
    return _psf_cached(optics, v[0] / o[0], v[1] / o[1])


# --------------------------------------------------------------------------- spots

@dataclass(frozen=True, eq=False)
class SpotKernel:
    """A spot (object ⊗ PSF) binned to voxels at every phase of the oversampled grid.

    ``phases``: (oz, oy, ox, Kz, Ky, Kx) float32, each summing to 1 (fraction of the spot's
    photons per voxel) for a kernel whose first fine cell sits at sub-voxel phase (a, b, c);
    ``fine_com``: (3,) centre of mass of the fine kernel's core (≥ :data:`CORE_FRACTION` of its
    maximum), in fine cells from its first cell: the spot's reported position;
    ``peak_fraction``: the largest voxel fraction over all phases (a spot of ``photons``
    photons peaks at ``photons × peak_fraction`` at best); ``fwhm_um``: (z, y, x) FWHM of the
    fine kernel through its peak.
    """

    phases: np.ndarray
    fine_com: np.ndarray
    oversample: tuple
    peak_fraction: float
    fwhm_um: tuple


def _ball(radius_um, step):
    """Volume fraction of a ball in each cell of a grid of ``step`` (z, y, x) µm, centred."""
    half = [math.ceil(radius_um / s - 0.5) + 1 for s in step]
    ss = 5  # sub-samples per cell and axis
    ax = [((np.arange((2 * h + 1) * ss) + 0.5) / ss - (h + 0.5)) * s for h, s in zip(half, step)]
    zz, yy, xx = np.meshgrid(*ax, indexing="ij", sparse=True)
    inside = (zz ** 2 + yy ** 2 + xx ** 2 <= radius_um ** 2).astype(float)
    shp = [2 * h + 1 for h in half]
    return inside.reshape(shp[0], ss, shp[1], ss, shp[2], ss).mean(axis=(1, 3, 5))


def _bin_axis(arrays, axis, o):
    """Each array binned by ``o`` along ``axis`` at every phase (padding in front by 0..o-1)."""
    out = []
    for arr in arrays:
        n = arr.shape[axis]
        k = -(-(n + o - 1) // o)
        for a in range(o):
            pad = [(0, 0)] * arr.ndim
            pad[axis] = (a, k * o - a - n)
            p = np.pad(arr, pad)
            out.append(p.reshape(p.shape[:axis] + (k, o) + p.shape[axis + 1:]).sum(axis + 1))
    return out


def fwhm_um(profile, step_um) -> float:
    """Full width at half maximum (µm) of a 1-D profile sampled every ``step_um``, by linear
    interpolation of the half-maximum crossings on either side of its maximum."""
    p = np.asarray(profile, float)
    i = int(np.argmax(p))
    h = p[i] / 2

    def cross(idx):
        for a, b in zip(idx[:-1], idx[1:]):
            if p[b] < h:
                return a + (b - a) * (p[a] - h) / (p[a] - p[b])
        return float(idx[-1])

    right = cross(list(range(i, len(p))))
    left = cross(list(range(i, -1, -1)))
    return float((right - left) * step_um)


@functools.lru_cache(maxsize=48)  # ~0.2-10 MB each
def _spot_cached(optics, voxel, o, diameter_um, sharpen):
    step = tuple(v / k for v, k in zip(voxel, o))
    psf = np.array(_psf_cached(optics, step[0], step[1]))
    if sharpen != 1.0:
        psf = psf ** sharpen
        psf /= psf.sum()
    if diameter_um > 0:
        from scipy.signal import fftconvolve

        psf = np.clip(fftconvolve(psf, _ball(diameter_um / 2, step), mode="same"), 0, None)
        psf /= psf.sum()
    c = np.array(psf.shape) // 2
    fwhm = tuple(fwhm_um(line, s) for line, s in zip(
        (psf[:, c[1], c[2]], psf[c[0], :, c[2]], psf[c[0], c[1], :]), step))
    idx = [np.arange(n) for n in psf.shape]
    core = np.where(psf >= CORE_FRACTION * psf.max(), psf, 0.0)
    core /= core.sum()
    fine_com = np.array([(core.sum(axis=tuple(j for j in range(3) if j != a)) * idx[a]).sum() for a in range(3)])
    binned = [psf]
    for axis in range(3):
        binned = _bin_axis(binned, axis, o[axis])
    phases = np.stack(binned).reshape(o + binned[0].shape).astype(np.float32)
    phases.flags.writeable = False
    fine_com.flags.writeable = False
    return SpotKernel(phases, fine_com, o, float(phases.max()), fwhm)


def spot_kernel(optics: Optics, voxel_size_um, diameter_um=0.15, oversample=None,
                sharpen=1.0) -> SpotKernel:
    """The :class:`SpotKernel` of a uniform ball of ``diameter_um`` (0: a point) imaged through
    ``optics`` and binned to voxels of ``voxel_size_um`` (z, y, x µm).

    ``sharpen`` > 1 raises the PSF to that power before the object is convolved (a narrower
    kernel, e.g. 2 for deconvolved-looking data). Cached per arguments.
    """
    if not isinstance(optics, Optics):
        raise InputError(f"optics: expected an Optics, got {type(optics).__name__}")
    v = _voxel(voxel_size_um)
    o = oversample_factors(v, oversample)
    if not _finite(diameter_um) or not 0 <= float(diameter_um) <= 1.0:
        raise InputError(f"diameter_um: expected a number in [0, 1] µm, got {diameter_um!r}")
    if not _finite(sharpen) or not 0.5 <= float(sharpen) <= 4:
        raise InputError(f"sharpen: expected a number in [0.5, 4], got {sharpen!r}")
    return _spot_cached(optics, v, o, round(float(diameter_um), 6), float(sharpen))


def render_points(shape_px, points_px, photons, kernel: SpotKernel, out=None):
    """Add spots to a volume (photons per voxel).

    Parameters
    ----------
    shape_px : (Z, Y, X).
    points_px : (N, 3) wanted spot positions, px (z, y, x).
    photons : (N,) or scalar, total photons per spot (what lands in the kernel's extent).
    kernel : :class:`SpotKernel` for the volume's voxel size.
    out : float32 array of ``shape_px`` to add into (else a new zero volume).

    Returns
    -------
    (out, truth_px, peak_photons): ``truth_px`` (N, 3) the snapped positions = centre of mass of
    each spot's core (module docstring; px, within half a fine cell of the wanted one);
    ``peak_photons`` (N,) the photons in each spot's brightest voxel. Spots partly or wholly
    outside the volume are cut (their truth is still the centre of mass of the whole spot).
    """
    shape = tuple(int(s) for s in shape_px)
    if out is None:
        out = np.zeros(shape, np.float32)
    pts = np.asarray(points_px, float).reshape(-1, 3)
    n = len(pts)
    photons = np.broadcast_to(np.asarray(photons, float), (n,))
    o = np.asarray(kernel.oversample)
    s = np.round((pts + 0.5) * o - 0.5 - kernel.fine_com).astype(np.int64)  # first fine cell
    phase, v0 = s % o, s // o
    truth = (s + kernel.fine_com + 0.5) / o - 0.5  # the core's centre of mass, px
    win = np.asarray(kernel.phases.shape[3:])
    peak = np.empty(n)
    for i in range(n):
        k = kernel.phases[tuple(phase[i])]
        peak[i] = photons[i] * float(k.max())
        lo, hi = v0[i], v0[i] + win
        a, b = np.maximum(lo, 0), np.minimum(hi, shape)
        if np.any(b <= a):
            continue
        out[a[0]:b[0], a[1]:b[1], a[2]:b[2]] += np.float32(photons[i]) * k[
            a[0] - lo[0]:b[0] - lo[0], a[1] - lo[1]:b[1] - lo[1], a[2] - lo[2]:b[2] - lo[2]]
    return out, truth, peak
