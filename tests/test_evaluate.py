import json
import math

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError
from kt_stardist.evaluate import evaluate_points, match_points

VOX = (0.3, 0.13, 0.13)


def x_um(*xs):
    """Points on a line along x, given in µm, returned in px (z=5, y=5)."""
    return np.array([[5.0, 5.0, 10 + x / 0.13] for x in xs])


def _greedy_tp(gt, pred, cutoff):
    """Nearest-pair-first matching, only to show that it differs from the optimum."""
    d = np.linalg.norm((gt[:, None] - pred[None]) * VOX, axis=2)
    tp, used_g, used_p = 0, set(), set()
    for k in np.argsort(d, axis=None):
        i, j = np.unravel_index(k, d.shape)
        if d[i, j] <= cutoff and i not in used_g and j not in used_p:
            tp, _ = tp + 1, (used_g.add(i), used_p.add(j))
    return tp


def test_optimal_beats_greedy():
    # gt A at 0, B at 0.7 µm; pred p at 0.3, q at -0.45. Greedy takes A-p (0.3) first and leaves
    # B-q (1.15 µm) beyond the cutoff; the optimum matches A-q (0.45) and B-p (0.4).
    gt, pred = x_um(0.0, 0.7), x_um(0.3, -0.45)
    assert _greedy_tp(gt, pred, 0.5) == 1
    m = match_points(gt, pred, VOX, cutoff_um=0.5)
    assert (m.tp, m.fp, m.fn) == (2, 0, 0)
    assert m.gt_idx.tolist() == [0, 1] and m.pred_idx.tolist() == [1, 0]
    np.testing.assert_allclose(m.dist_um, [0.45, 0.4], atol=1e-9)
    assert m.rmse_nm == pytest.approx(math.sqrt((450**2 + 400**2) / 2))
    assert m.precision == m.recall == m.f1 == 1.0


def test_counts_and_min_total_distance():
    # gt at 0, 1, 2, 5 µm; pred at 0.1, 1.05, 1.2, 9 µm. gt 0 <- 0.1, gt 1 <- 1.05 (not 1.2),
    # 1.2 also reaches gt 1 only (gt 2 is 0.8 away): one FP; gt 2 and gt 5 unmatched; 9 is FP.
    m = match_points(x_um(0, 1, 2, 5), x_um(0.1, 1.05, 1.2, 9), VOX, cutoff_um=0.5)
    assert (m.tp, m.fp, m.fn, m.n_gt, m.n_pred) == (2, 2, 2, 4, 4)
    assert m.pred_idx.tolist() == [0, 1]
    assert m.precision == 0.5 and m.recall == 0.5 and m.f1 == 0.5
    assert m.rmse_nm == pytest.approx(math.sqrt((100**2 + 50**2) / 2))


def test_cutoff_boundary_is_inclusive():
    gt = np.array([[5.0, 5.0, 5.0]])
    on = np.array([[5.0, 5.0, 5.0 + 0.5 / 0.13]])  # exactly 0.5 µm
    over = np.array([[5.0, 5.0, 5.0 + 0.5001 / 0.13]])
    assert match_points(gt, on, VOX, 0.5).tp == 1
    assert match_points(gt, over, VOX, 0.5).tp == 0
    assert match_points(gt, gt, VOX, 0.0).tp == 1


def test_voxel_anisotropy():
    gt = np.array([[10.0, 10.0, 10.0]])
    z1 = match_points(gt, gt + [1, 0, 0], VOX, cutoff_um=0.5)
    x1 = match_points(gt, gt + [0, 0, 1], VOX, cutoff_um=0.5)
    assert z1.dist_um[0] == pytest.approx(0.3) and z1.rmse_nm == pytest.approx(300)
    assert x1.dist_um[0] == pytest.approx(0.13) and x1.rmse_nm == pytest.approx(130)
    # cutoff 0.2 µm: the 1-px x offset matches, the 1-px z offset does not
    assert match_points(gt, gt + [1, 0, 0], VOX, 0.2).tp == 0
    assert match_points(gt, gt + [0, 0, 1], VOX, 0.2).tp == 1
    # another voxel size changes the answer
    assert match_points(gt, gt + [1, 0, 0], (0.1, 0.1, 0.1), 0.2).tp == 1


def test_seuclidean_historical_metric():
    gt = np.array([[10.0, 10.0, 10.0]])
    # weighted px distance: 1 px in z -> sqrt(1/3) = 0.577; 1 px in x -> sqrt(1/1.3) = 0.877
    z1 = match_points(gt, gt + [1, 0, 0], VOX, 0.6, metric="seuclidean")
    x1 = match_points(gt, gt + [0, 0, 1], VOX, 0.6, metric="seuclidean")
    assert z1.tp == 1 and x1.tp == 0  # the opposite of physical distance
    assert z1.dist_um[0] == pytest.approx(0.3)  # reported distances stay Euclidean µm
    w = match_points(gt, gt + [0, 0, 1], VOX, 0.6, metric="seuclidean", weights=(3, 3, 3))
    assert w.tp == 1  # sqrt(1/3)
    with pytest.raises(InputError, match="metric"):
        match_points(gt, gt, VOX, metric="manhattan")


