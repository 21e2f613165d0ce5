"""Training: pretrain -> finetune (other rays, other channels) with weight transfer, freeze,
thresholds, model folder contents, resume. Tiny data (patch 16x32x32, batch 1, 2 steps)."""

import json

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError

PATCH = ("--patch", "16", "32", "32", "--batch", "1")


def _fast_search():
    """A cheap threshold search for tests about training: a one-step model leaves thousands of
    candidates, and refining each at every threshold takes minutes."""
    from kt_stardist.settings import DetectSettings, RefineSettings, SplitSettings, ThresholdSearch

    return ThresholdSearch(prob_range=(0.5, 0.9), prob_step=0.2, nms_threshs=(0.3,), max_candidates=200,
                           detect=DetectSettings(refine=RefineSettings(method="none"), split=SplitSettings(enabled=False)))


def _weights_by_index(model):
    from kt_stardist.model import weighted_layers

    return [layer.get_weights() for layer in weighted_layers(model)]


def _equal(a, b):
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from kt_stardist.cli import main

    out = tmp_path_factory.mktemp("pre") / "pre"
    rc = main(["pretrain", "--out", str(out), "--epochs", "1", "--steps", "2", "--no-tensorboard", *PATCH])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """Two frames of a tiny time-lapse (T=2, Z=16, Y=X=40) with Gaussian spots, and their points."""
    from kt_stardist.io import write_image, write_points

    d = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(1)
    zz, yy, xx = np.mgrid[:16, :40, :40]
    frames, rows = [], []
    for t in range(2):
        pts = np.c_[rng.uniform(3, 13, 12), rng.uniform(4, 36, 12), rng.uniform(4, 36, 12)]
        img = rng.normal(100, 3, (16, 40, 40))
        for z, y, x in pts:
            img += 400 * np.exp(-((zz - z) ** 2 / (2 * 0.7 ** 2) + ((yy - y) ** 2 + (xx - x) ** 2) / (2 * 1.3 ** 2)))
        frames.append(img)
        rows += [dict(t=t, z=z, y=y, x=x) for z, y, x in pts]
    write_image(d / "movie.tif", np.stack(frames).astype(np.float32), axes="TZYX")
    write_points(pd.DataFrame(rows), d / "movie.csv")
    return d / "movie.tif", d / "movie.csv"


@pytest.mark.slow
def test_pretrain_folder(pretrained):
    from kt_stardist.model.info import read_info

    for name in ("config.json", "model.json", "train_settings.json", "weights_best.h5", "weights_last.h5",
                 "history.csv", "history.png"):
        assert (pretrained / name).is_file(), name
    info = read_info(pretrained)
    assert info.training["job"] == "pretrain" and info.training["steps"] == 2 and info.layout.n_channel_in == 1
    assert info.config_name == "nuclei-pretrain"
    st = json.loads((pretrained / "train_settings.json").read_text())
    assert st["job"] == "PretrainSettings" and st["train"]["steps_per_epoch"] == 2
    assert json.loads((pretrained / "config.json").read_text())["n_rays"] == 48
    assert len(pd.read_csv(pretrained / "history.csv")) == 1


@pytest.mark.slow
def test_transfer_copies_matching_layers_only(pretrained):
    from kt_stardist.configs import load_config
    from kt_stardist.model import build_model, load_model, transfer_weights

    src = load_model(pretrained)
    dst = build_model(load_config("kt-default"), None, n_rays=16, n_channel_in=3)
    before = _weights_by_index(dst)
    rep = transfer_weights(pretrained, dst)
    after, ref = _weights_by_index(dst), _weights_by_index(src)
    assert len(rep["copied"]) + len(rep["fresh"]) == len(after) == 15
    fresh = {int(n.split(":")[0]) for n in rep["fresh"]}
    assert fresh == {0, 14}  # first conv (3 input channels) and the dist head (16 rays)
    for k in range(len(after)):
        if k in fresh:
            assert not _equal(after[k], ref[k]) and _equal(after[k], before[k])
        else:
            assert _equal(after[k], ref[k]) and not _equal(after[k], before[k])


