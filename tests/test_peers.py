"""Peers of the comparison benchmark (kt_stardist.peers, scripts/benchmark_peers.py)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from kt_stardist import peers

VOX = (0.3, 0.13, 0.13)
ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("benchmark_peers", ROOT / "scripts" / "benchmark_peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_heatmap_target_peak_sigma_and_max():
    sig = peers.HeatmapSettings().sigma_px
    assert sig == pytest.approx((0.25 / 0.3, 0.11 / 0.13, 0.11 / 0.13))
    h = peers.heatmap_target([[10, 20, 20]], (21, 41, 41), sig)
    assert h.dtype == np.float32 and h.shape == (21, 41, 41)
    assert np.unravel_index(np.argmax(h), h.shape) == (10, 20, 20)
    assert h[10, 20, 20] == pytest.approx(1.0)
    # one sigma away along each axis: exp(-1/2) (the stated anisotropic sigma)
    assert h[11, 20, 20] == pytest.approx(np.exp(-0.5 / sig[0] ** 2), rel=1e-5)
    assert h[10, 21, 20] == pytest.approx(np.exp(-0.5 / sig[1] ** 2), rel=1e-5)
    # two close sisters (0.39 µm apart): combined by max, both stay peaks of 1, nothing above 1
    h2 = peers.heatmap_target([[10, 20, 20], [10, 20, 23]], (21, 41, 41), sig)
    assert h2.max() == pytest.approx(1.0) and h2[10, 20, 20] == h2[10, 20, 23] == pytest.approx(1.0)
    assert h2[10, 20, 21] < 1 and h2[10, 20, 22] < 1
    # a sub-voxel point: its heatmap's centroid is the point
    p = np.array([10.3, 20.4, 19.7])
    h3 = peers.heatmap_target([p], (21, 41, 41), sig)
    cen = np.array([np.sum(h3 * g) for g in np.indices(h3.shape)]) / h3.sum()
    np.testing.assert_allclose(cen, p, atol=0.02)


def test_dice_gaussian_loss_zero_when_perfect_and_grows_with_shift():
    sig = peers.HeatmapSettings().sigma_px
    t = peers.heatmap_target([[8, 16, 16], [8, 16, 26]], (16, 32, 40), sig)
    assert peers.dice_gaussian_loss(t, t) == pytest.approx(0.0, abs=1e-6)
    shifted = [peers.dice_gaussian_loss(t, peers.heatmap_target([[8, 16 + d, 16], [8, 16 + d, 26]], t.shape, sig))
               for d in (0.5, 1, 2)]
    assert 0 < shifted[0] < shifted[1] < shifted[2]
    assert peers.dice_gaussian_loss(t, np.zeros_like(t)) > shifted[2]


def test_peaks_refined_to_sub_voxel():
    from kt_stardist.predict.refine import refine_points
    from kt_stardist.simulate import render_spots

    rng = np.random.default_rng(3)
    truth = np.array([[8, 16, 16], [8, 16, 34], [14, 30, 22], [6, 36, 40]], float) + rng.uniform(-0.45, 0.45, (4, 3))
    sigma_px = np.array([0.25, 0.11, 0.11]) / np.array(VOX)
    raw = render_spots((22, 48, 52), truth, 400.0, sigma_px) + 20.0
    heat = peers.heatmap_target(truth, raw.shape, peers.HeatmapSettings().sigma_px)
    heat += 0.2 * rng.random(heat.shape).astype(np.float32)  # background clutter below the threshold
    pos, val = peers.heatmap_peaks(heat, 0.5)
    assert len(pos) == len(truth) and np.all(np.diff(val) <= 0)
    order = [int(np.argmin(np.linalg.norm(truth - p, axis=1))) for p in pos]
    assert sorted(order) == [0, 1, 2, 3]
    err_peak = np.abs(pos - truth[order]).max()
    refined = refine_points(raw, pos.astype(float), VOX)
    err_ref = np.abs(refined - truth[order]).max()
    assert err_ref < 0.1 < err_peak


def test_threshold_chosen_by_f1_above_clutter():
    sig = peers.HeatmapSettings().sigma_px
    rng = np.random.default_rng(0)
    truths, heats = [], []
    for _ in range(2):
        pts = rng.uniform([3, 5, 5], [13, 35, 35], (6, 3))
        h = 0.9 * peers.heatmap_target(pts, (16, 40, 40), sig)
        clutter = rng.uniform([3, 5, 5], [13, 35, 35], (6, 3))
        h = np.maximum(h, 0.3 * peers.heatmap_target(clutter, h.shape, sig))
        truths.append(pts)
        heats.append(h)
    thr, f1, table = peers.choose_heatmap_threshold(heats, truths, VOX, (0.1, 0.2, 0.4, 0.6, 0.95))
    assert thr in (0.4, 0.6) and f1 == pytest.approx(1.0)
    assert table.set_index("threshold").loc[0.1, "f1"] < 1 and table.set_index("threshold").loc[0.95, "f1"] == 0


def test_missing_spotiflow_is_skipped_with_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "spotiflow", None)  # find_spec("spotiflow") is now None
    reason = peers.spotiflow_available()
    # "spotiflow not installed; ..." or, on a machine without torch too, "spotiflow, torch not installed; ..."
    assert reason and reason.startswith("spotiflow") and " not installed" in reason and "\n" not in reason

    def must_not_train(*a, **k):
        raise AssertionError("a missing peer must not be run")

    import subprocess

    monkeypatch.setattr(subprocess, "run", must_not_train)
    pred, info, minutes, thr = _script().spotiflow_method(["--quick"], 2, 2, "unused")
    assert pred is None and minutes is None and thr is None and info == reason


@pytest.mark.slow
def test_heatmap_unet_trains_saves_and_loads(tmp_path):
    from kt_stardist.train.data import simulated_pairs

    train = simulated_pairs(1, (24, 64, 64), 0, kinds=("easy",))
    val = simulated_pairs(1, (24, 64, 64), 1, kinds=("easy",))
    s = peers.HeatmapSettings(steps=2, n_filter_base=4, thresholds=(0.2, 0.5))
    m = peers.train_heatmap(train, val, s)
    assert m.training["steps"] == 2 and m.threshold in (0.2, 0.5)
    peers.save_heatmap_model(m, tmp_path / "hm")
    m2 = peers.load_heatmap_model(tmp_path / "hm")
    assert m2.settings == s and m2.threshold == m.threshold
    x = val[0][0]
    df, h = peers.heatmap_detect(m2, x, VOX, return_heatmap=True)
    _, h0 = peers.heatmap_detect(m, x, VOX, return_heatmap=True)
    np.testing.assert_allclose(h, h0, atol=1e-6)
    assert h.shape == x.shape[:3] and list(df.columns) == ["z", "y", "x", "prob"]


def _centroids(x, points_px, radius_px):
    """Background-subtracted intensity centroid of ``x`` (Z, Y, X) in a box of ``radius_px``
    (z, y, x) around each rounded point: where the image puts each spot, sub-voxel px."""
    out = []
    for p in np.asarray(points_px, float).reshape(-1, 3):
        c = np.round(p).astype(int)
        sl = tuple(slice(max(a - r, 0), a + r + 1) for a, r in zip(c, radius_px))
        w = np.clip(x[sl] - np.median(x), 0, None)
        g = np.indices(w.shape).reshape(3, -1) + np.array([s.start for s in sl])[:, None]
        out.append((g * w.ravel()).sum(1) / w.sum())
    return np.array(out)


def _spots(shape=(20, 40, 48)):
    """A raw (Z, Y, X) volume with 3 spots at known sub-voxel positions (0.3 × 0.13 × 0.13 µm)."""
    from kt_stardist.simulate import render_spots

    truth = np.array([[4.3, 10.6, 12.2], [9.0, 20.0, 24.0], [15.7, 30.4, 35.55]])
    raw = render_spots(shape, truth, 500.0, np.array([0.25, 0.11, 0.11]) / np.array(VOX)) + 10.0
    return raw, truth


def test_spotiflow_grid_points_sit_on_the_resampled_spots():
    """Truth mapped onto Spotiflow's isotropic grid lands where the resampled image puts the spot
    (training targets), and the spot found there maps back onto the truth (predictions): one
    zoom convention for images and points, at any z (no offset, no z scale error)."""
    from kt_stardist.predict.preprocess import prepare

    s = peers.SpotiflowSettings()
    assert s.voxel_size_um == (0.13, 0.13, 0.13)
    raw, truth = _spots()
    prep = prepare(raw, VOX, s.voxel_size_um, repair=False, max_in_memory_gb=None)
    x = np.asarray(prep.x)[..., 0]
    assert x.shape == (round(20 * 0.3 / 0.13), 40, 48)  # z resampled to 0.13 µm, y-x kept
    iso_truth = prep.to_model_px(truth)
    # z is stretched by ~2.3 (more for the lower spots), y-x unchanged
    assert np.all(np.diff(iso_truth[:, 0] / truth[:, 0]) == pytest.approx(0, abs=1e-9))
    assert iso_truth[:, 0] / truth[:, 0] == pytest.approx(0.3 / 0.13, rel=0.03)
    found = _centroids(x, iso_truth, (5, 3, 3))
    np.testing.assert_allclose(found, iso_truth, atol=0.12)  # iso px; an offset of half a voxel fails
    np.testing.assert_allclose(prep.to_image_px(found), truth, atol=0.06)
    np.testing.assert_allclose(prep.to_image_px(iso_truth), truth, atol=1e-9)  # exact round trip

    # the training path (_prepared) gives the same grid and points
    X, P = peers._prepared([(raw[..., None], truth, VOX, "easy")], s.voxel_size_um)
    np.testing.assert_allclose(P[0], iso_truth, atol=1e-9)
    assert X[0].shape == x.shape


def test_spotiflow_detect_maps_its_points_back_to_the_volume_px():
    raw, truth = _spots()
    seen = {}

    class Centroids:  # stands in for a trained Spotiflow: sub-voxel spot centres on its grid
        def predict(self, x, **kw):
            seen["shape"], seen["kw"] = x.shape, kw
            near = np.array([[10.0, 10, 12], [21, 20, 24], [36, 30, 36]])  # iso px, rounded guesses
            return _centroids(x, near, (5, 3, 3)), None

    pts = peers.spotiflow_detect(Centroids(), raw[..., None], VOX, threshold=0.4)
    assert seen["shape"] == (46, 40, 48) and seen["kw"]["prob_thresh"] == 0.4
    assert seen["kw"]["normalizer"] is None  # normalised once, by prepare
    np.testing.assert_allclose(pts, truth, atol=0.06)  # back in the volume's own px, sub-voxel
    with pytest.raises(peers.InputError, match="one channel"):
        peers.spotiflow_detect(Centroids(), np.zeros((20, 40, 48, 2)), VOX)


def test_spotiflow_trains_on_what_it_predicts_on(monkeypatch, tmp_path):
    """Spotiflow's fit must see the volumes exactly as spotiflow_detect gives them to predict:
    its default re-normalises training images (1-99.8 percentiles of the whole volume), which
    made the spots of easy frames 5-7x brighter in training than at prediction (few detections)."""
    import types

    raw, truth = _spots()
    seen = {}

    class FakeSpotiflow:  # records what Spotiflow would be trained on; finds nothing
        def __init__(self, cfg):
            seen["cfg"] = cfg

        def fit(self, Xt, Pt, Xv, Pv, **kw):
            seen.update(Xt=Xt, Pt=Pt, kw=kw)

        def predict(self, x, **kw):
            seen.setdefault("predict_kw", kw)
            return np.zeros((0, 3)), types.SimpleNamespace(prob=np.zeros(0))

    fake = types.ModuleType("spotiflow.model")
    fake.Spotiflow = FakeSpotiflow
    fake.SpotiflowModelConfig = fake.SpotiflowTrainingConfig = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "spotiflow.model", fake)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(manual_seed=lambda s: None))
    pair = (raw[..., None], truth, VOX, "easy")
    s = peers.SpotiflowSettings(thresholds=(0.3, 0.5))
    peers.train_spotiflow([pair], [pair], tmp_path, s)
    assert seen["kw"].get("normalizer", "auto") is None  # no second normalisation in training
    assert seen["predict_kw"]["normalizer"] is None

    class Echo(FakeSpotiflow):  # what predict is given
        def __init__(self):
            pass

        def predict(self, x, **kw):
            seen["x_predict"] = x
            return np.zeros((0, 3)), None

    peers.spotiflow_detect(Echo(), raw, VOX, s)
    np.testing.assert_array_equal(seen["Xt"][0], seen["x_predict"])  # same intensities in both
    np.testing.assert_allclose(seen["Pt"][0], peers._prepared([pair], s.voxel_size_um)[1][0])


def _per_case(rows):
    import pandas as pd

    cols = ["group", "layout", "seed", "tp", "fp", "fn", "sq_um2", "close_hit", "close_n", "seconds"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def test_summary_rows_per_set_aggregates_close_pairs_and_memory():
    m = _script()
    per_case = _per_case([("easy", "plate", 1, 8, 2, 0, 8 * 0.05 ** 2, 3, 4, 1.0),
                          ("easy", "real", 2, 6, 0, 4, 6 * 0.05 ** 2, 0, 0, 3.0),
                          ("emccd", "physical", 3, 5, 5, 5, 5 * 0.1 ** 2, 0, 0, 2.0)])
    t = m.summary(per_case, "X", 4.5, m.aggregate_set).set_index("set")
    assert list(t.index) == ["easy", "emccd", "all presets", "all robustness"]
    assert t.at["easy", "precision"] == pytest.approx(14 / 16) and t.at["easy", "recall"] == pytest.approx(14 / 18)
    assert t.at["easy", "rmse_nm"] == pytest.approx(50.0) and t.at["emccd", "rmse_nm"] == pytest.approx(100.0)
    assert t.at["easy", "close_recall"] == pytest.approx(0.75)
    assert np.isnan(t.at["emccd", "close_recall"])  # no close pair there: no recall, not 0
    assert t.at["all presets", "seconds"] == pytest.approx(2.0) and t.at["all robustness", "f1"] == pytest.approx(0.5)
    assert (t.method == "X").all() and (t.train_min == 4.5).all() and t.peak_gb.isna().all()
    # the whole frame: its peak memory is carried into its row
    w = m.summary(per_case.iloc[:1].assign(peak_gb=3.25), "X", 1.0).set_index("set")
    assert list(w.index) == ["easy"] and w.at["easy", "peak_gb"] == 3.25


def test_compact_picks_each_set_of_each_method():
    import pandas as pd

    m = _script()
    rows = []
    for name, f in (("A", 0.9), ("B", 0.5)):
        rows += [dict(set="all presets", method=name, f1=f, rmse_nm=50 / f, close_recall=f / 2, seconds=1.0,
                      peak_gb=np.nan, train_min=3.0),
                 dict(set="all robustness", method=name, f1=f - 0.1, rmse_nm=70.0, close_recall=np.nan, seconds=2.0,
                      peak_gb=np.nan, train_min=3.0),
                 dict(set=f"{m.FRAME_SET} 61×1000×1000", method=name, f1=f - 0.2, rmse_nm=60.0, close_recall=0.1,
                      seconds=100 * f, peak_gb=2 * f, train_min=3.0)]
    c = m.compact(pd.DataFrame(rows)).set_index("method")
    assert c.loc["B", "F1 presets"] == 0.5 and c.loc["B", "RMSE nm presets"] == 100.0
    assert c.loc["A", "close-pair recall"] == 0.45 and c.loc["A", "F1 robustness"] == pytest.approx(0.8)
    assert c.loc["A", "s / whole frame"] == 90.0 and c.loc["B", "peak GB"] == 1.0
    assert c.loc["B", "F1 whole frame"] == pytest.approx(0.3)


def test_peak_memory_counts_what_the_process_touched():
    import subprocess

    code = ("import importlib.util, sys, numpy as np; "
            f"spec = importlib.util.spec_from_file_location('bp', {str(ROOT / 'scripts' / 'benchmark_peers.py')!r}); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "a = m.peak_memory_gb(); x = np.ones(600 * 2 ** 20 // 8); b = m.peak_memory_gb(); print(a, b)")
    a, b = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     check=True).stdout.split())
    # 600 MiB touched on top of the import's resident set: the peak is over 0.6 GB, and not above the
    # earlier peak + 0.6 GB (GB, not KiB or MiB)
    assert 0.02 < a < 2 and 600 / 1024 + 0.02 < b < a + 600 / 1024 + 0.05


def test_whole_frame_child_runs_a_method_and_reports_time_and_memory(tmp_path):
    """The whole-frame path: a fresh process loads the method (LoG with the run's threshold) and
    the frame, and its points, seconds and peak memory (its own, not its parent's: ru_maxrss
    inherits the parent's size over fork + exec) come back; a failure is one line."""
    import json

    m = _script()
    raw, truth = _spots()
    np.save(tmp_path / "frame.npy", raw.astype(np.float32))
    (tmp_path / "spec.json").write_text(json.dumps(dict(voxel_size_um=list(VOX), log_threshold=0.05)))
    big = np.ones(800 * 2 ** 20 // 8)  # this process is now > 0.8 GB: the child must not count it
    r = m.run_frame_child(m.LOG, tmp_path / "spec.json", tmp_path / "frame.npy", tmp_path / "log.npz")
    del big
    assert isinstance(r, dict), r
    pts = r["points"][np.lexsort(r["points"].T[::-1])]
    np.testing.assert_allclose(pts, truth, atol=0.5)
    assert r["seconds"] > 0 and 0.02 < r["loaded_gb"] <= r["peak_gb"] < 0.7  # its own memory only
    bad = m.run_frame_child("no such method", tmp_path / "spec.json", tmp_path / "frame.npy", tmp_path / "x.npz")
    assert isinstance(bad, str) and "failed" in bad and "unknown method" in bad and "\n" not in bad
    assert not (tmp_path / "x.npz").exists()