def test_empty_conventions():
    none = np.zeros((0, 3))
    some = np.array([[1.0, 2, 3], [4, 5, 6]])
    both = match_points(none, none)
    assert (both.tp, both.fp, both.fn, both.precision, both.recall, both.f1) == (0, 0, 0, 1, 1, 1)
    assert math.isnan(both.rmse_nm)
    missed = match_points(some, none)
    assert (missed.fn, missed.precision, missed.recall, missed.f1) == (2, 1.0, 0.0, 0.0)
    spurious = match_points(none, some)
    assert (spurious.fp, spurious.precision, spurious.recall, spurious.f1) == (2, 0.0, 1.0, 0.0)


def test_evaluate_points_per_frame_and_overall():
    gt = pd.DataFrame({"t": [0, 0, 1, 1, 2], "z": [5, 5, 5, 5, 5.0], "y": [5, 5, 5, 5, 5.0],
                       "x": [10, 30, 10, 30, 10.0]})
    # frame 0: both matched (0 and 1 px off in x); frame 1: one matched, one FP far away;
    # frame 2: missed; frame 3: only a prediction
    pred = pd.DataFrame({"t": [0, 0, 1, 1, 3], "z": [5, 5, 5, 5, 5.0], "y": [5, 5, 5, 5, 5.0],
                         "x": [10, 31, 10, 60, 10.0]})
    per, overall = evaluate_points(gt, pred, VOX, 0.5)
    assert per["t"].tolist() == [0, 1, 2, 3]
    assert per[["tp", "fp", "fn"]].to_numpy().tolist() == [[2, 0, 0], [1, 1, 1], [0, 0, 1], [0, 1, 0]]
    assert per.loc[0, "rmse_nm"] == pytest.approx(130 / math.sqrt(2))
    assert (overall["tp"], overall["fp"], overall["fn"], overall["n_frames"]) == (3, 2, 2, 4)
    assert overall["precision"] == pytest.approx(3 / 5) and overall["f1"] == pytest.approx(0.6)
    assert overall["rmse_nm"] == pytest.approx(130 / math.sqrt(3))
    # no time column: one frame, so points of different frames can match (four points at x=10)
    per1, ov1 = evaluate_points(gt.drop(columns="t"), pred.drop(columns="t"), VOX, 0.5)
    assert len(per1) == 1 and "t" not in per1 and (ov1["tp"], ov1["fp"], ov1["fn"]) == (4, 1, 1)
    with pytest.raises(InputError, match="ground truth points have a 't' column, with 3 frames"):
        evaluate_points(gt, pred.drop(columns="t"))
    # a volume's points against predict's output for it (t = 0 throughout): one frame
    one = pred[pred["t"] == 0]
    per2, ov2 = evaluate_points(gt[gt["t"] == 0].drop(columns="t"), one, VOX, 0.5)
    assert len(per2) == 1 and (ov2["tp"], ov2["fp"], ov2["fn"]) == (2, 0, 0)


def test_cli_evaluate(tmp_path, capsys):
    import kt_stardist.io  # noqa: F401
    from kt_stardist.cli import main

    gt, pred, js = tmp_path / "gt.csv", tmp_path / "pred.csv", tmp_path / "scores.json"
    gt.write_text("t,z,y,x\n0,5,5,10\n0,5,5,30\n1,5,5,10\n")
    pred.write_text("t,z,y,x,prob\n0,5,5,11,0.9\n0,6,5,30,0.8\n1,5,5,50,0.7\n")
    assert main(["evaluate", str(gt), str(pred), "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "TP" in out and "RMSE_nm" in out and "all" in out
    doc = json.loads(js.read_text())
    assert [(r["t"], r["tp"], r["fp"], r["fn"]) for r in doc["per_frame"]] == [(0, 2, 0, 0), (1, 0, 1, 1)]
    o = doc["overall"]
    assert (o["tp"], o["fp"], o["fn"]) == (2, 1, 1) and o["f1"] == pytest.approx(2 / 3)
    assert o["rmse_nm"] == pytest.approx(math.sqrt((130**2 + 300**2) / 2))
    run = json.loads((tmp_path / "scores.run.json").read_text())  # every command's run record
    assert run["output"] == str(js) and run["arguments"]["json"] == str(js)
    assert doc["per_frame"][1]["rmse_nm"] is None  # NaN written as null
    # a cutoff of 0.2 µm drops the 1-px z offset (0.3 µm)
    assert main(["evaluate", str(gt), str(pred), "--cutoff-um", "0.2", "--json", str(js)]) == 0
    assert json.loads(js.read_text())["overall"]["tp"] == 1
    assert main(["evaluate", str(gt), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_score_thresholds_counts_each_threshold_and_its_inclusiveness():
    """Thresholded candidates scored by summed counts over volumes; ``inclusive`` decides a
    candidate whose score equals the threshold."""
    from kt_stardist.evaluate import score_thresholds

    vs = (0.3, 0.13, 0.13)
    truth = [np.array([[5, 10, 10], [5, 30, 30]], float), np.array([[5, 20, 20]], float)]
    cands = [(np.array([[5, 10, 11], [5, 30, 30], [5, 50, 50]], float), np.array([0.9, 0.5, 0.7])),
             (np.array([[5, 20, 20]], float), np.array([0.5]))]
    t = score_thresholds(cands, truth, vs, [0.5, 0.8])
    assert t[["tp", "fp", "fn"]].values.tolist() == [[3, 1, 0], [1, 0, 2]]
    assert t.f1.tolist() == pytest.approx([6 / 7, 0.5])
    strict = score_thresholds(cands, truth, vs, [0.5], inclusive=False)
    assert strict[["tp", "fp", "fn"]].values.tolist() == [[1, 1, 2]]
