"""Kinetochore tracks over time: linking with laptrack, sister tracks, TrackMate and napari export.

Axis order z, y, x. Points are given in px (``z, y, x``) with a frame column ``t``; linking
works in µm (px × voxel size), so ``max_disp_um`` is a physical displacement between frames.

Linking is laptrack's LAP tracker (Jaqaman et al. 2008): frame-to-frame assignment with a squared
Euclidean cost cut at ``max_disp_um²``, then gap closing of segment ends to segment starts up to
``gap`` missing frames later (same cutoff); no splitting or merging.

Before linking, the motion all kinetochores share (the plate drifting and oscillating: up to
~0.35 µm per frame, a third of a sister distance) is taken out (:func:`frame_shifts`): each
frame is shifted by the median displacement of an optimal assignment to the frame before, so
the costs compare each kinetochore's own motion (~0.1 µm per frame) and a neighbour or a sister
~0.8 µm away is no longer a near-equal choice. ``max_disp_um`` then bounds that own motion.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kt_stardist.defaults import FRAME_SHAPE_PX, VOXEL_SIZE_UM
from kt_stardist.errors import InputError
from kt_stardist.pairs import points_um, vote_track_partners
from kt_stardist.validate import check_points_table, check_voxel_size

#: default maximum displacement of a kinetochore between two linked detections, µm (its own
#: motion: the common motion of the frame taken out; chosen on simulated design movies, seeds
#: 20000+: link precision at hard 0.982 here, 0.957 at 1.0 µm)
MAX_DISP_UM = 0.8

#: default number of missing frames a track may jump
GAP_FRAMES = 1

#: time as a length for linking (µm per frame): keeps every link's cost above 0
TIME_UM = 1e-3

#: least number of assigned points to measure the common motion between two frames (else none)
MIN_SHIFT_POINTS = 3


def frame_shifts(df, voxel_size_um=VOXEL_SIZE_UM, max_disp_um=MAX_DISP_UM, iterations=3) -> np.ndarray:
    """The motion all points of a time-lapse share: the common position of each frame, µm.

    Between consecutive frames the points are assigned one to one (minimum total squared
    distance, ``scipy.optimize.linear_sum_assignment``; pairs farther than ``max_disp_um`` after
    the shift are left out) and the shift is the median of the assigned displacements;
    ``iterations`` rounds, each assigning with the previous shift taken out. With fewer than
    :data:`MIN_SHIFT_POINTS` assignments (or an empty frame) the shift is 0.

    Parameters
    ----------
    df : points table with ``t`` (whole frames) and ``z, y, x`` (px)
    voxel_size_um : (z, y, x) µm
    max_disp_um : largest own displacement (µm) of an assigned point, after the shift

    Returns
    -------
    (T, 3) float array, µm (z, y, x): the cumulative shift of frames ``t.min() .. t.max()``
    relative to the first (row 0 is zero). Subtracting row ``t - t.min()`` from the points of
    frame ``t`` removes the common motion.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    vox = np.asarray(check_voxel_size(voxel_size_um, "voxel_size_um"), dtype=float)
    if len(df) == 0:
        return np.zeros((0, 3))
    t = df["t"].to_numpy().astype(np.int64)
    p = points_um(df, vox)
    t0 = int(t.min())
    shifts = np.zeros((int(t.max()) - t0 + 1, 3))
    cut2 = float(max_disp_um) ** 2
    for f in range(1, len(shifts)):
        a, b = p[t == t0 + f - 1], p[t == t0 + f]
        s = np.zeros(3)
        for k in range(iterations if len(a) and len(b) else 0):
            cut = cut2 * (4.0 if k == 0 else 1.0)
            cost = cdist(a + s, b, "sqeuclidean")
            rows, cols = linear_sum_assignment(np.where(cost > cut, cut * 1e3, cost))
            ok = cost[rows, cols] <= cut
            if ok.sum() < MIN_SHIFT_POINTS:
                break
            s = np.median(b[cols[ok]] - a[rows[ok]], axis=0)
        shifts[f] = shifts[f - 1] + s
    return shifts


