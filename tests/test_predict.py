"""predict: blocks and ownership, border objects, refinement, rescaling, CLI (3D, 4D, 2 channels).

Block logic is tested with a tiny stand-in network whose probability is the smoothed input (a
real StarDist NMS runs on it) behind a real :class:`kt_stardist.model.KtModel`; the CLI runs
with a real, random-initialised StarDist3D saved in a tmp folder for the plumbing, and with the
stand-in for the numbers.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from kt_stardist import predict as P
from kt_stardist.errors import InputError
from kt_stardist.normalize import normalize
from kt_stardist.settings import DetectSettings, RefineSettings, SplitSettings

VOX = (0.3, 0.13, 0.13)
SIGMA_PX = (0.25 / 0.3, 0.11 / 0.13, 0.11 / 0.13)


def spots(shape, pts, amp=200.0, bg=100.0, noise=0.0, seed=0, sigma=SIGMA_PX):
    """Gaussian spots at sub-voxel ``pts`` (px) on a flat background (+ optional Gaussian noise)."""
    zz, yy, xx = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = np.full(shape, bg, np.float32)
    for p in np.atleast_2d(pts):
        img += amp * np.exp(-0.5 * (((zz - p[0]) / sigma[0]) ** 2 + ((yy - p[1]) / sigma[1]) ** 2
                                    + ((xx - p[2]) / sigma[2]) ** 2))
    if noise:
        img += np.random.default_rng(seed).normal(0, noise, shape).astype(np.float32)
    return img


class SpotBackend:
    """Stand-in network: prob = smoothed normalised intensity on the (1, 2, 2) grid, every
    candidate a 0.5 µm sphere; enough for StarDist's NMS to keep one per spot."""

    def __init__(self, n_channel_in=1, context=(4, 8, 8)):
        from kt_stardist.model.stardist_backend import rays_golden

        self.rays = rays_golden(32, (2.3, 1, 1))
        self.grid = (1, 2, 2)
        self.n_channel_in = n_channel_in
        self._context = context
        self.calls = []

    def context_px(self):
        return self._context

    def candidates(self, x, prob_thresh):
        self.calls.append(tuple(x.shape[:3]))
        c = x.shape[-1] // 3 if x.shape[-1] in (3, 6) else 0  # centre frame of temporal stacks
        v = ndimage.gaussian_filter(np.asarray(x)[..., c].astype(np.float32), 0.5)
        v = ndimage.maximum_filter(v, (1, 2, 2), origin=(0, -1, -1))  # max over each grid cell
        v = np.clip(v, 0, None)[:, ::2, ::2]
        prob = v * v / (v * v + 0.04)  # monotonic, no ties; faint noise stays below 0.2
        inds = prob > prob_thresh
        pts = np.stack(np.nonzero(inds), 1) * np.array([1, 2, 2])
        r = np.sqrt(np.sum((self.rays.vertices / np.array([2.5, 3.8, 3.8])) ** 2, axis=1))
        dist = np.tile((1 / r)[None], (len(pts), 1)).astype(np.float32)
        return prob[inds], dist, pts

    def nms(self, prob, dist, points, nms_thresh):
        from kt_stardist.model.stardist_backend import nms_sparse

        return nms_sparse(prob, dist, points, self.rays, nms_thresh)

    def labels(self, dist, points, prob, shape, scale=None):
        lab = np.zeros(shape, np.int32)
        for i, p in enumerate(np.round(np.asarray(points, float) * (1 if scale is None else scale)).astype(int)):
            lab[tuple(np.clip(p, 0, np.array(shape) - 1))] = i + 1
        return lab


def SpotModel(n_channel_in=1, context=(4, 8, 8)):
    """A :class:`kt_stardist.model.KtModel` around :class:`SpotBackend` (thresholds 0.6 / 0.3)."""
    from kt_stardist.channels import layout_for
    from kt_stardist.model import KtModel, ModelInfo, Thresholds

    info = ModelInfo(name="spotmodel", channels=layout_for(n_channel_in).name)
    return KtModel(SpotBackend(n_channel_in, context), info, Thresholds(0.6, 0.3))


def _detect(model, vol, vs=VOX, **changes):
    """Points of :func:`kt_stardist.predict.detect` with settings ``changes`` (``section__field``)."""
    from kt_stardist.settings import replace

    return P.detect(model, vol, vs, replace(DetectSettings(), **changes))


