"""Camera defects: hot / dead pixel columns found (exact positions) and repaired, nothing flagged
on clean spot volumes, clusters and edges, sCMOS warm pixels, hot-pixel-only volumes, channels,
and the lazy (tiled) paths equal to the in-memory ones."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kt_stardist import defects as D
from kt_stardist import normalize as N
from kt_stardist import outofcore as O
from kt_stardist.errors import InputError

VOX = (0.3, 0.13, 0.13)
SIGMA_UM = (0.25, 0.11, 0.11)


def spot_volume(shape, n_pairs=20, voxel_um=VOX, amp_sd=(20, 60), bg=100.0, noise=3.0, seed=0, poisson=False):
    """Gaussian kinetochore pairs (sisters 1 µm apart, random orientation) on a flat background,
    Gaussian (or Poisson) noise; amplitudes in noise sd. Returns (float32 volume, (N, 3) px)."""
    rng = np.random.default_rng(seed)
    sig = np.array(SIGMA_UM) / np.array(voxel_um)
    pts = rng.uniform(0, np.array(shape) - 1, (n_pairs, 3))
    d = rng.normal(size=(n_pairs, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    pts = np.concatenate([pts, pts + d / np.array(voxel_um)])
    vol = np.full(shape, bg, np.float64)
    r = np.ceil(4 * sig).astype(int)
    for p, a in zip(pts, rng.uniform(*amp_sd, len(pts)) * noise):
        c = np.round(p).astype(int)
        lo, hi = np.maximum(c - r, 0), np.minimum(c + r + 1, shape)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] += a * np.exp(
            -0.5 * (((zz - p[0]) / sig[0]) ** 2 + ((yy - p[1]) / sig[1]) ** 2 + ((xx - p[2]) / sig[2]) ** 2))
    vol = rng.poisson(vol).astype(np.float64) if poisson else vol + rng.normal(0, noise, shape)
    return vol.astype(np.float32), pts


def positions_away_from(pts, shape_yx, n, min_px, rng):
    """``n`` distinct (y, x) px at least ``min_px`` from every spot centre (laterally)."""
    out = []
    while len(out) < n:
        p = rng.integers(0, shape_yx, 2)
        if np.all(np.hypot(*(pts[:, 1:] - p).T) >= min_px) and all(np.abs(p - q).max() > 1 for q in out):
            out.append(p)
    return np.array(out)


def as_set(a):
    return set(map(tuple, np.asarray(a).tolist()))


def test_hot_and_dead_columns_found_exactly_and_repaired():
    clean, pts = spot_volume((30, 96, 96), seed=1)
    rng = np.random.default_rng(7)
    where = positions_away_from(pts, (96, 96), 25, 6, rng)
    hot, dead = where[:20], where[20:]
    amp = np.r_[np.full(8, 5.0), rng.uniform(5, 40, 12)] * 3.0  # 5+ noise sd above background
    vol = clean.copy()
    vol[:, hot[:, 0], hot[:, 1]] += amp
    vol[:, dead[:, 0], dead[:, 1]] = 0.0
    d = D.find_defects(vol)
    assert as_set(d.hot) == as_set(hot) and as_set(d.dead) == as_set(dead)
    assert len(d) == 25 and d.mask.sum() == 25 and d.mask[tuple(hot.T)].all()
    assert d.summary() == "20 hot and 5 dead pixel columns repaired (camera defects)"
    assert abs(d.noise_sd - 3.0) < 0.3
    rep = D.repair_defects(vol, d)
    assert rep.dtype == np.float32 and rep is not vol
    keep = ~d.mask
    assert np.array_equal(rep[:, keep], vol[:, keep])  # only the defect columns change
    err = rep[:, d.mask] - clean[:, d.mask]  # back to the background, within the noise
    assert np.abs(err.mean()) < 1.0 and np.abs(err).max() < 6 * 3.0
    # the defects' neighbour medians, plane by plane
    y, x = hot[0]
    ring = vol[:, y - 1:y + 2, x - 1:x + 2].reshape(len(vol), 9)[:, [0, 1, 2, 3, 5, 6, 7, 8]]
    np.testing.assert_array_equal(rep[:, y, x], np.median(ring, axis=1).astype(np.float32))


@pytest.mark.parametrize("lateral_um, n_z, seed, poisson", [
    (0.05, 8, 0, False), (0.05, 61, 1, True), (0.08, 12, 2, False), (0.13, 8, 0, True), (0.13, 20, 1, False),
    (0.13, 61, 2, False), (0.2, 8, 0, False), (0.2, 30, 1, True), (0.2, 61, 2, False),
])
def test_nothing_flagged_on_clean_spot_volumes(lateral_um, n_z, seed, poisson):
    vol, _ = spot_volume((n_z, 112, 112), n_pairs=30, voxel_um=(0.3, lateral_um, lateral_um), amp_sd=(10, 100),
                         seed=seed, poisson=poisson)
    d = D.find_defects(vol)
    assert len(d) == 0, (d.hot, d.dead)
    assert d.summary() == "no camera defects"
    assert D.repair_defects(vol, d) is vol  # nothing to repair: the input itself


def test_noise_free_spots_are_not_defects_but_hot_pixels_are():
    vol, pts = spot_volume((10, 64, 64), n_pairs=8, noise=0.0, seed=3)  # thin stack, no noise
    assert len(D.find_defects(vol)) == 0
    where = positions_away_from(pts, (64, 64), 4, 6, np.random.default_rng(0))
    vol[:, where[:, 0], where[:, 1]] += 30.0
    assert as_set(D.find_defects(vol).hot) == as_set(where)


def test_clusters_edges_and_corners():
    vol = np.random.default_rng(1).normal(100, 3, (30, 64, 64)).astype(np.float32)
    vol[:, 10:13, 20:23] += 50  # a 3 × 3 cluster: its centre has no good neighbour in ring 1
    vol[:, 30:33, 40] += 40  # a short bad column segment
    vol[:, 0, 30] += 50
    vol[:, 63, 63] += 50
    vol[:, 40, 0] = 0
    d = D.find_defects(vol)
    cluster = {(y, x) for y in range(10, 13) for x in range(20, 23)}
    assert as_set(d.hot) == cluster | {(30, 40), (31, 40), (32, 40), (0, 30), (63, 63)}
    assert as_set(d.dead) == {(40, 0)}
    assert d.halo_px == 2
    rep = D.repair_defects(vol, d)
    assert abs(rep[:, 11, 21].mean() - 100) < 2 and abs(rep[:, 63, 63].mean() - 100) < 2


def test_scmos_warm_pixels_stand_out_of_the_offset_spread():
    rng = np.random.default_rng(4)
    offset = rng.normal(0, 0.5 * 3.0, (96, 96)).astype(np.float32)  # static per-pixel offsets
    vol = spot_volume((20, 96, 96), seed=4)[0] + offset
    assert len(D.find_defects(vol)) == 0  # the offset spread itself is no defect
    warm = positions_away_from(np.zeros((0, 3)), (96, 96), 10, 0, rng)
    vol[:, warm[:, 0], warm[:, 1]] += 8 * 3.0
    assert as_set(D.find_defects(vol).hot) == as_set(warm)
    with_fpn = D.find_defects(vol, k_spread=60.0)  # a higher bar: needs far more than 8 sd of spread
    assert len(with_fpn) == 0


@pytest.mark.parametrize("bg", [100.0, 0.0])
def test_volume_of_hot_pixels_only(bg):
    rng = np.random.default_rng(0)
    vol = np.full((12, 64, 64), bg, np.float32)
    where = positions_away_from(np.zeros((0, 3)), (64, 64), 30, 0, rng)
    vol[:, where[:, 0], where[:, 1]] += rng.uniform(20, 200, 30).astype(np.float32)
    raw = N.normalize(vol)
    assert np.isfinite(raw).all()  # before repair: finite, no crash
    d = D.find_defects(vol)
    assert as_set(d.hot) == as_set(where) and len(d.dead) == 0
    rep = D.repair_defects(vol, d)
    assert np.all(rep == bg)  # a constant volume
    x = N.normalize(rep)
    assert np.isfinite(x).all() and not (x > 0.5).any()  # no spots to find


def test_bad_planes_and_bad_input():
    vol, pts = spot_volume((20, 64, 64), seed=2)
    where = positions_away_from(pts, (64, 64), 3, 6, np.random.default_rng(1))
    vol[:, where[:, 0], where[:, 1]] += 40
    vol[[3, 4, 5, 6, 7, 8]] = 0  # 30 % all-zero planes: left out, hot pixels still found
    vol[15] = vol.max()  # a saturated plane
    assert np.array_equal(np.nonzero(D.bad_planes(vol))[0], [3, 4, 5, 6, 7, 8, 15])
    assert as_set(D.find_defects(vol).hot) == as_set(where)
    zeros = np.zeros((8, 32, 32), np.uint16)
    assert len(D.find_defects(zeros)) == 0 and D.repair_defects(zeros, D.find_defects(zeros)) is zeros
    assert len(D.find_defects(vol[:3])) == 0  # under MIN_PLANES planes: cannot tell hot from spot
    with pytest.raises(InputError, match="find_defects needs"):
        D.find_defects(np.zeros((32, 32)))
    with pytest.raises(InputError, match="does not fit"):
        D.repair_defects(vol, D.Defects.none((10, 10)))
    with pytest.raises(InputError, match="one per channel"):
        D.repair_defects(np.stack([vol, vol], -1), D.find_defects(vol))


def test_channels_have_their_own_defects_and_one_summary_line():
    a = spot_volume((16, 48, 48), n_pairs=6, seed=5)[0]
    b = spot_volume((16, 48, 48), n_pairs=6, seed=6)[0] * 2
    a[:, 5, 7] += 40
    b[:, 30, 31] += 80
    b[:, 10, 40] = 0
    two = np.stack([a, b], -1)
    found = D.find_defects(two)
    assert [as_set(d.hot) for d in found] == [{(5, 7)}, {(30, 31)}] and as_set(found[1].dead) == {(10, 40)}
    rep = D.repair_defects(two, found)
    np.testing.assert_array_equal(rep[..., 0], D.repair_defects(a, found[0]))
    np.testing.assert_array_equal(rep[..., 1], D.repair_defects(b, found[1]))
    two[0] = 0
    _, info = N.normalize(two, return_info=True)
    assert D.summary_line(found, info) == ("1 hot pixel column repaired (camera defects) (channel 0); 1 hot and 1 dead "
                                          "pixel columns repaired (camera defects) (channel 1); 1 all-zero plane ignored")
    assert D.summary_line(None, None) == ""


@pytest.mark.slow
def test_lazy_find_repair_on_read_and_normalization_equal_in_memory(tmp_path):
    import dask.array as da
    import h5py

    v, pts = spot_volume((14, 100, 90), n_pairs=10, seed=1)
    v[:, [5, 50, 51, 99], [7, 40, 40, 89]] += 60  # a pair of neighbours, edges, corner
    v[:, 20, 0] = 0
    v[3] = 0  # an all-zero and a saturated plane
    v[9] = v.max() + 10
    two = np.stack([v, np.ascontiguousarray(v[:, ::-1]) * 0.5 + 7], -1)
    chunk = (5, 32, 32)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=two, chunks=(5, 16, 16, 1))
    mem = D.find_defects(two)
    assert [len(d) for d in mem] == [5, 5]
    with h5py.File(tmp_path / "a.h5", "r") as f:
        for lazy in (da.from_array(two, chunks=chunk + (-1,)), f["raw"]):
            assert [D.find_defects_lazy(lazy, channel=c, chunk_px=chunk) for c in range(2)] == mem
            assert D.find_defects_lazy(lazy, channel=1, chunk_px=(64, 100, 90)) == mem[1]  # one tile
    lazy = da.from_array(two, chunks=chunk + (-1,))
    rep = D.repair_defects(two, mem)
    view = O.RepairedView(lazy, mem)
    assert view.dtype == np.float32 and view.shape == two.shape
    for sl in [(slice(2, 9), slice(10, 60), slice(33, 90)), (slice(None), slice(48, 53), slice(38, 42)),
               (slice(0, 14, 3), slice(95, 100), slice(0, 90, 7)), (4, slice(None), 40)]:
        np.testing.assert_array_equal(view[sl], rep[sl])
    np.testing.assert_array_equal(view[..., 1][:, 45:55, 35:45], rep[:, 45:55, 35:45, 1])
    np.testing.assert_array_equal(O.read(view, (slice(0, 14), slice(0, 100), slice(0, 90))), rep)
    # statistics on the repaired volume, exactly as in memory; bad planes left out and read as 0
    x, info = N.normalize(rep, voxel_size_um=VOX, return_info=True)
    got = O.normalization(lazy, VOX, chunk_px=chunk, defects=mem)
    assert got == info.ranges
    assert got != O.normalization(lazy, VOX, chunk_px=chunk)  # the hot columns did matter
    nv = O.NormalizedView(lazy, got, defects=mem)
    np.testing.assert_array_equal(nv[:, :, :], x)
    np.testing.assert_array_equal(nv[2:9, 10:60, 33:90], x[2:9, 10:60, 33:90])
    np.testing.assert_array_equal(nv[3], x[3])
    assert not x[3].any() and not x[9, ..., 0].any()


@pytest.mark.slow
def test_whole_frame_timing():
    rng = np.random.default_rng(0)
    vol = rng.normal(100, 3, (61, 1000, 1000)).astype(np.float32)
    hot = rng.integers(0, 1000, (50, 2))
    vol[:, hot[:, 0], hot[:, 1]] += 60
    D.find_defects(vol[:, :100, :100])  # warm up
    t0 = time.perf_counter()
    d = D.find_defects(vol)
    t1 = time.perf_counter()
    D.repair_defects(vol, d)
    t2 = time.perf_counter()
    assert as_set(d.hot) == as_set(hot)
    assert t1 - t0 < 1.0, f"find_defects took {t1 - t0:.2f} s"
    assert t2 - t1 < 0.5, f"repair_defects took {t2 - t1:.2f} s"