def track_points(df, voxel_size_um=VOXEL_SIZE_UM, max_disp_um=MAX_DISP_UM, gap=GAP_FRAMES,
                 common_motion=True) -> pd.DataFrame:
    """Link points over frames.

    Parameters
    ----------
    df : points table with ``t`` (int frame) and ``z, y, x`` (px)
    voxel_size_um : (z, y, x) µm
    max_disp_um : largest displacement (µm) between two linked detections (also across a gap);
        with ``common_motion``, of a point's own motion, the frame's common motion taken out
    gap : how many missing frames a track may jump (0: no gap closing)
    common_motion : take out the motion all points share before linking (:func:`frame_shifts`);
        False links the positions as they are

    Returns
    -------
    A copy of ``df`` with ``track_id`` (int ≥ 0; a point linked to nothing gets a track of its
    own). Track ids are numbered by first frame, then z, y, x of the first point.
    """
    check_points_table(df)
    if "t" not in df.columns:
        raise InputError("points: tracking needs a t (frame) column")
    vox = np.asarray(check_voxel_size(voxel_size_um, "voxel_size_um"))
    if not max_disp_um > 0:
        raise InputError(f"max_disp_um: expected a positive distance in µm, got {max_disp_um!r}")
    if int(gap) != gap or gap < 0:
        raise InputError(f"gap: expected a whole number of frames >= 0, got {gap!r}")
    t = df["t"].to_numpy()
    if not np.all(t == np.round(t)):
        raise InputError("points: column t must hold whole frame numbers")
    t = t.astype(np.int64)
    out = df.copy()
    if len(df) == 0:
        out["track_id"] = np.zeros(0, np.int64)
        return out

    from laptrack import LapTrack

    p = points_um(df, vox)
    t0, t1 = int(t.min()), int(t.max())
    if common_motion:
        p = p - frame_shifts(df, vox, max_disp_um)[t - t0]
    # time as a 4th coordinate, TIME_UM per frame: no link costs exactly 0 (laptrack's sparse
    # cost matrices would drop it), a gap of k frames costs (k + 1)² × TIME_UM² more
    p = np.hstack([p, (t - t0)[:, None] * TIME_UM])
    rows_of = [np.flatnonzero(t == f) for f in range(t0, t1 + 1)]
    coords = [p[r] if len(r) else np.zeros((0, 4)) for r in rows_of]
    lt = LapTrack(
        metric="sqeuclidean",
        cutoff=float(max_disp_um) ** 2,
        gap_closing_metric="sqeuclidean",
        gap_closing_cutoff=float(max_disp_um) ** 2 if gap > 0 else False,
        gap_closing_max_frame_count=int(gap) + 1,
        splitting_cutoff=False,
        merging_cutoff=False,
    )
    if len(coords) == 1:
        tree_edges = []
    else:
        tree = lt.predict(coords)
        tree_edges = list(tree.edges())

    # union-find over rows: each edge joins two rows into one track
    parent = np.arange(len(df))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for (fa, ia), (fb, ib) in tree_edges:
        ra, rb = find(rows_of[fa][ia]), find(rows_of[fb][ib])
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(i) for i in range(len(df))])
    # number tracks by their first point (t, z, y, x)
    raw = points_um(df, vox)
    order = np.lexsort((raw[:, 2], raw[:, 1], raw[:, 0], t))
    ids = {}
    for i in order:
        ids.setdefault(roots[i], len(ids))
    out["track_id"] = np.array([ids[r] for r in roots], dtype=np.int64)
    return out