def test_plan_blocks_covers_candidates_once_and_skips_empty_space():
    shape = (30, 400, 400)
    mask = np.zeros(shape, bool)
    rng = np.random.default_rng(0)
    mask[tuple(rng.integers([5, 20, 20], [25, 60, 60], (40, 3)).T)] = True  # cluster a (corner)
    mask[tuple(rng.integers([5, 300, 300], [25, 330, 340], (40, 3)).T)] = True  # cluster b (far)
    mask[tuple(rng.integers([5, 100, 150], [25, 280, 190], (200, 3)).T)] = True  # c: longer than a block
    block, ovl, ctx, grid = (64, 128, 128), (6, 10, 10), (8, 16, 16), (1, 2, 2)
    plan = P.plan_blocks(mask, block, ovl, ctx, grid)
    cores = [b.own for b, _ in plan]
    # every read within the block size, starts on the grid, inside the block's own read region
    for b, r in plan:
        assert all(s.stop - s.start <= n for s, n in zip(r, block))
        assert all(s.start % g == 0 or s.start == b.read[ax].start for ax, (s, g) in enumerate(zip(r, grid)))
        assert all(b.read[ax].start <= s.start and s.stop <= b.read[ax].stop for ax, s in enumerate(r))
    # cores are disjoint: every position near a candidate (within min_overlap // 2) has one owner
    margin = np.array(ovl) // 2
    near = np.argwhere(mask) + rng.integers(-margin, margin + 1, (int(mask.sum()), 3))
    near = np.clip(near, 0, np.array(shape) - 1)
    counts = np.sum([P.owns(b, near) for b, _ in plan], axis=0)
    assert np.all(counts == 1)
    # the far clusters are not read together, the long one is split, empty space is not read
    assert len(plan) >= 4 and len({c[1] for c in cores}) > 2
    read = sum(np.prod([s.stop - s.start for s in r]) for _, r in plan)
    assert read < 0.5 * np.prod(shape)
    assert not any(b.read[1].start <= 200 < b.read[1].stop and b.read[2].start <= 250 < b.read[2].stop
                   for b, _ in plan)  # between the clusters
    assert P.plan_blocks(np.zeros(shape, bool), block, ovl, ctx, grid) == []


def test_plan_blocks_scattered_noise_candidates():
    rng = np.random.default_rng(1)
    shape = (61, 600, 600)
    mask = np.zeros(shape, bool)
    mask[tuple(rng.integers(0, shape, (3000, 3)).T)] = True  # a noisy screen: no clusters at all
    plan = P.plan_blocks(mask, (64, 320, 320), (6, 10, 10), (26, 46, 46), (1, 2, 2))  # cells coarsened
    from kt_stardist.predict.blocks import MAX_CLUSTERS

    assert len(plan) <= MAX_CLUSTERS
    counts = np.sum([P.owns(b, np.argwhere(mask)) for b, _ in plan], axis=0)
    assert np.all(counts == 1)


def test_plan_blocks_merges_nearby_clusters_into_one_read():
    mask = np.zeros((20, 200, 200), bool)
    mask[10, 50, 50] = mask[10, 50, 120] = True  # two clusters, halos overlapping
    plan = P.plan_blocks(mask, (64, 192, 192), (6, 10, 10), (8, 40, 40), (1, 2, 2))
    assert len(plan) == 1
    b, r = plan[0]
    assert r[2].start <= 50 - 40 and r[2].stop >= 121 + 40


def _split_boundary(model, shape, truth, block, noise=0.0, seed=0):
    """A y position (px) where :func:`plan_blocks` splits the cluster of ``truth`` between two cores."""
    x = normalize(spots(shape, truth, noise=noise, seed=seed)[..., None], voxel_size_um=VOX)
    plan = P.plan_blocks(P.screen(x[..., 0], VOX), *P.block_geometry(model.backend, block, voxel_size_um=VOX))
    shared = sorted({b.own[1][1] for b, _ in plan} & {b.own[1][0] for b, _ in plan})
    assert shared, "expected the cluster to be split along y"
    return float(shared[0])


def test_detection_on_block_boundary_appears_once_and_border_objects_kept():
    model = SpotModel()
    shape = (12, 200, 160)
    chain = np.array([[6, y, 60.0] for y in range(10, 200, 20)])  # one cluster, longer than a block
    yb = _split_boundary(model, shape, chain, (64, 64, 64))
    truth = np.vstack([chain, [[6, yb, 80.3], [6, yb - 0.5, 40], [0.2, 120, 159.6], [11.6, 199.5, 0.4]]])
    det = _detect(model, spots(shape, truth)[..., None], block_size_px=(64, 64, 64), refine__method="none",
                  split__enabled=False)
    d = det.diagnostics
    assert d["n_blocks"] > 1 and d["n_voxels_read"] < d["n_voxels"]  # empty space skipped
    pts = det.points[["z", "y", "x"]].to_numpy()
    assert len(pts) == len(truth)
    d = np.linalg.norm((pts[:, None] - truth[None]) * np.array(VOX), axis=2)
    assert np.all(d.min(0) < 0.35) and np.all(d.min(1) < 0.35)  # µm: NMS centres on the grid


