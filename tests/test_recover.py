"""Track-aided recovery (kt_stardist.recover): spots missed in 1-2 frames found again by a
likelihood-ratio test, nothing added where the image holds only background. No model needed."""

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError
from kt_stardist.recover import background_lr, gap_positions, null_dof, recover_points
from kt_stardist.settings import RecoverSettings
from kt_stardist.simulate import render_spots
from kt_stardist.tracks import track_points

VOX = np.array([0.3, 0.13, 0.13])
SHAPE = (14, 48, 48)
GAIN, OFFSET, READ = 2.0, 100.0, 3.0


def truth(n_frames=6):
    """Six spots (three sister pairs 1 µm apart) drifting 0.1 µm per frame in y: t, z, y, x px, track_id."""
    base = np.array([[7, 12, 12], [7, 12, 19.7], [6, 30, 14], [8, 30, 21.7], [7, 20, 33], [7, 27.7, 33]], float)
    rows = [(t, *(p + [0, 0.77 * t, 0]), k) for t in range(n_frames) for k, p in enumerate(base)]
    return pd.DataFrame(rows, columns=["t", "z", "y", "x", "track_id"])


def movie(points, seed=0, peak=40.0, bg=30.0):
    """(T, Z, Y, X) camera counts: Gaussian spots on a sloped background, Poisson shot noise,
    gain 2, offset 100, read noise 3 counts."""
    rng = np.random.default_rng(seed)
    n = int(points["t"].max()) + 1
    ramp = bg * (1 + 0.8 * np.linspace(-1, 1, SHAPE[2]))[None, None, :]
    frames = []
    for t in range(n):
        ph = np.broadcast_to(ramp, SHAPE).astype(np.float32).copy()
        p = points[points["t"] == t][["z", "y", "x"]].to_numpy()
        render_spots(SHAPE, p, peak, np.array([0.25, 0.11, 0.11]) / VOX, out=ph)
        counts = rng.poisson(ph) * GAIN + OFFSET + rng.normal(0, READ, SHAPE)
        frames.append(counts.astype(np.float32))
    return np.stack(frames)


def detections(points, missing):
    """``points`` without the (t, track_id) in ``missing``, track ids dropped (to be linked)."""
    keep = ~points.apply(lambda r: (int(r.t), int(r.track_id)) in missing, axis=1)
    return points[keep][["t", "z", "y", "x"]].reset_index(drop=True)


def linked(det, gap=2):
    return track_points(det, VOX, gap=gap)


def dist_um(a, b):
    return float(np.linalg.norm((np.asarray(a, float) - np.asarray(b, float)) * VOX))


def test_gap_positions_interpolate():
    det = linked(detections(truth(), {(2, 0), (3, 0)}))
    gaps = gap_positions(det, 2)
    assert list(gaps["t"]) == [2, 3]
    want = truth().query("track_id == 0 and t in (2, 3)")[["z", "y", "x"]].to_numpy()
    assert np.allclose(gaps[["z", "y", "x"]].to_numpy(), want, atol=1e-6)
    assert len(gap_positions(det, 1)) == 0  # a 2-frame gap is longer than 1


def test_missed_spot_is_recovered_into_its_track():
    pts = truth()
    det = linked(detections(pts, {(2, 3)}))
    out = recover_points(det, movie(pts), VOX)
    rec = out[out["recovered"]]
    assert len(rec) == 1
    r = rec.iloc[0]
    assert r["t"] == 2
    assert dist_um(r[["z", "y", "x"]], pts.query("t == 2 and track_id == 3")[["z", "y", "x"]].iloc[0]) < 0.15
    track = out[out["track_id"] == r["track_id"]]
    assert sorted(track["t"]) == list(range(6))  # joined its own track: one point per frame
    assert r["recovery_lr"] > 0
    assert out["recovered"].dtype == bool and (~out["recovered"]).sum() == len(det)


