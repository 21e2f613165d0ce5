"""Length units found in image metadata, as factors to µm (ImageJ, OME, OME-Zarr/UDUNITS-2 names)."""

from __future__ import annotations

__all__ = ["UNIT_UM", "unit_factor"]

#: unit name (lower case) → µm per unit
UNIT_UM = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "\\u00b5m": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "m": 1e6, "meter": 1e6, "metre": 1e6, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6,
}


def unit_factor(unit) -> float | None:
    """µm per ``unit`` (a length unit name such as ``"micrometer"``, ``"nm"``, ``"µm"``), or None
    when ``unit`` is None or not a known length unit."""
    if unit is None:
        return None
    u = str(unit).strip().lower().replace("\u00b5", "µ")
    return UNIT_UM.get(u)