def test_refine_beats_grid_positions():
    rng = np.random.default_rng(1)
    shape = (15, 31, 31)
    errs = {"grid": [], "gauss": [], "centroid": []}
    for _ in range(12):
        true = np.array([7, 15, 15]) + rng.uniform(-0.5, 0.5, 3)
        img = spots(shape, true, amp=300, bg=100, noise=8, seed=int(rng.integers(1e6)))
        start = np.round(true / [1, 2, 2]) * [1, 2, 2]  # NMS centres lie on the (1, 2, 2) grid
        errs["grid"].append(np.linalg.norm((start - true) * VOX))
        for m in ("gauss", "centroid"):
            q = P.refine_points(img, start[None], VOX, RefineSettings(method=m))[0]
            errs[m].append(np.linalg.norm((q - true) * VOX))
    rms = {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errs.items()}
    assert rms["gauss"] < 0.5 * rms["grid"], rms
    assert rms["gauss"] < 0.04, rms  # µm
    assert rms["centroid"] < rms["grid"], rms


def test_close_sisters_are_fitted_jointly():
    """Two spots 0.4-0.5 µm apart: one joint fit explains both; fitting each alone on its
    Voronoi cell is pulled by the neighbour's light (and cut by the cell border)."""
    rng = np.random.default_rng(3)
    shape = (15, 41, 41)
    errs = {1: [], 4: []}
    for _ in range(10):
        sep = rng.uniform(0.4, 0.5)  # µm, along a random direction in y-x, a bit in z
        ang = rng.uniform(0, np.pi)
        d = np.array([rng.uniform(-0.2, 0.2), sep * np.sin(ang), sep * np.cos(ang)]) / VOX
        centre = np.array([7, 20, 20]) + rng.uniform(-0.5, 0.5, 3)
        true = np.stack([centre - d / 2, centre + d / 2])
        img = spots(shape, true, amp=300, bg=100, noise=8, seed=int(rng.integers(1e6)))
        start = np.round(true / [1, 2, 2]) * [1, 2, 2]
        for g in errs:
            q = P.refine_points(img, start, VOX, RefineSettings(max_group=g, passes=1))
            errs[g] += list(np.linalg.norm((q - true) * VOX, axis=1))
    rms = {g: float(np.sqrt(np.mean(np.square(v)))) for g, v in errs.items()}
    assert rms[4] < 0.7 * rms[1], rms
    assert rms[4] < 0.04, rms  # µm


def test_neighbours_are_subtracted():
    """A dim spot 1.25-1.4 µm below a 6x brighter one (PSF 0.4 µm in z, as simulated): the windows
    do not overlap, so the dim spot is fitted alone, and the bright one's long z tail pulls it up
    unless the bright spot (fitted first) is subtracted."""
    rng = np.random.default_rng(5)
    shape = (21, 31, 31)
    sigma = (1.33, 1.15, 1.15)  # px: 0.4, 0.15, 0.15 µm
    cases = []
    for _ in range(10):
        dim = np.array([6, 15, 15]) + rng.uniform(-0.5, 0.5, 3)
        bright = dim + [rng.uniform(1.25, 1.4) / VOX[0], rng.uniform(-0.2, 0.2) / VOX[1], 0]
        img = spots(shape, dim, amp=100, bg=100, noise=4, seed=int(rng.integers(1e6)), sigma=sigma)
        img += spots(shape, bright, amp=600, bg=0, sigma=sigma)
        cases.append((img, dim, np.round(np.stack([dim, bright]) / [1, 2, 2]) * [1, 2, 2]))

    def rms_z(settings):
        e = [(P.refine_points(img, start, VOX, settings)[0, 0] - dim[0]) * VOX[0] for img, dim, start in cases]
        return float(np.sqrt(np.mean(np.square(e))))

    subtracted = rms_z(RefineSettings())
    alone = rms_z(RefineSettings(neighbour_um=0.0))
    assert subtracted < 0.02 < 0.1 < alone, (subtracted, alone)  # µm, z


def test_split_finds_merged_sisters_and_leaves_single_spots():
    """One detection between two spots 0.35-0.6 µm apart (what the network reports for a close
    pair it cannot separate) becomes two points on the spots; a single spot stays one point."""
    from kt_stardist.predict.refine import refine_and_split

    rng = np.random.default_rng(7)
    shape = (15, 41, 41)
    sigma = (1.33, 1.15, 1.15)  # px: 0.4, 0.15, 0.15 µm, as simulated
    n_split, errs = 0, []
    for _ in range(8):
        sep = rng.uniform(0.35, 0.6)
        ang = rng.uniform(0, np.pi)
        d = np.array([0, sep * np.sin(ang), sep * np.cos(ang)]) / VOX
        true = np.array([7, 20, 20]) + rng.uniform(-0.5, 0.5, 3) + np.stack([-d / 2, d / 2])
        img = spots(shape, true, amp=200, bg=100, noise=6, seed=int(rng.integers(1e6)), sigma=sigma)
        q, parent = refine_and_split(img, np.round(true.mean(0))[None], VOX)
        assert list(parent) == list(range(len(q))) or list(parent) == [0, 0]
        if len(q) == 2:
            n_split += 1
            dist = np.linalg.norm((q[:, None] - true[None]) * VOX, axis=2)
            errs += [min(dist[0, 0] + dist[1, 1], dist[0, 1] + dist[1, 0]) / 2]
        single = spots(shape, true[0], amp=300, bg=100, noise=6, seed=int(rng.integers(1e6)), sigma=sigma)
        q1, _ = refine_and_split(single, np.round(true[0])[None], VOX)
        assert len(q1) == 1
        q0, parent0 = refine_and_split(img, np.round(true.mean(0))[None], VOX, split=SplitSettings(enabled=False))
        assert len(q0) == 1 and list(parent0) == [0]
    assert n_split >= 7, n_split
    assert np.mean(errs) < 0.06, errs  # µm per spot


