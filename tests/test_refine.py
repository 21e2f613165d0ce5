"""Maximum-likelihood spot fits (kt_stardist.predict.mle, refine method "gauss"): bias, the
calibration of the reported uncertainty, fit_ok, the camera estimate and bad input."""

import numpy as np
import pytest

from kt_stardist.predict import mle
from kt_stardist.predict.refine import EXTENDED_COLUMN, FIT_COLUMNS, refine_and_split, refine_points
from kt_stardist.settings import RefineSettings, SplitSettings
from kt_stardist.simulate import render_spots

VOX = np.array([0.3, 0.13, 0.13])
SIGMA_PX = np.array([0.4, 0.15, 0.15]) / VOX  # as simulated
GAIN, OFFSET, READ = 2.0, 100.0, 3.0          # camera: counts per photon, counts, counts rms
KNOWN = RefineSettings(gain_adu_per_photon=GAIN, zero_adu=OFFSET, read_noise_adu=READ)
NO_SPLIT = SplitSettings(enabled=False)


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)


def test_noise_free_fits_are_unbiased():
    """Integrated Gaussians rendered as the simulator does, at random sub-voxel offsets, one and
    two (close, overlapping) spots per window: centres within 1 nm."""
    rng = np.random.default_rng(0)
    shape = (7, 15, 15)
    coords = _grid(shape)
    for k in (1, 2):
        errs = []
        for _ in range(10):
            centre = np.array([3.0, 7.0, 7.0]) + rng.uniform(-0.5, 0.5, 3)
            true = centre + (np.array([[0, -1.5, -0.5], [0.5, 1.5, 0.5]])[:k] if k == 2 else 0)
            photons = render_spots(shape, true, 90.0, SIGMA_PX).ravel() + 25.0
            start = np.round(true / [1, 2, 2]) * [1, 2, 2]
            f = mle.fit_spots(photons[None], coords[None], np.ones((1, len(coords))), start[None],
                              start[None] - [1.5, 2.3, 2.3], start[None] + [1.5, 2.3, 2.3], SIGMA_PX * 0.8)
            assert f.converged[0]
            errs.append(np.abs(f.centres[0] - true.reshape(k, 3)) * VOX * 1000)
        assert np.max(errs) < 1.0, np.max(errs)  # nm


def _noisy_volumes(rng, n, shape, true):
    """Camera counts of one spot (peak 90 photons over 25/voxel, the mid preset): Poisson, gain,
    offset, Gaussian read noise."""
    lam = render_spots(shape, true, 90.0, SIGMA_PX) + 25.0
    for _ in range(n):
        yield (rng.poisson(lam) * GAIN + OFFSET + rng.normal(0, READ, shape)).astype(np.float32)


