"""The confirm band (``DetectSettings.confirm``): network detections below the probability
threshold are kept only where the image confirms them (fit passed its checks, lateral
uncertainty at most ``max_sigma_nm``, or ``rel_sigma`` × that of the frame's confident points)."""

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError
from kt_stardist.predict.detect import Candidates, confirmed, finish, texture_warning
from kt_stardist.settings import ConfirmBand, DetectSettings, replace

VOX = (0.3, 0.13, 0.13)


def _fit(ok, sy, sx):
    return pd.DataFrame({"fit_ok": ok, "sigma_y_nm": sy, "sigma_x_nm": sx})


def test_confirmed_keeps_points_above_the_threshold_and_confirmed_band_points():
    prob = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.3])
    fit = _fit([True, True, False, True, True, True], [30.0, 12, 12, 40, np.nan, 5], [30.0, 20, 12, 10, 5, 5])
    band = ConfirmBand(floor_prob=0.4, max_sigma_nm=25, rel_sigma=0.0)  # the absolute limit alone
    # above: kept whatever its fit; band: fit ok and max(sy, sx) <= 25; failed fit, wide y, NaN
    # sigma, below the floor: not kept
    assert confirmed(prob, fit, 0.7, band).tolist() == [True, True, False, False, False, False]
    assert confirmed(prob, fit, 0.7, replace(band, max_sigma_nm=15)).tolist() == [True] + [False] * 5
    assert confirmed(prob, fit, 0.7, replace(band, enabled=False)).tolist() == [True] + [False] * 5
    assert confirmed(prob, fit, 0.45, replace(band, enabled=False)).tolist() == [True] * 5 + [False]
    assert confirmed(np.zeros(0), _fit([], [], []), 0.7, band).shape == (0,)


def test_the_band_limit_follows_a_dim_frames_confident_points():
    """On a frame whose confident points are themselves loose (EMCCD at low light, hard SNR),
    a band point is confirmed within ``rel_sigma`` × their median lateral sigma; on a frame of
    well-localised spots the absolute ``max_sigma_nm`` holds; ``rel_sigma`` 0 turns it off."""
    band = ConfirmBand(floor_prob=0.4, max_sigma_nm=25, rel_sigma=2.0, rel_min_points=2)
    prob = np.array([0.9, 0.9, 0.9, 0.5, 0.5])
    dim = _fit([True, True, False, True, True], [18.0, 22, 5, 38, 45], [18.0, 20, 5, 30, 30])  # median 20 -> 40
    assert confirmed(prob, dim, 0.7, band).tolist() == [True, True, True, True, False]
    assert confirmed(prob, dim, 0.7, replace(band, rel_sigma=0.0)).tolist() == [True] * 3 + [False] * 2
    sharp = _fit([True, True, True, True, True], [5.0, 6, 7, 24, 30], [5.0, 6, 7, 20, 10])  # median 6 -> 25
    assert confirmed(prob, sharp, 0.7, band).tolist() == [True] * 4 + [False]
    # very low SNR: confident points 30 nm loose; twice that would let noise blobs in, the cap holds
    faint = _fit([True] * 5, [30.0, 30, 30, 38, 45], [30.0, 30, 30, 30, 30])
    assert confirmed(prob, faint, 0.7, band).tolist() == [True] * 4 + [False]
    assert confirmed(prob, faint, 0.7, replace(band, rel_max_sigma_nm=60.0)).tolist() == [True] * 5
    # too few confident points to say how loose the frame's spots are: the absolute limit
    assert confirmed(prob, dim, 0.7, replace(band, rel_min_points=3)).tolist() == [True] * 3 + [False] * 2


def test_an_extended_fit_is_not_confirmed_and_leaves_no_column():
    """A band point whose fit spread to its width bound (``extended``: nuclear texture, not a
    spot) is not confirmed however well placed; a point above the threshold stays. The column
    does not reach the points table."""
    band = ConfirmBand(floor_prob=0.4, max_sigma_nm=25, rel_sigma=0.0)
    prob = np.array([0.9, 0.5, 0.5])
    fit = _fit([True] * 3, [10.0, 10, 10], [10.0, 10, 10])
    assert confirmed(prob, fit, 0.7, band).tolist() == [True, True, True]
    fit["extended"] = [True, True, False]
    assert confirmed(prob, fit, 0.7, band).tolist() == [True, False, True]
    assert confirmed(prob, fit, 0.7, replace(band, reject_extended=False)).tolist() == [True, True, True]