def test_overlap_groups():
    from kt_stardist.predict.refine import overlap_groups

    pts = np.array([[5, 10, 10], [5, 14, 10], [5, 17, 10], [5, 40, 40], [20, 40, 40]], float)
    groups = sorted(sorted(g) for g in overlap_groups(pts, (2, 3, 3)))
    assert groups == [[0, 1, 2], [3], [4]]
    assert overlap_groups(np.zeros((0, 3)), (2, 3, 3)) == []


def test_rescaling_maps_points_back_to_image_px():
    model = SpotModel()
    vs_img = (0.3, 0.07, 0.07)
    shape = (12, 160, 150)
    truth = np.array([[5.3, 40.2, 50.7], [7.0, 120.6, 100.1], [4.5, 80.0, 20.4]])
    sigma = (0.25 / 0.3, 0.11 / 0.07, 0.11 / 0.07)
    img = spots(shape, truth, sigma=sigma)[..., None]
    det = P.detect(model, img, vs_img)
    df, f = det.points, det.prepared.zoom
    assert f is not None and abs(f[1] - 0.07 / 0.13) < 1e-6
    got = df[["z", "y", "x"]].to_numpy()
    assert len(got) == 3
    d = np.linalg.norm((got[:, None] - truth[None]) * np.array(vs_img), axis=2).min(1)
    assert np.all(d < 0.05), d  # µm, in the image's own px
    assert np.allclose(df["y_um"], df["y"] * 0.07)


def test_mismatch_errors_name_model_and_image():
    model = SpotModel(n_channel_in=2)
    img = SimpleNamespace(data=np.zeros((1, 4, 8, 8, 1), np.float32), path="a.tif")
    with pytest.raises(InputError, match=r"a.tif: image has 1 channel\(s\), model spotmodel takes 2"):
        P.check_image_for_model(img, model)
    # a temporal model given one frame: a note, and the frame repeated as its own neighbours
    one = P.check_image_for_model(img, SpotModel(n_channel_in=3))
    assert len(one) == 1 and "a.tif" in one[0] and "temporal" in one[0] and "repeated" in one[0]
    assert P.check_image_for_model(SimpleNamespace(data=np.zeros((2, 4, 8, 8, 1)), path="m.tif"),
                                   SpotModel(n_channel_in=3)) == []
    with pytest.raises(InputError, match="--channel 3 out of range"):
        P.check_image_for_model(SimpleNamespace(data=np.zeros((1, 4, 8, 8, 2)), path="b.tif"), SpotModel(), channel=3)
    with pytest.raises(InputError, match="takes 2 channel"):
        P.detect(model, np.zeros((4, 8, 8, 1), np.float32))


# ------------------------------------------------------------------------------------------
# CLI: 3D, 4D and 2-channel files
# ------------------------------------------------------------------------------------------

TRUTH = np.array([[4.3, 20.2, 30.7], [6.0, 50.6, 12.1], [3.5, 40.0, 52.4]])


def _cli(monkeypatch, argv, model):
    import kt_stardist.model as M
    from kt_stardist.cli import main

    monkeypatch.setattr(M, "load_model", lambda path=None, weights=None: model)
    return main(["predict", *argv])


def _near_truth(df, vs=VOX):
    got = df[["z", "y", "x"]].to_numpy()
    d = np.linalg.norm((got[:, None] - TRUTH[None]) * np.array(vs), axis=2)
    return len(got) == len(TRUTH) and bool(np.all(d.min(0) < 0.05))


COLUMNS = ["t", "z", "y", "x", "z_um", "y_um", "x_um", "prob", "split", "fit_ok", "sigma_z_nm", "sigma_y_nm",
           "sigma_x_nm", "photons", "background"]