@pytest.mark.slow
def test_finetune_cli_other_rays_channels_freeze_resume(pretrained, user_data, tmp_path):
    from kt_stardist.cli import main
    from kt_stardist.model import load_model
    from kt_stardist.model.stardist_backend import measure_receptive_field
    from kt_stardist.model.info import read_info
    from kt_stardist.settings import ThresholdSearch
    from kt_stardist.train import load_optimizer_state

    from kt_stardist.settings import FinetuneSettings, to_json

    img, pts = user_data
    out = tmp_path / "ft"
    base = tmp_path / "base_settings.json"  # --settings: a cheap threshold search; flags override the rest
    base.write_text(to_json(FinetuneSettings(thresholds=_fast_search())))
    args = ["finetune", "--out", str(out), "--from", str(pretrained), "--rays", "16", "--channels", "3",
            "--images", str(img), str(img), "--points", str(pts), str(pts), "--epochs", "1",
            "--steps-per-epoch", "2", "--freeze", "1", "--no-tensorboard", "--settings", str(base), *PATCH]
    assert main(args) == 0
    saved = json.loads((out / "train_settings.json").read_text())
    assert saved["thresholds"]["max_candidates"] == 200 and saved["n_rays"] == 16 and saved["train"]["epochs"] == 1
    info = read_info(out)
    assert info.channels == "egfp@t-1,t,t+1" and info.layout.n_channel_in == 3 and info.layout.temporal
    assert info.label_radius_um == 0.5 and info.training["steps"] == 2 and info.training["job"] == "finetune"
    assert [n.split(":")[0] for n in info.training["transfer"]["fresh"]] == ["0", "14"]
    th = json.loads((out / "thresholds.json").read_text())
    assert 0 < th["prob"] < 1 and th["nms"] in ThresholdSearch().nms_threshs
    assert "detect" in info.validation["by"] and info.validation["volumes"] >= 1
    search = pd.read_csv(out / "thresholds_search.csv")
    assert {"prob", "nms", "f1", "near", "above"} <= set(search.columns) and len(search) > 10
    assert (out / "train_settings.json").is_file()

    ft, pre = load_model(out), load_model(pretrained)
    assert ft.stardist.config.n_rays == 16 and ft.n_channel_in == 3
    # the receptive field measured at training is given back on loading (not measured again)
    rf = measure_receptive_field(ft.stardist)
    assert [list(p) for p in info.receptive_field_px] == [list(p) for p in rf] == \
        [list(p) for p in ft.stardist._tile_overlap]
    assert ft.thresholds.prob == pytest.approx(th["prob"])
    w_ft, w_pre = _weights_by_index(ft), _weights_by_index(pre)
    for k in range(1, 12):  # frozen backbone: still the pretrained weights after training
        assert _equal(w_ft[k], w_pre[k]), k
    assert not _equal(w_ft[13], w_pre[13])  # prob head trained

    # resume: one more epoch on top of the first
    args2 = list(args)
    args2[args2.index("--epochs") + 1] = "2"
    assert main(args2 + ["--resume"]) == 0
    assert len(pd.read_csv(out / "history.csv")) == 2
    assert read_info(out).training["steps"] == 4
    # the frozen epoch's optimiser state does not fit the unfrozen network: epoch 2 started afresh
    assert int(load_optimizer_state(out)[0]) == 2
    # a third epoch continues epoch 2's optimiser (Adam's step count and moments), not a fresh one
    args3 = list(args)
    args3[args3.index("--epochs") + 1] = "3"
    assert main(args3 + ["--resume"]) == 0
    assert len(pd.read_csv(out / "history.csv")) == 3
    assert int(load_optimizer_state(out)[0]) == 4


def test_augmenter_keeps_image_and_labels_aligned():
    from kt_stardist.train import make_augmenter

    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, (4, 8, 8)).astype(np.int32)
    aug = make_augmenter(scale=None, gamma=None, noise=None, offset=None, rng=rng)
    for _ in range(8):
        x2, y2 = aug(y[..., None].astype(np.float32), y)
        assert x2.shape == (4, 8, 8, 1) and np.array_equal(x2[..., 0], y2)
        assert np.array_equal(y2[0].sum(), y[0].sum())  # z never flipped/mixed
    x3, _ = make_augmenter(rng=rng)(np.zeros((4, 8, 8, 1), np.float32), y)
    assert x3.std() > 0  # intensity changes applied