def link_pair_tracks(df, min_fraction=0.5) -> pd.DataFrame:
    """Join the tracks of two sisters into a pair track.

    Two tracks are sisters when their points share a ``pair_id`` in most of the frames where both
    are present (at least ``min_fraction``; see :func:`kt_stardist.pairs.vote_track_partners`).

    Returns a copy of ``df`` with ``pair_track_id`` (int, -1 for a track without a sister track),
    numbered by the smaller track id of the two.
    """
    for c in ("track_id", "pair_id"):
        if c not in df.columns:
            raise InputError(f"points: missing column {c} (pair and track the points first)")
    partners = vote_track_partners(df, min_fraction=min_fraction)
    keys = sorted({min(a, b) for a, (b, _) in partners.items()})
    pid = {k: i for i, k in enumerate(keys)}
    out = df.copy()
    out["pair_track_id"] = np.array(
        [pid[min(tr, partners[tr][0])] if tr in partners else -1 for tr in out["track_id"]],
        dtype=np.int64)
    return out


def pair_recovered(df) -> pd.DataFrame:
    """Give recovered points (``recovered``, :func:`kt_stardist.recover.recover_points`) the
    pair of their sister track: where the partner track (same ``pair_track_id``, from
    :func:`link_pair_tracks`) has an unpaired point in the same frame, the two become a pair
    (a new ``pair_id``, ``sister`` 1/2 as the tracks' sisters elsewhere, else 1 for the lower
    track id; ``paired`` True when that column exists). Returns a copy."""
    for c in ("t", "track_id", "pair_id", "pair_track_id", "recovered"):
        if c not in df.columns:
            raise InputError(f"points: missing column {c}")
    out = df.copy()
    pid, sis = out["pair_id"].to_numpy().copy(), out["sister"].to_numpy().copy() if "sister" in out else None
    next_id = int(pid.max()) + 1 if len(pid) else 0
    tr, pt, t = out["track_id"].to_numpy(), out["pair_track_id"].to_numpy(), out["t"].to_numpy()
    for i in np.flatnonzero(out["recovered"].to_numpy() & (pt >= 0) & (pid < 0)):
        j = np.flatnonzero((pt == pt[i]) & (tr != tr[i]) & (t == t[i]) & (pid < 0))
        if len(j) != 1:
            continue
        j = int(j[0])
        pid[[i, j]] = next_id
        next_id += 1
        if sis is not None:
            usual = out.loc[(tr == tr[i]) & (out["sister"].to_numpy() > 0), "sister"]
            sis[i] = int(usual.mode().iloc[0]) if len(usual) else (1 if tr[i] < tr[j] else 2)
            sis[j] = 3 - sis[i]
    out["pair_id"] = pid
    if sis is not None:
        out["sister"] = sis
    if "paired" in out.columns:
        out["paired"] = pid >= 0
    return out