def test_searches_read_only_a_box_of_each_frame_with_the_same_numbers():
    """Recovery reads the box around a frame's searched places (and the calibration region), in
    the frame's dtype: the windows, the calibration and the recovered table are those of the
    whole frame read as float64, for a numpy or a lazy (dask) movie alike."""
    import dask.array as da

    from kt_stardist.recover import _Box, _calibration_region, _half_px, spot_lr

    pts = truth()
    mov = np.round(movie(pts, peak=150.0)).astype(np.uint16)
    frame, st = mov[2], RecoverSettings()
    places = np.array([[0.2, 3.4, 44.6], [7.0, 20.0, 20.0], [13.4, 47.2, 1.6]])  # at the frame's edges too
    box = _Box(frame, np.round(places.min(0)), np.round(places.max(0)), _half_px(st, VOX))
    assert box.data.dtype == np.uint16 and box.data.shape == SHAPE  # these places span the frame
    inner = _Box(frame, np.array([7.0, 20, 20]), np.array([7.0, 20, 20]), _half_px(st, VOX))
    assert inner.data.size < frame.size / 10
    full = frame.astype(np.float64)
    for b, ps in ((box, places), (inner, places[1:2])):
        for p in ps:
            got, want = spot_lr(b, p, pts.query("t == 2")[["z", "y", "x"]].to_numpy()[:1], VOX, st, GAIN, OFFSET), \
                spot_lr(full, p, pts.query("t == 2")[["z", "y", "x"]].to_numpy()[:1], VOX, st, GAIN, OFFSET)
            assert (got is None) == (want is None)
            if got is not None:
                assert np.array_equal(got[0], want[0]) and got[1:] == want[1:]
    with pytest.raises(IndexError, match="outside the box"):
        spot_lr(inner, places[0], (), VOX, st, GAIN, OFFSET)
    det = pts.query("t == 2")[["z", "y", "x"]].to_numpy()[1:3]
    lo, hi = _calibration_region(det, SHAPE, VOX)
    cal = _Box(frame, np.round(lo), np.round(hi), _half_px(st, VOX))
    assert np.array_equal(background_lr(cal, det, VOX, st, GAIN, OFFSET), background_lr(full, det, VOX, st, GAIN, OFFSET))
    # the whole search, as before (each frame read whole as float64) and lazily
    det = linked(detections(pts, {(2, 3), (4, 0)}))  # two frames searched, each its own box
    want = recover_points(det, mov.astype(np.float64), VOX)
    assert want["recovered"].sum() == 2
    pd.testing.assert_frame_equal(recover_points(det, mov, VOX), want)
    pd.testing.assert_frame_equal(recover_points(det, da.from_array(mov, chunks=(1, 7, 24, 24)), VOX), want)


def test_gap_of_two_frames_recovered():
    pts = truth()
    det = linked(detections(pts, {(2, 4), (3, 4)}))
    out = recover_points(det, movie(pts), VOX)
    rec = out[out["recovered"]]
    assert sorted(rec["t"]) == [2, 3]
    assert rec["track_id"].nunique() == 1
    for _, r in rec.iterrows():
        true = pts.query(f"t == {r.t} and track_id == 4")[["z", "y", "x"]].iloc[0]
        assert dist_um(r[["z", "y", "x"]], true) < 0.15


def test_background_only_is_not_recovered():
    """The spot is gone from the image too (only background there): the test rejects it, for
    each of several noise draws."""
    pts = truth()
    gone = pts[~((pts["t"] == 2) & (pts["track_id"].isin([0, 5])))]
    det = linked(detections(pts, {(2, 0), (2, 5)}))
    assert len(gap_positions(det, 2)) == 2
    for seed in range(4):
        out = recover_points(det, movie(gone, seed=seed), VOX)
        assert not out["recovered"].any()
    # ...while with the spots in the image both are found (the same gaps, same noise draws)
    assert recover_points(det, movie(pts, seed=0), VOX)["recovered"].sum() == 2


def test_no_recovery_next_to_an_existing_detection():
    """A detection of another track sits where the gap's spot would be: nothing is added."""
    pts = truth()
    det = linked(detections(pts, {(2, 0)}))
    z, y, x = pts.query("t == 2 and track_id == 0")[["z", "y", "x"]].to_numpy()[0] + [0, 1, 0]
    det = pd.concat([det, pd.DataFrame({"t": [2], "z": [z], "y": [y], "x": [x], "track_id": [99]})],
                    ignore_index=True)
    assert len(gap_positions(det, 2)) == 1
    assert not recover_points(det, movie(pts), VOX)["recovered"].any()


