"""Physical image formation: optics (psfmodels PSFs), cameras and the named conditions."""

import json

import numpy as np
import pandas as pd
import psfmodels
import pytest
from scipy.spatial import cKDTree

from kt_stardist.camera import Camera, apply_camera, camera_maps
from kt_stardist.errors import InputError
from kt_stardist.optics import Optics, fwhm_um, psf_kernel, render_points, spot_kernel
from kt_stardist.channels import layout
from kt_stardist.physical import (CONDITIONS, PANEL_SEED_MIN, physical_training_pairs, random_condition,
                                  simulate_condition, training_shape)
from kt_stardist.train.data import PHYSICAL_KINDS, simulated_pairs

OIL = dict(NA=1.4, wvl=0.51, ns=1.515, ni=1.515, ni0=1.515, model="vectorial")


def _render_one(optics, vox, shape, diameter_um=0.0):
    k = spot_kernel(optics, vox, diameter_um)
    want = (np.asarray(shape) - 1) / 2 + np.array([0.2, -0.1, 0.3])
    img, truth, peak = render_points(shape, [want], 1000.0, k)
    return img, truth[0], want, k


def _profiles(img):
    z, y, x = np.unravel_index(np.argmax(img), img.shape)
    return img[:, y, x], img[z, :, x], img[z, y, :], (z, y, x)


# --------------------------------------------------------------------------- optics

def test_point_spot_fwhm_matches_psfmodels():
    vox = (0.1, 0.04, 0.04)
    img, truth, want, _ = _render_one(Optics(sample_index=1.515), vox, (61, 81, 81))
    ref = psfmodels.make_psf(61, 81, dxy=vox[1], dz=vox[0], **OIL)
    for mine, theirs, step in zip(_profiles(img)[:3], _profiles(ref)[:3], vox):
        a, b = fwhm_um(mine, step), fwhm_um(theirs, step)
        assert abs(a - b) / b < 0.10, (a, b)
    # total photons are kept; a 0.2 µm ball is wider than a point
    assert img.sum() == pytest.approx(1000.0, rel=1e-4)
    ball = spot_kernel(Optics(sample_index=1.515), (0.3, 0.13, 0.13), 0.2)
    point = spot_kernel(Optics(sample_index=1.515), (0.3, 0.13, 0.13), 0.0)
    assert ball.fwhm_um[1] > point.fwhm_um[1] * 1.02
    assert ball.peak_fraction < point.peak_fraction


def _asymmetry(profile):
    p = np.asarray(profile, float)
    i = int(np.argmax(p))
    k = min(i, len(p) - 1 - i)
    return np.abs(p[i + 1:i + 1 + k] - p[i - k:i][::-1]).sum() / p.sum()


def _centroid(img, core=0.0):
    """Intensity-weighted centre (px) of the voxels at or above ``core`` × the maximum."""
    w = np.where(img >= core * img.max(), img, 0.0)
    w = w / w.sum()
    return np.array([(w.sum(axis=tuple(j for j in range(3) if j != a)) * np.arange(img.shape[a])).sum()
                     for a in range(3)])


def test_index_mismatch_is_asymmetric_and_truth_is_centre_of_the_core():
    vox = np.array([0.2, 0.1, 0.1])
    shape = (45, 41, 41)
    matched, t_m, _, _ = _render_one(Optics(sample_index=1.515, depth_um=6.0), vox, shape, 0.15)
    deep, t_d, want, k = _render_one(Optics(depth_um=6.0), vox, shape, 0.15)  # oil into water, 6 µm
    prof_m = matched.sum(axis=(1, 2))
    prof_d = deep.sum(axis=(1, 2))
    assert _asymmetry(prof_m) < 0.05
    assert _asymmetry(prof_d) > 0.2
    assert k.fwhm_um[0] > 1.5 * spot_kernel(Optics(sample_index=1.515), vox, 0.15).fwhm_um[0]
    # symmetric PSF: truth = centre of mass of the whole spot; aberrated: of its core (>= half max),
    # which the whole spot's centre of mass misses by its long axial tail
    assert np.all(np.abs((_centroid(matched) - t_m) * vox) < 0.02)
    assert np.all(np.abs((_centroid(deep, 0.5) - t_d) * vox) < 0.03)
    assert abs(_centroid(deep)[0] - t_d[0]) * vox[0] > 0.1
    # the snapped truth is within half a fine cell of the wanted position
    assert np.all(np.abs(t_d - want) <= 0.5 / np.asarray(k.oversample) + 0.05)
    # the visible spot (its brightest voxel) is where the truth says, aberrated or not
    assert abs(_profiles(deep)[3][0] - t_d[0]) * vox[0] < 0.1
    assert abs(_profiles(matched)[3][0] - t_m[0]) * vox[0] < 0.1


