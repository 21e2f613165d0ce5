import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError
from kt_stardist.pairs import (assign_pairs, match_pairs, pair_recovery, pairs_table,
                               plate_normal, vote_track_partners)

VOX = np.array([0.3, 0.13, 0.13])


def plate_layout(n_pairs=40, seed=0, sep_um=0.9, noise_um=0.05, radius_um=5.0,
                 normal=(0.3, 0.2, 1.0), min_gap_um=1.0):
    """Sister pairs on a disc (the plate) with sister axes near its normal; px table + gt."""
    rng = np.random.default_rng(seed)
    normal = np.asarray(normal, float) / np.linalg.norm(normal)
    a = np.cross(normal, [1.0, 0, 0])
    a /= np.linalg.norm(a)
    b = np.cross(normal, a)
    centres = []
    while len(centres) < n_pairs:
        r, th = radius_um * np.sqrt(rng.random()), 2 * np.pi * rng.random()
        c = r * np.cos(th) * a + r * np.sin(th) * b
        if all(np.linalg.norm(c - o) > min_gap_um for o in centres):
            centres.append(c)
    centres = np.array(centres) + [9.0, 65.0, 65.0]
    axis = normal + rng.normal(0, 0.2, (n_pairs, 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    half = (sep_um * (1 + 0.1 * rng.normal(size=n_pairs)) / 2)[:, None]
    pts = np.concatenate([centres - axis * half, centres + axis * half])
    pts += rng.normal(0, noise_um, pts.shape)
    df = pd.DataFrame(pts / VOX, columns=["z", "y", "x"])
    df["gt_pair_id"] = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
    return df, normal


def line_points(z_um):
    """Points on a line along z (µm) -> px table."""
    z = np.asarray(z_um, float)
    return pd.DataFrame({"z": z / VOX[0], "y": 100.0, "x": 100.0})


def test_plate_normal_recovered():
    df, normal = plate_layout(seed=3)
    n, planarity = plate_normal(df[["z", "y", "x"]].to_numpy() * VOX)
    assert abs(n @ normal) > 0.98
    assert planarity > 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pairs_found_on_noisy_plate(seed):
    df, _ = plate_layout(seed=seed)
    out = assign_pairs(df, VOX)
    rec = pair_recovery(out)
    assert rec["n_gt"] == 40
    assert rec["recovered"] >= 0.95 and rec["precision"] >= 0.95
    # no point in two pairs, each pair has one sister 1 and one sister 2
    counts = out.loc[out.paired, "pair_id"].value_counts()
    assert (counts == 2).all()
    assert (out[out.paired].groupby("pair_id")["sister"].apply(sorted).map(tuple) == (1, 2)).all()
    table = pairs_table(out, VOX)
    assert len(table) == counts.size
    assert 0.8 < table["distance_um"].median() < 1.0
    assert table["angle_deg"].median() < 20


def test_plate_term_matters_on_dense_plate():
    # distance alone confuses neighbours on a crowded plate; the plate-normal term fixes it
    df, _ = plate_layout(seed=0, min_gap_um=0.8, radius_um=4.0)
    with_normal = pair_recovery(assign_pairs(df, VOX))["recovered"]
    distance_only = pair_recovery(assign_pairs(df, VOX, angle_weight=0))["recovered"]
    assert with_normal == 1.0
    assert distance_only < with_normal


def test_point_without_partner_is_flagged():
    df, _ = plate_layout(seed=4)
    lonely = 7  # drop the sister of row 7 and add one far-away point
    df = df.drop(index=lonely + 40).reset_index(drop=True)
    far = pd.DataFrame({"z": [5 / VOX[0]], "y": [20 / VOX[1]], "x": [20 / VOX[2]], "gt_pair_id": [-1]})
    df = pd.concat([df, far], ignore_index=True)
    out = assign_pairs(df, VOX)
    for i in (lonely, len(df) - 1):
        assert out.loc[i, "pair_id"] == -1
        assert out.loc[i, "sister"] == 0
        assert not out.loc[i, "paired"]
    assert out["paired"].sum() == 2 * 39
    assert len(out) == len(df)  # unpaired points are kept


def test_optimal_beats_greedy_on_a_chain():
    # A-B 0.9 µm, B-C 0.8 µm, C-D 0.9 µm: greedy takes B-C and strands A and D
    df = line_points([0.0, 0.9, 1.7, 2.6])
    opt = assign_pairs(df, VOX, method="optimal")
    greedy = assign_pairs(df, VOX, method="greedy")
    assert opt["paired"].all()
    assert opt.pair_id[0] == opt.pair_id[1] != opt.pair_id[2] == opt.pair_id[3]
    assert greedy["paired"].tolist() == [False, True, True, False]
    assert greedy.pair_id[1] == greedy.pair_id[2]


def test_match_pairs_optimal_total_cost():
    # 4 nodes, all edges allowed: the optimum is the perfect matching of least cost
    ij = np.array([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])
    cost = np.array([0.1, 0.5, 0.5, 0.05, 0.5, 0.2])
    assert match_pairs(4, ij, cost, 1.0, "optimal").tolist() == [[0, 1], [2, 3]]
    assert match_pairs(4, ij, cost, 1.0, "greedy").tolist() == [[0, 3], [1, 2]]


def test_max_distance():
    out = assign_pairs(line_points([0.0, 1.7, 10.0, 11.5]), VOX, max_dist_um=1.6)
    assert out["paired"].tolist() == [False, False, True, True]
    out = assign_pairs(line_points([0.0, 1.7]), VOX, max_dist_um=1.8)
    assert out["paired"].all()


def test_pairs_table_values():
    df = pd.DataFrame({"t": [0, 0], "z": [10.0, 13.0], "y": [50.0, 50.0], "x": [40.0, 40.0]})
    out = assign_pairs(df, VOX)
    table = pairs_table(out, VOX)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["distance_um"] == pytest.approx(0.9)
    assert (row["z"], row["y"], row["x"]) == pytest.approx((11.5, 50.0, 40.0))
    assert row["z_um"] == pytest.approx(11.5 * 0.3)
    assert np.isnan(row["angle_deg"])  # two points: no plate, no normal


def test_use_tracks_votes_over_frames():
    # two pairs (tracks 0+1, 2+3) along z; in frame 2 tracks 1 and 2 come close, and a single
    # frame pairing would take 1-2; the vote over the other frames keeps 0-1 and 2-3
    rows = []
    for t in range(5):
        z = [0.0, 1.1, 1.6, 2.7] if t == 2 else [0.0, 0.8, 2.4, 3.2]
        for k, zk in enumerate(z):
            rows.append({"t": t, "z": zk / VOX[0], "y": 100.0, "x": 100.0, "track_id": k})
    df = pd.DataFrame(rows)
    frame = assign_pairs(df, VOX, angle_weight=0)
    f2 = frame[frame.t == 2].set_index("track_id")
    assert f2.loc[1, "pair_id"] == f2.loc[2, "pair_id"] >= 0
    assert not f2.loc[0, "paired"]
    partners = vote_track_partners(frame)
    assert partners[0][0] == 1 and partners[2][0] == 3
    tracked = assign_pairs(df, VOX, angle_weight=0, use_tracks=True)
    assert tracked["paired"].all()
    by_track = tracked.groupby("track_id")["pair_id"].agg(["nunique", "first"])
    assert (by_track["nunique"] == 1).all()  # constant over time
    assert by_track.loc[0, "first"] == by_track.loc[1, "first"] != by_track.loc[2, "first"]
    assert (tracked.groupby("track_id")["sister"].nunique() == 1).all()


def test_bad_input():
    with pytest.raises(InputError, match="missing column"):
        assign_pairs(pd.DataFrame({"z": [1.0], "y": [2.0]}), VOX)
    with pytest.raises(InputError, match="voxel_size_um"):
        assign_pairs(line_points([0, 1]), (0.3, 0.13))
    with pytest.raises(InputError, match="track_id"):
        assign_pairs(line_points([0, 1]), VOX, use_tracks=True)


def test_real_positions_median_distance():
    from pathlib import Path

    import kt_stardist

    path = Path(kt_stardist.__file__).parent / "data" / "real_kinetochores_t00_t04.csv"
    df = pd.read_csv(path)
    out = assign_pairs(df[["t", "z", "y", "x"]], VOX)
    table = pairs_table(out, VOX)
    assert table.groupby("t").size().min() >= 35  # 39 complete pairs per frame
    assert 0.7 <= table["distance_um"].median() <= 1.2


def test_cli_round_trip(tmp_path):
    from kt_stardist import io as io
    from kt_stardist.cli import main

    df, _ = plate_layout(seed=5)
    df.insert(0, "t", 0)
    src = tmp_path / "points.csv"
    df.to_csv(src, index=False)
    out, table = tmp_path / "pairs.csv", tmp_path / "table.csv"
    rc = main(["pairs", str(src), "--voxel-size", "0.3", "0.13", "0.13",
               "--out", str(out), "--pairs-table", str(table)])
    assert rc == 0
    got = io.read_points(out)
    assert {"pair_id", "sister", "paired"} <= set(got.columns)
    assert pair_recovery(got)["recovered"] >= 0.95
    tab = pd.read_csv(table)
    assert len(tab) == got.loc[got.pair_id >= 0, "pair_id"].nunique()
    assert {"t", "pair_id", "distance_um", "z_um", "angle_deg"} <= set(tab.columns)
    assert main(["pairs", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
