import json

import numpy as np
import pandas as pd
import pytest

from kt_stardist import simulate as S
from kt_stardist.defaults import VOXEL_SIZE_UM
from kt_stardist.errors import InputError

VOX = np.asarray(VOXEL_SIZE_UM)


def _no_background(**kw):
    return S.SimParams(dark_photons=0.0, cell_photons=0.0, n_blobs=0, autofluor_photons=0.0,
                       illumination_variation=0.0, **kw)


def test_render_spots_integrates_to_total_and_peak():
    sig = np.array([1.3, 1.1, 1.1])
    vol = S.render_spots((21, 31, 31), [[10, 15, 15]], 100.0, sig)
    assert vol.max() == pytest.approx(100.0, rel=1e-4)  # centred on a voxel: peak = `peak`
    total = 100.0 / S._peak_fraction(sig)
    assert vol.sum() == pytest.approx(total, rel=1e-3)


def test_noise_free_centroids_within_50nm():
    # isolated spots on a 3x3x3 grid (3.6 µm apart in z, 4.2 µm in y, x), random sub-voxel
    # offsets, per-spot PSF width and brightness varied
    rng = np.random.default_rng(5)
    grid = np.stack(np.meshgrid([12, 24, 36], [32, 64, 96], [32, 64, 96], indexing="ij"), -1)
    xyz = grid.reshape(-1, 3) + rng.uniform(-0.5, 0.5, (27, 3))
    user = pd.DataFrame(xyz, columns=["z", "y", "x"])
    params = _no_background(sigma_spread=0.2, brightness_spread=0.6)
    img, pts = S.simulate_volume((48, 128, 128), seed=3, noise_free=True, params=params, layout=user)
    img = (img[..., 0] - params.offset) / params.gain  # photons
    r = np.array([5, 12, 12])  # window half-size, px (> 5 sigma)
    errs = []
    for q in pts[["z", "y", "x"]].to_numpy():
        c = np.round(q).astype(int)
        win = img[c[0] - r[0]:c[0] + r[0] + 1, c[1] - r[1]:c[1] + r[1] + 1, c[2] - r[2]:c[2] + r[2] + 1]
        grids = np.meshgrid(*[np.arange(a - k, a + k + 1) for a, k in zip(c, r)], indexing="ij")
        cen = np.array([(g * win).sum() / win.sum() for g in grids])
        errs.append(np.linalg.norm((cen - q) * VOX))
    assert len(errs) == 27
    assert max(errs) < 0.05
    assert np.median(errs) < 0.01


@pytest.mark.parametrize("snr", list(S.SNR_PRESETS))
def test_measured_snr_in_documented_range(snr):
    lo, hi = S.SNR_PRESETS[snr]["snr_range"]
    for seed in (11, 12):
        img, pts = S.simulate_volume((48, 128, 128), seed=seed, snr=snr)
        value = S.measure_snr(img, pts)
        assert lo <= value <= hi, (snr, seed, value)


def test_snr_presets_are_ordered():
    values = [S.measure_snr(*S.simulate_volume((48, 128, 128), seed=4, snr=s)) for s in S.SNR_PRESETS]
    assert values == sorted(values, reverse=True)


def test_same_seed_same_bytes():
    a, pa = S.simulate_volume((16, 48, 48), seed=7, channels=2, randomize=True)
    b, pb = S.simulate_volume((16, 48, 48), seed=7, channels=2, randomize=True)
    c, _ = S.simulate_volume((16, 48, 48), seed=8, channels=2, randomize=True)
    assert a.dtype == np.float32 and a.shape == (16, 48, 48, 2)
    assert a.tobytes() == b.tobytes()
    pd.testing.assert_frame_equal(pa, pb)
    assert a.tobytes() != c.tobytes()
    x1, p1 = next(S.training_pairs((16, 48, 48), seed=1))
    x2, p2 = next(S.training_pairs((16, 48, 48), seed=1))
    assert x1.tobytes() == x2.tobytes() and p1.equals(p2)


def test_timelapse_shapes_and_stable_tracks():
    img, pts = S.simulate_timelapse(4, (32, 96, 96), seed=2, channels=2, snr="easy")
    assert img.shape == (4, 32, 96, 96, 2) and img.dtype == np.float32
    assert list(pts.columns[:4]) == ["t", "z", "y", "x"]
    assert sorted(pts["t"].unique()) == [0, 1, 2, 3]
    for _, g in pts.groupby("t"):
        assert g["track_id"].is_unique
    # a track moves little between frames; different tracks in one frame are far more apart
    wide = pts.pivot(index="track_id", columns="t", values=["z", "y", "x"]).dropna()
    steps = []
    for t in range(3):
        a = wide.xs(t, axis=1, level=1).to_numpy() * VOX
        b = wide.xs(t + 1, axis=1, level=1).to_numpy() * VOX
        steps.append(np.linalg.norm(b - a, axis=1))
    steps = np.concatenate(steps)
    assert 0 < np.median(steps) < 0.5
    # pair ids follow their tracks
    assert (pts.groupby("track_id")["pair_id"].nunique() == 1).all()
    # the frames differ (noise, motion)
    assert not np.array_equal(img[0], img[1])


