"""Golden tests of the shipped model through :func:`kt_stardist.predict.detect`, the code path
``kt-stardist predict`` runs (as StarDist's own integration tests run its pretrained models):
fixed simulated volumes, floors on counts, F1 and RMSE, and hostile volumes that must give a
clear result (no spots, a one-line warning), never a crash or a flood of detections."""

import numpy as np
import pytest

from kt_stardist.evaluate import match_points

pytestmark = pytest.mark.slow

VOX = (0.3, 0.13, 0.13)


@pytest.fixture(scope="module")
def model():
    from kt_stardist.model import load_model

    return load_model()


def _score(model, image, truth, vs=VOX, **settings):
    from kt_stardist.predict import detect
    from kt_stardist.settings import DetectSettings

    det = detect(model, image, vs, DetectSettings(**settings))
    pts = det.points[["z", "y", "x"]].to_numpy(float)
    return det, match_points(truth, pts, vs, 0.5)


def test_golden_mid_volume(model):
    from kt_stardist.simulate import simulate_volume

    img, df = simulate_volume((40, 192, 192), seed=20261206, snr="mid", layout="real")
    det, m = _score(model, img, df[["z", "y", "x"]].to_numpy(float))
    assert m.n_gt > 50
    assert m.f1 >= 0.95 and m.rmse_nm <= 60, (m.f1, m.rmse_nm)
    assert abs(m.n_pred - m.n_gt) <= 0.1 * m.n_gt
    assert not det.warnings


@pytest.mark.parametrize("name", ["default", "nuclei", "temporal", "2ch", "6ch"])
def test_stored_receptive_field_is_measured_with_todays_method(name):
    """Each shipped model's ``receptive_field_px`` (model.json: every block's halo, so memory and
    time) is what :func:`measure_receptive_field` measures; the temporal and 6-channel models
    had StarDist's float32-rounding measure (46 px: 2.3× the voxels read, 1.8× the memory).
    The nuclei model's spot reaches further (19-21 px in y, x: it learned wider context)."""
    from kt_stardist.model import SHIPPED_MODELS, load_model
    from kt_stardist.model.stardist_backend import measure_receptive_field

    m = load_model(SHIPPED_MODELS[name])
    stored = [list(p) for p in m.info.receptive_field_px]
    assert stored == [list(p) for p in measure_receptive_field(m.backend.sd)]
    assert max(p[1] for p in stored[1:]) <= (24 if name == "nuclei" else 16)  # px, y and x


def test_golden_physical_hot_pixel_camera(model):
    """Physical optics and an sCMOS camera with hot and dead pixel columns, seeds of the
    robustness panel: spots are found and no hot column is reported as a spot."""
    from kt_stardist.physical import simulate_condition

    img, df, vs, info = simulate_condition("hot_pixels", 10_000)
    det, m = _score(model, img, df[["z", "y", "x"]].to_numpy(float), vs)
    assert m.f1 >= 0.9, m.f1
    hot = np.asarray(info["hot_yx"], float)
    pts = det.points[["y", "x"]].to_numpy(float)
    assert len(hot) > 20
    assert np.min(np.linalg.norm(pts[:, None] - hot[None], axis=2), axis=1).min() > 1.0
    assert any("hot" in w for w in det.warnings)  # the repair is said, in one line


def test_volume_of_hot_pixels_only_gives_no_spots(model):
    rng = np.random.default_rng(0)
    vol = rng.poisson(100, (24, 128, 128)).astype(np.uint16)
    yx = rng.integers(0, 128, (60, 2))
    vol[:, yx[:, 0], yx[:, 1]] += rng.integers(200, 3000, 60).astype(np.uint16)
    det, _ = _score(model, vol, np.zeros((0, 3)))
    assert len(det.points) == 0
    assert det.warnings and all("\n" not in w for w in det.warnings)


def test_zero_and_saturated_planes_are_ignored(model):
    from kt_stardist.simulate import simulate_volume

    img, df = simulate_volume((40, 160, 160), seed=7, snr="mid", layout="real")
    img = np.clip(np.round(img), 0, 65535).astype(np.uint16)
    truth = df[["z", "y", "x"]].to_numpy(float)
    _, clean = _score(model, img, truth)
    bad = img.copy()
    bad[0] = 0  # a dropped plane
    bad[-1] = 65535  # a saturated plane
    det, m = _score(model, bad, truth)
    assert m.f1 >= clean.f1 - 0.03, (m.f1, clean.f1)
    assert m.n_pred <= clean.n_pred + 3  # no flood of detections on the bad planes
    assert any("plane" in w for w in det.warnings)