def test_cli_3d_4d_and_two_channels(tmp_path, monkeypatch):
    from kt_stardist import io

    shape = (10, 64, 64)
    vol = spots(shape, TRUTH, noise=3)
    io.write_image(tmp_path / "a.tif", vol, axes="ZYX", voxel_size_um=VOX)
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out", str(tmp_path / "a.csv")], SpotModel()) == 0
    df = pd.read_csv(tmp_path / "a.csv")
    assert list(df.columns) == COLUMNS and (df.t == 0).all()  # one schema: t for 3D volumes too
    assert _near_truth(df)
    assert df.sort_values(["z", "y", "x"]).index.tolist() == list(range(len(df)))
    assert not (tmp_path / ".a.csv.parts").exists()  # the resumable parts are removed once complete
    run = json.loads((tmp_path / "a.run.json").read_text())
    assert run["input"] == str(tmp_path / "a.tif") and run["points"] == len(df)
    assert run["image"]["voxel_size_um"] == list(VOX) and run["image"]["voxel_size_from"] == "file"
    assert run["settings"]["detect"]["split"]["enabled"] is True and run["kt_stardist_version"]
    assert {"network", "refine"} <= set(run["seconds_per_frame"])
    # the PSF bias correction says per frame what it did (here: too few spots to measure a PSF)
    assert run["psf_bias"]["0"]["nm"] is None and "fewer than 15" in run["psf_bias"]["0"]["note"]
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out", str(tmp_path / "nb.csv"), "--no-psf-bias"],
                SpotModel()) == 0
    nb = json.loads((tmp_path / "nb.run.json").read_text())
    assert nb["settings"]["detect"]["refine"]["psf_bias"] is False and "psf_bias" not in nb
    # --no-split reaches the refinement; the settings are recorded
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out", str(tmp_path / "n.csv"), "--no-split"],
                SpotModel()) == 0
    assert json.loads((tmp_path / "n.run.json").read_text())["settings"]["detect"]["split"]["enabled"] is False
    assert _near_truth(pd.read_csv(tmp_path / "n.csv"))
    # --settings takes a run.json back (the same run again)
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out", str(tmp_path / "r.csv"), "--settings",
                              str(tmp_path / "n.run.json")], SpotModel()) == 0
    assert json.loads((tmp_path / "r.run.json").read_text())["settings"]["detect"]["split"]["enabled"] is False

    # time-lapse, temporal model (t-1, t, t+1 as channels): every frame
    tl = np.stack([vol, vol * 0.9 + 10, vol])
    io.write_image(tmp_path / "b.tif", tl, axes="TZYX", voxel_size_um=VOX)
    assert _cli(monkeypatch, [str(tmp_path / "b.tif"), "--out-dir", str(tmp_path / "o"), "--no-track"], SpotModel(3)) == 0
    df = pd.read_csv(tmp_path / "o" / "b.csv")
    assert list(df.columns) == COLUMNS and sorted(df.t.unique()) == [0, 1, 2]
    assert all(_near_truth(g) for _, g in df.groupby("t"))
    assert (tmp_path / "o" / "run.json").is_file() and (tmp_path / "o" / "b.run.json").is_file()
    # chained: sister pairs and tracks (a time-lapse's default) in the same command, in-process or batch alike
    for target in (["--out", str(tmp_path / "bt.csv")], ["--out-dir", str(tmp_path / "bt")]):
        assert _cli(monkeypatch, [str(tmp_path / "b.tif"), *target, "--pairs"], SpotModel(3)) == 0
    bt, bt2 = pd.read_csv(tmp_path / "bt.csv"), pd.read_csv(tmp_path / "bt" / "b.csv")
    assert {"pair_id", "sister", "track_id"} <= set(bt.columns)
    assert bt.track_id.notna().all() and len(bt) == 3 * len(TRUTH)
    pd.testing.assert_frame_equal(bt, bt2)  # --out and --out-dir write the same table

    # 2 channels, spots in channel 1 only: --channel 1 finds them, channel 0 (noise) does not
    two = np.stack([np.random.default_rng(1).normal(100, 3, shape).astype(np.float32), vol], axis=1)
    io.write_image(tmp_path / "c.tif", two, axes="ZCYX", voxel_size_um=VOX)
    out = tmp_path / "c.csv"
    assert _cli(monkeypatch, [str(tmp_path / "c.tif"), "--channel", "1", "--out", str(out)], SpotModel()) == 0
    assert _near_truth(pd.read_csv(out))


def test_rerun_with_other_settings_recomputes(tmp_path, monkeypatch):
    """Parts are reused only for the same input, model and settings (a fingerprint)."""
    from kt_stardist import io

    io.write_image(tmp_path / "a.tif", spots((10, 64, 64), TRUTH, noise=3), axes="ZYX", voxel_size_um=VOX)
    out = tmp_path / "o"
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out-dir", str(out)], SpotModel()) == 0
    assert len(pd.read_csv(out / "a.csv")) == len(TRUTH)
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out-dir", str(out), "--prob-thresh", "0.99"],
                SpotModel()) == 0
    assert len(pd.read_csv(out / "a.csv")) < len(TRUTH)