def test_background_calibration_is_conservative():
    """On a frame without spots the fitted null passes about ``false_alarm`` of new places, not more."""
    from kt_stardist.predict.mle import estimate_camera

    vol = movie(truth(1), seed=3, peak=0.0)[0]
    cam = estimate_camera(vol)
    g, z = cam.gain, cam.offset
    s = RecoverSettings(calibration_windows=40, calibration_clear_um=0.0)
    dof = null_dof(background_lr(vol, np.empty((0, 3)), VOX, s, g, z, seed=1))
    from kt_stardist.recover import lr_threshold

    fresh = background_lr(vol, np.empty((0, 3)), VOX, s, g, z, seed=2)
    assert dof >= 4
    assert (fresh >= lr_threshold(0.1, dof)).mean() <= 0.2


def test_columns_kept_and_bad_input():
    pts = truth()
    det = linked(detections(pts, {(2, 3)}))
    det["pair_id"] = 7
    det["prob"] = 0.9
    out = recover_points(det, movie(pts), VOX)
    rec = out[out["recovered"]]
    assert out["pair_id"].dtype.kind == "i" and (rec["pair_id"] == -1).all()
    assert rec["prob"].isna().all()
    with pytest.raises(InputError, match="track_id"):
        recover_points(pts.drop(columns="track_id"), movie(pts), VOX)
    with pytest.raises(InputError, match="outside"):
        recover_points(det.assign(t=det["t"] + 5), movie(pts), VOX)
    with pytest.raises(InputError, match="time-lapse"):
        recover_points(det, movie(pts)[0], VOX)
    with pytest.raises(InputError, match="false_alarm"):
        RecoverSettings(false_alarm=0)


def test_cli_track_with_image(tmp_path, capsys):
    """kt-stardist track POINTS --image MOVIE --out: the missed spots come back (one inside a
    track, one in the last frame), TrackMate and napari outputs still work; --no-recover leaves
    the points as they were."""
    import xml.etree.ElementTree as ET

    from kt_stardist import io
    from kt_stardist.cli import main

    pts = truth()
    tif = tmp_path / "movie.tif"
    io.write_image(tif, movie(pts)[:, :, None], axes="TZCYX", voxel_size_um=tuple(VOX))
    src = tmp_path / "points.csv"
    detections(pts, {(3, 1), (5, 4)}).assign(prob=0.8).to_csv(src, index=False)
    out, xml = tmp_path / "tracks.csv", tmp_path / "tracks.xml"
    assert main(["track", str(src), "--image", str(tif), "--out", str(out), "--trackmate", str(xml),
                 "--napari-tracks", str(tmp_path / "nap.csv")]) == 0
    assert "2 recovered" in capsys.readouterr().err
    got = io.read_points(out)
    assert sorted(got.loc[got["recovered"], "t"]) == [3, 5]
    assert got.groupby("track_id").size().eq(6).sum() == 6
    root = ET.parse(xml).getroot()
    assert len(root.findall("Model/AllSpots/SpotsInFrame/Spot")) == len(got)
    cam = tmp_path / "cam.csv"  # the camera given instead of measured
    assert main(["track", str(src), "--image", str(tif), "--camera", "2", "95.5", "--out", str(cam)]) == 0
    assert io.read_points(cam)["recovered"].sum() == 2
    # points paired first: the recovered point is paired with its sister track's point
    paired_src, paired_out = tmp_path / "pairs.csv", tmp_path / "paired_tracks.csv"
    assert main(["pairs", str(src), "--out", str(paired_src)]) == 0
    assert main(["track", str(paired_src), "--image", str(tif), "--out", str(paired_out)]) == 0
    got = io.read_points(paired_out)
    r = got[got["recovered"] & (got["t"] == 3)].iloc[0]
    assert r["pair_id"] >= 0 and r["pair_track_id"] >= 0
    mate = got[(got["t"] == r["t"]) & (got["pair_id"] == r["pair_id"]) & ~got["recovered"]]
    assert len(mate) == 1 and {int(mate["sister"].iloc[0]), int(r["sister"])} == {1, 2}
    true_mate = pts.query("t == 3 and track_id == 0")[["z", "y", "x"]].iloc[0]
    assert dist_um(mate[["z", "y", "x"]].iloc[0], true_mate) < 0.05
    off = tmp_path / "off.csv"
    assert main(["track", str(src), "--image", str(tif), "--no-recover", "--out", str(off)]) == 0
    assert len(io.read_points(off)) == len(pts) - 2


