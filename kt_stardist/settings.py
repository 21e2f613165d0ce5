"""Settings are objects: every knob of detection, as frozen dataclasses with a JSON round-trip.

:class:`DetectSettings` holds everything :func:`kt_stardist.predict.detect` uses (thresholds,
blocks, screen, refinement, sister search, defect repair); the CLI's defaults come from these
classes, and every run saves the settings it used (``run.json``; training saves its own in the
model folder). Nested settings round-trip through :func:`to_dict` / :func:`from_dict`, which
refuse unknown keys with one line.

Units are in the field names (``_um`` µm, ``_px`` px); axis order z, y, x.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field

from kt_stardist.defaults import SPOT_SIGMA_UM
from kt_stardist.errors import InputError

__all__ = [
    "ScreenSettings", "RefineSettings", "REFINE_METHODS", "SplitSettings", "AdaptiveThreshold", "ConfirmBand", "DetectSettings", "PipelineSettings", "RecoverSettings", "ThresholdSearch", "SimulationMix",
    "TrainSettings", "FinetuneSettings", "PretrainSettings",
    "to_dict", "from_dict", "to_json", "from_json", "read_file", "replace", "stored_threshold_only",
]


@dataclass(frozen=True)
class ScreenSettings:
    """The difference-of-Gaussians screen that decides which blocks reach the network.

    ``spot_sigma_um`` (z, y, x) µm: the spot-sized Gaussian (minus a 4× larger one); a voxel is a
    candidate when the DoG exceeds ``max(k × robust noise, floor)`` (normalised units), computed
    on means of ``bin_yx`` × ``bin_yx`` px in y-x. Errs on the side of keeping.
    """

    spot_sigma_um: tuple = SPOT_SIGMA_UM
    k: float = 6.0
    floor: float = 0.05
    bin_yx: int = 2


#: the refinement methods (:class:`RefineSettings` ``method``)
REFINE_METHODS = ("gauss", "spline", "lsq", "centroid", "none")


@dataclass(frozen=True)
class RefineSettings:
    """Sub-voxel refinement on the raw intensities (:mod:`kt_stardist.predict.refine`).

    ``method``: ``gauss`` (crowded-field 3D Gaussian fits, maximum likelihood under the camera's
    Poisson + read noise, :mod:`kt_stardist.predict.mle`), ``spline`` (the same, then the PSF
    measured from the image's isolated spots, :mod:`kt_stardist.predict.psf`, replaces the
    Gaussian: ``psf_passes`` passes, the PSF measured again, ``psf_passes`` more; with fewer than
    ``psf_min_spots`` usable spots the Gaussian fits stay, with a warning), ``lsq`` (the former
    least-squares Gaussian fits on raw counts, no uncertainty), ``centroid`` or ``none``.
    ``half_um``: window half-size (z, y, x) µm; ``psf_sigma_um``: starting Gaussian sigma, fitted
    within ``sigma_bounds`` × it; ``passes``: 1 = joint fits of overlapping windows, brightest
    first; each further pass refits with the neighbours' latest fits held fixed (``gauss``) or
    subtracted (``lsq``, former default 2); ``neighbour_um``: fitted neighbours within this distance are
    included; ``max_shift_um``: a fit moving further than this falls back to the centroid (then
    to the start); ``max_group``: most detections fitted jointly; ``joint_scale``: detections
    are fitted jointly (``gauss``, ``spline``) when their windows, each grown by this factor,
    overlap (1: within 1.2 µm in z and 0.8 µm in y, x with the default window; 1.25: 1.5 and
    1 µm, better positions, a few detections fewer: README, Localisation).
    Camera (``gauss``): ``gain_adu_per_photon``, ``zero_adu`` (offset, counts) and
    ``read_noise_adu`` (counts rms); None: estimated from the image's background
    (:func:`kt_stardist.predict.mle.estimate_camera`).
    ``max_deviance``: a fit whose Poisson deviance per degree of freedom exceeds this (× the
    median of the volume's fits when that is above 1: background texture) is flagged
    ``fit_ok=False`` (with non-converged fits, fits at the ``max_shift_um`` bound and fits pulled
    nearer another detection than their own, or whose position uncertainty exceeds
    ``max_shift_um``). ``width_spread``: from the second pass on, each spot's Gaussian sigma has a
    prior: the image's PSF (the median sigma of its brighter good fits) with this relative sd
    (0: widths free); dim spots then take the image's PSF width instead of fitting noise.
    ``rescue_spread``: a failed fit is refitted with its group from the detections, every width
    held at the image's PSF (a prior of this relative sd) before it falls back to the centroid
    (0: no refit).
    ``psf_bias`` (``gauss``): after the fits, the image's PSF is measured as ``spline`` does and
    the offset a Gaussian fit makes on it (an aberrated widefield PSF's axial tail pulls the fit
    30-60 nm in z) is taken off every accepted fit, where it reaches ``psf_bias_min_nm`` (nm) on
    some axis and ``psf_bias_min_se`` × its standard error there (the spots' median position
    uncertainty over the square root of the spots the PSF came from: a PSF measured from dim
    spots is noisy), on those axes only (:meth:`kt_stardist.predict.refine._MleFitter.correct_bias`; the run record's
    ``psf_bias`` says per frame what was taken off, or why nothing).
    """

    method: str = "gauss"
    half_um: tuple = (0.6, 0.4, 0.4)
    psf_sigma_um: tuple = SPOT_SIGMA_UM
    sigma_bounds: tuple = (0.5, 2.0)
    passes: int = 4
    neighbour_um: float = 2.5
    max_shift_um: tuple = (0.45, 0.3, 0.3)
    max_group: int = 4
    joint_scale: float = 1.0
    gain_adu_per_photon: float | None = None
    zero_adu: float | None = None
    read_noise_adu: float | None = None
    max_deviance: float = 3.0
    width_spread: float = 0.15
    rescue_spread: float = 0.02
    psf_min_spots: int = 15
    psf_passes: int = 2
    psf_bias: bool = True
    psf_bias_min_nm: float = 10.0
    psf_bias_min_se: float = 4.5

    def __post_init__(self):
        if self.method not in REFINE_METHODS:
            raise InputError(f"refine method must be one of {', '.join(REFINE_METHODS)}, got {self.method!r}")
        g = self.gain_adu_per_photon
        if g is not None and not (isinstance(g, (int, float)) and g > 0):
            raise InputError(f"refine gain_adu_per_photon must be a positive number, got {g!r}")
        j = self.joint_scale
        if not (isinstance(j, (int, float)) and not isinstance(j, bool) and 0 < j <= 4):
            raise InputError(f"refine joint_scale must be a number in (0, 4], got {j!r}")
        for name in ("psf_min_spots", "psf_passes"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise InputError(f"refine {name} must be a whole number >= 1, got {v!r}")
        if not isinstance(self.psf_bias, bool):
            raise InputError(f"refine psf_bias must be true or false, got {self.psf_bias!r}")
        for name in ("psf_bias_min_nm", "psf_bias_min_se"):
            b = getattr(self, name)
            if not (isinstance(b, (int, float)) and not isinstance(b, bool) and b >= 0):
                raise InputError(f"refine {name} must be a number >= 0, got {b!r}")


@dataclass(frozen=True)
class SplitSettings:
    """The search for a close sister merged into one detection (one vs two Gaussians).

    A second spot is kept when the two-spot fit passes an F-test at ``alpha``, leaves at least
    ``min_gain`` less residual, the spots are ``sep_um`` (lo, hi) µm apart, the fainter has at
    least ``min_amp`` × the brighter's amplitude and the second lies further than
    ``min_other_um`` from every other detection; tried only where the one-spot fit leaves a
    residual peak ``min_residual`` noise sd high; window half-size ``half_um`` (z, y, x) µm.
    """

    enabled: bool = True
    alpha: float = 1e-6
    min_gain: float = 0.075
    sep_um: tuple = (0.25, 0.8)
    min_amp: float = 0.25
    min_other_um: float = 0.5
    half_um: tuple = (0.6, 0.5, 0.5)
    min_residual: float = 3.0


@dataclass(frozen=True)
class AdaptiveThreshold:
    """A probability threshold per volume, read from where the network's detections leave a gap.

    On images unlike its training data the network stays sure of what is background but grows
    less sure of the spots: their probabilities spread from the stored threshold down to ~0.4,
    with few or no detections between them and the background's. Windows ``± half_width`` wide,
    centred every ``step`` in ``range_prob`` (lo, hi), count the volume's detections (after NMS);
    when the emptiest holds at most ``max_ratio`` × the detections at or above the stored
    threshold (a clean gap), the threshold is the upper edge of the highest emptiest window
    (the few detections inside the gap stay out, the spots above it come in), never above the
    stored one; otherwise the stored threshold stays (a noisy image, where detections just
    below it are as often false as true). ``enabled=False``, or an explicit
    ``prob_thresh``: the stored / given threshold only.
    """

    enabled: bool = True
    range_prob: tuple = (0.3, 0.8)
    half_width: float = 0.1
    step: float = 0.025
    max_ratio: float = 0.1

    def __post_init__(self):
        lo, hi = (float(v) for v in self.range_prob)
        if not 0 < lo <= hi < 1:
            raise InputError(f"adaptive threshold range_prob must satisfy 0 < lo <= hi < 1, got {self.range_prob}")
        if not (0 < self.half_width < 0.5 and 0 < self.step <= 0.5 and self.max_ratio >= 0):
            raise InputError("adaptive threshold: half_width in (0, 0.5), step in (0, 0.5] and max_ratio >= 0, "
                             f"got {self.half_width}, {self.step}, {self.max_ratio}")
        object.__setattr__(self, "range_prob", (lo, hi))

    @property
    def floor(self) -> float:
        """The lowest probability the windows look at."""
        return max(self.range_prob[0] - self.half_width, 0.01)


@dataclass(frozen=True)
class ConfirmBand:
    """Detections below the probability threshold that the image itself confirms.

    On images unlike its training data the network grows unsure of real spots (their
    probabilities fall below the stored threshold) while staying sure of what is background;
    the noise blobs it half-believes on familiar images, in turn, are dim and poorly localised.
    So a network detection with ``floor_prob <= prob <`` the frame's threshold is kept when its
    maximum-likelihood fit (:mod:`kt_stardist.predict.refine`) passed every check (``fit_ok``)
    and places it to within ``max_sigma_nm`` laterally (the larger of ``sigma_y_nm`` and
    ``sigma_x_nm``, its Cramér–Rao uncertainty): a compact spot clearly above its background.
    On images whose spots are all dim (an EMCCD at low light, hard SNR) even the confident
    points are localised to 15-20 nm only, so the limit is at least ``rel_sigma`` × the median
    lateral uncertainty of the frame's well-fitted points above the threshold (0: off; only
    with at least ``rel_min_points`` of them), up to ``rel_max_sigma_nm`` (at very low SNR,
    where even confident points are 30 nm loose, noise blobs fit as well as that).
    ``reject_extended``: a fit whose lateral widths ran to their upper bound (the fit table's
    ``extended``, :data:`kt_stardist.predict.refine.EXTENDED_COLUMN`) is not confirmed: its
    light is spread wider than a diffraction-limited spot (the grain of a bright textured
    nucleus), however precisely its centre is placed.
    Chosen on simulated design volumes (Gaussian presets and the physical conditions, seeds no
    benchmark uses). ``enabled=False``, or an explicit ``prob_thresh``: the threshold only.
    """

    enabled: bool = True
    floor_prob: float = 0.4
    max_sigma_nm: float = 25.0
    rel_sigma: float = 2.0
    rel_max_sigma_nm: float = 40.0
    rel_min_points: int = 10
    reject_extended: bool = True

    def __post_init__(self):
        if (not 0 < float(self.floor_prob) < 1 or not float(self.max_sigma_nm) > 0 or not float(self.rel_sigma) >= 0
                or not float(self.rel_max_sigma_nm) >= float(self.max_sigma_nm) or not int(self.rel_min_points) >= 1):
            raise InputError(f"confirm band: floor_prob in (0, 1), max_sigma_nm > 0, rel_sigma >= 0, "
                             f"rel_max_sigma_nm >= max_sigma_nm and rel_min_points >= 1, got {self.floor_prob}, "
                             f"{self.max_sigma_nm}, {self.rel_sigma}, {self.rel_max_sigma_nm}, {self.rel_min_points}")
        if not isinstance(self.reject_extended, bool):
            raise InputError(f"confirm band: reject_extended must be true or false, got {self.reject_extended!r}")


@dataclass(frozen=True)
class DetectSettings:
    """Everything one detection run uses, with the model's own facts (voxel size, channel
    layout, normalisation) kept in the model.

    ``prob_thresh`` / ``nms_thresh``: None = the model's stored thresholds (the probability
    threshold then adapted to each volume by ``adaptive``, :class:`AdaptiveThreshold`, and
    detections below it kept where the image confirms them, ``confirm``, :class:`ConfirmBand`).
    ``block_size_px`` (z, y, x): largest block sent to the network at once (at the model's voxel
    size). ``max_in_memory_gb``: a frame larger than this as float32 (GB) is read and predicted
    block by block (None: never). ``repair_defects``: replace camera-defect columns (hot/dead
    pixels, hot in every z plane) before anything else. ``near_band``: width of the probability
    band just below the threshold that is watched for images unlike the validation data.
    ``min_separation_um``: after refinement, a point closer than this (µm) to a more probable
    one is the same spot found twice and is dropped (0: keep all); the sister search never
    places two spots closer than ``split.sep_um[0]``.
    """

    prob_thresh: float | None = None
    nms_thresh: float | None = None
    block_size_px: tuple = (64, 320, 320)
    max_in_memory_gb: float | None = 4.0
    repair_defects: bool = True
    near_band: float = 0.15
    min_separation_um: float = 0.25
    adaptive: AdaptiveThreshold = field(default_factory=AdaptiveThreshold)
    confirm: ConfirmBand = field(default_factory=ConfirmBand)
    screen: ScreenSettings = field(default_factory=ScreenSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)
    split: SplitSettings = field(default_factory=SplitSettings)

    def __post_init__(self):
        for name in ("prob_thresh", "nms_thresh"):
            v = getattr(self, name)
            if v is not None and not 0 < float(v) < 1:
                raise InputError(f"{name.replace('_', '-')} must be in (0, 1), got {v}")
        if self.max_in_memory_gb is not None and self.max_in_memory_gb < 0:
            raise InputError(f"max_in_memory_gb must be at least 0, got {self.max_in_memory_gb}")
        if not 0 <= float(self.min_separation_um) < 1:
            raise InputError(f"min_separation_um must be in [0, 1) µm, got {self.min_separation_um}")


@dataclass(frozen=True)
class PipelineSettings:
    """A whole ``predict`` run: ``detect`` settings, the spot ``channel`` of a multichannel image
    for 1-fluorophore models (None: 0), and what follows detection: sister ``pairs`` and
    ``tracks`` over time (:mod:`kt_stardist.pairs`, :mod:`kt_stardist.tracks`; None: on for
    time-lapses, off for single volumes, :meth:`tracks_for`). With tracks on a time-lapse,
    ``recover``: spots missed for 1-2 frames of a track are searched for in the image
    (:func:`kt_stardist.tracks.link_and_recover`, settings ``recovery``)."""

    detect: DetectSettings = field(default_factory=DetectSettings)
    channel: int | None = None
    pairs: bool = False
    tracks: bool | None = None
    recover: bool = True
    recovery: RecoverSettings = field(default_factory=lambda: RecoverSettings())

    def tracks_for(self, n_frames: int) -> bool:
        """Whether an image of ``n_frames`` frames is tracked: ``tracks`` when set, else
        whether it is a time-lapse (2 frames or more)."""
        return bool(self.tracks) if self.tracks is not None else int(n_frames) > 1


@dataclass(frozen=True)
class RecoverSettings:
    """Track-aided recovery (:mod:`kt_stardist.recover`): a track seen before and after a gap of
    at most ``max_gap_frames`` frames is searched for in each missing frame near its linearly
    interpolated position.

    One 3D Gaussian (start sigma ``psf_sigma_um`` (z, y, x) µm, within ``sigma_bounds`` × it) on a
    linear background is fitted in a window of half-size ``window_um`` (z, y, x) µm, its centre
    within ``search_um`` of the interpolated position; detections of that frame in the window are
    fitted with it (and in the background-only fit). The spot is kept when twice the Poisson
    log-likelihood ratio (spot + background vs background only, photon units) exceeds the upper
    ``false_alarm`` quantile of its distribution under background alone: the probability that a
    window without a spot passes. That distribution is a χ² whose degrees of freedom (at least 4:
    amplitude, z, y, x; more, since the best place in the search region is taken) are fitted to
    the statistic at ``calibration_windows`` background places of the movie, at least
    ``calibration_clear_um`` µm from every detection (0 windows: χ² of 4 degrees of freedom).
    Nothing is recovered within ``min_sep_um`` µm of a detection of the same frame.
    ``gain_adu_per_photon`` / ``zero_adu`` convert counts to photons (``(counts - zero) / gain``,
    read noise folded in); None: measured from the movie (photon transfer, :func:`kt_stardist.predict.mle.estimate_camera`).
    """

    max_gap_frames: int = 2
    false_alarm: float = 1e-3
    window_um: tuple = (0.75, 0.5, 0.5)
    search_um: tuple = (0.5, 0.35, 0.35)
    min_sep_um: float = 0.4
    psf_sigma_um: tuple = SPOT_SIGMA_UM
    sigma_bounds: tuple = (0.8, 1.25)
    calibration_windows: int = 60
    calibration_clear_um: float = 1.2
    gain_adu_per_photon: float | None = None
    zero_adu: float | None = None

    def __post_init__(self):
        if int(self.max_gap_frames) != self.max_gap_frames or self.max_gap_frames < 1:
            raise InputError(f"max_gap_frames must be a whole number >= 1, got {self.max_gap_frames!r}")
        if not 0 < float(self.false_alarm) < 1:
            raise InputError(f"false_alarm must be in (0, 1), got {self.false_alarm!r}")
        if self.gain_adu_per_photon is not None and not self.gain_adu_per_photon > 0:
            raise InputError(f"gain_adu_per_photon must be positive, got {self.gain_adu_per_photon!r}")

# --------------------------------------------------------------------------------------------
# JSON round-trip
# --------------------------------------------------------------------------------------------

def to_dict(settings) -> dict:
    """A settings object (nested dataclasses) as a JSON-ready dict (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(settings)


def _hints(cls):
    return typing.get_type_hints(cls)


def from_dict(cls, d: dict, name: str | None = None):
    """Build ``cls`` (a settings dataclass) from a dict of :func:`to_dict`; nested settings are
    built recursively, lists become tuples, unknown keys are refused."""
    name = name or cls.__name__
    if not isinstance(d, dict):
        raise InputError(f"{name}: expected a JSON object, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise InputError(f"{name}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    hints = _hints(cls)
    kw = {}
    for k, v in d.items():
        t = hints.get(k)
        if isinstance(t, type) and dataclasses.is_dataclass(t):
            kw[k] = from_dict(t, v, f"{name}.{k}")
        else:
            kw[k] = tuple(v) if isinstance(v, list) else v
    try:
        return cls(**kw)
    except TypeError as e:
        raise InputError(f"{name}: {e}") from None


def to_json(settings) -> str:
    return json.dumps(to_dict(settings), indent=2)


def from_json(cls, text: str):
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{cls.__name__}: not valid JSON ({e})") from None
    return from_dict(cls, d)


def read_file(cls, path, within=(), drop=(), name="--settings"):
    """Settings ``cls`` from a JSON file: the object itself, or nested in it under the keys
    ``within`` (each followed when present: a ``run.json`` holds ``settings.detect``); keys in
    ``drop`` are ignored (e.g. ``job`` in ``train_settings.json``). One-line errors."""
    from pathlib import Path

    p = Path(path)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{name} {p}: cannot read as JSON ({e})") from None
    for key in within:
        d = d.get(key, d) if isinstance(d, dict) else d
    if isinstance(d, dict):
        d = {k: v for k, v in d.items() if k not in drop}
    return from_dict(cls, d, f"{name} {p}")


def stored_threshold_only(settings: "DetectSettings | None" = None) -> "DetectSettings":
    """``settings`` (None: the defaults) with the model's stored probability threshold as it is:
    no per-frame adaptation (``adaptive``), no confirm band (``confirm``); what
    ``predict --stored-threshold`` runs."""
    return replace(settings or DetectSettings(), adaptive__enabled=False, confirm__enabled=False)


def replace(settings, **changes):
    """A copy of ``settings`` with fields replaced; ``section__field=value`` reaches nested
    settings (``replace(s, refine__method="none", split__enabled=False)``)."""
    nested, flat = {}, {}
    for k, v in changes.items():
        if "__" in k:
            sec, sub = k.split("__", 1)
            nested.setdefault(sec, {})[sub] = v
        else:
            flat[k] = v
    for sec, sub in nested.items():
        flat[sec] = replace(getattr(settings, sec), **sub)
    return dataclasses.replace(settings, **flat)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ThresholdSearch:
    """How :func:`kt_stardist.train.choose_thresholds` searches (prob, nms) by point F1 through
    the prediction path: a coarse sweep of probabilities ``prob_range`` (lo, hi) in steps of
    ``prob_step``, then ``fine_step`` steps within one coarse step of the best; every NMS
    threshold of ``nms_threshs``; at most ``max_candidates`` network detections per volume at the
    sweep's floor (a half-trained model leaves tens of thousands: the sweep then starts higher).
    ``detect``: the detection settings the search runs with (thresholds ignored). The coarse
    sweep runs from the highest probability down and stops once F1 has stayed more than
    ``stop_drop`` below its best for ``stop_patience`` steps (None: the whole range; see
    :func:`kt_stardist.train.thresholds.descending_sweep`)."""

    prob_range: tuple = (0.3, 0.95)
    prob_step: float = 0.05
    fine_step: float = 0.01
    nms_threshs: tuple = (0.3, 0.5)
    max_candidates: int = 3000
    stop_drop: float | None = 0.1
    stop_patience: int = 2
    detect: DetectSettings = field(default_factory=DetectSettings)


@dataclass(frozen=True)
class SimulationMix:
    """Simulated training data: ``n`` volumes of ``shape_px`` (z, y, x) cycling ``kinds``
    (SNR presets ``easy``, ``mid``, ``hard``, ``very_hard``; ``random``: every parameter drawn
    wide; ``physical``: physical optics and cameras, see :mod:`kt_stardist.simulate`), and
    ``n_val`` validation volumes (None: ``max(2, n // 5)``) of ``val_shape_px`` (None: the same
    shape) with seeds of their own."""

    n: int = 0
    shape_px: tuple = (32, 128, 128)
    kinds: tuple = ("easy", "mid")
    n_val: int | None = None
    val_shape_px: tuple | None = None


@dataclass(frozen=True)
class TrainSettings:
    """The training loop. ``patch_size_px`` (z, y, x) None: the config's, capped at the smallest
    training image (said in the log); ``batch_size`` None: the config's; ``lr``: 1e-3 learns
    (1e-4 and lower collapsed to background in trials); ``freeze_epochs``: backbone fixed for the
    first epochs; ``warmup_epochs``: epochs on the easy simulations (and the user's frames) only,
    None: a quarter of the epochs (at least 2) when the mix has harder kinds; ``patience``: early
    stopping (0: off); ``augment_intensity``: gamma/scale/offset/noise besides y-x flips and
    rotations; ``foreground_prob``: share of patches drawn around spots (None: the config's)."""

    epochs: int = 20
    steps_per_epoch: int = 40
    lr: float = 1e-3
    batch_size: int | None = None
    patch_size_px: tuple | None = None
    freeze_epochs: int = 0
    warmup_epochs: int | None = None
    patience: int = 10
    seed: int = 0
    augment_intensity: bool = False
    foreground_prob: float | None = None


@dataclass(frozen=True)
class FinetuneSettings:
    """Everything :func:`kt_stardist.train.finetune` uses besides its input files.

    ``config``: configuration name or JSON path; ``n_rays`` / ``grid`` / ``channels`` (1, 2, 3, 6)
    override it; ``config_overrides``: further Config3D fields (e.g. ``unet_n_filter_base``);
    ``val_fraction``: share of the user's frames held out; ``train``, ``simulation``,
    ``thresholds``: see those classes. Saved as ``train_settings.json`` in the model folder."""

    config: str = "kt-default"
    n_rays: int | None = None
    grid: tuple | None = None
    channels: int | None = None
    config_overrides: dict = field(default_factory=dict)
    val_fraction: float = 0.2
    train: TrainSettings = field(default_factory=TrainSettings)
    simulation: SimulationMix = field(default_factory=SimulationMix)
    thresholds: ThresholdSearch = field(default_factory=ThresholdSearch)


@dataclass(frozen=True)
class PretrainSettings:
    """:func:`kt_stardist.train.pretrain`: ``config`` and the training loop (``data`` is an
    argument: the example nuclei or folders of images and labels)."""

    config: str = "nuclei-pretrain"
    config_overrides: dict = field(default_factory=dict)
    train: TrainSettings = field(default_factory=lambda: TrainSettings(epochs=4, steps_per_epoch=25, patience=0))