def test_load_model_errors(tmp_path):
    from kt_stardist.model import load_model

    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="no weights"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{not json")
    (tmp_path / "m" / "weights_best.h5").write_bytes(b"")
    with pytest.raises(InputError, match="not valid JSON"):
        load_model(tmp_path / "m")


def test_shipped_default_model_loads():
    from kt_stardist.model import load_model

    m = load_model()
    assert m.stardist.config.n_channel_in == m.n_channel_in == 1
    assert m.voxel_size_um == (0.3, 0.13, 0.13) and m.info.label_radius_um == 0.5
    assert 0 < m.thresholds.prob < 1 and m.info.receptive_field_px is not None


def test_receptive_field_is_stardists_measure_with_a_spot_probe_and_a_tolerance():
    from kt_stardist.model import load_model
    from kt_stardist.model.stardist_backend import measure_receptive_field

    sd = load_model().stardist
    exact = [tuple(int(a) for a in p) for p in sd._compute_receptive_field()]
    assert measure_receptive_field(sd, tol=0, probe_sigma_px=0) == exact  # StarDist's own measurement
    spot = measure_receptive_field(sd)
    # float32 rounding far out does not count: a smaller halo, but the spot's own reach is in it
    assert all(0 < s[k] < e[k] for s, e in zip(spot, exact) for k in range(2))
    assert all(a >= b for s, w in zip(spot, measure_receptive_field(sd, tol=1e-3)) for a, b in zip(s, w))


def test_simulated_pairs_cycle_kinds_and_reject_unknown():
    from kt_stardist.train import simulated_pairs

    pairs = simulated_pairs(5, (16, 32, 32), seed=3, kinds=("easy", "random"))
    assert [p[3] for p in pairs] == ["easy", "random", "easy", "random", "easy"]
    again = simulated_pairs(5, (16, 32, 32), seed=3, kinds=("easy", "random"))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(pairs, again))  # reproducible
    assert not np.array_equal(pairs[0][0], pairs[2][0])  # each volume its own seed
    with pytest.raises(InputError, match="simulation kinds"):
        simulated_pairs(2, (16, 32, 32), seed=3, kinds=("easy", "noisy"))


@pytest.mark.slow
def test_warmup_epochs_train_on_easy_volumes_only(monkeypatch, tmp_path):
    """The curriculum: the first --warmup epochs sample patches from easy/mid volumes only."""
    from kt_stardist import train
    from kt_stardist.model import stardist_backend as B
    from kt_stardist.settings import FinetuneSettings, SimulationMix, TrainSettings

    seen = []
    real = B.patch_sampler

    def recording(X, Y, config, batch_size, length, augmenter=None):
        if augmenter is not None or length > 1:
            seen.append(len(X))
        return real(X, Y, config, batch_size, length, augmenter)

    monkeypatch.setattr(B, "patch_sampler", recording)
    st = FinetuneSettings(train=TrainSettings(epochs=3, warmup_epochs=2, steps_per_epoch=1, patch_size_px=(16, 32, 32),
                                              batch_size=1, patience=0),
                          simulation=SimulationMix(n=4, shape_px=(16, 32, 32), kinds=("easy", "random"), n_val=1),
                          thresholds=_fast_search())
    model, rep = train.finetune(tmp_path / "w", st, tensorboard=False, progress=False)
    assert seen == [2, 4]  # epochs 1-2 on the 2 easy volumes, epoch 3 on all 4
    assert len(rep["history"]) == 3
    info = json.loads((tmp_path / "w" / "model.json").read_text())
    assert "warm-up 2 epochs" in info["training"]["training_data"]


@pytest.mark.slow
def test_thresholds_are_chosen_through_the_predict_path(tmp_path):
    """choose_thresholds scores the points :func:`kt_stardist.predict.detect` returns (refined,
    sisters searched): at the chosen thresholds ``predict`` on a validation volume gives exactly
    the F1 the search recorded, and a capped sweep leaves every result above its start unchanged."""
    from test_predict import SpotModel, spots

    from kt_stardist.evaluate import match_points
    from kt_stardist.predict import detect
    from kt_stardist.settings import ThresholdSearch
    from kt_stardist.train import choose_thresholds

    vox = (0.3, 0.13, 0.13)
    rng = np.random.default_rng(0)
    val = []
    for i in range(2):
        truth = np.c_[rng.uniform(2, 10, 8), rng.uniform(8, 56, 8), rng.uniform(8, 56, 8)]
        amp = rng.uniform(40, 400, 8)
        img = sum(spots((12, 64, 64), t[None], amp=a, bg=0, sigma=(0.83, 0.85, 0.85)) for t, a in zip(truth, amp))
        img = img + np.random.default_rng(i).normal(100, 4, img.shape).astype(np.float32)
        val.append((img[..., None], truth, vox))
    model = SpotModel()
    # the sweep's floor (0.45 - near_band) stays above the stand-in network's noise level
    search = ThresholdSearch(prob_range=(0.45, 0.9), prob_step=0.05, fine_step=0.05, nms_threshs=(0.3, 0.5))
    th = choose_thresholds(model, val, search, save=True)
    assert model.thresholds.prob == th["prob"] and model.thresholds.nms == th["nms"]
    assert model.info.validation["f1"] == pytest.approx(th["f1"], abs=1e-4)
    tp = fp = fn = 0
    for img, truth, vs in val:  # what a user gets from predict at the stored thresholds
        m = match_points(truth, detect(model, img, vs).points[["z", "y", "x"]].to_numpy(), vs)
        tp, fp, fn = tp + m.tp, fp + m.fp, fn + m.fn
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(th["f1"])
    # the calibration record of a model at its stored thresholds agrees with the search
    from kt_stardist.train import record_calibration

    rec = record_calibration(model, val)
    assert rec["f1"] == pytest.approx(th["f1"], abs=1e-4) and rec["near_ratio"] == pytest.approx(th["near_ratio"], abs=1e-4)
    assert model.info.validation["near_ratio"] == rec["near_ratio"] and "stored thresholds" in model.info.validation["by"]
    table = th["table"]
    assert table.f1.max() == th["f1"] and table.prob.nunique() > 5  # coarse + fine sweep
    # 7 per volume: the sweep starts at the 8th-highest detection's probability (~0.8 here)
    capped = choose_thresholds(model, val, ThresholdSearch(**{**search.__dict__, "max_candidates": 7}), save=False)
    assert capped["table"].prob.min() > 0.45
    both = table.merge(capped["table"], on=["nms", "prob"], suffixes=("", "_capped"))
    assert len(both) >= 2
    for c in ("tp", "fp", "fn"):
        assert (both[c] == both[c + "_capped"]).all()