def test_cli_bad_outputs_are_one_line_errors(tmp_path, capsys):
    from kt_stardist import io
    from kt_stardist.cli import main

    io.write_image(tmp_path / "a.tif", spots((10, 64, 64), TRUTH, noise=3), axes="ZYX", voxel_size_um=VOX)
    (tmp_path / "file").write_text("x")
    for argv, msg in ((["--out-dir", str(tmp_path / "file")], "is a file"),
                      (["--out", str(tmp_path / "file" / "p.csv")], "is a file, not a folder"),
                      (["--out", str(tmp_path)], "is a folder")):
        assert main(["predict", str(tmp_path / "a.tif"), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], err


def test_cli_real_stardist_model_and_mismatch_error(tmp_path, capsys):
    from kt_stardist import io
    from kt_stardist.cli import main
    from kt_stardist.model.stardist_backend import config3d, new_stardist, rays_golden

    conf = config3d(rays=rays_golden(16, (2.3, 1, 1)), grid=(1, 2, 2), anisotropy=(2.3, 1, 1),
                    n_channel_in=2, backbone="unet", unet_n_depth=1, unet_n_filter_base=4,
                    train_patch_size=(8, 32, 32))
    m = new_stardist(conf, "tiny")
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps(vars(m.config)))
    m.keras_model.save_weights(str(tmp_path / "tiny" / "weights_best.h5"))
    (tmp_path / "tiny" / "thresholds.json").write_text(json.dumps({"prob": 0.5, "nms": 0.3}))
    vol = spots((8, 48, 48), TRUTH[:1] / [1, 1.5, 1.5], noise=3)
    io.write_image(tmp_path / "one.tif", vol, axes="ZYX", voxel_size_um=VOX)
    rc = main(["predict", str(tmp_path / "one.tif"), "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "x.csv")])
    err = [e for e in capsys.readouterr().err.strip().splitlines() if "error" in e]
    assert rc == 2 and len(err) == 1 and "1 channel" in err[0] and "takes 2" in err[0], err
    assert not (tmp_path / "x.csv").exists()
    two = np.stack([vol, vol], axis=1)
    io.write_image(tmp_path / "two.tif", two, axes="ZCYX", voxel_size_um=VOX)
    rc = main(["predict", str(tmp_path / "two.tif"), "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "x.csv"),
               "--prob-thresh", "0.9", "--labels-out", str(tmp_path / "lab.tif")])
    assert rc == 0
    df = pd.read_csv(tmp_path / "x.csv")
    assert {"z", "y", "x", "prob"} <= set(df.columns) and (df.prob >= 0.9).all()
    assert io.read_image(tmp_path / "lab.tif", check=False).data.shape[1:4] == (8, 48, 48)
    # a config.json edited to claim other rays than the weights: refused with one line
    cfg = json.loads((tmp_path / "tiny" / "config.json").read_text())
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({**cfg, "n_rays": 10**9}))
    rc = main(["predict", str(tmp_path / "two.tif"), "--model", str(tmp_path / "tiny"), "--out", str(tmp_path / "y.csv")])
    err = [e for e in capsys.readouterr().err.strip().splitlines() if "error" in e]
    assert rc == 2 and "n_rays" in err[0], err
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({**cfg, "n_rays": 32}))
    with pytest.raises(InputError, match="distance head has 16 rays"):
        from kt_stardist.model import load_model
        load_model(tmp_path / "tiny")


# ------------------------------------------------------------------------------------------
# out of core: frames larger than memory, read block by block, same points
# ------------------------------------------------------------------------------------------

OOC_SHAPE = (12, 96, 96)
OOC_CHUNK = (5, 40, 40)  # small chunks: statistics and screen cross several chunk borders


def _ooc_volume(model, block=(64, 64, 64)):
    """Spots (a chain along y split between blocks, one on the split, one at the volume edge) on
    noise, and the split's y."""
    chain = np.array([[6, y, 40.0] for y in range(8, 96, 16)] + [[0.3, 88.6, 80.1], [8.5, 70.2, 15.8]])
    yb = _split_boundary(model, OOC_SHAPE, chain, block, noise=3, seed=4)
    truth = np.vstack([chain, [[6, yb, 52.3]]])
    return spots(OOC_SHAPE, truth, noise=3, seed=4)[..., None], truth, yb


