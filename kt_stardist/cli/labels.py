"""``kt-stardist labels``: draw a training label volume (one small sphere per point)."""

from __future__ import annotations

import sys

HELP = "draw label volumes (one sphere per kinetochore point) for StarDist training"
DESCRIPTION = (
    "Turn centre-of-mass points (px, z y x) into a label TIFF: each point becomes a sphere of "
    "--radius-um µm in physical space, labelled 1..N in the order of the points in the file "
    "(per frame). Overlapping spheres of close sisters are split by nearest point. Points "
    "outside the volume are listed and skipped."
)


def add_arguments(parser) -> None:
    from kt_stardist.defaults import LABEL_RADIUS_UM

    parser.add_argument("points", metavar="POINTS",
                        help="points file: canonical CSV ([t,] z, y, x px), arivis export or napari CSV")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                      help="volume shape in px")
    size.add_argument("--like", metavar="IMAGE",
                      help="take the shape (and voxel size) from this image")
    parser.add_argument("--radius-um", type=float, default=LABEL_RADIUS_UM, metavar="R",
                        help=f"sphere radius in µm (default {LABEL_RADIUS_UM})")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="voxel size in µm (default: from --like IMAGE, else 0.3 0.13 0.13)")
    frames = parser.add_mutually_exclusive_group()
    frames.add_argument("--frame", type=int, metavar="T",
                        help="with a 't' column: the frame to draw (default: the first)")
    frames.add_argument("--all-frames", action="store_true",
                        help="with a 't' column: write a TZYX label stack, one volume per frame")
    parser.add_argument("--out", required=True, metavar="LABELS.tif", help="output label TIFF")


def _frames_to_draw(df, args, name, n_frames=None):
    """List of (t or None, rows of df) to draw; messages on stderr.

    With ``--all-frames`` the stack has frames t = 0 .. n_frames - 1 (``n_frames`` from the
    ``--like`` image when it is a time-lapse, else the last t + 1), so that stack index = t; frames without points are
    empty volumes.
    """
    from kt_stardist.errors import InputError

    if "t" not in df.columns:
        if args.frame is not None or args.all_frames:
            raise InputError(f"{name}: no 't' column, so --frame/--all-frames do not apply")
        return [(None, df)]
    ts = sorted(int(t) for t in df["t"].unique())
    if ts and ts[0] < 0:
        raise InputError(f"{name}: negative frame index t = {ts[0]}")
    if args.all_frames:
        n = n_frames if n_frames is not None else (ts[-1] + 1 if ts else 1)
        if ts and ts[-1] >= n:
            raise InputError(f"{name}: points in frame t = {ts[-1]} but {args.like} has {n} frames")
        return [(t, df[df["t"] == t]) for t in range(n)]
    if args.frame is None:
        t = ts[0] if ts else 0
        if len(ts) > 1:
            listed = ", ".join(map(str, ts)) if len(ts) <= 6 else f"{ts[0]}..{ts[-1]}"
            print(f"{name}: {len(ts)} frames (t = {listed}); drawing t = {t} "
                  "(use --frame T or --all-frames)", file=sys.stderr)
        return [(t, df[df["t"] == t])]
    if args.frame not in ts:
        raise InputError(f"{name}: no points in frame {args.frame}; frames present: "
                         f"{', '.join(map(str, ts))}")
    return [(args.frame, df[df["t"] == args.frame])]


def run(args) -> int:
    import warnings

    import numpy as np

    from kt_stardist import io
    from kt_stardist.defaults import VOXEL_SIZE_UM
    from kt_stardist.errors import InputError
    from kt_stardist.labels import points_outside, points_to_labels

    df = io.read_points(args.points)
    if args.like:
        image = io.read_image(args.like, check=False)
        shape = image.shape_zyx
        voxel = io.voxel_size_or_default(image, args.voxel_size)
    else:
        shape = tuple(args.shape)
        if min(shape) < 1:
            raise InputError(f"--shape: expected three positive sizes Z Y X in px, got {args.shape}")
        voxel = io.voxel_size_or_default(None, args.voxel_size)
    if args.voxel_size is None and (not args.like or image.voxel_size_um is None):
        print(f"voxel size not given; using the default {tuple(VOXEL_SIZE_UM)} µm (z, y, x)",
              file=sys.stderr)
    if not args.radius_um > 0:
        raise InputError(f"--radius-um: expected a positive radius in µm, got {args.radius_um}")

    frames = _frames_to_draw(df, args, args.points, image.n_frames if args.like and image.n_frames > 1 else None)
    dtype = np.uint16 if max([len(rows) for _, rows in frames] + [0]) < 65535 else np.int32
    from kt_stardist.validate import check_memory

    check_memory((len(frames),) + tuple(shape), np.int32, "--shape", copies=2)
    stack = np.zeros((len(frames),) + shape, dtype=dtype)
    lines = []
    for k, (t, rows) in enumerate(frames):
        pts = io.points_zyx(rows)
        out = points_outside(pts, shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # reported below, by id
            stack[k] = points_to_labels(pts, shape, voxel, args.radius_um)
        where = "" if t is None else f"t = {t}: "
        ids = (np.flatnonzero(out) + 1).tolist()
        msg = f"{where}{len(pts) - len(ids)} objects, {len(ids)} points outside the volume"
        if ids:
            msg += ": ids " + " ".join(map(str, ids))
        lines.append(msg)

    if args.all_frames:
        io.write_image(args.out, stack, axes="TZYX", voxel_size_um=voxel)
    else:
        io.write_image(args.out, stack[0], axes="ZYX", voxel_size_um=voxel)
    for msg in lines:
        print(msg)
    layout = "TZYX" if args.all_frames else "ZYX"
    print(f"wrote {args.out} ({layout} {stack.shape if args.all_frames else shape}, "
          f"radius {args.radius_um} µm, voxel {tuple(voxel)} µm; label k = k-th point of its frame)")
    return 0