def test_training_pairs_temporal_channels():
    gen = S.training_pairs((16, 48, 48), seed=0, temporal=True, channels=2)
    x, p = next(gen)
    assert x.shape == (16, 48, 48, 6) and x.dtype == np.float32
    assert "t" not in p.columns and {"z", "y", "x", "pair_id"} <= set(p.columns)
    assert len(list(S.training_pairs((8, 32, 32), seed=0, n=3))) == 3
    # time-major, as every model input: [egfp t-1, mch t-1, egfp t, mch t, egfp t+1, mch t+1]
    child = np.random.SeedSequence(0).spawn(1)[0]
    movie, _ = S.simulate_timelapse(3, (16, 48, 48), seed=child, snr="mid", channels=2, randomize=True)
    for k, (t, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]):
        np.testing.assert_array_equal(x[..., k], movie[t, ..., c])


def test_real_layout_pairs_and_missing_sister():
    img, pts = S.simulate_volume((64, 160, 160), seed=1, layout="real", snr="easy")
    assert len(pts) == 79
    sizes = pts[pts.pair_id >= 0].groupby("pair_id").size()
    assert (sizes == 2).sum() >= 38
    img, pts = S.simulate_volume((48, 128, 128), seed=1, missing_sister=True,
                                 params=S.SimParams(plate_diameter_um=6, off_plate_fraction=0))
    sizes = pts.groupby("pair_id").size()
    assert (sizes == 1).sum() == 1 and len(pts) == 79


def test_user_points_layout_is_rendered_where_asked():
    user = pd.DataFrame({"z": [10.2, 20.0], "y": [30.4, 60.0], "x": [40.0, 70.7]})
    img, pts = S.simulate_volume((32, 96, 96), seed=0, layout=user, snr="easy", noise_free=True)
    np.testing.assert_allclose(pts[["z", "y", "x"]].to_numpy(), user.to_numpy())
    assert (pts["pair_id"] == -1).all()
    v = img[..., 0]
    assert v[10, 30, 40] > v[10, 30, 60] + 100


def test_full_frame_geometry_small_memory():
    # spots near the centre as in real frames (z 20-52, y/x 400-600 px)
    sc = S._Scene(np.random.default_rng(0), (61, 1000, 1000), S.SimParams(), None,
                  centre_px=S._default_centre_px((61, 1000, 1000)))
    p = sc.pos0 / VOX
    assert p[:, 0].min() > 15 and p[:, 0].max() < 57
    assert p[:, 1:].min() > 400 and p[:, 1:].max() < 600


def test_params_json_round_trip_and_bad_input():
    p = S.random_params(np.random.default_rng(0))
    q = S.SimParams.from_json(p.to_json())
    assert q == p
    assert json.loads(p.to_json())["voxel_size_um"] == list(p.voxel_size_um)
    with pytest.raises(InputError):
        S.simulate_volume((0, 10, 10))
    with pytest.raises(InputError):
        S.simulate_volume(snr="loud")
    with pytest.raises(InputError):
        S.SimParams.from_dict({"nope": 1})


def test_cli_writes_files_same_seed_same_bytes(tmp_path):
    from kt_stardist import io
    from kt_stardist.cli import main

    args = ["simulate", "--n", "2", "--shape", "8", "32", "32", "--seed", "5", "--channels", "2",
            "--snr", "easy"]
    assert main(args[:1] + [str(tmp_path / "a")] + args[1:]) == 0
    assert main(args[:1] + [str(tmp_path / "b")] + args[1:]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["sim_000.csv", "sim_000.tif", "sim_001.csv", "sim_001.tif", "simulation.json"]
    for n in names:
        assert (tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes(), n
    img = io.read_image(tmp_path / "a" / "sim_000.tif")
    assert img.data.shape == (1, 8, 32, 32, 2)
    np.testing.assert_allclose(img.voxel_size_um, VOXEL_SIZE_UM, rtol=1e-4)
    pts = pd.read_csv(tmp_path / "a" / "sim_000.csv")
    assert {"t", "z", "y", "x", "pair_id", "sister", "track_id"} <= set(pts.columns)
    rec = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert rec["seed"] == 5 and rec["volumes"][1]["seed"] == [5, 1]
    run = json.loads((tmp_path / "a.run.json").read_text())  # the run record beside the folder
    assert run["arguments"]["seed"] == 5 and run["command"].startswith("kt-stardist") and run["seconds"] >= 0
    # the record reproduces the volume
    p = S.SimParams.from_dict(rec["volumes"][0]["params"])
    again, again_pts = S.simulate_volume((8, 32, 32), seed=[5, 0], channels=2, params=p)
    np.testing.assert_array_equal(np.clip(np.rint(again), 0, 65535).astype(np.uint16), img.data[0])
    assert len(again_pts) == len(pts)


def test_cli_timelapse_and_points_layout(tmp_path):
    from kt_stardist.cli import main

    pd.DataFrame({"z": [4.0, 5.0], "y": [10.0, 20.0], "x": [12.0, 22.0]}).to_csv(tmp_path / "p.csv", index=False)
    out = tmp_path / "tl"
    rc = main(["simulate", str(out), "--n", "1", "--shape", "8", "32", "32", "--timelapse", "3",
               "--layout", str(tmp_path / "p.csv"), "--seed", "1", "--dtype", "float32"])
    assert rc == 0
    pts = pd.read_csv(out / "sim_000.csv")
    assert sorted(pts["t"].unique()) == [0, 1, 2] and sorted(pts["track_id"].unique()) == [0, 1]
    assert main(["simulate", str(out), "--layout", "nope.csv"]) == 2