class ReadLog:
    """Array-like over an ndarray that logs the voxels of every read and refuses ``np.asarray``."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim, self.reads = a, a.shape, a.dtype, a.ndim, []

    def __getitem__(self, key):
        out = self.a[key]
        self.reads.append(int(out.size))
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole volume was materialised")


def test_out_of_core_screen_equals_in_memory():
    import dask.array as da

    from kt_stardist import outofcore as O

    vol = spots(OOC_SHAPE, [[5, 10.2, 12.5], [7, 20.6, 25.1], [3.4, 15, 8], [6, 40.3, 41.2]], noise=3, seed=2)
    lazy = da.from_array(vol[..., None], chunks=OOC_CHUNK + (-1,))
    ranges = O.normalization(lazy, VOX, chunk_px=OOC_CHUNK)
    x = normalize(vol[..., None], voxel_size_um=VOX)
    view = O.NormalizedView(lazy, ranges)
    assert np.array_equal(view[2:9, 10:50, 33:90], x[2:9, 10:50, 33:90])
    mask = P.screen_lazy(view, VOX, chunk_px=OOC_CHUNK)
    dense = P.screen(x[..., 0], VOX)
    assert dense.sum() > 0 and mask.sum() == dense.sum()
    assert np.array_equal(mask[tuple(slice(0, s) for s in OOC_SHAPE)], dense)


def test_out_of_core_gives_the_same_points_and_never_reads_the_whole_volume(monkeypatch):
    from kt_stardist import outofcore as O
    from kt_stardist.predict.screen import _dog_radius

    monkeypatch.setattr(O, "CHUNK_PX", OOC_CHUNK)
    model = SpotModel()
    vol, truth, yb = _ooc_volume(model)
    mem = _detect(model, vol, block_size_px=(64, 64, 64))
    log = ReadLog(vol)
    ooc = _detect(model, log, block_size_px=(64, 64, 64), max_in_memory_gb=0)
    assert ooc.prepared.lazy and not mem.prepared.lazy and len(mem.points) == len(truth)
    assert ooc.diagnostics["n_blocks"] == mem.diagnostics["n_blocks"] > 1
    pd.testing.assert_frame_equal(ooc.points, mem.points, rtol=0, atol=1e-6)
    d = np.linalg.norm((ooc.points[["z", "y", "x"]].to_numpy()[:, None] - truth[None]) * np.array(VOX), axis=2)
    assert np.all(d.min(0) < 0.05)  # the spot on the block border found once, near the truth
    assert np.sum(np.abs(ooc.points.y - yb) < 1) == 1
    # bounded reads: nothing larger than a chunk with its screen halo or a network block
    halo = np.array(_dog_radius(VOX, DetectSettings().screen.spot_sigma_um))
    biggest = np.prod(np.minimum(np.array(OOC_CHUNK) + 2 * halo + 2, OOC_SHAPE))
    assert 0 < max(log.reads) <= biggest < vol.size
    # a model at another voxel size: a clear error, not a silent in-memory rescale
    with pytest.raises(InputError, match="resample it to the model's"):
        _detect(model, log, (0.3, 0.07, 0.07), max_in_memory_gb=0)


def test_detect_frame_lazy_hdf5_out_of_core(tmp_path):
    import h5py

    from kt_stardist import io

    model = SpotModel(n_channel_in=3)  # temporal: frames t-1, t, t+1 read lazily
    vol, truth, _ = _ooc_volume(model)
    tl = np.stack([vol[..., 0], vol[..., 0] * 0.9 + 10, vol[..., 0]])
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("raw", data=tl, chunks=(1, 6, 48, 48))
    image = io.read_image(f"{tmp_path / 'a.h5'}:/raw", axes="TZYX", voxel_size_um=VOX, lazy=True)
    for t in (0, 1):
        mem = P.detect_frame(model, image, t).points
        ooc = P.detect_frame(model, image, t, DetectSettings(max_in_memory_gb=0)).points
        assert len(mem) == len(truth) and (mem.t == t).all()
        pd.testing.assert_frame_equal(ooc, mem, rtol=0, atol=1e-6)


def test_temporal_model_on_one_frame_repeats_it_with_a_note(tmp_path, monkeypatch):
    """A one-frame image and a temporal model: the frame is its own t-1 and t+1 (the same input
    as the frame stacked three times), a note says so, in the run's warnings too."""
    from kt_stardist import io

    model = SpotModel(n_channel_in=3)
    vol, truth, _ = _ooc_volume(model)
    io.write_image(tmp_path / "one.tif", vol[..., 0], axes="ZYX", voxel_size_um=VOX)
    image = io.read_image(tmp_path / "one.tif")
    det = P.detect_frame(model, image, 0)
    assert len(det.points) == len(truth) and any("repeated as its own neighbours" in w for w in det.warnings)
    three = P.detect(model, np.concatenate([vol[..., :1]] * 3, axis=-1), VOX).points
    pd.testing.assert_frame_equal(det.points.drop(columns="t"), three)
    assert _cli(monkeypatch, [str(tmp_path / "one.tif"), "--out", str(tmp_path / "p.csv")], model) == 0
    assert any("one frame" in w for w in json.loads((tmp_path / "p.run.json").read_text())["warnings"])


def test_cli_max_memory_gb_gives_the_same_csv(tmp_path, monkeypatch):
    from kt_stardist import io

    vol = spots((10, 64, 64), TRUTH, noise=3)
    io.write_image(tmp_path / "a.tif", vol, axes="ZYX", voxel_size_um=VOX)
    for name, extra in (("mem.csv", []), ("ooc.csv", ["--max-memory-gb", "0"])):
        assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out", str(tmp_path / name), *extra], SpotModel()) == 0
    mem, ooc = pd.read_csv(tmp_path / "mem.csv"), pd.read_csv(tmp_path / "ooc.csv")
    assert _near_truth(mem)
    assert json.loads((tmp_path / "ooc.run.json").read_text())["settings"]["detect"]["max_in_memory_gb"] == 0
    pd.testing.assert_frame_equal(ooc, mem)


