"""Named StarDist configurations for kinetochores, each a JSON file beside this module.

A :class:`KtConfig` holds the StarDist ``Config3D`` keyword arguments (``stardist``) together
with what StarDist does not know: the voxel size (µm, z, y, x), the radius of the sphere label
drawn around each point (µm), the channel layout and why the configuration exists
(``description``). ``KtConfig.to_stardist()`` builds the ``stardist.models.Config3D``; rays are
``Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)``. StarDist is imported lazily, there only.

    >>> cfg = load_config("kt-default")
    >>> cfg.to_stardist(n_rays=64).n_rays
    64

Shipped names: ``list_configs()``. Axis order is always z, y, x.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path

from kt_stardist.channels import LAYOUTS, ChannelLayout, layout_for
from kt_stardist.defaults import LABEL_RADIUS_UM, VOXEL_SIZE_UM
from kt_stardist.errors import InputError

#: channel layouts, defined once in :mod:`kt_stardist.channels`
CHANNEL_LAYOUTS = LAYOUTS

_HERE = Path(__file__).resolve().parent

#: keys of ``KtConfig.to_stardist`` overrides that are not Config3D arguments
_OWN_KEYS = ("channels",)


def anisotropy_from_voxel_size(voxel_size_um) -> tuple:
    """Anisotropy (z, y, x) for StarDist: voxel size divided by its smallest entry, 2 decimals.

    (0.3, 0.13, 0.13) µm -> (2.31, 1.0, 1.0).
    """
    v = [float(s) for s in voxel_size_um]
    if len(v) != 3 or min(v) <= 0:
        raise InputError(f"voxel_size_um: expected 3 positive sizes (z, y, x) in µm, got {voxel_size_um}")
    m = min(v)
    return tuple(round(s / m, 2) for s in v)


def _check_layout(name: str) -> ChannelLayout:
    from kt_stardist.channels import layout

    return layout(name)


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass
class KtConfig:
    """A named StarDist configuration for kinetochores.

    name, description: what it is and why (the description says where its numbers come from).
    stardist: keyword arguments of ``stardist.models.Config3D`` plus ``n_rays``; ``anisotropy``
        None means derived from ``voxel_size_um``.
    voxel_size_um: (z, y, x) µm of the training data. label_radius_um: sphere label radius, µm.
    channels: a key of :data:`CHANNEL_LAYOUTS`. temporal: input holds neighbouring frames.
    """

    name: str
    description: str
    stardist: dict = field(default_factory=dict)
    voxel_size_um: tuple = VOXEL_SIZE_UM
    label_radius_um: float = LABEL_RADIUS_UM
    channels: str = "egfp"
    temporal: bool = False

    def __post_init__(self):
        self.voxel_size_um = tuple(float(v) for v in self.voxel_size_um)
        self.stardist = dict(self.stardist)
        layout = _check_layout(self.channels)
        if "@" in self.channels and not self.temporal:
            raise InputError(f"config {self.name!r}: channels {self.channels!r} need temporal=true")
        n_in = self.stardist.get("n_channel_in", layout.n_channel_in)
        if n_in != layout.n_channel_in:
            raise InputError(f"config {self.name!r}: n_channel_in={n_in} but channels "
                             f"{self.channels!r} have {layout.n_channel_in}")
        self.stardist["n_channel_in"] = layout.n_channel_in
        self.stardist.setdefault("n_rays", 32)
        self.stardist.setdefault("grid", (1, 1, 1))
        self.stardist.setdefault("anisotropy", None)

    # -- derived values --------------------------------------------------------------------
    @property
    def n_rays(self) -> int:
        return int(self.stardist["n_rays"])

    @property
    def grid(self) -> tuple:
        return tuple(self.stardist["grid"])

    @property
    def anisotropy(self) -> tuple:
        """The anisotropy StarDist uses (z, y, x): given, or derived from ``voxel_size_um``."""
        a = self.stardist.get("anisotropy")
        return anisotropy_from_voxel_size(self.voxel_size_um) if a is None else tuple(float(v) for v in a)

    def with_channels(self, layout: str) -> "KtConfig":
        """A copy with another channel layout (n_channel_in and temporal follow it)."""
        n = _check_layout(layout).n_channel_in
        sd = dict(self.stardist, n_channel_in=n)
        return replace(self, stardist=sd, channels=layout, temporal="@" in layout)

    def stardist_kwargs(self, **overrides) -> dict:
        """Config3D keyword arguments (with ``n_rays``), after ``overrides``; lists become tuples."""
        cfg = self
        if "channels" in overrides:
            cfg = cfg.with_channels(overrides.pop("channels"))
        if "n_channel_in" in overrides:
            n = int(overrides.pop("n_channel_in"))
            cfg = cfg.with_channels(layout_for(n).name)
        kw = dict(cfg.stardist)
        kw.update(overrides)
        if kw.get("anisotropy") is None:
            kw["anisotropy"] = anisotropy_from_voxel_size(cfg.voxel_size_um)
        return _tuples(kw)

    def to_stardist(self, **overrides):
        """Build ``stardist.models.Config3D`` (rays: ``Rays_GoldenSpiral(n_rays, anisotropy)``).

        ``overrides`` replace entries of ``stardist`` (e.g. ``n_rays=256, grid=(1,1,1)``);
        ``channels="egfp+mcherry"`` or ``n_channel_in=2`` switch the channel layout.
        """
        from kt_stardist.model.stardist_backend import config3d, rays_golden

        kw = self.stardist_kwargs(**overrides)
        n_rays = int(kw.pop("n_rays"))
        anisotropy = kw.pop("anisotropy")
        rays = rays_golden(n_rays, anisotropy)
        try:
            return config3d(axes="ZYX", rays=rays, anisotropy=anisotropy, **kw)
        except AttributeError as e:  # unknown parameter
            raise InputError(f"config {self.name!r}: {e}") from None

    def patch_divisible_by(self, **overrides) -> tuple:
        """What ``train_patch_size`` must be divisible by (z, y, x): unet_pool**depth * grid."""
        kw = self.stardist_kwargs(**overrides)
        pool = kw.get("unet_pool", (2, 2, 2))
        depth = kw.get("unet_n_depth", 2)
        return tuple(int(p) ** int(depth) * int(g) for p, g in zip(pool, kw["grid"]))

    # -- JSON ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["voxel_size_um"] = list(self.voxel_size_um)
        d["stardist"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.stardist.items()}
        return d

    def to_json(self, path=None) -> str:
        """JSON text; written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            from kt_stardist.io import atomic_write

            with atomic_write(path, "w") as f:
                f.write(text)
        return text

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "KtConfig":
        known = {"name", "description", "stardist", "voxel_size_um", "label_radius_um", "channels", "temporal"}
        unknown = set(d) - known
        if unknown or "name" not in d:
            raise InputError(f"{source}: expected keys {sorted(known)}, got unknown {sorted(unknown)}"
                             if unknown else f"{source}: missing 'name'")
        d = dict(d)
        d.setdefault("description", "")
        return cls(**d)

    @classmethod
    def from_json(cls, text_or_path) -> "KtConfig":
        """From JSON text or a path to a JSON file."""
        source = "config JSON"
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            p = Path(text)
            if not p.is_file():
                raise InputError(f"{p}: config file not found")
            source, text = str(p), p.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{source}: not valid JSON ({e.msg}, line {e.lineno})") from None
        return cls.from_dict(d, source)


def list_configs() -> list:
    """Names of the shipped configurations (``kt_stardist/configs/*.json``), sorted."""
    root = resources.files(__name__)
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".json"))


def load_config(name_or_path) -> KtConfig:
    """A shipped configuration by name (see :func:`list_configs`) or a JSON file by path."""
    if isinstance(name_or_path, KtConfig):
        return name_or_path
    s = str(name_or_path)
    if s in list_configs():
        text = resources.files(__name__).joinpath(s + ".json").read_text()
        return KtConfig.from_json(text)
    if s.endswith(".json") or Path(s).is_file():
        return KtConfig.from_json(Path(s))
    raise InputError(f"config {s!r}: not a shipped config ({', '.join(list_configs())}) nor a JSON file")


__all__ = ["KtConfig", "CHANNEL_LAYOUTS", "ChannelLayout", "anisotropy_from_voxel_size",
           "list_configs", "load_config"]