def link_and_recover(df, voxel_size_um=VOXEL_SIZE_UM, movie=None, settings=None, max_disp_um=MAX_DISP_UM,
                     gap=None, ends=True) -> pd.DataFrame:
    """Tracks of a time-lapse's points, as ``kt-stardist track`` and ``predict --track`` make them:
    :func:`track_points`, (``pair_id`` column) sister tracks (:func:`link_pair_tracks`), then
    (``movie`` given) track-aided recovery (:func:`kt_stardist.recover.recover_points`) of spots
    missed for 1-2 frames inside a track (:func:`kt_stardist.recover.gap_positions`) and, with
    ``ends``, in the 1-2 frames before a track's first point and after its last
    (:func:`kt_stardist.recover.end_positions`: carried by the sister track or the common
    motion, :func:`frame_shifts`); then the points are linked again with the recovered ones (a
    track cut by more missed frames than ``gap`` is joined where recovery filled the hole),
    sister tracks found again and recovered points paired (:func:`pair_recovered`).

    Parameters
    ----------
    df : points table (``t``, ``z, y, x`` px; ``pair_id``, ``sister`` when paired)
    voxel_size_um : (z, y, x) µm
    movie : None (no recovery) or array-like (T, Z, Y, X): camera counts of the spot channel the
        points come from (numpy or lazy; only frames searched are read)
    settings : :class:`kt_stardist.settings.RecoverSettings` (None: defaults)
    max_disp_um : largest own displacement (µm) between linked detections (:func:`track_points`)
    gap : missing frames a track may jump (None: :data:`GAP_FRAMES`, or ``max_gap_frames`` of
        the settings with recovery, which then searches gaps of at most ``gap`` frames, at least 1)
    ends : with recovery, also search before each track's first and after its last point (as
        many frames as gaps)

    Returns
    -------
    A copy of ``df`` with ``track_id``; with recovery also ``recovered`` (bool) and
    ``recovery_lr``; with ``pair_id`` also ``pair_track_id``.
    """
    from kt_stardist.settings import RecoverSettings, replace

    settings = settings or RecoverSettings()
    if gap is None:
        gap = settings.max_gap_frames if movie is not None else GAP_FRAMES
    out = track_points(df, voxel_size_um=voxel_size_um, max_disp_um=max_disp_um, gap=gap)
    paired = "pair_id" in out.columns
    if paired:
        out = link_pair_tracks(out)
    if movie is not None:
        from kt_stardist.recover import end_positions, gap_positions, recover_points

        settings = replace(settings, max_gap_frames=max(min(int(gap), settings.max_gap_frames), 1))
        where = gap_positions(out, settings.max_gap_frames)
        if ends and len(out):
            shifts = frame_shifts(out, voxel_size_um, max_disp_um)
            where = pd.concat([where, end_positions(out, int(movie.shape[0]), settings.max_gap_frames,
                                                    shifts, voxel_size_um)], ignore_index=True)
        out = recover_points(out, movie, voxel_size_um, settings, positions=where)
        if out["recovered"].any():
            out = track_points(out, voxel_size_um=voxel_size_um, max_disp_um=max_disp_um, gap=gap)
        if paired:
            out = pair_recovered(link_pair_tracks(out))
    return out


def track_edges(df) -> np.ndarray:
    """(E, 2) positional row indices (source, target) of consecutive points of each track."""
    if "track_id" not in df.columns:
        raise InputError("points: no track_id column (run track_points / `kt-stardist track` first)")
    t = df["t"].to_numpy()
    tr = df["track_id"].to_numpy()
    order = np.lexsort((t, tr))
    same = (tr[order][1:] == tr[order][:-1]) & (tr[order][1:] >= 0)
    return np.stack([order[:-1][same], order[1:][same]], axis=1).astype(np.int64)


def link_recovery(df, gt_col="gt_track_id", pred_col="track_id") -> dict:
    """Fraction of true frame-to-frame links that the tracker made.

    A true link joins two consecutive points (in time) of one ground-truth track; it is
    correct when both points carry the same predicted track id and nothing else of that
    predicted track lies between them in time.

    Returns ``{"n_gt": int, "n_pred": int, "n_correct": int, "recovered": float,
    "precision": float}``.
    """
    gt = {tuple(e) for e in track_edges(df.assign(track_id=df[gt_col]))}
    pred = {tuple(e) for e in track_edges(df.assign(track_id=df[pred_col]))}
    n_ok = len(gt & pred)
    return {
        "n_gt": len(gt), "n_pred": len(pred), "n_correct": n_ok,
        "recovered": n_ok / len(gt) if gt else float("nan"),
        "precision": n_ok / len(pred) if pred else float("nan"),
    }