@pytest.mark.parametrize("shape", [(16, 200, 96), (13, 201, 81), (10, 63, 40)])  # whole bins, edge bins, one piece
def test_screen_dog_on_two_threads_equals_one_piece(shape, monkeypatch):
    """A large volume's DoG is computed in two halves along y on two threads (halo: the
    filters' radius): bit for bit the one-piece DoG, odd sizes included."""
    import importlib

    S = importlib.import_module("kt_stardist.predict.screen")  # the module (the package exports the function)
    monkeypatch.setattr(S, "THREAD_VOXELS", 1000)
    v = np.random.default_rng(1).random(shape, dtype=np.float32)
    args = (VOX, (0.25, 0.11, 0.11), 2)
    assert np.array_equal(S._dog_binned(v, *args), S._dog_piece(v, *args))


@pytest.mark.parametrize("shape", [(16, 96, 96), (13, 75, 81)])  # whole bins and edge bins
def test_screen_thresholds_the_dog_and_keeps_every_true_spot(shape):
    """The screen (thresholded on the binned DoG, bins repeated back) equals thresholding the
    full-size DoG at the same noise level; dense and sparse masks agree; on a simulated noisy
    frame every true spot has a candidate within 1 px."""
    from kt_stardist import simulate
    from kt_stardist.predict.screen import _noise_sample, _screen_threshold, dog, screen
    from kt_stardist.settings import ScreenSettings

    img, truth = simulate.simulate_volume(shape, seed=3, snr="mid", voxel_size_um=VOX)
    x = normalize(img[..., 0], voxel_size_um=VOX)
    s = ScreenSettings()
    d = dog(x, VOX, s.spot_sigma_um, s.bin_yx)
    expected = d > _screen_threshold(d[_noise_sample(d.shape)], s.k, s.floor)
    dense = screen(x, VOX, s)
    sparse = screen(x, VOX, s, sparse=True)
    assert dense.shape == shape and np.array_equal(dense, expected)
    assert np.array_equal(sparse.coords, np.argwhere(expected))
    from kt_stardist.predict.blocks import _candidates

    assert np.array_equal(_candidates(dense), np.argwhere(expected))
    t = truth[["z", "y", "x"]].to_numpy(float)
    t = t[np.all((t >= 0) & (t <= np.array(shape) - 1), axis=1)]
    assert len(t) >= 20
    c = np.argwhere(dense)
    nearest_um = np.sqrt((((t[:, None] - c[None]) * VOX) ** 2).sum(-1)).min(1)
    assert nearest_um.max() < 0.3, "a true spot was screened out"
    assert dense.mean() < 0.2  # and the screen is a screen


def test_tensorflow_import_skips_unused_optional_packages_which_still_import_after():
    """Start-up: scikit-learn, IPython and pyplot are not imported with TensorFlow (Keras only
    wraps them), yet import normally afterwards, and a model still loads and predicts. The
    oneDNN settings are set for TensorFlow, except where the user's environment says otherwise."""
    import os
    import subprocess
    import sys

    code = ("import os, sys; from kt_stardist.model.stardist_backend import import_tensorflow, SKIPPED_AT_IMPORT; "
            "import_tensorflow(); import tensorflow as tf; "
            "print(sorted(m for m in SKIPPED_AT_IMPORT if m in sys.modules)); "
            "import importlib.util as u; print([u.find_spec(m.split('.')[0]) is not None for m in SKIPPED_AT_IMPORT]); "
            "print(all(sys.modules.get(m, 1) is not None for m in SKIPPED_AT_IMPORT)); "
            "print(float(tf.reduce_sum(tf.ones(3)))); "
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], os.environ['TF_ONEDNN_USE_SYSTEM_ALLOCATOR'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_ENABLE_ONEDNN", "TF_ONEDNN"))}
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"  # the user's choice stays
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env).stdout.split("\n")
    assert out[0] == "[]" and out[2] == "True" and out[3] == "3.0", out
    assert out[4] == "0 1", out


def test_find_points_step_by_step_equals_find_points():
    """napari's step-by-step path (pipeline.iter_find_points) gives find_points' points and
    reports every frame, then the pairs/tracks step."""
    from kt_stardist.io import Image
    from kt_stardist.pipeline import find_points, iter_find_points
    from kt_stardist.settings import PipelineSettings

    truth = np.array([[5.3, 20.2, 30.7], [7.0, 40.6, 12.1]])
    frames = np.stack([spots((12, 64, 64), truth + dt, sigma=(0.83, 0.85, 0.85)) for dt in (0.0, 0.5)])
    image = Image(frames[..., None], VOX, "TZYXC", path="movie.tif")
    st = PipelineSettings(pairs=False, tracks=True)
    want, _ = find_points(SpotModel(), image, st, show_progress=False)
    steps = iter_find_points(SpotModel(), image, st)
    seen = []
    while True:
        try:
            seen.append(next(steps))
        except StopIteration as stop:
            got, dets = stop.value
            break
    assert [s[:2] for s in seen] == [(0, 3), (1, 3), (2, 3)] and "tracks" in seen[-1][2]
    assert len(dets) == 2 and len(got) == 4
    pd.testing.assert_frame_equal(got, want)
