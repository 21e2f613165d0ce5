"""Channel layouts: one definition, frames t-1, t, t+1 stacked time-major with repeated ends."""

import numpy as np
import pytest

from kt_stardist.channels import LAYOUTS, frame_indices, layout, layout_for, stack_frames
from kt_stardist.errors import InputError


def test_layouts_by_name_and_channel_count():
    for name, lay in LAYOUTS.items():
        assert layout(name) is lay and layout_for(lay.n_channel_in) is lay
        assert len(lay.order) == lay.n_channel_in
        assert lay.order[lay.spot_channel] in ("egfp", "egfp@t")
    with pytest.raises(InputError, match="1, 2, 3, 6"):
        layout_for(4)
    with pytest.raises(InputError, match="unknown layout"):
        layout("gfp")


def test_temporal_stack_mirrors_edges_time_major():
    a = np.arange(4)[:, None, None, None, None] * np.ones((4, 2, 3, 3, 2))
    lay = layout("egfp+mcherry@t-1,t,t+1")
    x0 = stack_frames(a, 0, lay)
    assert x0.shape == (2, 3, 3, 6)
    # the ends see their one neighbour on both sides (its own noise), never themselves again
    assert [x0[0, 0, 0, c] for c in range(6)] == [1, 1, 0, 0, 1, 1]
    assert [stack_frames(a, 3, lay)[0, 0, 0, c] for c in range(6)] == [2, 2, 3, 3, 2, 2]
    assert frame_indices(0, 2, lay) == [1, 0, 1] and frame_indices(1, 2, lay) == [0, 1, 0]
    assert stack_frames(a, 2, layout("egfp+mcherry")).shape == (2, 3, 3, 2)
    one = stack_frames(a[..., :1] + np.arange(2)[None, None, None, None, :1], 1, layout("egfp@t-1,t,t+1"))
    assert list(one[0, 0, 0]) == [0, 1, 2]
    assert frame_indices(0, 1, layout("egfp@t-1,t,t+1")) == [0, 0, 0]


def test_channel_pick_and_lazy_stack():
    import dask.array as da

    a = np.random.default_rng(0).normal(size=(3, 2, 4, 4, 2)).astype(np.float32)
    x = stack_frames(a, 1, layout("egfp"), channel=1)
    assert np.array_equal(x[..., 0], a[1, ..., 1])
    with pytest.raises(InputError, match="--channel 2 out of range"):
        stack_frames(a, 1, layout("egfp"), channel=2)
    with pytest.raises(InputError, match="takes 2 channels"):
        stack_frames(a[..., :1], 1, layout("egfp+mcherry"))
    lazy = stack_frames(da.from_array(a, chunks=(1, 2, 4, 4, 2)), 2, layout("egfp@t-1,t,t+1"))
    assert hasattr(lazy, "compute")  # nothing read
    assert np.array_equal(lazy.compute(), stack_frames(a, 2, layout("egfp@t-1,t,t+1")))
