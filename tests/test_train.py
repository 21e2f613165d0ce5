"""Training: pretrain -> finetune (other rays, other channels) with weight transfer, freeze,
thresholds, model folder contents, resume. Tiny data (patch 16x32x32, batch 1, 2 steps)."""

import json

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError

PATCH = ("--patch", "16", "32", "32", "--batch", "1")


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


def test_pretrain_folder(pretrained):
    from kt_stardist.model import model_info

    for name in ("config.json", "model.json", "weights_best.h5", "weights_last.h5", "history.csv", "history.png"):
        assert (pretrained / name).is_file(), name
    info = model_info(pretrained)
    assert info["job"] == "pretrain" and info["steps"] == 2 and info["n_channel_in"] == 1
    assert info["config_name"] == "nuclei-pretrain"
    assert json.loads((pretrained / "config.json").read_text())["n_rays"] == 48
    assert len(pd.read_csv(pretrained / "history.csv")) == 1


def test_transfer_copies_matching_layers_only(pretrained):
    from kt_stardist.configs import load_config
    from kt_stardist.model import build_model, load_model, transfer_weights

    src = load_model(pretrained)
    dst = build_model(load_config("kt-default"), None, "dst", n_rays=16, n_channel_in=3)
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


def test_finetune_cli_other_rays_channels_freeze_resume(pretrained, user_data, tmp_path):
    from kt_stardist.cli import main
    from kt_stardist.model import load_model, model_info
    from kt_stardist.train import NMS_THRESHS, load_optimizer_state

    img, pts = user_data
    out = tmp_path / "ft"
    args = ["finetune", "--out", str(out), "--from", str(pretrained), "--rays", "16", "--channels", "3",
            "--images", str(img), str(img), "--points", str(pts), str(pts), "--epochs", "1",
            "--steps-per-epoch", "2", "--freeze", "1", "--no-tensorboard", *PATCH]
    assert main(args) == 0
    info = model_info(out)
    assert info["channels"] == "egfp@t-1,t,t+1" and info["n_channel_in"] == 3 and info["temporal"] is True
    assert info["label_radius_um"] == 0.5 and info["steps"] == 2 and info["job"] == "finetune"
    assert [n.split(":")[0] for n in info["transfer"]["fresh"]] == ["0", "14"]
    th = json.loads((out / "thresholds.json").read_text())
    assert 0 < th["prob"] < 1 and th["nms"] in NMS_THRESHS
    search = pd.read_csv(out / "thresholds_search.csv")
    assert {"prob", "nms", "f1"} <= set(search.columns) and len(search) > 10

    ft, pre = load_model(out), load_model(pretrained)
    assert ft.config.n_rays == 16 and ft.config.n_channel_in == 3
    # the receptive field measured at training is given back on loading (not measured again)
    rf = ft._compute_receptive_field()
    assert info["receptive_field_px"] == [list(p) for p in rf] == [list(p) for p in ft._tile_overlap]
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
    assert model_info(out)["steps"] == 4
    # the frozen epoch's optimiser state does not fit the unfrozen network: epoch 2 started afresh
    assert int(load_optimizer_state(out)[0]) == 2
    # a third epoch continues epoch 2's optimiser (Adam's step count and moments), not a fresh one
    args3 = list(args)
    args3[args3.index("--epochs") + 1] = "3"
    assert main(args3 + ["--resume"]) == 0
    assert len(pd.read_csv(out / "history.csv")) == 3
    assert int(load_optimizer_state(out)[0]) == 4


def test_model_input_temporal_edges():
    from kt_stardist.model import model_input

    a = np.arange(4)[:, None, None, None, None] * np.ones((4, 2, 3, 3, 2))
    x0 = model_input(a, 0, temporal=True)
    assert x0.shape == (2, 3, 3, 6)
    assert [x0[0, 0, 0, c] for c in range(6)] == [0, 0, 0, 0, 1, 1]  # t-1 repeats frame 0
    assert [model_input(a, 3, temporal=True)[0, 0, 0, c] for c in range(6)] == [2, 2, 3, 3, 3, 3]
    assert model_input(a, 2).shape == (2, 3, 3, 2)


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


