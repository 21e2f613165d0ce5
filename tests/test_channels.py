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


def test_embed_input_kernel_places_each_channel_at_its_signal():
    from kt_stardist.channels import layout
    from kt_stardist.model import embed_input_kernel

    rng = np.random.default_rng(0)
    k2, b = rng.normal(size=(3, 3, 3, 2, 4)), rng.normal(size=4)
    fresh6 = [rng.normal(size=(3, 3, 3, 6, 4)), np.zeros(4)]
    kernel, bias = embed_input_kernel([k2, b], fresh6, layout("egfp+mcherry"), layout("egfp+mcherry@t-1,t,t+1"))
    # time-major: egfp@t-1, mcherry@t-1, egfp@t, mcherry@t, egfp@t+1, mcherry@t+1
    assert np.array_equal(kernel[..., 2, :], k2[..., 0, :]) and np.array_equal(kernel[..., 3, :], k2[..., 1, :])
    assert not kernel[..., [0, 1, 4, 5], :].any() and np.array_equal(bias, b)
    # 1 channel -> 2 channels: EGFP kept, mCherry from zero
    kernel, _ = embed_input_kernel([k2[..., :1, :], b], [fresh6[0][..., :2, :], b], layout("egfp"),
                                   layout("egfp+mcherry"))
    assert np.array_equal(kernel[..., 0, :], k2[..., 0, :]) and not kernel[..., 1, :].any()
    # no place for mCherry in an EGFP-only model; other kernel sizes or output channels: not embedded
    assert embed_input_kernel([k2, b], [fresh6[0][..., :3, :], b], layout("egfp+mcherry"),
                              layout("egfp@t-1,t,t+1")) is None
    assert embed_input_kernel([k2[..., :1, :], b], [rng.normal(size=(1, 3, 3, 3, 4)), b], layout("egfp"),
                              layout("egfp@t-1,t,t+1")) is None
    assert embed_input_kernel([k2[..., :1, :], b], [rng.normal(size=(3, 3, 3, 3, 8)), np.zeros(8)],
                              layout("egfp"), layout("egfp@t-1,t,t+1")) is None