def test_cli_predict_track_recovers_a_missed_spot(tmp_path, monkeypatch, capsys):
    """kt-stardist predict MOVIE (tracks by default on a time-lapse): a spot the detector missed
    in a middle frame comes back with recovered=True (counted in the log and run.json);
    --no-recover leaves the gap; --no-track links nothing."""
    import dataclasses
    import json

    import kt_stardist.model as M
    import kt_stardist.predict as P
    from kt_stardist import io
    from kt_stardist.cli import main
    from tests.test_predict import SpotModel

    pts = truth(n_frames=4)
    tif = tmp_path / "movie.tif"
    io.write_image(tif, movie(pts, peak=300.0, bg=10.0), axes="TZYX", voxel_size_um=tuple(VOX))
    lost = pts.query("t == 2 and track_id == 1")[["z", "y", "x"]].to_numpy()[0]
    detect_frame = P.detect_frame

    def missing_one(model, image, t, *args, **kwargs):  # the detector misses track 1 at t = 2
        det = detect_frame(model, image, t, *args, **kwargs)
        d = np.linalg.norm((det.points[["z", "y", "x"]].to_numpy() - lost) * VOX, axis=1)
        return dataclasses.replace(det, points=det.points[d > 0.3].reset_index(drop=True)) if t == 2 else det

    monkeypatch.setattr(P, "detect_frame", missing_one)
    monkeypatch.setattr(M, "load_model", lambda path=None, weights=None: SpotModel())
    fast, out = ["--prob-thresh", "0.7"], tmp_path / "o"  # the stand-in's few candidates: fast
    assert main(["predict", str(tif), *fast, "--out-dir", str(out)]) == 0
    assert "(1 recovered from tracks)" in capsys.readouterr().err
    got = io.read_points(out / "movie.csv")
    rec = got[got["recovered"]]
    assert len(rec) == 1 and rec["t"].item() == 2 and dist_um(rec[["z", "y", "x"]].iloc[0], lost) < 0.1
    assert (got.groupby("track_id").size() == 4).sum() == 6  # six whole tracks, the gap filled
    run = json.loads((out / "movie.run.json").read_text())
    assert run["recovered"] == 1 and run["settings"]["recover"] is True
    assert run["tracked"] is True and run["settings"]["tracks"] is None  # on by default: a time-lapse
    # --no-recover: the gap stays; the detections of the first run are reused (recovery is not detection)
    assert main(["predict", str(tif), *fast, "--track", "--no-recover", "--out-dir", str(out)]) == 0
    assert "(0 computed, 4 already done)" in capsys.readouterr().err
    got = io.read_points(out / "movie.csv")
    assert len(got) == len(pts) - 1 and "recovered" not in got.columns
    assert "recovered" not in json.loads((out / "movie.run.json").read_text())
    # --no-track: points of every frame, neither linked nor recovered; detections reused again
    assert main(["predict", str(tif), *fast, "--no-track", "--out-dir", str(out)]) == 0
    assert "(0 computed, 4 already done)" in capsys.readouterr().err
    got = io.read_points(out / "movie.csv")
    assert len(got) == len(pts) - 1 and "track_id" not in got.columns and "recovered" not in got.columns
    run = json.loads((out / "movie.run.json").read_text())
    assert run["tracked"] is False and run["settings"]["tracks"] is False