def test_psf_kernel_cached_and_normalised():
    a = psf_kernel(Optics(), (0.3, 0.13, 0.13))
    assert a is psf_kernel(Optics(), (0.3, 0.13, 0.13))
    assert a.sum() == pytest.approx(1.0)
    assert not a.flags.writeable
    assert a.shape[0] % 2 == 1 and a.shape[1] == a.shape[2]


# --------------------------------------------------------------------------- cameras

def test_hot_and_dead_columns_in_every_plane():
    cam = Camera(hot_pixels=200, dead_pixels=30, hot_level_e=(200.0, 2000.0), seed=3)
    ph = np.full((12, 64, 64), 20.0, np.float32)
    counts, d = apply_camera(ph, cam, 0)
    hy, hx = d["hot_yx"].T
    dy, dx = d["dead_yx"].T
    assert len(hy) >= 5 and len(dy) >= 1
    assert counts.dtype == np.uint16
    assert np.all(counts[:, hy, hx] > 350)          # background ~132 ± 10 ADU
    assert np.all(counts[:, dy, dx] == 100)          # the offset, no signal
    others = np.ones((64, 64), bool)
    others[hy, hx] = others[dy, dx] = False
    assert np.median(counts[:, others]) < 150
    # fixed per sensor: same positions with other noise, others with another camera seed
    _, d2 = apply_camera(ph, cam, 1)
    assert np.array_equal(d["hot_yx"], d2["hot_yx"]) and np.array_equal(d["dead_yx"], d2["dead_yx"])
    _, d3 = apply_camera(ph, Camera(hot_pixels=200, dead_pixels=30, seed=4), 0)
    assert not np.array_equal(d["hot_yx"], d3["hot_yx"])


def test_clipped_8bit_mostly_zero_and_saturates():
    cam = Camera(bit_depth=8, clip_offset=True, gain=0.25, offset_sd=0.3)
    counts, _ = apply_camera(np.full((10, 64, 64), 1.0), cam, 0)
    assert counts.dtype == np.uint8
    assert np.mean(counts == 0) > 0.6
    bright, _ = apply_camera(np.full((2, 8, 8), 1e5), cam, 0)
    assert np.all(bright == 255)
    assert apply_camera(np.zeros((2, 8, 8)), Camera(bit_depth=12), 0)[0].dtype == np.uint16


def test_emccd_excess_noise_factor():
    ph = np.full((32, 64, 64), 50.0)
    em = Camera(kind="emccd", qe=0.9, em_gain=300.0, gain=0.05, read_noise=30.0)
    e = (apply_camera(ph, em, 0)[0].astype(float) - em.offset) / (em.gain * em.em_gain)
    assert e.mean() == pytest.approx(45.0, rel=0.03)
    assert 1.8 < e.var() / e.mean() < 2.2
    ideal = Camera(kind="ideal", qe=0.9, gain=4.0)
    e = (apply_camera(ph, ideal, 0)[0].astype(float) - ideal.offset) / ideal.gain
    assert 0.9 < e.var() / e.mean() < 1.1


def test_scmos_maps_are_the_same_in_every_plane():
    cam = Camera(seed=5, offset_sd=3.0, read_noise=1.5, read_noise_spread=0.5)
    m = camera_maps(cam, (32, 32))
    assert m["offset"].shape == m["gain"].shape == m["read_noise"].shape == (32, 32)
    assert np.array_equal(m["offset"], camera_maps(cam, (32, 32))["offset"])
    assert not np.array_equal(m["offset"], camera_maps(Camera(seed=6), (32, 32))["offset"])
    assert np.all(m["read_noise"] > 0) and np.mean(m["read_noise"] > 3.0) > 0.02  # log-normal tail
    counts = apply_camera(np.zeros((300, 32, 32)), cam, 0)[0].astype(float)
    mean, sd = counts.mean(axis=0), counts.std(axis=0)
    assert np.corrcoef(mean.ravel(), m["offset"].ravel())[0, 1] > 0.95
    assert np.corrcoef(sd.ravel(), (m["read_noise"] * m["gain"]).ravel())[0, 1] > 0.9
    # the pattern does not change through z: first and second halves agree
    assert np.corrcoef(counts[:150].mean(0).ravel(), counts[150:].mean(0).ravel())[0, 1] > 0.9


