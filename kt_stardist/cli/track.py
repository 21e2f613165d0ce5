"""``kt-stardist track``: link points over frames (laptrack), export to TrackMate and napari."""

HELP = "link kinetochores over time (laptrack); export TrackMate XML and napari tracks"
DESCRIPTION = (
    "Link points over frames with a LAP tracker (laptrack) in µm: frame-to-frame links up to "
    "--max-disp-um, gap closing over up to --gap missing frames. Adds track_id to the points "
    "(and pair_track_id when the points carry pair_id: two sister tracks, by a vote over frames). "
    "--trackmate writes a TrackMate XML file for Fiji (Plugins > Tracking > Load a TrackMate "
    "file); --napari-tracks a CSV for napari's Tracks layer (track_id, t, z, y, x)."
)


def add_arguments(parser):
    from kt_stardist.defaults import FRAME_SHAPE_PX, VOXEL_SIZE_UM

    parser.add_argument("points", metavar="POINTS", help="points CSV with t, z, y, x (px)")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        default=list(VOXEL_SIZE_UM), help="voxel size in µm (default %(default)s)")
    parser.add_argument("--max-disp-um", type=float, default=1.0,
                        help="largest displacement between linked detections, µm (default %(default)s)")
    parser.add_argument("--gap", type=int, default=1,
                        help="missing frames a track may jump, 0 for none (default %(default)s)")
    parser.add_argument("--out", required=True, help="points CSV with track_id (and pair_track_id)")
    parser.add_argument("--trackmate", metavar="XML", help="also write a TrackMate XML file")
    parser.add_argument("--napari-tracks", metavar="CSV", help="also write napari tracks CSV")
    parser.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                        default=list(FRAME_SHAPE_PX),
                        help="frame shape in px recorded in the TrackMate file (default %(default)s)")
    parser.add_argument("--frame-interval", type=float, default=1.0,
                        help="time between frames recorded in the TrackMate file (default %(default)s)")


def run(args):
    import sys

    from kt_stardist.io import read_points, write_points
    from kt_stardist.tracks import (link_pair_tracks, track_points, write_napari_tracks,
                                    write_trackmate_xml)

    df = read_points(args.points)
    out = track_points(df, voxel_size_um=args.voxel_size, max_disp_um=args.max_disp_um, gap=args.gap)
    msg = f"{len(out)} points in {out['track_id'].nunique()} tracks"
    if "pair_id" in out.columns:
        out = link_pair_tracks(out)
        msg += f", {int((out['pair_track_id'] >= 0).sum())} points in sister track pairs"
    write_points(out, args.out, voxel_size_um=args.voxel_size)
    if args.trackmate:
        write_trackmate_xml(out, args.trackmate, voxel_size_um=args.voxel_size,
                            shape_px=args.shape, frame_interval=args.frame_interval)
    if args.napari_tracks:
        write_napari_tracks(out, args.napari_tracks)
    print(f"{msg} -> {args.out}", file=sys.stderr)
    return 0