def test_end_positions_carried_by_sister_or_common_motion():
    from kt_stardist.recover import end_positions

    pts = truth()
    det = linked(detections(pts, {(0, 3), (1, 3)}))  # track 3 starts at t2; the movie at t0
    start = det.loc[det["t"] == 2].iloc[[3]]  # (z, y, x) of true track 3 at t2
    tid = int(det["track_id"][(det["t"] == 2) & np.isclose(det["x"], start["x"].iloc[0])
                              & np.isclose(det["z"], start["z"].iloc[0])].iloc[0])
    want = pts.query("track_id == 3 and t in (0, 1)").sort_values("t")[["z", "y", "x"]].to_numpy()

    def before(table, shifts):
        e = end_positions(table, 6, 2, shifts, VOX)
        return e[e["track_id"] == tid].sort_values("t")

    # no sister, no common motion: the first point repeated
    e = before(det, None)
    assert list(e["t"]) == [0, 1]
    assert np.allclose(e[["z", "y", "x"]], np.repeat(start[["z", "y", "x"]].to_numpy(), 2, 0))
    # the common motion (0.77 px = 0.1 µm per frame in y) carries it to the true places
    shifts = np.array([[0, 0.77 * VOX[1] * t, 0] for t in range(6)])
    assert np.allclose(before(det, shifts)[["z", "y", "x"]], want, atol=1e-6)
    # the sister track (pair_track_id) carries it there even with a wrong common motion
    sister = int(det["track_id"][(det["t"] == 2) & np.isclose(det["x"], 14.0) & np.isclose(det["y"], 31.54)].iloc[0])
    paired = det.assign(pair_track_id=np.where(det["track_id"].isin([tid, sister]), 0, -1))
    assert np.allclose(before(paired, np.zeros((6, 3)))[["z", "y", "x"]], want, atol=1e-6)
    # tracks at the movie's edges or shorter than min_points give nothing there
    assert end_positions(det, 6, 2, None, VOX, min_points=5)["track_id"].eq(tid).sum() == 0
    assert not (end_positions(det, 6, 2, None, VOX)["t"] > 5).any()


def test_link_and_recover_fills_ends_and_joins_a_cut_track():
    """Sister 3 missed in the first frame, sister 1 in the last, spot 4 for 3 frames (longer
    than gap closing's 2): recovered at the ends of tracks, then linked again into one track
    per spot; without ``ends`` nothing is recovered and spot 4's track stays cut."""
    from kt_stardist.pairs import assign_pairs
    from kt_stardist.tracks import link_and_recover

    pts = truth(8)
    missing = {(0, 3), (7, 1), (2, 4), (3, 4), (4, 4)}
    det = assign_pairs(detections(pts, missing), VOX)
    img = movie(pts)

    def true_track(out):
        # the true track of each output point (nearest true point of its frame, within 0.15 µm)
        k = []
        for _, r in out.iterrows():
            cand = pts[pts["t"] == r["t"]]
            d = np.linalg.norm((cand[["z", "y", "x"]].to_numpy() - r[["z", "y", "x"]].to_numpy(float)) * VOX, axis=1)
            k.append(int(cand["track_id"].iloc[np.argmin(d)]) if d.min() < 0.15 else -1)
        return np.array(k)

    out = link_and_recover(det, VOX, img)
    k = true_track(out)
    rec = out["recovered"].to_numpy()
    assert sorted(zip(out["t"][rec], k[rec])) == sorted(missing)
    assert len(out) == len(pts) and (k >= 0).all()
    # one track per true spot, one true spot per track
    assert all(len(set(out["track_id"][k == j])) == 1 for j in range(6))
    assert out["track_id"].nunique() == 6
    # the recovered sisters are paired with their sister, in its pair track
    for t, j in ((0, 3), (7, 1)):
        row = out[(out["t"] == t) & (k == j)].iloc[0]
        mate = out[(out["t"] == t) & (k == j ^ 1)].iloc[0]
        assert row["pair_id"] == mate["pair_id"] >= 0 and row["pair_track_id"] == mate["pair_track_id"] >= 0

    gaps_only = link_and_recover(det, VOX, img, ends=False)
    k0 = true_track(gaps_only)
    assert not gaps_only["recovered"].any()  # no hole inside a track is 1-2 frames long
    assert len(set(gaps_only["track_id"][k0 == 4])) == 2
