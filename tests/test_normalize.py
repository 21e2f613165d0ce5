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
