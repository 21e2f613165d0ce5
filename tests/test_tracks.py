import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest

from kt_stardist.errors import InputError
from kt_stardist.pairs import assign_pairs
from kt_stardist.tracks import (link_pair_tracks, link_recovery, napari_tracks, track_points,
                                track_edges, trackmate_xml)

VOX = np.array([0.3, 0.13, 0.13])


def drifting_layout(n_pairs=20, n_frames=6, seed=0, drift_um=(0.05, 0.25, 0.1), jitter_um=0.05,
                    drop=((3, 5),)):
    """Sister pairs on a plate (normal along x) drifting over frames; ``drop`` (t, gt track)
    detections are removed. Returns a px table with gt_track_id and gt_pair_id."""
    rng = np.random.default_rng(seed)
    centres = []
    while len(centres) < n_pairs:
        c = rng.uniform(-4, 4, 2)
        if np.hypot(*c) < 4.5 and all(np.hypot(*(c - o)) > 1.2 for o in centres):
            centres.append(c)
    c = np.array([[6.0 + cz, 60 + cy, 60.0] for cz, cy in centres])
    half = np.array([0, 0, 0.45])
    base = np.concatenate([c - half, c + half])
    frames = []
    for t in range(n_frames):
        um = base + np.asarray(drift_um) * t + rng.normal(0, jitter_um, base.shape)
        d = pd.DataFrame(um / VOX, columns=["z", "y", "x"])
        d.insert(0, "t", t)
        d["gt_track_id"] = np.arange(len(base))
        d["gt_pair_id"] = np.r_[np.arange(n_pairs), np.arange(n_pairs)]
        frames.append(d)
    df = pd.concat(frames, ignore_index=True)
    for t, k in drop:
        df = df[~((df.t == t) & (df.gt_track_id == k))]
    return df.reset_index(drop=True)


def test_drifting_layout_tracked_with_gap_closed():
    df = drifting_layout()
    out = track_points(df, VOX, max_disp_um=1.0, gap=1)
    rec = link_recovery(out)
    assert rec["n_gt"] == 40 * 5 - 1  # the gapped track has one link t2 -> t4
    assert rec["recovered"] == 1.0 and rec["precision"] == 1.0
    assert out["track_id"].nunique() == 40
    gapped = out[out.gt_track_id == 5]
    assert gapped["track_id"].nunique() == 1
    assert sorted(gapped.t) == [0, 1, 2, 4, 5]
    # without gap closing the gapped track breaks in two and its jump is lost
    no_gap = track_points(df, VOX, max_disp_um=1.0, gap=0)
    assert no_gap["track_id"].nunique() == 41
    assert link_recovery(no_gap)["n_correct"] == rec["n_gt"] - 1


def test_max_displacement_in_um():
    # one point moving 0.8 µm per frame along z (= 2.67 px): linked at 1.0 µm, not at 0.5 µm
    df = pd.DataFrame({"t": [0, 1, 2], "z": [10.0, 10 + 0.8 / 0.3, 10 + 1.6 / 0.3],
                       "y": 50.0, "x": 50.0})
    assert track_points(df, VOX, max_disp_um=1.0)["track_id"].nunique() == 1
    assert track_points(df, VOX, max_disp_um=0.5, gap=0)["track_id"].nunique() == 3


def test_sister_tracks_linked():
    df = drifting_layout(drop=())
    out = assign_pairs(track_points(df, VOX), VOX)
    out = link_pair_tracks(out)
    assert (out["pair_track_id"] >= 0).all()
    # each pair track holds exactly the two tracks of one true pair
    per_pair = out.groupby("pair_track_id").agg(n_tracks=("track_id", "nunique"),
                                                n_gt=("gt_pair_id", "nunique"))
    assert len(per_pair) == 20
    assert (per_pair["n_tracks"] == 2).all() and (per_pair["n_gt"] == 1).all()