def pair_tracks_intact(pred, truth, gt_col="gt_track_id", truth_track_col="track_id",
                       truth_pair_col="pair_id") -> dict:
    """How many true sister pairs were followed through the whole movie without an identity switch.

    Parameters
    ----------
    pred : tracked detections with ``t``, ``track_id`` and ``gt_col`` (the true track each
        detection was matched to, -1 for none), optionally ``pair_track_id``
        (:func:`link_pair_tracks`).
    truth : true points with ``t``, ``truth_track_col`` and ``truth_pair_col`` (-1: unpaired),
        as :func:`kt_stardist.simulate.simulate_timelapse` gives them.

    A true kinetochore is *followed* when its detections all carry one predicted track, that
    track holds no detection matched to another true kinetochore, and it is detected in the
    first and the last frame where it exists (missed frames between are bridged by gap
    closing); *complete* when it is detected in every frame as well. A pair is *intact* when
    both sisters are followed on two different tracks and, when ``pred`` has
    ``pair_track_id``, those two tracks form one pair track.

    Returns ``{"n_pairs", "intact", "complete", "fraction", "fraction_complete"}`` (fractions of
    ``n_pairs``; NaN when there is no true pair).
    """
    for c in ("t", "track_id", gt_col):
        if c not in pred.columns:
            raise InputError(f"detections: missing column {c}")
    for c in ("t", truth_track_col, truth_pair_col):
        if c not in truth.columns:
            raise InputError(f"truth: missing column {c}")
    frames = {k: np.sort(g["t"].to_numpy()) for k, g in truth.groupby(truth_track_col)}
    owners = pred[pred[gt_col] >= 0].groupby("track_id")[gt_col].agg(lambda s: set(s.tolist()))
    by_gt = {k: g for k, g in pred[pred[gt_col] >= 0].groupby(gt_col)}
    pt = (pred.groupby("track_id")["pair_track_id"].first() if "pair_track_id" in pred.columns else None)

    def followed(k):
        g = by_gt.get(k)
        if g is None or g["track_id"].nunique() != 1 or int(g["track_id"].iloc[0]) < 0:
            return None, False
        tid = int(g["track_id"].iloc[0])
        t = np.sort(g["t"].to_numpy())
        ok = owners[tid] == {k} and t[0] == frames[k][0] and t[-1] == frames[k][-1]
        return (tid if ok else None), bool(ok and len(np.unique(t)) == len(frames[k]) == len(t))

    n = intact = complete = 0
    for _, g in truth[truth[truth_pair_col] >= 0].groupby(truth_pair_col):
        ks = sorted(set(g[truth_track_col].tolist()))
        if len(ks) != 2:
            continue
        n += 1
        (ta, ca), (tb, cb) = followed(ks[0]), followed(ks[1])
        ok = ta is not None and tb is not None and ta != tb
        if ok and pt is not None:
            ok = pt[ta] >= 0 and pt[ta] == pt[tb]
        intact += ok
        complete += ok and ca and cb
    return {"n_pairs": n, "intact": intact, "complete": complete,
            "fraction": intact / n if n else float("nan"),
            "fraction_complete": complete / n if n else float("nan")}


# --------------------------------------------------------------------------- export


def napari_tracks(df) -> pd.DataFrame:
    """The napari Tracks layer layout: columns ``track_id, t, z, y, x`` (px), sorted."""
    if "track_id" not in df.columns or "t" not in df.columns:
        raise InputError("points: napari tracks need t and track_id columns")
    out = df[["track_id", "t", "z", "y", "x"]].copy()
    out = out[out["track_id"] >= 0]
    return out.sort_values(["track_id", "t"], kind="stable").reset_index(drop=True)


def write_napari_tracks(df, path) -> None:
    """Write :func:`napari_tracks` as CSV (atomic). Open in napari with
    ``viewer.add_tracks(pd.read_csv(path).to_numpy())``."""
    from kt_stardist.io import atomic_write

    table = napari_tracks(df)
    with atomic_write(path, "w", newline="") as f:
        table.to_csv(f, index=False, float_format="%.4f", lineterminator="\n")