def test_shipped_nuclei_model_by_name_finds_more_spots_over_a_bright_nucleus(tmp_path, model, capsys):
    """``--model nuclei`` from the CLI on a bright-textured-nucleus volume (panel seeds, not the
    benchmark's): the run record names it, it scores clearly above the default model on the same
    volume, and its texture warning does not point to itself, while the default's does."""
    import json

    import pandas as pd

    from kt_stardist.cli import main
    from kt_stardist.io import write_image
    from kt_stardist.physical import simulate_condition

    img, df, vs, _ = simulate_condition("bright_nuclei", 20002, shape_px=(40, 160, 160))
    truth = df[["z", "y", "x"]].to_numpy(float)
    det, base = _score(model, img, truth, vs)
    assert any("--model nuclei" in w for w in det.warnings)
    path = tmp_path / "nucleus.tif"
    write_image(path, img, axes="ZYX", voxel_size_um=vs)
    out = tmp_path / "points.csv"
    assert main(["predict", str(path), "--model", "nuclei", "--out", str(out)]) == 0
    assert json.loads((tmp_path / "points.run.json").read_text())["model"]["name"] == "kt-nuclei"
    got = match_points(truth, pd.read_csv(out)[["z", "y", "x"]].to_numpy(float), vs, 0.5)
    assert got.f1 >= base.f1 + 0.05 and got.fp <= base.fp, (got.f1, base.f1, got.fp, base.fp)
    err = capsys.readouterr().err
    assert "textured nucleus" in err and "--model nuclei" not in err


def test_shipped_temporal_model_by_name_on_a_movie(tmp_path):
    """``predict --model temporal`` loads the shipped 3-channel model by name, stacks frames
    t-1, t, t+1 (the ends see their neighbour on both sides) and finds the spots of a dim simulated movie; the
    run record names the model; a folder of that name would win over the shipped one."""
    import json

    import pandas as pd

    from kt_stardist import simulate
    from kt_stardist.cli import main
    from kt_stardist.io import write_image
    from kt_stardist.model import SHIPPED_MODELS, load_model, model_folder

    assert load_model("temporal").n_channel_in == 3
    assert model_folder("temporal") == SHIPPED_MODELS["temporal"]
    (tmp_path / "temporal").mkdir()
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert model_folder("temporal").resolve() == (tmp_path / "temporal").resolve()
    finally:
        os.chdir(cwd)
    movie, truth = simulate.simulate_timelapse(3, (24, 96, 96), seed=5, snr="mid")
    path = tmp_path / "movie.tif"
    write_image(path, movie, axes="TZYXC", voxel_size_um=VOX)
    out = tmp_path / "points.csv"
    assert main(["predict", str(path), "--model", "temporal", "--out", str(out)]) == 0
    rec = json.loads((tmp_path / "points.run.json").read_text())
    assert rec["model"]["name"] == "kt-temporal"
    got = pd.read_csv(out)
    for t in range(3):  # every frame, the first and last too
        m = match_points(truth[truth.t == t][["z", "y", "x"]].to_numpy(float),
                         got[got.t == t][["z", "y", "x"]].to_numpy(float), VOX, 0.5)
        assert m.f1 >= 0.9, (t, m.tp, m.fp, m.fn)


@pytest.mark.parametrize("name, n_in", [("2ch", 2), ("6ch", 6)])
def test_shipped_two_channel_models_by_name_on_an_egfp_mcherry_movie(tmp_path, name, n_in):
    """``predict --model 2ch`` / ``6ch`` load the shipped EGFP + mCherry models by name, take both
    channels of a simulated 2-channel movie (6ch: of frames t-1, t, t+1) and find its spots; a
    1-channel movie is refused with one line naming both."""
    import json

    import pandas as pd

    from kt_stardist import simulate
    from kt_stardist.cli import main
    from kt_stardist.io import write_image
    from kt_stardist.model import load_model

    assert load_model(name).n_channel_in == n_in
    movie, truth = simulate.simulate_timelapse(3, (24, 96, 96), seed=6, snr="mid", channels=2)
    path = tmp_path / "movie.tif"
    write_image(path, movie, axes="TZYXC", voxel_size_um=VOX)
    out = tmp_path / "points.csv"
    assert main(["predict", str(path), "--model", name, "--out", str(out)]) == 0
    assert json.loads((tmp_path / "points.run.json").read_text())["model"]["name"] == f"kt-{name}"
    got = pd.read_csv(out)
    m = match_points(truth[truth.t == 1][["z", "y", "x"]].to_numpy(float),
                     got[got.t == 1][["z", "y", "x"]].to_numpy(float), VOX, 0.5)
    assert m.f1 >= 0.9, (m.tp, m.fp, m.fn)
    one = tmp_path / "one.tif"
    write_image(one, movie[..., :1], axes="TZYXC", voxel_size_um=VOX)
    assert main(["predict", str(one), "--model", name, "--out", str(tmp_path / "x.csv")]) != 0
