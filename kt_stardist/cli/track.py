"""``kt-stardist track``: link points over frames (laptrack), export to TrackMate and napari."""

HELP = "link kinetochores over time (laptrack), recover missed spots; export TrackMate XML and napari tracks"
DESCRIPTION = (
    "Link points over frames with a LAP tracker (laptrack) in µm: frame-to-frame links up to "
    "--max-disp-um, gap closing over up to --gap missing frames. Adds track_id to the points "
    "(and pair_track_id when the points carry pair_id: two sister tracks, by a vote over frames). "
    "With --image MOVIE.tif, a track missing for 1-2 frames is searched for in the image near its "
    "interpolated position: a Gaussian fit kept only if a likelihood-ratio test against the "
    "background passes (--false-alarm: chance that a place without a spot passes); such points "
    "join their track with recovered=True (--no-recover: off). "
    "--trackmate writes a TrackMate XML file for Fiji (Plugins > Tracking > Load a TrackMate "
    "file); --napari-tracks a CSV for napari's Tracks layer (track_id, t, z, y, x)."
)


def add_arguments(parser):
    from kt_stardist.defaults import FRAME_SHAPE_PX
    from kt_stardist.settings import RecoverSettings

    GAP_FRAMES, MAX_DISP_UM = 1, 0.8  # tracks.GAP_FRAMES, tracks.MAX_DISP_UM (not imported: --help stays fast)
    rec = RecoverSettings()
    parser.add_argument("points", metavar="POINTS", help="points CSV with t, z, y, x (px)")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="voxel size in µm (default: the image's with --image, else 0.3 0.13 0.13)")
    parser.add_argument("--max-disp-um", type=float, default=MAX_DISP_UM,
                        help="largest displacement of a kinetochore between linked detections, the "
                             "motion all points share taken out, µm (default %(default)s)")
    parser.add_argument("--gap", type=int, default=None,
                        help=f"missing frames a track may jump, 0 for none (default {GAP_FRAMES}; "
                             f"{rec.max_gap_frames} with recovery)")
    parser.add_argument("--image", metavar="MOVIE",
                        help="the time-lapse the points come from (TIFF or file.h5:/dataset): recover "
                             "spots missed for 1-2 frames of a track")
    parser.add_argument("--axes", metavar="TZCYX", help="axes of the image when it does not say (e.g. TZYX)")
    parser.add_argument("--channel", type=int, default=0, help="spot (EGFP) channel of the image (default 0)")
    parser.add_argument("--no-recover", action="store_true", help="with --image: do not recover missed spots")
    parser.add_argument("--false-alarm", type=float, default=rec.false_alarm,
                        help="recovery: chance that a place without a spot passes the test (default %(default)s)")
    parser.add_argument("--camera", nargs=2, type=float, metavar=("GAIN", "ZERO"),
                        help="recovery: camera counts per photon and the count of zero photons "
                             "(default: measured from the movie's noise)")
    parser.add_argument("--out", required=True, help="points CSV with track_id (and pair_track_id)")
    parser.add_argument("--trackmate", metavar="XML", help="also write a TrackMate XML file")
    parser.add_argument("--napari-tracks", metavar="CSV", help="also write napari tracks CSV")
    parser.add_argument("--shape", nargs=3, type=int, metavar=("Z", "Y", "X"),
                        help="frame shape in px recorded in the TrackMate file (default: the image's "
                             f"with --image, else {' '.join(map(str, FRAME_SHAPE_PX))})")
    parser.add_argument("--frame-interval", type=float, default=1.0,
                        help="time between frames recorded in the TrackMate file (default %(default)s)")


def run(args):
    import sys

    from kt_stardist.defaults import FRAME_SHAPE_PX
    from kt_stardist.errors import InputError
    from kt_stardist.io import read_image, read_points, voxel_size_or_default, write_points
    from kt_stardist.settings import RecoverSettings
    from kt_stardist.tracks import link_and_recover, write_napari_tracks, write_trackmate_xml

    df = read_points(args.points)
    recover = args.image is not None and not args.no_recover
    image = None
    if args.image is not None:
        image = read_image(args.image, axes=args.axes, lazy=True, check=False)
        if not 0 <= args.channel < image.n_channels:
            raise InputError(f"--channel {args.channel}: {args.image} has {image.n_channels} channel(s)")
        if recover and image.n_frames < 2:
            raise InputError(f"--image {args.image}: one frame, nothing to recover (a time-lapse is needed)")
    vox = voxel_size_or_default(image, args.voxel_size)
    gain, zero = args.camera if args.camera else (None, None)
    settings = RecoverSettings(false_alarm=args.false_alarm, gain_adu_per_photon=gain, zero_adu=zero)
    out = link_and_recover(df, vox, image.data[..., args.channel] if recover else None, settings,
                           max_disp_um=args.max_disp_um, gap=args.gap)
    msg = f"{len(out)} points in {out['track_id'].nunique()} tracks"
    if recover:
        msg += f", {int(out['recovered'].sum())} recovered from the image"
    if "pair_track_id" in out.columns:
        msg += f", {int((out['pair_track_id'] >= 0).sum())} points in sister track pairs"
    write_points(out, args.out, voxel_size_um=vox)
    if args.trackmate:
        shape = args.shape or (list(image.shape_zyx) if image is not None else list(FRAME_SHAPE_PX))
        write_trackmate_xml(out, args.trackmate, voxel_size_um=vox, shape_px=shape,
                            frame_interval=args.frame_interval,
                            image_filename="" if image is None else str(args.image))
    if args.napari_tracks:
        write_napari_tracks(out, args.napari_tracks)
    print(f"{msg} -> {args.out}", file=sys.stderr)
    return 0