_SPOT_FEATURES = [
    ("QUALITY", "Quality", "Quality", "QUALITY", "false"),
    ("POSITION_X", "X", "X", "POSITION", "false"),
    ("POSITION_Y", "Y", "Y", "POSITION", "false"),
    ("POSITION_Z", "Z", "Z", "POSITION", "false"),
    ("POSITION_T", "T", "T", "TIME", "false"),
    ("FRAME", "Frame", "Frame", "NONE", "true"),
    ("RADIUS", "Radius", "R", "LENGTH", "false"),
    ("VISIBILITY", "Visibility", "Visibility", "NONE", "true"),
]
_EDGE_FEATURES = [
    ("SPOT_SOURCE_ID", "Source spot ID", "Source ID", "NONE", "true"),
    ("SPOT_TARGET_ID", "Target spot ID", "Target ID", "NONE", "true"),
    ("LINK_COST", "Edge cost", "Cost", "NONE", "false"),
    ("EDGE_TIME", "Edge time", "Edge T", "TIME", "false"),
    ("DISPLACEMENT", "Displacement", "Disp.", "LENGTH", "false"),
]
_TRACK_FEATURES = [
    ("TRACK_INDEX", "Track index", "Index", "NONE", "true"),
    ("TRACK_ID", "Track ID", "ID", "NONE", "true"),
    ("NUMBER_SPOTS", "Number of spots in track", "N spots", "NONE", "true"),
    ("NUMBER_GAPS", "Number of gaps", "N gaps", "NONE", "true"),
    ("LONGEST_GAP", "Longest gap", "Lgst gap", "NONE", "true"),
    ("TRACK_START", "Track start", "Track start", "TIME", "false"),
    ("TRACK_STOP", "Track stop", "Track stop", "TIME", "false"),
    ("TRACK_DURATION", "Track duration", "Duration", "TIME", "false"),
]


def _fmt(v) -> str:
    return repr(float(v))