def test_texture_warning_speaks_when_many_band_points_are_wider_than_spots():
    assert texture_warning(9, 2) is None            # a few: a merged pair or a noisy width
    assert texture_warning(30, 80) is None          # many spots, fewer wide band points
    w = texture_warning(61, 25, "frame 0: ")
    assert w.startswith("frame 0: 61 detections") and "textured nucleus" in w and "\n" not in w
    assert "--model nuclei" in w                    # the model trained with such backgrounds
    assert "--model nuclei" not in texture_warning(61, 25, model_name="kt-nuclei")


def test_calibration_warning_suggests_no_lower_threshold_over_textured_structure():
    """A lower threshold on a bright textured nucleus adds the nucleus's grains (panel volume:
    F1 0.33 -> 0.19 at the suggested 0.63), so where the texture warning speaks the calibration
    warning names none; the whole-image warning of a run follows its frames."""
    from types import SimpleNamespace

    from kt_stardist.pipeline import _image_warnings
    from kt_stardist.predict.detect import calibration_warning
    from kt_stardist.settings import PipelineSettings

    assert calibration_warning(37, 16, 0.78, 0.04, 0.15).endswith("try --prob-thresh 0.63")
    w = calibration_warning(37, 16, 0.78, 0.04, 0.15, suggest=False)
    assert "looks unlike" in w and "try --prob-thresh" not in w and "\n" not in w
    assert calibration_warning(5, 16, 0.78, 0.04, 0.15, suggest=False) is None  # too few to speak
    info = SimpleNamespace(validation={"near_ratio": 0.04})
    frame = dict(warnings=[], n_near=37, n_detections=16, prob_thresh=0.78)
    plain = _image_warnings([{**frame, "n_extended": 2}], info, 0.78, PipelineSettings())
    textured = _image_warnings([{**frame, "n_extended": 61}], info, 0.78, PipelineSettings())
    assert [w for w in plain if "try --prob-thresh" in w]
    assert [w for w in textured if "looks unlike" in w] and not [w for w in textured if "try --prob-thresh" in w]


def test_confirm_band_settings_are_validated():
    with pytest.raises(InputError, match="confirm band"):
        ConfirmBand(floor_prob=1.2)
    with pytest.raises(InputError, match="confirm band"):
        ConfirmBand(max_sigma_nm=0)
    with pytest.raises(InputError, match="confirm band"):
        ConfirmBand(rel_sigma=-1)
    with pytest.raises(InputError, match="confirm band"):
        ConfirmBand(rel_min_points=0)
    with pytest.raises(InputError, match="reject_extended"):
        ConfirmBand(reject_extended="no")


def test_finish_keeps_a_compact_spot_below_the_threshold_but_not_a_noise_candidate():
    """Three network candidates: a bright spot above the threshold, a fainter compact spot in the
    band, and a place with noise only, in the band. The band's spot is kept (and counted), the
    noise candidate is not; with the band off only the first stays."""
    from test_predict import SpotModel, spots

    from kt_stardist.predict.preprocess import prepare

    truth = np.array([[9.2, 20.3, 20.6], [10.1, 40.4, 60.7]])
    vol = spots((20, 80, 80), truth, amp=np.float32(300.0), bg=100.0, noise=3.0, seed=2)
    vol[9:11, 60:64, 20:24] += np.float32(6.0)  # a faint smear where the third candidate sits
    vol = np.random.default_rng(3).poisson(np.clip(vol, 0, None)).astype(np.float32)
    model = SpotModel()
    prep = prepare(vol, VOX, VOX, model.info.normalize, True, None)
    pts = np.array([[9, 20, 20], [10, 40, 60], [10, 62, 22]], float)
    cands = Candidates(points=pts, prob=np.array([0.9, 0.5, 0.5], np.float32),
                       dist=np.ones((3, len(model.backend.rays)), np.float32), nms_thresh=0.3, prob_floor=0.2)
    on = finish(model, prep, cands, 0.7, DetectSettings())
    got = on.points[["z", "y", "x"]].to_numpy()
    assert len(got) == 2 and on.diagnostics["n_confirmed"] == 1 and on.diagnostics["n_detections"] == 1
    assert np.all(np.linalg.norm((got[:, None] - truth[None]) * VOX, axis=2).min(0) < 0.05)
    assert len(on.instances[0]) == 2  # label images hold the confirmed instance too
    off = finish(model, prep, cands, 0.7, DetectSettings(confirm=ConfirmBand(enabled=False)))
    assert len(off.points) == 1 and off.diagnostics["n_confirmed"] == 0
    # not asked for: an explicit threshold is the threshold only
    assert len(finish(model, prep, cands, 0.7, DetectSettings(), confirm=False).points) == 1