def test_trackmate_xml_structure():
    df = track_points(drifting_layout(), VOX)
    df["prob"] = 0.9
    root = ET.fromstring(trackmate_xml(df, VOX, shape_px=(20, 200, 200)))
    assert root.tag == "TrackMate"
    model = root.find("Model")
    spots = model.findall("AllSpots/SpotsInFrame/Spot")
    assert int(model.find("AllSpots").get("nspots")) == len(spots) == len(df) == 239
    assert len(model.findall("AllSpots/SpotsInFrame")) == 6
    tracks = model.findall("AllTracks/Track")
    assert len(tracks) == 40
    edges = model.findall("AllTracks/Track/Edge")
    assert len(edges) == len(df) - 40
    assert len(model.findall("FilteredTracks/TrackID")) == 40
    by_id = {int(s.get("ID")): s for s in spots}
    for e in edges:
        a, b = by_id[int(e.get("SPOT_SOURCE_ID"))], by_id[int(e.get("SPOT_TARGET_ID"))]
        assert int(a.get("FRAME")) < int(b.get("FRAME"))
    # positions in µm
    s0 = by_id[0]
    assert float(s0.get("POSITION_Z")) == pytest.approx(df.z[0] * 0.3)
    assert float(s0.get("POSITION_X")) == pytest.approx(df.x[0] * 0.13)
    assert float(s0.get("QUALITY")) == pytest.approx(0.9)
    gapped = [t for t in tracks if t.get("NUMBER_GAPS") == "1"]
    assert len(gapped) == 1 and gapped[0].get("NUMBER_SPOTS") == "5"
    img = root.find("Settings/ImageData")
    assert (img.get("nslices"), img.get("height"), img.get("width")) == ("20", "200", "200")
    assert float(img.get("voxeldepth")) == pytest.approx(0.3)


def test_napari_tracks_layout():
    df = track_points(drifting_layout(), VOX)
    nt = napari_tracks(df)
    assert list(nt.columns) == ["track_id", "t", "z", "y", "x"]
    assert len(nt) == len(df)
    assert (nt.groupby("track_id")["t"].apply(lambda s: s.is_monotonic_increasing)).all()
    assert len(track_edges(df)) == len(df) - 40


def test_bad_input():
    with pytest.raises(InputError, match="t"):
        track_points(pd.DataFrame({"z": [1.0], "y": [1.0], "x": [1.0]}), VOX)
    with pytest.raises(InputError, match="max_disp_um"):
        track_points(drifting_layout(n_frames=2), VOX, max_disp_um=0)


def test_cli_round_trip(tmp_path):
    from kt_stardist import io as io
    from kt_stardist.cli import main

    src = tmp_path / "points.csv"
    df = drifting_layout()
    df.to_csv(src, index=False)
    pairs = tmp_path / "pairs.csv"
    assert main(["pairs", str(src), "--out", str(pairs)]) == 0
    out, xml, nap = tmp_path / "tracks.csv", tmp_path / "tracks.xml", tmp_path / "napari.csv"
    rc = main(["track", str(pairs), "--max-disp-um", "1.0", "--gap", "1", "--out", str(out),
               "--trackmate", str(xml), "--napari-tracks", str(nap)])
    assert rc == 0
    got = io.read_points(out)
    assert link_recovery(got)["recovered"] == 1.0
    assert (got["pair_track_id"] >= 0).sum() == len(got)
    root = ET.parse(xml).getroot()
    assert len(root.findall("Model/AllTracks/Track")) == 40
    assert list(pd.read_csv(nap).columns) == ["track_id", "t", "z", "y", "x"]


def test_points_that_do_not_move_are_linked():
    """Zero displacement (bit-identical positions in consecutive frames) is a link, not a miss."""
    import pandas as pd

    from kt_stardist.tracks import track_points

    pts = np.array([[4.3, 20.2, 30.7], [6.0, 50.6, 12.1], [3.5, 40.0, 52.4]])
    df = pd.concat([pd.DataFrame(dict(t=f, z=pts[:, 0], y=pts[:, 1], x=pts[:, 2])) for f in range(3)])
    out = track_points(df)
    assert out.groupby("track_id").size().tolist() == [3, 3, 3]
    assert (out.groupby("track_id")[["z", "y", "x"]].nunique() == 1).all().all()


def test_trackmate_xml_read_back_by_pytrackmate(tmp_path):
    """The TrackMate XML, read by a real reader (pytrackmate, which parses it as TrackMate's
    TmXmlReader does): every spot comes back in its frame at its position in µm, and the
    tracks are the same partition of the spots."""
    pytrackmate = pytest.importorskip("pytrackmate", reason="pytrackmate is in the test extra")
    from kt_stardist.simulate import simulate_timelapse
    from kt_stardist.tracks import track_points, write_trackmate_xml

    vox = (0.3, 0.13, 0.13)
    _, df = simulate_timelapse(3, (16, 64, 64), seed=1, snr="easy")
    tr = track_points(df[["t", "z", "y", "x"]].copy(), voxel_size_um=vox)
    path = tmp_path / "tracks.xml"
    write_trackmate_xml(tr, path, voxel_size_um=vox, shape_px=(16, 64, 64))
    got = pytrackmate.trackmate_peak_import(str(path), get_tracks=True)
    assert len(got) == len(tr) and sorted(got.t.astype(int)) == sorted(tr.t)
    mine = tr.assign(xu=tr.x * vox[2], yu=tr.y * vox[1], zu=tr.z * vox[0]).sort_values(["t", "xu", "yu"])
    theirs = got.sort_values(["t", "x", "y"])
    for a, b in (("xu", "x"), ("yu", "y"), ("zu", "z")):
        np.testing.assert_allclose(mine[a].to_numpy(), theirs[b].to_numpy(), atol=1e-6)
    pairs = set(zip(mine.track_id, theirs.label.astype(int)))  # one label per track and back
    assert len(pairs) == tr.track_id.nunique() == got.label.nunique()


