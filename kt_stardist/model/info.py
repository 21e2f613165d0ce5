"""What a model is for, as a typed record: :class:`ModelInfo` (``model.json``) and
:class:`Thresholds` (``thresholds.json``, StarDist's own file).

``model.json`` says what StarDist does not know: the voxel size the network was trained at (µm,
z, y, x), the sphere-label radius (µm), the channel layout (:mod:`kt_stardist.channels`), the
normalisation percentiles prediction must use, the receptive field, how the model was trained
(``training``) and how its thresholds were validated (``validation``). Older flat ``model.json``
files (kt-stardist 0.1.0) are read too; unknown keys go to ``training``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from kt_stardist.channels import ChannelLayout, layout, layout_for
from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.normalize import PMAX, PMIN

__all__ = ["Normalization", "Thresholds", "ModelInfo", "read_info", "read_thresholds", "write_json"]


@dataclass(frozen=True)
class Normalization:
    """Percentiles (0–100) of :func:`kt_stardist.normalize.normalize`, as trained."""

    pmin: float = PMIN
    pmax: float = PMAX


@dataclass(frozen=True)
class Thresholds:
    """Probability and NMS thresholds (StarDist's ``thresholds.json``)."""

    prob: float = 0.5
    nms: float = 0.4


_FIELDS_V01 = {"kt_stardist_version", "voxel_size_um", "label_radius_um", "channels", "normalize",
               "config_name", "receptive_field_px", "name", "n_channel_in", "temporal"}


@dataclass
class ModelInfo:
    """``model.json``: the facts prediction needs, and the model's history.

    ``voxel_size_um`` (z, y, x) µm the network works at (images at other voxel sizes are
    rescaled to it); ``label_radius_um``; ``channels`` (a :data:`kt_stardist.channels.LAYOUTS`
    name); ``normalize``; ``receptive_field_px`` ``[[before, after]] * 3`` or None (measured on
    first use); ``config_name``; ``training`` (data, seed, steps, seconds, transfer, ...);
    ``validation`` (how thresholds were chosen: the data, F1, the share of candidates just below
    the threshold that prediction compares images with).
    """

    name: str = "model"
    voxel_size_um: tuple = VOXEL_SIZE_UM
    label_radius_um: float = LABEL_RADIUS_UM
    channels: str = "egfp"
    normalize: Normalization = field(default_factory=Normalization)
    receptive_field_px: tuple | None = None
    config_name: str | None = None
    kt_stardist_version: str | None = None
    training: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)

    def __post_init__(self):
        layout(self.channels)  # checked
        self.voxel_size_um = tuple(float(v) for v in self.voxel_size_um)
        if isinstance(self.normalize, dict):
            self.normalize = Normalization(**{k: float(v) for k, v in self.normalize.items()
                                              if k in ("pmin", "pmax")})
        if self.receptive_field_px is not None:
            rf = self.receptive_field_px
            ok = len(rf) == 3 and all(len(p) == 2 for p in rf)
            self.receptive_field_px = tuple(tuple(int(a) for a in p) for p in rf) if ok else None

    @property
    def layout(self) -> ChannelLayout:
        return layout(self.channels)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["voxel_size_um"] = list(self.voxel_size_um)
        if self.receptive_field_px is not None:
            d["receptive_field_px"] = [list(p) for p in self.receptive_field_px]
        return d

    @classmethod
    def from_dict(cls, d: dict, n_channel_in: int | None = None, name: str | None = None) -> "ModelInfo":
        """From ``model.json`` content (this layout, or the flat one of 0.1.0); ``n_channel_in``
        (from config.json) decides the layout when the file does not name one."""
        d = dict(d)
        kw = {k: d.pop(k) for k in list(d) if k in {f.name for f in dataclasses.fields(cls)}}
        training = dict(kw.pop("training", {}) or {})
        for k in ("n_channel_in", "temporal"):
            d.pop(k, None)
        training.update(d)  # 0.1.0: training_data, seed, steps, job, transfer, ... at the top level
        if "channels" not in kw:
            kw["channels"] = layout_for(n_channel_in or 1).name
        if name is not None:
            kw["name"] = name
        norm = kw.get("normalize")
        if isinstance(norm, dict):
            kw["normalize"] = Normalization(float(norm.get("pmin", PMIN)), float(norm.get("pmax", PMAX)))
        try:
            return cls(training=training, **kw)
        except (TypeError, ValueError) as e:
            raise InputError(f"model.json: {e}") from None


def write_json(path, obj) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    from kt_stardist.io import atomic_write

    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    if dataclasses.is_dataclass(o):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: expected a JSON object")
    return d


def read_info(folder) -> ModelInfo:
    """The :class:`ModelInfo` of a model folder (defaults for a plain StarDist folder)."""
    folder = Path(folder)
    n_in = 1
    if (folder / "config.json").is_file():
        n_in = int(_read_json(folder / "config.json").get("n_channel_in", 1))
    d = _read_json(folder / "model.json") if (folder / "model.json").is_file() else {}
    info = ModelInfo.from_dict(d, n_channel_in=n_in, name=folder.name)
    if info.layout.n_channel_in != n_in:
        raise InputError(f"{folder}: model.json says channels {info.channels!r} "
                         f"({info.layout.n_channel_in} input channels) but config.json has n_channel_in={n_in}")
    return info


def read_thresholds(folder) -> Thresholds:
    """``thresholds.json`` of a folder (StarDist's defaults 0.5 / 0.4 when absent)."""
    p = Path(folder) / "thresholds.json"
    if not p.is_file():
        return Thresholds()
    d = _read_json(p)
    try:
        th = Thresholds(float(d["prob"]), float(d["nms"]))
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{p}: expected {{\"prob\": P, \"nms\": T}}") from None
    if not (0 < th.prob < 1 and 0 < th.nms < 1):
        raise InputError(f"{p}: thresholds must lie in (0, 1), got prob {th.prob}, nms {th.nms}")
    return th
