"""The PSF measured from the image (kt_stardist.predict.psf) and the ``spline`` refinement.

Spots are rendered through a skewed analytic PSF (two voxel-integrated Gaussians, the fainter
and wider one 1.5 px further in z: an aberrated PSF's tail) on a lattice far enough apart that
every spot is isolated. A spot's true position is the centre of mass of the PSF's core (the
convention of kt_stardist.psf and of the simulators), computed here independently.
"""

import warnings

import numpy as np
import pytest

from kt_stardist.predict import psf as P
from kt_stardist.predict.mle import spot_photons
from kt_stardist.predict.refine import refine_and_split
from kt_stardist.settings import RefineSettings, SplitSettings

VOXEL_UM = (0.3, 0.13, 0.13)
SHAPE = (28, 100, 100)
# (weight, z offset px, sigma z, y, x px) of the two Gaussians of the skewed PSF
PARTS = ((0.7, 0.0, (1.1, 1.0, 1.0)), (0.3, 1.5, (1.8, 1.3, 1.3)))
PHOTONS, BACKGROUND = 3000.0, 10.0
CAMERA = dict(gain_adu_per_photon=1.0, zero_adu=0.0)


def skewed(offsets_px):
    """The skewed PSF: fraction of a spot's photons per voxel at ``offsets_px`` (N, 3) px from
    its emitter."""
    out = 0.0
    for w, dz, s in PARTS:
        out = out + spot_photons(offsets_px, np.array([dz, 0.0, 0.0]), w, np.array(s))
    return out


def _core_offset():
    """The skewed PSF's core centre of mass (≥ half its maximum) relative to its emitter, px,
    on a fine grid."""
    axes = [np.arange(-3, 5.01, 0.04), np.arange(-1.5, 1.51, 0.1), np.arange(-1.5, 1.51, 0.1)]
    u = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    v = skewed(u)
    core = v >= 0.5 * v.max()
    return (u[core] * v[core, None]).sum(0) / v[core].sum()


CORE = _core_offset()


def render(seed, n_z=2, step=(12, 12, 12), noise=False):
    """(volume photons ZYX, true positions (N, 3) px): spots on a lattice, random sub-voxel
    phases; Poisson noise with ``noise`` (a Generator seed for it)."""
    rng = np.random.default_rng(seed)
    zs = 8 + step[0] * np.arange(n_z)
    ys = np.arange(10, SHAPE[1] - 9, step[1])
    xs = np.arange(10, SHAPE[2] - 9, step[2])
    lattice = np.stack(np.meshgrid(zs, ys, xs, indexing="ij"), -1).reshape(-1, 3).astype(float)
    emitters = lattice + rng.uniform(-0.5, 0.5, lattice.shape)
    vol = np.full(SHAPE, BACKGROUND)
    r = np.array([6, 7, 7])
    for e in emitters:
        lo = np.round(e).astype(int) - r
        sl = tuple(slice(a, a + 2 * b + 1) for a, b in zip(lo, r))
        vox = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in sl], indexing="ij"), -1).reshape(-1, 3)
        vol[sl] += PHOTONS * skewed(vox - e).reshape([2 * b + 1 for b in r])
    if noise is not False:
        vol = np.random.default_rng(noise).poisson(vol).astype(np.float64)
    return vol, emitters + CORE


