"""Cameras: photons per voxel → raw counts (ADU), with the noise and defects of real detectors.

Arrays are ``(Z, Y, X)``; per-pixel maps and defect positions are ``(Y, X)`` and the same in
every z plane (a z-stack is taken by one sensor). Units: photons (incident), electrons (e-),
ADU (counts).

Per voxel: photoelectrons ~ Poisson(QE × photons) (+ Poisson dark electrons at hot pixels);
EMCCD: the EM register multiplies them, output ~ Gamma(shape = electrons, scale = EM gain)
(excess noise factor √2: the variance is twice Poisson's for the same mean); then Gaussian read
noise (e- rms), ``gain`` ADU per electron, ``offset`` ADU, rounding, saturation at
2^bit_depth − 1. sCMOS: per-pixel offset, gain and read-noise maps (read noise log-normal),
drawn once per camera ``seed`` and frame size. Dead pixels read the nominal offset in every
plane (0 with ``clip_offset``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kt_stardist.errors import InputError

__all__ = ["Camera", "camera_maps", "apply_camera", "KINDS"]

KINDS = ("scmos", "emccd", "ideal")


@dataclass(frozen=True)
class Camera:
    """A camera. Frozen, hashable, plain-JSON via :meth:`to_dict` / :meth:`from_dict`.

    kind : ``'scmos'`` (per-pixel maps), ``'emccd'`` (EM gain, excess noise) or ``'ideal'``
        (shot noise only: no read noise, maps or EM gain).
    qe : quantum efficiency (photons → electrons).
    gain : ADU per electron at the output (after EM multiplication for an EMCCD).
    offset : ADU added to every pixel (sCMOS: the mean of the offset map).
    read_noise : e- rms (sCMOS: the median of the log-normal per-pixel map; EMCCD: at the
        output, so divided by ``em_gain`` in photoelectron terms).
    em_gain : EMCCD electron multiplication.
    offset_sd : sCMOS per-pixel offset spread, ADU (sd).
    gain_sd : sCMOS per-pixel gain spread, relative (sd).
    read_noise_spread : sCMOS, sd of log(read noise) over pixels.
    hot_pixels, dead_pixels : defect columns per 256 × 256 px (a frame of Y × X px gets
        ``round(n · Y · X / 256²)``, at least 1 when n > 0), the same (y, x) in every plane.
    hot_level_e : (low, high) extra dark electrons per plane at a hot pixel, drawn log-uniform
        per pixel (Poisson per plane).
    bit_depth : 8, 12 or 16; saturation at 2^bits − 1; output uint8 (8) or uint16.
    clip_offset : subtract ``offset`` and clip at 0 (zero-background data).
    seed : the sensor: maps and defect positions are drawn from it (and the frame size).
    """

    kind: str = "scmos"
    qe: float = 0.8
    gain: float = 2.0
    offset: float = 100.0
    read_noise: float = 1.4
    em_gain: float = 1.0
    offset_sd: float = 1.5
    gain_sd: float = 0.02
    read_noise_spread: float = 0.4
    hot_pixels: int = 0
    dead_pixels: int = 0
    hot_level_e: tuple = (50.0, 2000.0)
    bit_depth: int = 16
    clip_offset: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise InputError(f"Camera.kind: expected one of {list(KINDS)}, got {self.kind!r}")
        if self.bit_depth not in (8, 12, 16):
            raise InputError(f"Camera.bit_depth: expected 8, 12 or 16, got {self.bit_depth!r}")
        for name, lo, hi in (("qe", 0.01, 1.0), ("gain", 1e-4, 1e4), ("offset", 0.0, 6e4),
                             ("read_noise", 0.0, 1e3), ("em_gain", 1.0, 1e4), ("offset_sd", 0.0, 1e3),
                             ("gain_sd", 0.0, 0.5), ("read_noise_spread", 0.0, 2.0),
                             ("hot_pixels", 0, 1e5), ("dead_pixels", 0, 1e5)):
            v = getattr(self, name)
            try:
                ok = math.isfinite(float(v)) and lo <= float(v) <= hi
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise InputError(f"Camera.{name}: expected a number in [{lo}, {hi}], got {v!r}")
        lv = tuple(self.hot_level_e)
        if len(lv) != 2 or not 0 < lv[0] <= lv[1]:
            raise InputError(f"Camera.hot_level_e: expected (low, high) electrons, 0 < low ≤ high, "
                             f"got {self.hot_level_e!r}")
        object.__setattr__(self, "hot_level_e", (float(lv[0]), float(lv[1])))

    @property
    def max_adu(self) -> int:
        return 2 ** int(self.bit_depth) - 1

    @property
    def dtype(self):
        return np.uint8 if self.bit_depth == 8 else np.uint16

    def to_dict(self) -> dict:
        from kt_stardist.settings import to_dict

        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Camera":
        from kt_stardist.settings import from_dict

        return from_dict(cls, d)


def _n_defects(per_256sq, shape_yx):
    n = float(per_256sq)
    return 0 if n <= 0 else max(1, int(round(n * shape_yx[0] * shape_yx[1] / 65536)))


def camera_maps(camera: Camera, shape_yx) -> dict:
    """The sensor's fixed pattern on a ``(Y, X)`` frame, drawn from ``camera.seed`` (and the
    frame size): ``offset`` (ADU), ``gain`` (ADU/e-), ``read_noise`` (e- rms) as (Y, X) float
    maps (constant unless sCMOS), ``hot_yx``/``dead_yx`` (N, 2) int px and ``hot_e`` (N,) the
    mean extra electrons per plane of each hot pixel."""
    Y, X = (int(s) for s in shape_yx)
    rng = np.random.default_rng([int(camera.seed), Y, X, 0xCA3E7A])
    c = camera
    if c.kind == "scmos":
        offset = c.offset + c.offset_sd * rng.standard_normal((Y, X))
        gain = c.gain * np.clip(1 + c.gain_sd * rng.standard_normal((Y, X)), 0.5, 1.5)
        read = c.read_noise * np.exp(c.read_noise_spread * rng.standard_normal((Y, X)))
    else:
        offset = np.full((Y, X), float(c.offset))
        gain = np.full((Y, X), float(c.gain))
        read = np.full((Y, X), 0.0 if c.kind == "ideal" else float(c.read_noise))
    n_hot, n_dead = _n_defects(c.hot_pixels, (Y, X)), _n_defects(c.dead_pixels, (Y, X))
    n_hot, n_dead = min(n_hot, Y * X), min(n_dead, Y * X - min(n_hot, Y * X))
    flat = rng.choice(Y * X, n_hot + n_dead, replace=False) if n_hot + n_dead else np.zeros(0, int)
    yx = np.stack([flat // X, flat % X], axis=1).astype(np.int64)
    lo, hi = c.hot_level_e
    hot_e = np.exp(rng.uniform(math.log(lo), math.log(hi), n_hot))
    return dict(offset=offset, gain=gain, read_noise=read, hot_yx=yx[:n_hot], dead_yx=yx[n_hot:], hot_e=hot_e)


def apply_camera(photons_zyx, camera: Camera, rng=None):
    """Raw counts of a ``(Z, Y, X)`` volume of photons per voxel through ``camera``.

    ``rng``: a numpy Generator or seed (the noise; the sensor's maps and defects come from
    ``camera.seed``). Processed in z-chunks (memory: a few float64 planes).

    Returns ``(counts, defects)``: counts (Z, Y, X) uint8 (8 bits) or uint16, ADU;
    defects ``{'hot_yx': (N, 2), 'dead_yx': (M, 2)}`` int px (y, x), the same in every plane.
    """
    if not isinstance(camera, Camera):
        raise InputError(f"camera: expected a Camera, got {type(camera).__name__}")
    ph = np.asarray(photons_zyx)
    if ph.ndim != 3:
        raise InputError(f"apply_camera: expected a (Z, Y, X) volume of photons, got shape {ph.shape}")
    rng = np.random.default_rng(rng)
    c = camera
    m = camera_maps(c, ph.shape[1:])
    hy, hx = m["hot_yx"].T
    dy, dx = m["dead_yx"].T
    out = np.empty(ph.shape, c.dtype)
    zstep = max(1, int(2e6 // max(1, ph[0].size)))
    for z0 in range(0, ph.shape[0], zstep):
        sl = ph[z0:z0 + zstep]
        e = rng.poisson(c.qe * np.maximum(np.asarray(sl, np.float64), 0)).astype(np.float64)
        if len(hy):
            e[:, hy, hx] += rng.poisson(m["hot_e"], size=(e.shape[0], len(hy)))
        if c.kind == "emccd" and c.em_gain > 1:
            e = rng.gamma(e, c.em_gain)  # shape 0 gives 0
        if c.kind != "ideal" and c.read_noise > 0:
            e += rng.standard_normal(e.shape) * m["read_noise"]
        adu = e * m["gain"] + m["offset"]
        if len(dy):
            adu[:, dy, dx] = c.offset
        if c.clip_offset:
            adu -= c.offset
        out[z0:z0 + zstep] = np.clip(np.rint(adu), 0, c.max_adu)
    return out, {"hot_yx": m["hot_yx"], "dead_yx": m["dead_yx"]}