# --------------------------------------------------------------------------- conditions

def test_simulate_condition_reproducible_per_seed():
    a = simulate_condition("reference", PANEL_SEED_MIN, shape_px=(16, 96, 96))
    b = simulate_condition("reference", PANEL_SEED_MIN, shape_px=(16, 96, 96))
    c = simulate_condition("reference", PANEL_SEED_MIN + 1, shape_px=(16, 96, 96))
    assert np.array_equal(a[0], b[0]) and a[1].equals(b[1])
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("name", sorted(CONDITIONS))
def test_every_condition_runs(name):
    cond = CONDITIONS[name]
    shape = cond.shape_px if name == "clipped_8bit" else (cond.shape_px[0], cond.shape_px[1] // 2,
                                                          cond.shape_px[2] // 2)
    image, points, vox, info = simulate_condition(name, PANEL_SEED_MIN + 7, shape_px=shape)
    assert image.shape == shape and vox == tuple(cond.voxel_size_um)
    assert image.dtype == (np.float32 if cond.sample.deconvolved else cond.camera.dtype)
    assert len(points) > 5
    p = points[["z", "y", "x"]].to_numpy()
    assert np.all(p >= -0.5) and np.all(p < np.asarray(shape) - 0.5)
    assert info["condition"] == name and info["optics"] == cond.optics.to_dict()
    assert info["camera"]["kind"] == cond.camera.kind
    assert info["hot_yx"].shape[1] == 2 and info["dead_yx"].shape[1] == 2
    json.dumps({k: v for k, v in info.items() if k not in ("hot_yx", "dead_yx")})
    if name == "hot_pixels":
        assert len(info["hot_yx"]) >= 20 and len(info["dead_yx"]) >= 2
    if name == "clipped_8bit":
        assert np.mean(image == 0) > 0.6
    if name == "dense_clusters":
        d = cKDTree(p * vox).query(p * vox, 2)[0][:, 1]
        assert 0.35 <= np.median(d) <= 0.7
    if name == "deconvolved":
        assert image.min() == 0 and np.mean(image == 0) > 0.3


def test_training_mix():
    assert training_shape((32, 96, 96), (0.3, 0.13, 0.13)) == (32, 96, 96)
    s = training_shape((32, 96, 96), (0.15, 0.065, 0.065))
    assert np.prod(s) <= 2 * 32 * 96 * 96 and s[1] > 96
    assert training_shape((32, 96, 96), (0.5, 0.2, 0.2)) == (19, 62, 62)
    a = next(physical_training_pairs((12, 48, 48), seed=3))
    b = next(physical_training_pairs((12, 48, 48), seed=3))
    image, points, vox = a
    assert image.dtype == np.float32 and image.ndim == 3
    assert np.array_equal(image, b[0]) and vox == b[2]
    assert {"z", "y", "x"} <= set(points.columns)


def test_crowded_mix_draws_more_clusters_and_nuclei_from_the_same_draws():
    def draw(n=300, **p):  # one generator per example, as physical_training_pairs
        return [random_condition(np.random.default_rng([11, i]), (32, 96, 96), **p) for i in range(n)]

    plain, crowded = draw(), draw(**PHYSICAL_KINDS["physical_crowded"])
    share = lambda cs, f: np.mean([f(c.sample) for c in cs])  # noqa: E731
    nucleus, dense = (lambda s: s.nucleus_photons > 0), (lambda s: s.sister_distance_um == (0.35, 0.7))
    assert 0.12 < share(plain, nucleus) < 0.28 and 0.12 < share(plain, dense) < 0.28
    assert 0.4 < share(crowded, nucleus) < 0.6 and 0.4 < share(crowded, dense) < 0.6
    # the defaults are the plain mix's (the shipped stages' volumes unchanged); optics are drawn
    # before the sample, so each example keeps its microscope
    assert draw(50) == draw(50, p_dense=0.2, p_nucleus=0.2)
    assert [c.optics for c in plain] == [c.optics for c in crowded]
    with pytest.raises(InputError, match="physical_crowded"):  # no mCherry in physical volumes
        simulated_pairs(1, (12, 48, 48), 0, layout("egfp+mcherry"), ("mid", "physical_crowded"))


def test_physical_movie_moves_the_spots_with_fresh_noise_on_the_same_sensor():
    shape = (16, 64, 64)
    one, p1, vox, info = simulate_condition("hot_pixels", PANEL_SEED_MIN + 7, shape)
    movie, pts, vox_m, info_m = simulate_condition("hot_pixels", PANEL_SEED_MIN + 7, shape, n_frames=3)
    assert movie.shape == (3,) + shape and movie.dtype == one.dtype and vox_m == vox
    assert np.array_equal(movie[0], one)  # frame 0 is the volume of the same seed
    first = pts[pts["t"] == 0].drop(columns=["t", "track_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(first, p1)
    # the spots move (plate oscillation, drift, walk: ~0.05-0.5 µm per frame), tracks stay
    a, b = (pts[pts["t"] == t].set_index("track_id")[["z", "y", "x"]] for t in (0, 1))
    step_um = np.linalg.norm(((b - a.reindex(b.index)).dropna() * np.asarray(vox)).to_numpy(), axis=1)
    assert len(step_um) >= 0.8 * len(a) and 0.05 < np.median(step_um) < 0.6
    # every frame its own noise, the same hot columns
    assert not np.array_equal(movie[1], movie[2])
    hy, hx = np.asarray(info_m["hot_yx"]).T
    assert len(hy) and np.array_equal(info_m["hot_yx"], info["hot_yx"])
    assert (movie[:, :, hy, hx].min(axis=(0, 1)) > 1.3 * np.median(movie)).all()  # hot in every plane and frame
    with pytest.raises(InputError, match="n_frames"):
        simulate_condition("hot_pixels", PANEL_SEED_MIN, shape, n_frames=0)


def test_temporal_training_pairs_stack_three_frames_of_one_cell():
    (img, pts, vs, kind), = simulated_pairs(1, (12, 48, 48), 0, layout("egfp@t-1,t,t+1"), ("physical",))
    assert img.ndim == 4 and img.shape[-1] == 3 and kind == "physical" and len(pts)
    plain = next(physical_training_pairs((12, 48, 48), seed=[0, 0]))
    movie = next(physical_training_pairs((12, 48, 48), seed=[0, 0], temporal=True))
    assert np.array_equal(movie[0][..., 0], plain[0])  # t-1 is the single volume of the same draw
    assert not np.array_equal(movie[0][..., 1], movie[0][..., 0])


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call", [
    lambda: simulate_condition("no_such_condition", PANEL_SEED_MIN),
    lambda: simulate_condition("reference", 5),
    lambda: Optics(na=1.45, immersion="water"),
    lambda: Optics(na=1.6, immersion="oil"),
    lambda: psf_kernel(Optics(), (0.0, 0.13, 0.13)),
    lambda: spot_kernel(Optics(), (0.3, -0.13, -0.13)),
    lambda: Camera(bit_depth=10),
    lambda: Camera(kind="ccd"),
])
def test_bad_input_one_line(call):
    with pytest.raises(InputError) as e:
        call()
    assert "\n" not in str(e.value) and str(e.value)


def test_recipes_round_trip_json():
    for cond in CONDITIONS.values():
        d = json.loads(json.dumps(cond.to_dict()))
        assert Optics.from_dict(d["optics"]) == cond.optics
        assert Camera.from_dict(d["camera"]) == cond.camera


def test_cli_simulate_condition_writes_camera_dtype_voxel_size_and_truth(tmp_path):
    from kt_stardist.cli import main
    from kt_stardist.io import read_image, read_points

    out = tmp_path / "sim"
    assert main(["simulate", str(out), "--condition", "fine_pixels", "--n", "1", "--seed", "3",
                 "--shape", "16", "96", "96"]) == 0
    im = read_image(out / "sim_000.tif")
    assert im.data.shape == (1, 16, 96, 96, 1) and im.data.dtype == np.uint16
    assert im.voxel_size_um == pytest.approx(CONDITIONS["fine_pixels"].voxel_size_um)
    pts = read_points(out / "sim_000.csv")
    assert len(pts) and pts[["z", "y", "x"]].to_numpy().min() >= -0.5
    assert main(["simulate", str(tmp_path / "bad"), "--condition", "no_such"]) == 2