def test_shipped_default_model_loads():
    from kt_stardist.model import DEFAULT_MODEL_DIR, load_model, model_info

    if not (DEFAULT_MODEL_DIR / "weights_best.h5").is_file():
        pytest.skip("shipped model not trained yet")
    m = load_model()
    info = model_info(m)
    assert m.config.n_channel_in == info["n_channel_in"] == 1
    assert info["voxel_size_um"] == [0.3, 0.13, 0.13] and info["label_radius_um"] == 0.5
    assert 0 < m.thresholds.prob < 1


def test_simulated_pairs_cycle_kinds_and_reject_unknown():
    from kt_stardist.train import simulated_pairs

    pairs = simulated_pairs(5, (16, 32, 32), seed=3, snrs=("easy", "random"))
    assert [p[3] for p in pairs] == ["easy", "random", "easy", "random", "easy"]
    again = simulated_pairs(5, (16, 32, 32), seed=3, snrs=("easy", "random"))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(pairs, again))  # reproducible
    assert not np.array_equal(pairs[0][0], pairs[2][0])  # each volume its own seed
    with pytest.raises(InputError, match="simulation kinds"):
        simulated_pairs(2, (16, 32, 32), seed=3, snrs=("easy", "noisy"))


def test_warmup_epochs_train_on_easy_volumes_only(monkeypatch, tmp_path):
    """The curriculum: the first --warmup epochs sample patches from easy/mid volumes only."""
    import stardist.models.model3d as m3d

    from kt_stardist import train

    seen = []
    real = m3d.StarDistData3D

    class Recording(real):
        def __init__(self, X, Y, batch_size, **kw):
            if kw.get("augmenter") is not None or "length" in kw and kw["length"] > 1:
                seen.append(len(X))
            super().__init__(X, Y, batch_size, **kw)

    monkeypatch.setattr(m3d, "StarDistData3D", Recording)
    model, rep = train.finetune(tmp_path / "w", simulate=4, sim_snrs=("easy", "random"), sim_shape=(16, 32, 32),
                                n_val_sim=1, epochs=3, warmup=2, steps_per_epoch=1, patch_size=(16, 32, 32),
                                batch_size=1, patience=0, tensorboard=False, progress=False)
    assert seen == [2, 4]  # epochs 1-2 on the 2 easy volumes, epoch 3 on all 4
    assert len(rep["history"]) == 3
    assert "warm-up 2 epochs" in json.loads((tmp_path / "w" / "model.json").read_text())["training_data"]


def test_choose_thresholds_caps_candidates_without_changing_results(monkeypatch):
    """Threshold search: NMS is greedy in probability order, so starting the sweep higher when
    there are too many candidates leaves every result above the new start unchanged."""
    from types import SimpleNamespace

    from kt_stardist import train

    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 60, (20, 3))
    pts = np.vstack([gt + rng.normal(0, 0.3, gt.shape), rng.uniform(0, 60, (40, 3))])
    prob = np.r_[rng.uniform(0.5, 1, 20), rng.uniform(0.05, 0.7, 40)]
    monkeypatch.setattr(train, "candidates", lambda model, x, pmin: tuple(
        a[prob >= pmin] for a in (prob, np.zeros((len(prob), 4)), pts)))
    # stand-in NMS: keeps every candidate, most probable first
    monkeypatch.setattr(train, "nms_points", lambda model, p, d, q, nms_thresh: (q[np.argsort(-p)], np.sort(p)[::-1]))
    model = SimpleNamespace()
    args = (model, [None], [gt], (1.0, 1.0, 1.0))
    full = train.choose_thresholds(*args, save=False, max_candidates=1000)["table"]
    capped = train.choose_thresholds(*args, save=False, max_candidates=25)["table"]
    floor = np.sort(prob)[::-1][25]
    assert capped.prob.min() > floor and full.prob.min() == 0.05
    same = full[full.prob >= capped.prob.min()].reset_index(drop=True)
    pd.testing.assert_frame_equal(same, capped.reset_index(drop=True))
