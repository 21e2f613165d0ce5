"""The per-volume probability threshold (:func:`kt_stardist.predict.adaptive_threshold`):
lowered into a clean gap between background and spot detections, kept where there is none."""

from __future__ import annotations

import numpy as np
import pytest

from kt_stardist.errors import InputError
from kt_stardist.predict import adaptive_threshold
from kt_stardist.settings import AdaptiveThreshold, DetectSettings, from_dict, replace, to_dict

A = AdaptiveThreshold()


def _probs(seed=0, n_bg=120, spots=(0.62, 0.99, 70), noise_band=None):
    """Background detections piled up below 0.3, spots spread over ``spots`` (lo, hi, n), and
    optionally ``noise_band`` (lo, hi, n) detections evenly over the middle."""
    rng = np.random.default_rng(seed)
    p = [rng.uniform(0.2, 0.3, n_bg), rng.uniform(*spots)]
    if noise_band:
        p.append(rng.uniform(*noise_band))
    return np.concatenate(p)


def test_clean_gap_lowers_the_threshold_to_keep_less_confident_spots():
    p = _probs()
    t, how = adaptive_threshold(p, 0.77, A)
    assert how == "gap"
    # all the spots (>= 0.62) are kept, no background detection (< 0.3) is
    assert 0.3 < t <= 0.62
    assert np.sum(p >= t) == 70


def test_the_threshold_sits_at_the_top_of_the_gap_so_its_few_detections_stay_out():
    # 3 stray detections at 0.45 inside the gap (70 spots above 0.62): still a clean gap
    p = np.concatenate([_probs(), np.full(3, 0.45)])
    t, how = adaptive_threshold(p, 0.77, A)
    assert how == "gap" and 0.45 < t <= 0.62
    assert np.sum(p >= t) == 70


def test_noisy_image_keeps_the_stored_threshold():
    # detections all along 0.3-0.8 (noise the network is unsure of): no clean gap
    p = _probs(noise_band=(0.3, 0.8, 150))
    assert adaptive_threshold(p, 0.77, A) == (0.77, "stored")


def test_never_above_the_stored_threshold_and_disabled_or_empty():
    # the only gap is above the stored threshold
    p = np.concatenate([np.linspace(0.2, 0.75, 200), np.full(30, 0.97)])
    t, how = adaptive_threshold(p, 0.5, A)
    assert (t, how) == (0.5, "stored")
    assert adaptive_threshold(_probs(), 0.77, replace(A, enabled=False)) == (0.77, "stored")
    assert adaptive_threshold(np.zeros(0), 0.77, A) == (0.77, "stored")


def test_the_gap_must_be_clean_relative_to_the_spot_count():
    # ~10 detections in every window for 70 spots (a ratio of ~0.14): a gap at max_ratio 0.5, none at 0.01
    p = _probs(noise_band=(0.2, 0.8, 30))
    assert adaptive_threshold(p, 0.77, replace(A, max_ratio=0.5))[1] == "gap"
    assert adaptive_threshold(p, 0.77, replace(A, max_ratio=0.01)) == (0.77, "stored")


def test_settings_validate_and_round_trip():
    with pytest.raises(InputError, match="range_prob"):
        AdaptiveThreshold(range_prob=(0.8, 0.3))
    with pytest.raises(InputError, match="half_width"):
        AdaptiveThreshold(half_width=0.7)
    d = DetectSettings(adaptive=AdaptiveThreshold(max_ratio=0.1))
    assert from_dict(DetectSettings, to_dict(d)) == d
    assert A.floor == pytest.approx(0.2)


def test_detect_adapts_only_without_a_given_threshold():
    """Through :func:`kt_stardist.predict.detect` (stand-in network of test_predict): the threshold
    used and how it was chosen are recorded; a given ``prob_thresh`` is used as given."""
    from test_predict import SpotModel, spots

    from kt_stardist import predict as P

    truth = np.array([[5.0, 20.0, 20.0], [6.0, 44.0, 40.0], [5.0, 30.0, 56.0]])
    vol = spots((12, 64, 72), truth, amp=200.0, bg=100.0, noise=2.0)
    model = SpotModel()
    auto = P.detect(model, vol)
    assert auto.diagnostics["threshold_by"] in ("gap", "stored")
    assert auto.diagnostics["prob_thresh"] == auto.prob_thresh <= model.thresholds.prob
    given = P.detect(model, vol, settings=DetectSettings(prob_thresh=0.55))
    assert given.prob_thresh == 0.55 and given.diagnostics["threshold_by"] == "given"
    off = P.detect(model, vol, settings=DetectSettings(adaptive=AdaptiveThreshold(enabled=False)))
    assert off.prob_thresh == model.thresholds.prob and off.diagnostics["threshold_by"] == "stored"