def test_pair_tracks_intact_counts_identity_switches():
    """Three true pairs over 6 frames. Pair 0 perfect; pair 1's sisters swap track ids from frame
    3 (an identity switch); pair 2's sister 5 is missed at frame 2 (a bridged gap: intact, not
    complete) and its partner missed in the last frame (not followed to the end: not intact)."""
    from kt_stardist.tracks import pair_tracks_intact

    rows = [(t, k, k // 2) for t in range(6) for k in range(6)]
    truth = pd.DataFrame(rows, columns=["t", "track_id", "pair_id"]).assign(z=5.0, y=5.0, x=5.0)
    pred = truth.rename(columns={"track_id": "gt_track_id"}).drop(columns="pair_id")
    pred["track_id"] = pred["gt_track_id"] + 10
    swap = (pred.t >= 3) & pred.gt_track_id.isin([2, 3])
    pred.loc[swap, "track_id"] = 10 + 5 - pred.loc[swap, "gt_track_id"]  # 2 <-> 3
    pred = pred[~((pred.t == 2) & (pred.gt_track_id == 5))]
    ok = pair_tracks_intact(pred, truth)
    assert ok["n_pairs"] == 3 and ok["intact"] == 2 and ok["complete"] == 1
    assert ok["fraction"] == pytest.approx(2 / 3)
    ends = pair_tracks_intact(pred[~((pred.t == 5) & (pred.gt_track_id == 4))], truth)
    assert ends["intact"] == 1 and ends["complete"] == 1
    # a false detection (matched to nothing) joined to a track is no switch; another's point is
    fp = pd.DataFrame({"t": [1], "gt_track_id": [-1], "track_id": [10], "z": [5.0], "y": [5.0], "x": [5.0]})
    assert pair_tracks_intact(pd.concat([pred, fp]), truth)["intact"] == 2
    stolen = pred.copy()
    stolen.loc[(stolen.t == 1) & (stolen.gt_track_id == 1), "track_id"] = 10
    assert pair_tracks_intact(stolen, truth)["intact"] == 1
    # with pair_track_id the two tracks must also be one pair track
    paired = pred.assign(pair_track_id=np.where(pred.track_id.isin([14, 15]), -1, (pred.track_id - 10) // 2))
    assert pair_tracks_intact(paired, truth)["intact"] == 1


#: what TrackMate's own reader (fiji.plugin.trackmate.io.TmXmlReader, keys of TmXmlKeys and the
#: edge keys of EdgeTargetAnalyzer; trackmate-sc/TrackMate) looks up: element path -> attributes
TMXML_READER_KEYS = {
    "Model": {"spatialunits", "timeunits"},
    "Model/FeatureDeclarations/SpotFeatures/Feature": {"feature", "name", "shortname", "dimension", "isint"},
    "Model/AllSpots": {"nspots"},
    "Model/AllSpots/SpotsInFrame": {"frame"},
    "Model/AllSpots/SpotsInFrame/Spot": {"ID", "name", "FRAME", "POSITION_X", "POSITION_Y", "POSITION_Z",
                                         "POSITION_T", "QUALITY", "RADIUS", "VISIBILITY"},
    "Model/AllTracks/Track": {"name", "TRACK_ID"},
    "Model/AllTracks/Track/Edge": {"SPOT_SOURCE_ID", "SPOT_TARGET_ID", "LINK_COST"},
    "Model/FilteredTracks/TrackID": {"TRACK_ID"},
    "Settings/ImageData": {"filename", "folder", "width", "height", "nslices", "nframes", "pixelwidth",
                           "pixelheight", "voxeldepth", "timeinterval"},
    "Settings/BasicSettings": {"xstart", "xend", "ystart", "yend", "zstart", "zend", "tstart", "tend"},
}


def test_trackmate_xml_has_every_key_trackmates_reader_reads(tmp_path):
    """Every element and attribute TrackMate's TmXmlReader reads is present, edges point at spots
    that exist, and the units and image size are those given."""
    import xml.etree.ElementTree as ET

    from kt_stardist.tracks import track_points, write_trackmate_xml

    pts = np.array([[4.3, 20.2, 30.7], [6.0, 50.6, 12.1]])
    df = pd.concat([pd.DataFrame(dict(t=f, z=pts[:, 0], y=pts[:, 1] + f, x=pts[:, 2])) for f in range(3)])
    path = tmp_path / "t.xml"
    write_trackmate_xml(track_points(df), path, voxel_size_um=(0.3, 0.13, 0.13), shape_px=(16, 64, 80))
    root = ET.parse(path).getroot()
    assert root.tag == "TrackMate" and root.get("version")
    for where, keys in TMXML_READER_KEYS.items():
        found = root.findall(where)
        assert found, where
        for el in found:
            assert keys <= set(el.attrib), (where, keys - set(el.attrib))
    ids = {s.get("ID") for s in root.iter("Spot")}
    assert all({e.get("SPOT_SOURCE_ID"), e.get("SPOT_TARGET_ID")} <= ids for e in root.iter("Edge"))
    assert root.find("Model").get("spatialunits") in ("µm", "micron", "um")
    img = root.find("Settings/ImageData")
    assert (img.get("width"), img.get("height"), img.get("nslices")) == ("80", "64", "16")
    assert float(img.get("voxeldepth")) == pytest.approx(0.3) and float(img.get("pixelwidth")) == pytest.approx(0.13)


def oscillating_plate(n_frames=6, step_um=0.5, drop=((2, 0),)):
    """Four sister pairs 0.9 µm apart along x whose plate moves ``step_um`` per frame along x
    (the common motion), each pair 2 µm from the next in y; ``drop`` (t, gt track) removed.
    px table with gt_track_id."""
    pairs_um = np.array([[3.0, 6.0 + 2 * k, 6.0] for k in range(4)])
    base = np.concatenate([pairs_um, pairs_um + [0, 0, 0.9]])
    frames = []
    for t in range(n_frames):
        d = pd.DataFrame((base + [0, 0, step_um * t]) / VOX, columns=["z", "y", "x"])
        d.insert(0, "t", t)
        d["gt_track_id"] = np.arange(len(base))
        frames.append(d)
    df = pd.concat(frames, ignore_index=True)
    for t, k in drop:
        df = df[~((df.t == t) & (df.gt_track_id == k))]
    return df.reset_index(drop=True)


def test_frame_shifts_known_common_motion():
    from kt_stardist.tracks import frame_shifts

    df = oscillating_plate()
    shifts = frame_shifts(df, VOX)
    want = np.array([[0, 0, 0.5 * t] for t in range(6)])
    assert np.allclose(shifts, want, atol=1e-9)
    # frames offset in t: row 0 is the first frame present
    assert np.allclose(frame_shifts(df.assign(t=df.t + 3), VOX), want, atol=1e-9)
    # too few points to measure a shift: none
    assert np.allclose(frame_shifts(df[df.gt_track_id < 2], VOX), 0)


def test_common_motion_prevents_sister_switch():
    # sister 0 missed at t2: its track's last point (t1) is 0.4 µm from sister 4's point at t2
    # but 1.0 µm from its own at t3; taking the plate's 0.5 µm per frame out links it right
    df = oscillating_plate()
    fixed = track_points(df, VOX, max_disp_um=1.0, gap=2, common_motion=False)
    moving = track_points(df, VOX, max_disp_um=1.0, gap=2)
    assert link_recovery(moving)["recovered"] == 1.0 and link_recovery(moving)["precision"] == 1.0
    assert moving["track_id"].nunique() == 8
    assert link_recovery(fixed)["precision"] < 1.0  # positions as they are: identities switch



def test_cli_track_then_pairs_use_tracks(tmp_path):
    """kt-stardist track, then pairs --use-tracks: on a plate moving 0.5 µm per frame with a
    sister missed, each true pair keeps one pair_id over the whole movie."""
    from kt_stardist import io
    from kt_stardist.cli import main

    df = oscillating_plate()
    src, tracks, pairs = tmp_path / "points.csv", tmp_path / "tracks.csv", tmp_path / "pairs.csv"
    df.to_csv(src, index=False)
    assert main(["track", str(src), "--gap", "2", "--out", str(tracks)]) == 0
    assert main(["pairs", str(tracks), "--use-tracks", "--out", str(pairs)]) == 0
    got = io.read_points(pairs)
    assert link_recovery(got)["recovered"] == 1.0
    gt_pair = got["gt_track_id"] % 4  # tracks k and k + 4 are sisters
    alone = (got["t"] == 2) & (got["gt_track_id"] == 4)  # its sister 0 is missing there
    assert (got["pair_id"][~alone] >= 0).all() and (got["pair_id"][alone] == -1).all()
    kept = got[~alone]
    assert (kept.groupby(gt_pair[~alone])["pair_id"].nunique() == 1).all() and kept["pair_id"].nunique() == 4
