import json

import pytest

from kt_stardist.configs import (CHANNEL_LAYOUTS, KtConfig, anisotropy_from_voxel_size,
                                 list_configs, load_config)
from kt_stardist.errors import InputError

EXPECTED = {"example-nuclei-48", "nuclei-pretrain", "kinetochore-g16-1024", "kt-default", "kt-256", "kt-temporal", "kt-2ch"}


def test_shipped_names():
    assert EXPECTED <= set(list_configs())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_config_builds_valid_config3d(name):
    cfg = load_config(name)
    assert cfg.name == name and len(cfg.description) > 40
    sd = cfg.to_stardist()
    ok, bad = sd.is_valid(return_invalid=True)
    assert ok, bad
    assert sd.n_rays == cfg.n_rays and tuple(sd.grid) == cfg.grid
    assert sd.n_channel_in == CHANNEL_LAYOUTS[cfg.channels].n_channel_in
    assert tuple(sd.anisotropy) == cfg.anisotropy
    assert tuple(sd.rays_json["kwargs"]["anisotropy"]) == cfg.anisotropy
    # the patch must fit the U-Net and grid, or StarDist refuses to train
    assert all(p % d == 0 for p, d in zip(sd.train_patch_size, cfg.patch_divisible_by()))


def test_named_settings():
    d = load_config("kt-default")
    assert (d.n_rays, d.grid, d.label_radius_um) == (32, (1, 2, 2), 0.5)
    assert tuple(d.stardist["train_patch_size"]) == (24, 64, 64)
    assert load_config("kt-256").n_rays == 256
    h = load_config("kinetochore-g16-1024")
    assert (h.n_rays, h.grid, h.label_radius_um) == (1024, (1, 16, 16), 0.3)
    assert load_config("example-nuclei-48").anisotropy == (2.0, 1.0, 1.0)
    t = load_config("kt-temporal")
    assert t.temporal and t.to_stardist().n_channel_in == 3


def test_anisotropy_derived_from_voxel_size():
    assert anisotropy_from_voxel_size((0.3, 0.13, 0.13)) == (2.31, 1.0, 1.0)
    cfg = load_config("kt-default")
    assert cfg.stardist["anisotropy"] is None and cfg.anisotropy == (2.31, 1.0, 1.0)
    iso = KtConfig("iso", "test", dict(n_rays=32), voxel_size_um=(0.2, 0.1, 0.1))
    assert iso.anisotropy == (2.0, 1.0, 1.0)
    assert tuple(iso.to_stardist().anisotropy) == (2.0, 1.0, 1.0)


def test_json_round_trip(tmp_path):
    for name in EXPECTED:
        cfg = load_config(name)
        back = KtConfig.from_json(cfg.to_json())
        assert back == cfg
        assert json.loads(back.to_json()) == json.loads(cfg.to_json())
    p = tmp_path / "mine.json"
    p.write_text(load_config("kt-default").with_channels("egfp+mcherry").to_json())
    assert load_config(p).stardist["n_channel_in"] == 2
    assert load_config(str(p)).channels == "egfp+mcherry"


@pytest.mark.parametrize("layout,n", [("egfp", 1), ("egfp+mcherry", 2), ("egfp@t-1,t,t+1", 3),
                                      ("egfp+mcherry@t-1,t,t+1", 6)])
def test_channel_layouts(layout, n):
    assert CHANNEL_LAYOUTS[layout].n_channel_in == n == len(CHANNEL_LAYOUTS[layout].order)
    cfg = load_config("kt-default").with_channels(layout)
    assert cfg.temporal == ("@" in layout)
    assert cfg.to_stardist().n_channel_in == n
    assert load_config("kt-default").to_stardist(channels=layout).n_channel_in == n
    assert load_config("kt-default").to_stardist(n_channel_in=n).n_channel_in == n


def test_overrides():
    sd = load_config("kt-default").to_stardist(n_rays=256, grid=(1, 1, 1), train_patch_size=[16, 32, 32])
    assert sd.n_rays == 256 and tuple(sd.grid) == (1, 1, 1) and tuple(sd.train_patch_size) == (16, 32, 32)
    with pytest.raises(InputError, match="not_a_param"):
        load_config("kt-default").to_stardist(not_a_param=1)


def test_unknown_name_lists_available():
    with pytest.raises(InputError, match="kt-default") as e:
        load_config("kt-nope")
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="unknown layout"):
        load_config("kt-default").with_channels("dapi")
    with pytest.raises(InputError, match="n_channel_in"):
        load_config("kt-default").to_stardist(n_channel_in=4)


def test_kinetochore_configs_share_the_pretraining_backbone():
    """Weights transfer layer by layer only between equal U-Nets: pretrain and every kt-* config agree."""
    keys = ("unet_n_depth", "unet_n_filter_base", "net_conv_after_unet", "grid")
    ref = load_config("kt-default").to_stardist()
    for name in ("nuclei-pretrain", "kt-256", "kt-temporal", "kt-2ch"):
        sd = load_config(name).to_stardist()
        assert all(getattr(sd, k) == getattr(ref, k) for k in keys), name
