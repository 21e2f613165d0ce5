"""``kt-stardist report``: a self-contained HTML page of detections (and scores) for one image."""

HELP = "write an HTML report (projections, detections, scores, histograms) for an image and its points"
DESCRIPTION = (
    "Write REPORT_DIR/index.html: maximum-intensity projections (y-x and x-z, true aspect) of the "
    "EGFP channel cropped around the points, detections drawn on top (with --gt: true positives, "
    "false positives and misses at 0.5 µm), sister pairs and tracks, counts and precision/recall/"
    "F1/RMSE per frame, histograms of inter-sister distance and probability. The PNGs are embedded "
    "in the page (one file to mail) and also saved beside it."
)


def add_arguments(parser):
    parser.add_argument("image", metavar="IMAGE", help="image file (TIFF/ImageJ/OME, or file.h5:/dataset)")
    parser.add_argument("points", metavar="POINTS", help="detections CSV (t, z, y, x px, prob, pair_id, ...)")
    parser.add_argument("--gt", metavar="GT", help="ground-truth points (CSV or arivis export): adds scores")
    parser.add_argument("--pairs", metavar="PAIRS.csv", help="per-pair table with distance_um (kt-stardist pairs)")
    parser.add_argument("--out", metavar="REPORT_DIR", help="output folder (default: POINTS name + _report)")
    parser.add_argument("--frame", metavar="T", type=int, help="frame to project (default: first with detections)")
    parser.add_argument("--channel", metavar="C", type=int, default=0, help="channel shown (default 0, EGFP)")
    parser.add_argument("--voxel-size", metavar=("Z", "Y", "X"), nargs=3, type=float,
                        help="voxel size in µm (default: from the file, else 0.3 0.13 0.13)")
    parser.add_argument("--axes", help="axes of the image file, e.g. TZCYX (default: from the file)")
    parser.add_argument("--title", help="page title")
    parser.add_argument("--meta", metavar="RUN.json",
                        help="JSON with model, thresholds, command of the run that made POINTS (shown in the page; "
                             "default: the run.json that predict wrote beside POINTS, if any)")


def _read_table(path, what):
    import pandas as pd

    from kt_stardist.errors import InputError

    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file ({what})") from None
    except Exception as e:
        raise InputError(f"{path}: cannot read {what} as CSV ({type(e).__name__})") from None


def _command_line(args) -> str:
    import shlex
    import sys

    argv = sys.argv[1:]
    if argv[:1] == ["report"]:
        return "kt-stardist " + shlex.join(argv)
    parts = ["kt-stardist", "report", args.image, args.points]
    for opt in ("gt", "pairs", "out", "frame", "channel", "axes", "title", "meta"):
        v = getattr(args, opt)
        if v is not None and not (opt == "channel" and v == 0):
            parts += [f"--{opt}", str(v)]
    if args.voxel_size:
        parts += ["--voxel-size", *map(str, args.voxel_size)]
    return shlex.join(parts)


def run(args) -> int:
    import json
    from pathlib import Path

    from kt_stardist import io
    from kt_stardist.errors import InputError
    from kt_stardist.report import write_report

    image = io.read_image(args.image, axes=args.axes, voxel_size_um=args.voxel_size)
    voxel = io.voxel_size_or_default(image, args.voxel_size)
    points = io.read_points(args.points)
    gt = io.read_points(args.gt) if args.gt else None
    pair_table = None
    if args.pairs:
        pair_table = _read_table(args.pairs, "pair table")
        if "distance_um" not in pair_table.columns:
            raise InputError(f"{args.pairs}: no distance_um column; expected a pair table from kt-stardist pairs")
    meta = {}
    from kt_stardist.pipeline import run_json_path

    beside = run_json_path(args.points)
    meta_path = args.meta or (str(beside) if beside.is_file() else None)  # predict's run.json
    if meta_path:
        try:
            meta = json.loads(Path(meta_path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputError(f"{meta_path}: cannot read run metadata as JSON ({type(e).__name__})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path}: expected a JSON object (model, thresholds, command)")
    meta.setdefault("command", _command_line(args))
    meta.setdefault("image", str(args.image))
    meta.setdefault("points", str(args.points))
    if args.gt:
        meta.setdefault("ground truth", str(args.gt))
    out = Path(args.out) if args.out else Path(args.points).with_name(Path(args.points).stem + "_report")
    index = write_report(out, image.data, voxel, points, gt, pair_table, meta=meta,
                         frame=args.frame, title=args.title, channel=args.channel)
    print(index)
    return 0
