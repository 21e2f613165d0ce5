"""Network input channel layouts, defined once: what each input channel of a model holds.

A model takes ``n_fluor`` fluorophore channels per frame (EGFP, optionally mCherry), optionally
with temporal context: frames t-1, t, t+1 stacked along the channel axis, **time-major**
(``[c0(t-1), c1(t-1), c0(t), c1(t), c0(t+1), c1(t+1)]``), the first and last frame mirrored at
the ends of a movie. Every caller (prediction, training data, simulation, evaluation) builds a
model input with :func:`stack_frames` and finds the spot channel with :attr:`ChannelLayout.spot_channel`.

Axis order z, y, x, channel last (ZYXC; TZYXC for movies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kt_stardist.errors import InputError

__all__ = ["ChannelLayout", "LAYOUTS", "layout", "layout_for", "frame_indices", "stack_frames"]


@dataclass(frozen=True)
class ChannelLayout:
    """One input layout: ``name``, fluorophore channels per frame ``n_fluor``, ``temporal``
    (frames t-1, t, t+1), a description and the order of the input channels."""

    name: str
    n_fluor: int
    temporal: bool
    description: str

    @property
    def n_channel_in(self) -> int:
        """Network input channels."""
        return self.n_fluor * (3 if self.temporal else 1)

    @property
    def offsets(self) -> tuple:
        """Frame offsets stacked as channels: (-1, 0, 1) or (0,)."""
        return (-1, 0, 1) if self.temporal else (0,)

    @property
    def spot_channel(self) -> int:
        """Input channel holding the spot (EGFP) signal of the centre frame."""
        return self.n_fluor if self.temporal else 0

    @property
    def order(self) -> tuple:
        """Names of the input channels, in order."""
        fluor = ("egfp", "mcherry")[: self.n_fluor]
        if not self.temporal:
            return fluor
        return tuple(f"{c}@{t}" for t in ("t-1", "t", "t+1") for c in fluor)


LAYOUTS = {
    "egfp": ChannelLayout("egfp", 1, False, "kinetochore marker (EGFP) only"),
    "egfp+mcherry": ChannelLayout("egfp+mcherry", 2, False,
                                  "kinetochore marker (EGFP) and a second marker (mCherry)"),
    "egfp@t-1,t,t+1": ChannelLayout("egfp@t-1,t,t+1", 1, True, "EGFP of the previous, current and next frame"),
    "egfp+mcherry@t-1,t,t+1": ChannelLayout(
        "egfp+mcherry@t-1,t,t+1", 2, True,
        "EGFP and mCherry of the previous, current and next frame (time-major)"),
}


def layout(name: str) -> ChannelLayout:
    """The layout called ``name`` (a key of :data:`LAYOUTS`)."""
    if name not in LAYOUTS:
        raise InputError(f"channels: unknown layout {name!r}; expected one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def layout_for(n_channel_in) -> ChannelLayout:
    """The layout of a network with ``n_channel_in`` input channels (1, 2, 3 or 6)."""
    for lay in LAYOUTS.values():
        try:
            if lay.n_channel_in == int(n_channel_in):
                return lay
        except (TypeError, ValueError):
            break
    raise InputError(f"channels (n_channel_in): expected one of 1, 2, 3, 6 (3 and 6: t-1, t, t+1), got {n_channel_in!r}")


def frame_indices(t: int, n_frames: int, lay: ChannelLayout) -> list:
    """Frames stacked for frame ``t`` of a movie of ``n_frames``: ``[t]`` or ``[t-1, t, t+1]``,
    mirrored at the ends (frame 0 sees frame 1 on both sides, the last frame the one before it):
    a neighbour with noise of its own. A repeated frame carries frame t's own noise, which a
    temporal model reads as spots that persist (on a whole-frame movie, 19 false spots in the
    first frame against 4 in the next); a one-frame image can only repeat itself."""
    t, n = int(t), int(n_frames)
    if not 0 <= t < n:
        raise InputError(f"frame {t} outside 0..{n - 1}")
    if n == 1:
        return [0] * len(lay.offsets)
    return [t + d if 0 <= t + d < n else t - d for d in lay.offsets]


def stack_frames(frames, t: int, lay: ChannelLayout, channel: int | None = None):
    """The model input for frame ``t`` of ``frames`` (T, Z, Y, X, C), ``(Z, Y, X, C_in)``.

    ``frames`` may be a numpy array, a dask array (the result stays lazy: a movie larger than
    memory is not read) or an array-like indexable by frame (e.g. :class:`kt_stardist.io.Image`'s
    data). 1-fluorophore layouts take image channel ``channel`` (default 0) of a multichannel
    image; 2-fluorophore layouts need exactly 2 image channels.
    """
    shape = tuple(frames.shape)
    if len(shape) == 4:
        frames = frames[None]
        shape = (1,) + shape
    if len(shape) != 5:
        raise InputError(f"expected a (T, Z, Y, X, C) movie or (Z, Y, X, C) volume, got shape {shape}")
    C = shape[-1]
    if lay.n_fluor == 1:
        c = 0 if channel is None else int(channel)
        if not 0 <= c < C:
            raise InputError(f"--channel {c} out of range: the image has {C} channel(s)")
        pick = slice(c, c + 1)
    else:
        if C != lay.n_fluor:
            raise InputError(f"layout {lay.name} takes {lay.n_fluor} channels per frame, the image has {C}")
        pick = slice(None)
    parts = [frames[i][..., pick] for i in frame_indices(t, shape[0], lay)]
    if len(parts) == 1:
        return parts[0]
    if any(hasattr(p, "dask") for p in parts):
        import dask.array as da

        return da.concatenate(parts, axis=-1)
    return np.concatenate([np.asarray(p) for p in parts], axis=-1)