def test_descending_sweep_stops_once_f1_has_fallen_and_never_before_the_peak():
    """The coarse threshold sweep runs from the top down and stops after ``patience`` values more
    than ``stop_drop`` below the best; a dip smaller than that does not stop it, and None sweeps
    everything."""
    from kt_stardist.train.thresholds import descending_sweep

    probs = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5]
    f1 = dict(zip(probs, [0.1, 0.5, 0.85, 0.8, 0.9, 0.95, 0.8, 0.7, 0.6, 0.99]))
    calls = []

    def f1_of(p):
        calls.append(p)
        return f1[p]

    done = descending_sweep(probs, f1_of, stop_drop=0.1, patience=2)
    # 0.8 is only 0.05 below the running best (0.85): no stop; the peak 0.7 is reached; 0.6 and
    # 0.55 are the 2nd and 3rd values > 0.1 below it -> stop after 0.6 (0.65 is 0.15 below: 1st)
    assert done == calls == [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6]
    assert descending_sweep(probs, lambda p: f1[p], stop_drop=None) == probs
    assert descending_sweep(probs, lambda p: f1[p], stop_drop=0.1, patience=1) == probs[:7]


@pytest.mark.slow
def test_finetune_zero_epochs_recalibrates_thresholds_and_keeps_the_weights(user_data, tmp_path):
    """``finetune --epochs 0``: the source weights unchanged in a loadable folder (weights_best.h5),
    thresholds re-chosen on the user's data (a calibration-only adaptation)."""
    from kt_stardist.cli import main
    from kt_stardist.model import DEFAULT_MODEL_DIR, load_model
    from kt_stardist.settings import FinetuneSettings, to_json

    img, pts = user_data
    out = tmp_path / "cal"
    base = tmp_path / "s.json"
    base.write_text(to_json(FinetuneSettings(thresholds=_fast_search())))
    assert main(["finetune", "--out", str(out), "--from", "default", "--images", str(img), "--points", str(pts),
                 "--epochs", "0", "--no-tensorboard", "--settings", str(base), *PATCH]) == 0
    assert (out / "weights_best.h5").is_file() and (out / "thresholds.json").is_file()
    cal, pre = load_model(out), load_model(DEFAULT_MODEL_DIR)
    w_cal, w_pre = _weights_by_index(cal), _weights_by_index(pre)
    assert len(w_cal) == len(w_pre) and all(_equal(a, b) for a, b in zip(w_cal, w_pre))
    assert cal.info.training["steps"] == 0


def test_finetune_cli_takes_its_simulated_volumes_from_a_settings_file(monkeypatch, tmp_path, capsys):
    """``finetune --settings train_settings.json`` repeats a simulated-data run without
    ``--simulate``; with no simulated volumes anywhere and no images it is refused."""
    from kt_stardist import train
    from kt_stardist.cli import main
    from kt_stardist.settings import FinetuneSettings, SimulationMix, to_json

    seen = []

    def fake_finetune(out, settings, **kw):  # records what the CLI would train on
        seen.append(settings)
        raise InputError("stop here")

    monkeypatch.setattr(train, "finetune", fake_finetune)
    sim = tmp_path / "sim.json"
    sim.write_text(to_json(FinetuneSettings(simulation=SimulationMix(n=7))))
    assert main(["finetune", "--out", str(tmp_path / "m"), "--settings", str(sim), "--no-tensorboard"]) != 0
    assert "stop here" in capsys.readouterr().err and seen[0].simulation.n == 7
    none = tmp_path / "none.json"
    none.write_text(to_json(FinetuneSettings(simulation=SimulationMix(n=0))))
    assert main(["finetune", "--out", str(tmp_path / "m"), "--settings", str(none), "--no-tensorboard"]) != 0
    assert "no training data" in capsys.readouterr().err and len(seen) == 1