def test_finish_does_not_confirm_a_band_candidate_on_a_blob_wider_than_a_spot():
    """A bright blob three times a spot's lateral width (a textured nucleus's grain) under a band
    candidate: its fit runs to the width bound, so the band does not keep it, though it is
    placed well enough; the same candidate on a compact spot is kept. The points table has no
    ``extended`` column."""
    from test_predict import SIGMA_PX, SpotModel, spots

    from kt_stardist.predict.preprocess import prepare

    model = SpotModel()
    cands = Candidates(points=np.array([[9, 20, 20], [10, 40, 60]], float), prob=np.array([0.9, 0.5], np.float32),
                       dist=np.ones((2, len(model.backend.rays)), np.float32), nms_thresh=0.3, prob_floor=0.2)
    kept = {}
    for name, width in [("spot", 1.0), ("blob", 3.0)]:
        vol = spots((20, 80, 80), [[9.2, 20.3, 20.6]], amp=300.0, bg=100.0)
        vol += spots((20, 80, 80), [[10.1, 40.4, 60.7]], amp=300.0, bg=0.0,
                     sigma=np.asarray(SIGMA_PX) * [1, width, width])
        vol = np.random.default_rng(4).poisson(vol).astype(np.float32)
        prep = prepare(vol, VOX, VOX, model.info.normalize, True, None)
        det = finish(model, prep, cands, 0.7, DetectSettings())
        assert "extended" not in det.points.columns
        kept[name] = (len(det.points), det.diagnostics["n_extended"])
    assert kept == {"spot": (2, 0), "blob": (1, 1)}  # the blob refused, and counted
    # the threshold search's cache: a refinement reused at another threshold (the same candidates
    # above the band's floor) gives what a fresh finish gives; other candidates are refined anew
    cache = {}
    for p, conf in ((0.7, True), (0.8, True), (0.8, False), (0.7, True), (0.45, False)):
        got = finish(model, prep, cands, p, DetectSettings(), confirm=conf, cache=cache)
        want = finish(model, prep, cands, p, DetectSettings(), confirm=conf)
        pd.testing.assert_frame_equal(got.points, want.points)
        assert got.diagnostics["n_confirmed"] == want.diagnostics["n_confirmed"]
    assert len(cache) == 2  # all three candidates (band floor 0.4, or 0.45), and the 0.9 one alone


@pytest.mark.parametrize("flag, confirm, adaptive", [([], True, True), (["--no-confirm"], False, True),
                                                     (["--stored-threshold"], False, False)])
def test_cli_confirm_flags_reach_the_run_settings(tmp_path, monkeypatch, flag, confirm, adaptive):
    import json

    from test_predict import TRUTH, SpotModel, _cli, spots

    from kt_stardist import io

    io.write_image(tmp_path / "a.tif", spots((10, 64, 64), TRUTH, noise=3), axes="ZYX", voxel_size_um=VOX)
    assert _cli(monkeypatch, [str(tmp_path / "a.tif"), "--out", str(tmp_path / "p.csv"), *flag], SpotModel()) == 0
    run = json.loads((tmp_path / "p.run.json").read_text())
    assert run["settings"]["detect"]["confirm"]["enabled"] is confirm
    assert run["settings"]["detect"]["adaptive"]["enabled"] is adaptive
    assert run["confirmed"] == 0 and run["refused_extended"] == 0  # every spot is above the threshold here