def fit(vol, starts, method, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return refine_and_split(vol, starts, VOXEL_UM, RefineSettings(method=method, **CAMERA, **kw),
                                SplitSettings(enabled=False), return_fit=True)


def measured(seed, n_z=2, min_spots=P.MIN_SPOTS):
    """(PSF, note, spots) built from a noise-free render at the true positions and photons."""
    vol, truth = render(seed, n_z=n_z)
    n = len(truth)
    psf, note = P.build_psf(vol, truth, np.full(n, PHOTONS), np.full(n, BACKGROUND), np.ones(n, bool), VOXEL_UM,
                            (4, 5, 5), min_spots=min_spots)
    return psf, note, n


def test_spline_psf_reproduces_the_skewed_psf():
    psf, note, n = measured(0)
    assert psf is not None and psf.n_spots == n, note
    u = np.random.default_rng(1).uniform(-2.5, 2.5, (500, 3)) * np.array([1.2, 1, 1])  # inside the taper
    want = skewed(u + CORE)  # the PSF about the core's centre of mass
    got, _ = psf.evaluate(u)
    assert np.max(np.abs(got - want)) < 0.05 * want.max()
    assert abs(psf.values.sum() / np.prod(psf.oversample) - 1.0) < 1e-9
    # the gradient is the spline's derivative (central differences of its values) to the box's edge,
    # up to the interpolation of the derivative between the grid's nodes
    u = np.random.default_rng(2).uniform(-1, 1, (500, 3)) * psf.half_px
    _, grad = psf.evaluate(u)
    h = 1e-4
    num = np.stack([(psf.evaluate(u + h * e, False)[0] - psf.evaluate(u - h * e, False)[0]) / (2 * h)
                    for e in np.eye(3)], -1)
    assert np.max(np.abs(grad - num)) < 0.04 * np.abs(num).max()
    assert np.median(np.abs(grad - num)) < 2e-3 * np.abs(num).max()


def test_spline_fit_unbiased_where_the_gaussian_is_not():
    vol, truth = render(2, n_z=1)
    starts = np.round(truth / [1, 2, 2]) * [1, 2, 2]
    pts_g, _, _ = fit(vol, starts, "gauss", psf_bias=False)
    pts_s, _, fit_s = fit(vol, starts, "spline")
    err_g = (pts_g - truth) * np.asarray(VOXEL_UM) * 1000
    err_s = (pts_s - truth) * np.asarray(VOXEL_UM) * 1000
    assert fit_s.attrs["psf"] is not None and fit_s["fit_ok"].all()
    assert abs(np.median(err_g[:, 0])) > 12  # the Gaussian is pulled towards the PSF's tail
    assert np.all(np.abs(np.median(err_s, axis=0)) < 4)
    assert np.sqrt(np.mean(err_s ** 2, axis=0)).max() < 6
    assert np.all(np.isfinite(fit_s[["sigma_z_nm", "sigma_y_nm", "sigma_x_nm", "photons", "background"]]))


@pytest.mark.slow
def test_spline_sigma_matches_the_scatter():
    _, truth = render(3)
    starts = np.round(truth / [1, 2, 2]) * [1, 2, 2]
    ratios = []
    for draw in range(6):
        vol, _ = render(3, noise=100 + draw)
        pts, _, f = fit(vol, starts, "spline")
        ok = f["fit_ok"].to_numpy()
        sig = f[["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]].to_numpy()
        ratios.append(((pts - truth) * np.asarray(VOXEL_UM) * 1000)[ok] / sig[ok])
    std = np.std(np.concatenate(ratios), axis=0)
    assert np.all((std > 0.8) & (std < 1.25)), std


def test_too_few_spots_keeps_the_gaussian_and_says_so():
    vol, truth = render(4, n_z=1, step=(12, 40, 40))  # 2 × 2 spots
    starts = np.round(truth)
    with pytest.warns(UserWarning, match="fewer than 15"):
        pts_s, _, fit_s = refine_and_split(vol, starts, VOXEL_UM, RefineSettings(method="spline", **CAMERA),
                                           SplitSettings(enabled=False), return_fit=True)
    pts_g, _, fit_g = fit(vol, starts, "gauss")
    assert fit_s.attrs["psf"] is None and "Gaussian fits kept" in fit_s.attrs["psf_note"]
    np.testing.assert_allclose(pts_s, pts_g)
    np.testing.assert_allclose(fit_s["sigma_z_nm"], fit_g["sigma_z_nm"])


def test_psf_round_trip(tmp_path):
    psf, _, n = measured(5, n_z=1, min_spots=10)
    psf.save(tmp_path / "run.psf.npz")
    back = P.load_psf(tmp_path / "run.psf.npz")
    u = np.random.default_rng(0).uniform(-2, 2, (50, 3))
    np.testing.assert_allclose(back.evaluate(u)[0], psf.evaluate(u)[0])
    assert back.n_spots == n and back.voxel_size_um == VOXEL_UM
    assert list(tmp_path.iterdir()) == [tmp_path / "run.psf.npz"]  # no temp file left


def test_run_file_holds_each_frames_psf_or_why_not(tmp_path):
    psf, note, n = measured(6, n_z=1, min_spots=10)
    psf.save(tmp_path / "t00002.psf.npz")
    rec = P.merge_frames([(2, tmp_path / "t00002.psf.npz", note), (0, tmp_path / "t00000.psf.npz", "3 spots")],
                         tmp_path / "points.psf.npz")
    assert rec["path"] == str(tmp_path / "points.psf.npz")
    assert rec["frames"]["0"] == {"note": "3 spots"} and rec["frames"]["2"]["n_spots"] == n
    back = P.load_psf(rec["path"], P.frame_key(2))
    np.testing.assert_array_equal(back.values, psf.values)
    none = P.merge_frames([(0, None, "3 spots")], tmp_path / "none.psf.npz")
    assert none["path"] is None and not (tmp_path / "none.psf.npz").exists()


def _gaussian_psf(sigma_px, oversample=(2, 2, 2), half_px=(4, 5, 5)):
    """A voxel-integrated Gaussian PSF as a :class:`SplinePsf` (sampled on its fine grid)."""
    grid = [np.arange(-h * o, h * o + 1) / o for h, o in zip(half_px, oversample)]
    u = np.stack(np.meshgrid(*grid, indexing="ij"), -1)
    vals = spot_photons(u.reshape(-1, 3), np.zeros(3), 1.0, np.asarray(sigma_px)).reshape(u.shape[:-1])
    return P.SplinePsf(vals, oversample, VOXEL_UM)


def test_gaussian_bias_zero_for_a_gaussian_psf_and_the_fits_own_for_a_skewed_one():
    half, sigma0 = np.array([2.0, 3.0, 3.0]), np.array([1.1, 1.0, 1.0])
    flat = P.gaussian_bias_px(_gaussian_psf((1.1, 1.0, 1.0)), PHOTONS, BACKGROUND, half, sigma0)
    assert np.all(np.abs(flat * np.asarray(VOXEL_UM) * 1000) < 1.0), flat
    # the skewed PSF: the bias predicted from its measured spline is the one the Gaussian fits make
    psf, note, _ = measured(0)
    bias_nm = P.gaussian_bias_px(psf, PHOTONS, BACKGROUND, half, sigma0) * np.asarray(VOXEL_UM) * 1000
    vol, truth = render(2, n_z=1)
    pts_g, _, _ = fit(vol, np.round(truth / [1, 2, 2]) * [1, 2, 2], "gauss", psf_bias=False)
    seen_nm = np.median((pts_g - truth) * np.asarray(VOXEL_UM) * 1000, axis=0)
    assert seen_nm[0] > 12 and abs(bias_nm[0] - seen_nm[0]) < 0.25 * seen_nm[0], (bias_nm, seen_nm)
    assert np.all(np.abs(bias_nm[1:]) < 2.0)


def test_psf_bias_correction_takes_the_gaussian_z_bias_off():
    vol, truth = render(2, n_z=1)
    starts = np.round(truth / [1, 2, 2]) * [1, 2, 2]
    pts_g, _, fit_g = fit(vol, starts, "gauss", psf_bias=False)
    pts_c, _, fit_c = fit(vol, starts, "gauss")  # the default
    err_c = (pts_c - truth) * np.asarray(VOXEL_UM) * 1000
    assert fit_g.attrs["psf_bias_nm"] is None and fit_g.attrs["psf_bias_note"] is None  # off: nothing done
    assert fit_c.attrs["psf_bias_nm"][0] > 12 and "taken off" in fit_c.attrs["psf_bias_note"]
    assert np.all(np.abs(np.median(err_c, axis=0)) < 4)
    np.testing.assert_allclose(pts_g - pts_c, np.tile(fit_c.attrs["psf_bias_nm"], (len(pts_c), 1))
                               / (np.asarray(VOXEL_UM) * 1000))  # one shift, every accepted fit
    np.testing.assert_array_equal(fit_c["fit_ok"], fit_g["fit_ok"])
    assert fit_c.attrs["psf_bias_nm"][1:] == [0.0, 0.0]  # y, x: within their floor, left alone
    # a bias within a few standard errors of the PSF's noise is not taken off
    pts_n, _, fit_n = fit(vol, starts, "gauss", psf_bias_min_se=1e3)
    np.testing.assert_array_equal(pts_n, pts_g)
    assert "not corrected" in fit_n.attrs["psf_bias_note"] and fit_n.attrs["psf_bias_nm"] is None


def test_psf_bias_leaves_gaussian_spots_and_too_few_spots_alone():
    few, truth = render(4, n_z=1, step=(12, 40, 40))  # 2 × 2 spots: no PSF
    pts_g, _, _ = fit(few, np.round(truth), "gauss", psf_bias=False)
    pts_c, _, fit_c = fit(few, np.round(truth), "gauss")
    np.testing.assert_array_equal(pts_c, pts_g)
    assert fit_c.attrs["psf_bias_nm"] is None and "fewer than 15" in fit_c.attrs["psf_bias_note"]


def test_psf_bias_below_the_floor_moves_nothing(monkeypatch):
    import sys

    here = sys.modules[__name__]
    monkeypatch.setattr(here, "skewed", lambda u: spot_photons(u, np.zeros(3), 1.0, np.array(PARTS[0][2])))
    vol, truth = render(2, n_z=1)  # symmetric Gaussian spots
    starts = np.round(truth)
    pts_g, _, _ = fit(vol, starts, "gauss", psf_bias=False)
    pts_c, _, fit_c = fit(vol, starts, "gauss")
    np.testing.assert_array_equal(pts_c, pts_g)
    assert fit_c.attrs["psf_bias_nm"] is None and "not corrected" in fit_c.attrs["psf_bias_note"]