def test_uncertainty_matches_the_scatter_over_noise_draws():
    """200 Poisson draws of one mid-SNR spot: the mean error is ~0 and the reported sigma
    matches the scatter (std of error / sigma within 0.8-1.25 per axis)."""
    rng = np.random.default_rng(1)
    shape = (9, 17, 17)
    true = np.array([4.2, 8.3, 7.8])
    start = np.round(true / [1, 2, 2]) * [1, 2, 2]
    err, sig = [], []
    for vol in _noisy_volumes(rng, 200, shape, true):
        q, _, fit = refine_and_split(vol, start[None], VOX, KNOWN, NO_SPLIT, return_fit=True)
        assert fit.fit_ok[0]
        err.append((q[0] - true) * VOX * 1000)
        sig.append(fit[["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]].to_numpy()[0])
    err, sig = np.array(err), np.array(sig)
    assert np.all(np.abs(err.mean(0)) < 3 * err.std(0) / np.sqrt(len(err))), err.mean(0)  # unbiased
    ratio = np.std(err / sig, axis=0)
    assert np.all((0.8 <= ratio) & (ratio <= 1.25)), ratio
    assert 4 < np.median(sig[:, 1]) < 12 and 10 < np.median(sig[:, 0]) < 35  # nm: near the CRLB


def test_camera_estimated_from_the_background():
    """Gain and effective offset (offset - read noise² / gain) read off the mean-variance line of
    a background with a slope; a known gain gives the offset only."""
    rng = np.random.default_rng(2)
    shape = (8, 128, 128)
    photons = 2.0 + 40.0 * np.linspace(0, 1, shape[2])[None, None, :] * np.ones(shape)
    counts = rng.poisson(photons) * GAIN + OFFSET + rng.normal(0, READ, shape)
    cam = mle.estimate_camera(counts)
    assert abs(cam.gain - GAIN) < 0.15 * GAIN, cam
    assert abs(cam.offset - (OFFSET - READ ** 2 / GAIN)) < 3.0, cam
    cam = mle.estimate_camera(counts, gain=GAIN)
    assert cam.gain == GAIN and abs(cam.offset - (OFFSET - READ ** 2 / GAIN)) < 2.0, cam
    flat = rng.normal(100.0, 4.0, shape)  # no shot noise: falls back, still positive and finite
    cam = mle.estimate_camera(flat)
    assert cam.gain > 0 and np.isfinite(cam.offset) and cam.offset < 100


def test_fit_ok_flags_a_start_far_from_any_spot_and_a_fit_pulled_onto_a_neighbour():
    rng = np.random.default_rng(3)
    shape = (15, 41, 41)
    spot = np.array([7.0, 20.3, 20.0])
    lam = render_spots(shape, spot[None], 150.0, SIGMA_PX) + 20.0
    vol = (rng.poisson(lam) * GAIN + OFFSET).astype(np.float32)
    # a detection 0.35 µm beside the spot (more than max_shift 0.3 µm in x): the fit runs to its bound
    far = spot + [0, 0, 0.35 / VOX[2]]
    q, _, fit = refine_and_split(vol, far[None], VOX, KNOWN, NO_SPLIT, return_fit=True)
    assert not fit.fit_ok[0] and np.isnan(fit.sigma_x_nm[0])
    # a true detection plus a spurious one 0.25 µm away on empty background: both fits end on the
    # spot; the spurious one is flagged and falls back, the true one stays a good fit
    q, _, fit = refine_and_split(vol, np.stack([spot, spot + [0, 0.25 / VOX[1], 0]]), VOX, KNOWN, NO_SPLIT,
                                 return_fit=True)
    assert fit.fit_ok[0] and not fit.fit_ok[1], fit
    assert np.linalg.norm((q[0] - spot) * VOX) < 0.03
    # a good fit alone is fine
    q, _, fit = refine_and_split(vol, np.round(spot)[None], VOX, KNOWN, NO_SPLIT, return_fit=True)
    assert fit.fit_ok[0] and np.linalg.norm((q[0] - spot) * VOX) < 0.03


def test_bad_input_empty_window_nan_and_other_methods():
    rng = np.random.default_rng(4)
    shape = (9, 21, 21)
    spot = np.array([4.0, 10.2, 9.7])
    vol = (rng.poisson(render_spots(shape, spot[None], 120.0, SIGMA_PX) + 20.0) * GAIN + OFFSET).astype(np.float32)
    # NaN voxels (a masked region) are left out of the fit
    holed = vol.copy()
    holed[:, :3, :3] = np.nan
    q, _, fit = refine_and_split(holed, np.round(spot)[None], VOX, KNOWN, NO_SPLIT, return_fit=True)
    assert fit.fit_ok[0] and np.linalg.norm((q[0] - spot) * VOX) < 0.05
    # an all-NaN volume: no fit, the start comes back, flagged
    nan = np.full(shape, np.nan, np.float32)
    q, _, fit = refine_and_split(nan, np.round(spot)[None], VOX, KNOWN, NO_SPLIT, return_fit=True)
    assert np.array_equal(q[0], np.round(spot)) and not fit.fit_ok[0]
    # a detection on the volume's corner (window almost empty) and no detections at all
    q, _, fit = refine_and_split(vol, np.array([[0.0, 0.0, 0.0]]), VOX, KNOWN, NO_SPLIT, return_fit=True)
    assert np.all(np.isfinite(q)) and len(fit) == 1
    q, _, fit = refine_and_split(vol, np.zeros((0, 3)), VOX, KNOWN, return_fit=True)
    assert q.shape == (0, 3) and list(fit.columns) == FIT_COLUMNS + [EXTENDED_COLUMN] and len(fit) == 0
    # the other methods give the same columns, nothing fitted
    for m in ("none", "centroid", "lsq"):
        q, fit = refine_points(vol, np.round(spot)[None], VOX, RefineSettings(method=m), return_fit=True)
        assert list(fit.columns) == FIT_COLUMNS + [EXTENDED_COLUMN] and not fit.fit_ok[0] and not fit.extended[0]
        assert np.isnan(fit.sigma_z_nm[0])
    assert refine_points(vol, np.round(spot)[None], VOX).shape == (1, 3)  # old signature


def test_a_blob_wider_than_a_spot_is_flagged_extended():
    """A bright blob three times a spot's lateral width (the texture of a bright nucleus) is fitted
    with its lateral widths at their upper bound and flagged ``extended``; a spot of the PSF's
    width, and the same blob with a narrower bound-free setting, are not."""
    rng = np.random.default_rng(3)
    shape = (11, 25, 25)
    true = np.array([5.2, 12.3, 11.8])
    start = np.round(true / [1, 2, 2]) * [1, 2, 2]
    flags = {}
    for name, sigma_px in [("spot", SIGMA_PX), ("blob", SIGMA_PX * [1, 3, 3])]:
        lam = render_spots(shape, true, 400.0, sigma_px) + 25.0
        vol = (rng.poisson(lam) * GAIN + OFFSET).astype(np.float32)
        _, _, fit = refine_and_split(vol, start[None], VOX, KNOWN, NO_SPLIT, return_fit=True)
        assert fit.fit_ok[0], name
        flags[name] = bool(fit[EXTENDED_COLUMN][0])
        if name == "blob":  # with room for its width, the same blob is a (wide) spot
            wide = RefineSettings(**{**KNOWN.__dict__, "sigma_bounds": (0.5, 8.0), "half_um": (0.9, 0.9, 0.9)})
            _, _, fit = refine_and_split(vol, start[None], VOX, wide, NO_SPLIT, return_fit=True)
            assert fit.fit_ok[0] and not fit[EXTENDED_COLUMN][0]
    assert flags == {"spot": False, "blob": True}


def test_refine_settings_refuse_a_bad_gain_and_round_trip():
    from kt_stardist import settings as S
    from kt_stardist.errors import InputError

    with pytest.raises(InputError, match="gain"):
        RefineSettings(gain_adu_per_photon=0)
    s = S.DetectSettings(refine=KNOWN)
    assert S.from_dict(S.DetectSettings, S.to_dict(s)) == s


def test_neighbours_within_the_grown_windows_are_fitted_jointly():
    """Two detections 1.35 µm apart in z: their ±0.6 µm windows do not overlap, grown by
    ``joint_scale`` 1.25 they do, so they form one group (one joint fit); one 2.6 µm away in y
    stays alone. A scale that is not a positive number is refused."""
    from kt_stardist.errors import InputError
    from kt_stardist.predict.refine import _MleFitter

    pts = np.array([[10.0, 20, 20], [14.5, 20, 20], [10.0, 40, 20]])  # px
    vol = np.full((30, 60, 40), OFFSET, np.float32)
    camera = mle.Camera.from_settings(GAIN, OFFSET, READ)

    def groups(scale):
        fitter = _MleFitter(vol, pts, VOX, RefineSettings(joint_scale=scale), camera)
        return sorted(sorted(int(i) for i in g) for g in fitter.groups(4))

    assert groups(1.0) == [[0], [1], [2]]
    assert groups(1.25) == [[0, 1], [2]]
    assert RefineSettings().joint_scale == 1.0
    for bad in (0, -1, True, "2"):
        with pytest.raises(InputError, match="joint_scale"):
            RefineSettings(joint_scale=bad)


def test_close_sisters_unbiased_and_calibrated_over_noise_draws():
    """Two mid-SNR sisters 0.35 µm apart (windows overlapping: one joint fit), 60 Poisson draws:
    no bias on either, and the reported sigma (the joint Fisher information, cross terms
    included) matches the scatter: std(error / sigma) within 0.8-1.25 per axis."""
    rng = np.random.default_rng(7)
    shape = (11, 21, 21)
    d = np.array([0.15, 0.25, 0.2]) / np.linalg.norm([0.15, 0.25, 0.2]) * 0.35 / VOX  # px, 0.35 µm
    true = np.array([5.2, 10.3, 9.8]) + np.stack([d / 2, -d / 2])
    lam = render_spots(shape, true, 90.0, SIGMA_PX) + 25.0
    start = np.round(true / [1, 2, 2]) * [1, 2, 2]
    err, sig = [], []
    for _ in range(60):
        vol = (rng.poisson(lam) * GAIN + OFFSET + rng.normal(0, READ, shape)).astype(np.float32)
        q, _, fit = refine_and_split(vol, start, VOX, KNOWN, NO_SPLIT, return_fit=True)
        assert fit.fit_ok.all()
        err.append((q - true) * VOX * 1000)
        sig.append(fit[["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]].to_numpy())
    err, sig = np.array(err), np.array(sig)  # (draws, 2 spots, 3 axes)
    assert np.all(np.abs(err.mean(0)) < 3.5 * err.std(0) / np.sqrt(len(err))), err.mean(0)
    ratio = np.std((err / sig).reshape(-1, 3), axis=0)
    assert np.all((0.8 <= ratio) & (ratio <= 1.25)), ratio


def test_a_failed_fit_is_rescued_with_the_image_psf_width():
    """A detection whose fit failed (flagged, position back at its start) is refitted with its
    group from the detections, its width held at the image's PSF: it passes the checks again,
    lands on its spot, and its sister keeps a good fit; with ``rescue_spread`` 0 it stays
    flagged."""
    from kt_stardist.predict.refine import _MleFitter, camera_of

    rng = np.random.default_rng(8)
    shape = (11, 40, 64)
    true = np.array([[5.3, 8.2 + 12 * (k // 6), 5.7 + 10 * (k % 6)] for k in range(12)])  # isolated spots
    true[1] = true[0] + np.array([0.1, 0.3, 0.2]) / VOX  # a close sister of spot 0, 0.37 µm away
    vol = (rng.poisson(render_spots(shape, true, 120.0, SIGMA_PX) + 25.0) * GAIN + OFFSET).astype(np.float32)
    start = np.round(true / [1, 2, 2]) * [1, 2, 2]
    for spread in (0.02, 0.0):
        s = RefineSettings(gain_adu_per_photon=GAIN, zero_adu=OFFSET, rescue_spread=spread)
        f = _MleFitter(vol, start.copy(), VOX, s, camera_of(vol, s))
        f.run(s.passes, s.max_group)
        assert f.ok.all() and f.psf is not None
        f.ok[1], f.out[1], f.spots[1] = False, start[1], None  # as a failed fit leaves it
        f.rescue(f.groups(s.max_group))
        if spread == 0:
            assert not f.ok[1] and np.array_equal(f.out[1], start[1])
            continue
        assert f.ok[1] and f.ok[0]
        assert np.linalg.norm((f.out[1] - true[1]) * VOX) < 0.06 and np.linalg.norm((f.out[0] - true[0]) * VOX) < 0.06
        assert np.allclose(f.spots[1][2], f.psf, rtol=0.1)  # its width held at the image's PSF


def test_fit_table_keeps_the_bound_alone_and_concatenates():
    """The reported sigma is the Cramér–Rao bound (kept alone in ``attrs["crlb_nm"]``) widened
    by the systematic floor; fit tables of different frames concatenate (pandas compares attrs)."""
    import pandas as pd

    from kt_stardist.predict.refine import SIGMA_FLOOR_NM

    rng = np.random.default_rng(9)
    shape = (9, 31, 31)
    true = np.array([[4.2, 8.3, 7.8], [4.6, 22.1, 21.4]])
    vol = (rng.poisson(render_spots(shape, true, 300.0, SIGMA_PX) + 15.0) * GAIN + OFFSET).astype(np.float32)
    start = np.round(true / [1, 2, 2]) * [1, 2, 2]
    _, _, two = refine_and_split(vol, start, VOX, KNOWN, NO_SPLIT, return_fit=True)
    _, _, one = refine_and_split(vol, start[:1], VOX, KNOWN, NO_SPLIT, return_fit=True)
    crlb = np.asarray(two.attrs["crlb_nm"])
    sig = two[["sigma_z_nm", "sigma_y_nm", "sigma_x_nm"]].to_numpy()
    assert crlb.shape == (2, 3) and np.all(two.fit_ok)
    assert np.all(sig >= np.sqrt(crlb ** 2 + np.square(SIGMA_FLOOR_NM)) - 1e-9)  # bright: the floor shows
    assert np.all(sig[:, 1:] < 3 * crlb[:, 1:] + 5)  # but stays of the bound's order
    assert len(pd.concat([two, one])) == 3


def test_batched_least_squares_equals_the_per_window_fit():
    """The sister search's batched fit (:func:`gauss_fit_batch`) gives :func:`gauss_fit`'s result
    window by window: windows of different size (a volume edge) in one batch, one and two spots
    (close sisters), a bound that holds (the width's)."""
    from kt_stardist.predict.refine import _coords, _window, gauss_fit, gauss_fit_batch
    from kt_stardist.simulate import simulate_volume

    img, df = simulate_volume((24, 96, 96), seed=11, snr="mid", layout="real")
    vol = img[..., 0].astype(np.float64)
    pts = df[["z", "y", "x"]].to_numpy(float)
    half, s0, shift = np.array([2, 4, 4]), np.array([0.83, 0.85, 0.85]), np.array([1.5, 2.3, 2.3])
    rng = np.random.default_rng(1)
    jobs = []
    for p in pts:
        sl = _window(vol.shape, p, half)
        jobs.append((vol[sl].ravel(), _coords(sl), (np.round(p) + rng.uniform(-0.5, 0.5, 3))[None], s0, shift))
    sizes = {len(j[0]) for j in jobs}
    assert len(sizes) > 1  # edge windows are smaller: padding is exercised
    for got, (v, c, st, s, m) in zip(gauss_fit_batch(jobs), jobs):
        want = gauss_fit(v, c, st, s, m)
        assert abs(got.rss - want.rss) <= 1e-6 * want.rss
        assert np.allclose(got.centres, want.centres, atol=1e-2) and np.allclose(got.sigma, want.sigma, atol=1e-2)
    # two spots 0.4 µm apart, started on them: the same two-spot fit
    sisters = np.array([[12.0, 48.0, 46.5], [12.0, 48.0, 49.5]])
    rng = np.random.default_rng(2)
    lam = 20 + 80 * sum(np.exp(-0.5 * np.sum(((np.indices(vol.shape).reshape(3, -1).T - q) / s0) ** 2, 1))
                        for q in sisters).reshape(vol.shape)
    two = rng.poisson(lam).astype(np.float64)
    sl = _window(two.shape, sisters.mean(0), half)
    job = (two[sl].ravel(), _coords(sl), sisters + rng.uniform(-0.4, 0.4, (2, 3)), s0, np.maximum(half, shift))
    got, want = gauss_fit_batch([job])[0], gauss_fit(*job)
    assert abs(got.rss - want.rss) <= 1e-6 * want.rss
    assert np.allclose(got.centres, want.centres, atol=1e-2)
    assert np.abs(np.sort(got.centres[:, 2]) - sisters[:, 2]).max() < 0.5


def test_gathered_profiles_equal_the_integrated_gaussian_at_every_voxel():
    """The fits evaluate each axis's profile once per distinct coordinate and gather it back to
    the voxels (mle.gather_plan); the gathered values must be the integrated Gaussian of each
    voxel, computed here directly, for windows of different sizes and zero padding."""
    from scipy.special import erf

    rng = np.random.default_rng(3)
    coords = []
    for b, (nz, ny, nx) in enumerate([(5, 7, 7), (4, 6, 9)]):
        g = np.stack(np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij"), -1).reshape(-1, 3)
        g = g + np.array([10 + b, 30, 50 - b])
        coords.append(np.pad(g, ((0, 260 - len(g)), (0, 0))))          # padded rows at 0, as the fits pad
    coords = np.asarray(coords, np.float64)
    centres = coords[:, :1, :] + rng.uniform(1, 4, (2, 2, 3))
    sigma = rng.uniform(0.8, 2.0, (2, 2, 3))
    plan = mle.gather_plan(coords, 2)
    assert plan is not None
    P, dPc, dPs = mle._profiles(coords, centres, sigma, plan=plan)
    t = coords[:, None] - centres[:, :, None]
    s = sigma[:, :, None]
    want = 0.5 * (erf((t + 0.5) / (np.sqrt(2) * s)) - erf((t - 0.5) / (np.sqrt(2) * s)))
    np.testing.assert_allclose(P, want, rtol=0, atol=1e-15)
    # the rows of a plan serve a subset of the fits
    sub = mle._profiles(coords[1:], centres[1:], sigma[1:], plan=plan.rows(np.array([1])))
    np.testing.assert_array_equal(sub[0], P[1:])
    np.testing.assert_array_equal(sub[2], dPs[1:])


def test_gram_matches_einsum_and_does_not_depend_on_blas_threads():
    """J^T W J of the fits: equal to the plain sum, and bit for bit the same whatever number of
    BLAS threads the process allows (a dask worker and one process give the same fits)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    J, w = rng.random((40, 2000, 18)), rng.random((40, 2000))
    with threadpool_limits(1):
        one = mle.gram(J, w)
    with threadpool_limits(2):
        two = mle.gram(J, w)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, np.einsum("bnp,bnq->bpq", J * w[..., None], J), rtol=1e-12)
    np.testing.assert_allclose(mle.gram(J), np.einsum("bnp,bnq->bpq", J, J), rtol=1e-12)


def test_spot_photons_of_many_spots_is_the_sum_of_each_bit_for_bit():
    """The fitted neighbours held fixed in a fit are evaluated in one batch
    (``_MleFitter.neighbour_photons``): the same sums as adding them one by one, for the
    Gaussian model and a measured PSF, so the fits do not change."""
    from kt_stardist.predict.psf import SplinePsf

    rng = np.random.default_rng(5)
    coords = _grid((7, 9, 9)) + 3
    centres = rng.uniform(2, 9, (5, 3))
    photons = rng.uniform(100, 3000, 5)
    sigma = rng.uniform(0.8, 2.0, (5, 3))
    g = np.stack(np.meshgrid(*[np.arange(-8, 9) / 2] * 3, indexing="ij"), -1).reshape(-1, 3)
    psf = SplinePsf(mle.spot_photons(g, np.zeros(3), 1.0, np.array([1.2, 1.0, 1.0])).reshape(17, 17, 17),
                    (2, 2, 2), tuple(VOX))
    for model in (None, psf):
        one_by_one = np.zeros(len(coords))
        for c, n, s in zip(centres, photons, sigma):
            one_by_one += mle.spot_photons(coords, c, n, s, spots=model)
        np.testing.assert_array_equal(mle.spot_photons(coords, centres, photons, sigma, spots=model), one_by_one)
        assert mle.spot_photons(coords, centres[0], photons[0], sigma[0], spots=model).shape == (len(coords),)