def trackmate_xml(df, voxel_size_um=VOXEL_SIZE_UM, shape_px=FRAME_SHAPE_PX, frame_interval=1.0,
                  radius_um=0.25, image_filename="") -> bytes:
    """A TrackMate XML document (bytes, UTF-8) of a tracked points table.

    Spots carry ``POSITION_X/Y/Z`` in µm, ``FRAME`` (= ``t``), ``POSITION_T`` (= t ×
    ``frame_interval``), ``QUALITY`` (= ``prob`` when present, 0 where it is
    NaN, e.g. recovered points; else 1) and ``RADIUS`` (µm).
    Each track with at least two spots becomes a ``<Track>`` of edges between its consecutive
    spots (``SPOT_SOURCE_ID`` → ``SPOT_TARGET_ID``, earlier → later); all are listed in
    ``FilteredTracks``. ``Settings/ImageData`` records the frame shape (z, y, x px) and voxel
    size so Fiji's *Load a TrackMate file* can lay the spots over the image.
    """
    import xml.etree.ElementTree as ET

    check_points_table(df)
    vox = np.asarray(check_voxel_size(voxel_size_um, "voxel_size_um"))
    if "t" not in df.columns or "track_id" not in df.columns:
        raise InputError("points: TrackMate export needs t and track_id columns")
    p = points_um(df, vox)
    t = df["t"].to_numpy().astype(np.int64)
    tr = df["track_id"].to_numpy().astype(np.int64)
    q = np.nan_to_num(df["prob"].to_numpy(dtype=float), nan=0.0) if "prob" in df.columns else np.ones(len(df))
    n_frames = int(t.max()) + 1 if len(t) else 1

    root = ET.Element("TrackMate", version="7.11.1")
    ET.SubElement(root, "Log").text = "Written by kt-stardist track."
    model = ET.SubElement(root, "Model", spatialunits="µm", timeunits="frame")
    decl = ET.SubElement(model, "FeatureDeclarations")
    for tag, feats in (("SpotFeatures", _SPOT_FEATURES), ("EdgeFeatures", _EDGE_FEATURES),
                       ("TrackFeatures", _TRACK_FEATURES)):
        sub = ET.SubElement(decl, tag)
        for feature, name, short, dim, isint in feats:
            ET.SubElement(sub, "Feature", feature=feature, name=name, shortname=short,
                          dimension=dim, isint=isint)

    all_spots = ET.SubElement(model, "AllSpots", nspots=str(len(df)))
    for f in np.unique(t):
        sif = ET.SubElement(all_spots, "SpotsInFrame", frame=str(int(f)))
        for i in np.flatnonzero(t == f):
            z, y, x = p[i]
            ET.SubElement(sif, "Spot", ID=str(i), name=f"ID{i}", QUALITY=_fmt(q[i]),
                          POSITION_X=_fmt(x), POSITION_Y=_fmt(y), POSITION_Z=_fmt(z),
                          POSITION_T=_fmt(t[i] * frame_interval), FRAME=str(int(t[i])),
                          RADIUS=_fmt(radius_um), VISIBILITY="1")

    edges = track_edges(df) if len(df) else np.zeros((0, 2), np.int64)
    all_tracks = ET.SubElement(model, "AllTracks")
    filtered = ET.SubElement(model, "FilteredTracks")
    for index, k in enumerate(np.unique(tr[edges[:, 0]]) if len(edges) else []):
        e = edges[tr[edges[:, 0]] == k]
        members = np.flatnonzero(tr == k)
        tt = np.sort(t[members])
        gaps = np.diff(tt) - 1
        track = ET.SubElement(
            all_tracks, "Track", name=f"Track_{int(k)}", TRACK_INDEX=str(index), TRACK_ID=str(int(k)),
            NUMBER_SPOTS=str(len(members)), NUMBER_GAPS=str(int((gaps > 0).sum())),
            LONGEST_GAP=str(int(gaps.max()) if len(gaps) else 0),
            TRACK_START=_fmt(tt[0] * frame_interval), TRACK_STOP=_fmt(tt[-1] * frame_interval),
            TRACK_DURATION=_fmt((tt[-1] - tt[0]) * frame_interval))
        for a, b in e:
            d = float(np.linalg.norm(p[b] - p[a]))
            ET.SubElement(track, "Edge", SPOT_SOURCE_ID=str(a), SPOT_TARGET_ID=str(b),
                          LINK_COST=_fmt(d * d), EDGE_TIME=_fmt((t[a] + t[b]) / 2 * frame_interval),
                          DISPLACEMENT=_fmt(d))
        ET.SubElement(filtered, "TrackID", TRACK_ID=str(int(k)))

    nz, ny, nx = (int(s) for s in shape_px)
    settings = ET.SubElement(root, "Settings")
    ET.SubElement(settings, "ImageData", filename=str(image_filename), folder="", width=str(nx),
                  height=str(ny), nslices=str(nz), nframes=str(n_frames),
                  pixelwidth=_fmt(vox[2]), pixelheight=_fmt(vox[1]), voxeldepth=_fmt(vox[0]),
                  timeinterval=_fmt(frame_interval))
    ET.SubElement(settings, "BasicSettings", xstart="0", xend=str(nx - 1), ystart="0",
                  yend=str(ny - 1), zstart="0", zend=str(nz - 1), tstart="0", tend=str(n_frames - 1))
    ET.SubElement(settings, "DetectorSettings", DETECTOR_NAME="MANUAL_DETECTOR", RADIUS=_fmt(radius_um))
    ET.SubElement(settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true")
    ET.SubElement(settings, "SpotFilterCollection")
    ET.SubElement(settings, "TrackerSettings", TRACKER_NAME="MANUAL_TRACKER")
    ET.SubElement(settings, "TrackFilterCollection")
    ET.SubElement(root, "GUIState", state="ConfigureViews")
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)


def write_trackmate_xml(df, path, voxel_size_um=VOXEL_SIZE_UM, shape_px=FRAME_SHAPE_PX,
                        frame_interval=1.0, radius_um=0.25, image_filename="") -> None:
    """Write :func:`trackmate_xml` to ``path`` (atomic)."""
    from kt_stardist.io import atomic_write

    data = trackmate_xml(df, voxel_size_um, shape_px, frame_interval, radius_um, image_filename)
    with atomic_write(path, "wb") as f:
        f.write(data)
