"""One spot found twice: after refinement, a point closer than ``min_separation_um`` to a more
probable one is dropped (issue 18: such twins took over sister tracks)."""

import numpy as np
import pytest

from kt_stardist.errors import InputError
from kt_stardist.predict.detect import duplicates
from kt_stardist.settings import DetectSettings

VOX = (0.3, 0.13, 0.13)


def test_duplicates_keeps_the_more_probable_of_two_close_points_in_um():
    pts = np.array([[10, 10, 10], [10, 10, 11.5], [10, 10, 14], [10.5, 30, 30], [11, 30, 30]], float)
    prob = np.array([0.7, 0.9, 0.8, 0.6, 0.95])
    # 1.5 px in x = 0.195 µm (twins), 2.5 px = 0.325 µm (kept); 0.5 px in z = 0.15 µm (twins)
    assert duplicates(pts, prob, VOX, 0.25).tolist() == [True, False, False, True, False]
    assert not duplicates(pts, prob, VOX, 0.0).any()
    # a chain: only points near a *kept* point go
    chain = np.array([[0, 0, 0], [0, 0, 1.5], [0, 0, 3.0]], float)
    assert duplicates(chain, [0.9, 0.8, 0.7], VOX, 0.25).tolist() == [False, True, False]
    assert duplicates(np.zeros((0, 3)), [], VOX, 0.25).shape == (0,)


def test_min_separation_is_validated():
    with pytest.raises(InputError, match="min_separation_um"):
        DetectSettings(min_separation_um=-0.1)


def test_detect_drops_a_spot_found_twice():
    from test_predict import SpotBackend, SpotModel, _detect, spots

    class TwinBackend(SpotBackend):
        """Each detection also comes back 1 px further in x, less probable: one spot, found twice."""

        def nms(self, prob, dist, points, nms_thresh):
            p, pr, d = super().nms(prob, dist, points, nms_thresh)
            return np.concatenate([p, p + [0, 0, 1]]), np.concatenate([pr, pr * 0.9]), np.concatenate([d, d])

    truth = np.array([[8, 20.3, 20.6], [9, 40.2, 44.7]])
    vol = spots((18, 64, 64), truth, noise=2, seed=4)
    model = SpotModel()
    model.backend = TwinBackend()
    kept = _detect(model, vol, split__enabled=False)
    both = _detect(model, vol, split__enabled=False, min_separation_um=0.0)
    def close_pairs(det):
        from scipy.spatial.distance import pdist

        return int(np.sum(pdist(det.points[["z", "y", "x"]].to_numpy() * VOX) < 0.25))

    # refinement pulls some twins onto their spot, pushes others off it (a neighbour held fixed)
    assert len(both.points) == 4 and close_pairs(both) >= 1
    assert close_pairs(kept) == 0 and kept.diagnostics["n_duplicates"] == close_pairs(both)
    assert len(kept.points) == len(both.points) - kept.diagnostics["n_duplicates"]
    d = np.linalg.norm((kept.points[["z", "y", "x"]].to_numpy()[:, None] - truth[None]) * VOX, axis=2)
    assert np.all(d.min(0) < 0.05)  # the more probable point of each spot stays
