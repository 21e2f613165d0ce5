import numpy as np

from kt_stardist.normalize import normalize, signal_region


def _frame_with_cluster(shape=(20, 200, 200), rng=None):
    rng = rng or np.random.default_rng(0)
    vol = rng.normal(100, 3, shape).astype(np.float32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for _ in range(30):
        c = rng.uniform([8, 90, 90], [12, 110, 110])
        vol += 300 * np.exp(-((zz - c[0]) ** 2 / 2 + (yy - c[1]) ** 2 / 4 + (xx - c[2]) ** 2 / 4))
    return vol


def test_signal_region_finds_cluster_not_empty_space():
    vol = _frame_with_cluster()
    sl = signal_region(vol, voxel_size_um=(0.3, 0.13, 0.13), margin_um=2.0)
    ys, xs = sl[1], sl[2]
    assert ys.start > 40 and ys.stop < 160, sl
    assert xs.start > 40 and xs.stop < 160, sl
    assert ys.start <= 88 and ys.stop >= 112


def test_whole_frame_normalised_like_its_crop():
    vol = _frame_with_cluster()
    crop = vol[:, 70:130, 70:130]
    n_full = normalize(vol)
    n_crop = normalize(crop)
    # the same voxels get nearly the same values whether seen in the frame or in a crop
    np.testing.assert_allclose(n_full[:, 70:130, 70:130], n_crop, atol=0.05)
    # whereas plain percentiles over the whole (mostly empty) frame differ a lot
    lo, hi = np.percentile(vol, [1, 99.8])
    n_plain = (vol - lo) / (hi - lo)
    assert np.abs(n_plain[:, 70:130, 70:130] - n_crop).max() > 0.5


def test_channels_normalised_independently_and_empty_volume_is_whole():
    rng = np.random.default_rng(1)
    img = np.stack([rng.normal(10, 1, (8, 32, 32)), rng.normal(1000, 50, (8, 32, 32))], -1)
    out = normalize(img, region="all")
    assert out.dtype == np.float32 and out.shape == img.shape
    for c in range(2):
        lo, hi = np.percentile(out[..., c], [1, 99.8])
        assert abs(lo) < 1e-4 and abs(hi - 1) < 1e-4
    assert signal_region(rng.normal(0, 1, (8, 32, 32)), k_mad=50) == (slice(0, 8), slice(0, 32), slice(0, 32))


def test_zero_clipped_background_normalised_like_the_unclipped_frame():
    """An offset-subtracted stack clipped at 0 (most background voxels exactly 0, 1st percentile
    and median both 0) is scaled like the same scene before clipping: the spots get the same
    values and the background noise is not blown up to spot level."""
    rng = np.random.default_rng(3)
    shape = (20, 160, 160)
    scene = np.zeros(shape, np.float32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centres = rng.uniform([7, 60, 60], [13, 100, 100], (25, 3))
    for c in centres:
        scene += 40 * np.exp(-((zz - c[0]) ** 2 / 2 + (yy - c[1]) ** 2 / 3 + (xx - c[2]) ** 2 / 3))
    counts = rng.poisson(scene + 0.4).astype(np.float32)  # sparse background: ~67 % zeros
    clipped = counts.astype(np.uint8)
    assert np.mean(clipped == 0) > 0.6 and np.percentile(clipped, 1) == np.median(clipped) == 0
    offset = (counts + 100).astype(np.uint16)  # the same frame with its camera offset kept
    n_clip, n_off = normalize(clipped), normalize(offset)
    idx = tuple(np.round(centres).astype(int).T)
    np.testing.assert_allclose(np.median(n_clip[idx]), np.median(n_off[idx]), rtol=0.2)
    background = scene < 0.05
    assert np.mean(n_clip[background] > 0.3) < 0.005  # noise stays far below spot level


def test_prepared_frame_is_normalised_on_read_as_normalize_and_as_out_of_core():
    """A frame in memory is prepared without a float32 copy: its normalised view reads exactly
    what ``normalize`` gives (blocks, one channel, all of it), saturated voxels of the integer
    frame are left out of the statistics as out of core (the former float32 copy forgot its
    type and counted them), and a zero plane reads 0."""
    import dask.array as da

    from kt_stardist.predict.preprocess import prepare

    vox = (0.3, 0.13, 0.13)
    vol = np.clip(np.round(_frame_with_cluster((16, 160, 160)) * 120), 0, 65535).astype(np.uint16)
    assert (vol == 65535).sum() > 20  # saturated spot centres
    vol[3] = 0  # a dropped plane
    prep = prepare(vol, vox, vox, repair=False)
    assert prep.raw.dtype == np.uint16 and not isinstance(prep.x, np.ndarray)
    full = normalize(vol[..., None], voxel_size_um=vox)  # the uint16 frame, saturation known
    assert np.array_equal(np.asarray(prep.x), full)
    assert np.array_equal(prep.x[2:9, 10:50, 33:90], full[2:9, 10:50, 33:90])
    assert np.array_equal(prep.x[..., 0], full[..., 0]) and not full[3].any()
    ooc = prepare(da.from_array(vol, chunks=(5, 40, 40)), vox, vox, repair=False, max_in_memory_gb=0)
    assert ooc.lazy and np.array_equal(ooc.x[:, :, :], full)
    assert not np.array_equal(normalize(vol.astype(np.float32), voxel_size_um=vox), full[..., 0])


def _dim_spots_on_haze(seed=3, amp=80.0, haze_sd=8.0):
    """Sparse spots on a haze whose large-scale structure inflates the smoothed volume's robust sd,
    so that the spots' smoothed peaks stay below 8 of its sd (as in thin stacks and some widefield
    volumes): (volume (12, 96, 96) float32, spot centres px)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = (12, 96, 96)
    haze = ndimage.gaussian_filter(rng.normal(0, 1, shape), (2, 8, 8))
    vol = 100 + haze_sd * haze / haze.std() + rng.normal(0, 6, shape)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    centres = rng.uniform([3, 10, 10], [9, 86, 86], (12, 3))
    for c in centres:
        vol += amp * np.exp(-((zz - c[0]) ** 2 / 2 / 1.5**2 + (yy - c[1]) ** 2 / 2 / 1.3**2 + (xx - c[2]) ** 2 / 2 / 1.3**2))
    return vol.astype(np.float32), centres


def test_high_follows_dim_spots_instead_of_falling_back_to_the_whole_region(monkeypatch):
    """``high`` is read among the brightest voxels even when fewer than MIN_BRIGHT of them pass
    8 sd (issue 16: thin stacks came out at 4x the normal contrast); with the former rule
    (MIN_BRIGHT 1: fall back to the region's percentile) ``high`` sat below the spots' peaks."""
    import dask.array as da
    from scipy import ndimage

    from kt_stardist import normalize as N
    from kt_stardist import outofcore as O

    vol, centres = _dim_spots_on_haze()
    region = tuple(slice(0, n) for n in vol.shape)
    sm = ndimage.gaussian_filter(vol, 1.0)
    c, sd = N.robust_stats(sm)
    assert np.sum(sm > c + 8 * sd) < N.MIN_BRIGHT  # the case this is about
    peaks = ndimage.maximum_filter(vol, 3)[tuple(np.round(centres).astype(int).T)]
    lo, hi = N.intensity_range(vol)
    assert 0.9 * np.median(peaks) < hi <= vol.max()
    # the out-of-core statistics give the same numbers
    lazy = da.from_array(vol[..., None], chunks=(5, 40, 40, 1))
    assert O.intensity_range(lazy, region, 0, chunk_px=(5, 40, 40)) == (lo, hi)
    monkeypatch.setattr(N, "MIN_BRIGHT", 1)
    lo1, hi1 = N.intensity_range(vol)
    assert lo1 == lo and hi1 < 0.9 * np.median(peaks)


def test_bright_threshold_is_lowered_to_the_brightest_voxels_but_not_into_the_noise():
    from kt_stardist.normalize import K_MIN_BRIGHT, bright_threshold

    assert bright_threshold(10.0, 2.0, 8.0, None) == 26.0
    assert bright_threshold(10.0, 2.0, 8.0, 30.0) == 26.0  # enough voxels above 8 sd: unchanged
    assert bright_threshold(10.0, 2.0, 8.0, 20.0) == 20.0
    assert bright_threshold(10.0, 2.0, 8.0, 11.0) == 10.0 + K_MIN_BRIGHT * 2.0


def test_bin_mean_sums_counts_without_a_float_copy_to_the_same_values():
    """8/16-bit counts are binned from the array itself: the same float32 sums, in the same
    order, as binning its float32 copy (and a chunk aligned to the bins as the whole)."""
    from kt_stardist.normalize import bin_mean

    def reference(v, bins):  # the float32 copy first, then the same sums
        v = np.asarray(v, np.float32)
        for ax, b in enumerate(bins):
            parts = [v[(slice(None),) * ax + (slice(i, None, b),)] for i in range(b)]
            acc = parts[0].copy()
            for p in parts[1:]:
                acc += p
            v = acc
        return v / np.float32(np.prod(bins))

    rng = np.random.default_rng(0)
    for dtype, hi in ((np.uint8, 255), (np.uint16, 65535), (np.int32, 2**30), (np.float64, 1e6)):
        v = (rng.random((6, 16, 24)) * hi).astype(dtype)
        out = bin_mean(v, (2, 4, 4))
        assert out.dtype == np.float32 and out.shape == (3, 4, 6)
        np.testing.assert_array_equal(out, reference(v, (2, 4, 4)))
        np.testing.assert_array_equal(bin_mean(v[:, 4:12], (2, 4, 4)), out[:, 1:3])
    np.testing.assert_array_equal(bin_mean(v, (1, 1, 1)), v.astype(np.float32))
