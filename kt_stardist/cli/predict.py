"""``kt-stardist predict``: kinetochore points from volumes or time-lapses."""

from __future__ import annotations

HELP = "find kinetochores in 3D/4D images: points CSV (t, z, y, x px, z_um.., prob)"
DESCRIPTION = (
    "Find kinetochores with a StarDist model in 3D volumes or time-lapses (every frame). "
    "Writes one canonical points CSV per image (t, z, y, x in px with sub-voxel precision, "
    "z_um, y_um, x_um, prob). Images at another voxel size than the model's are rescaled "
    "to it and the points mapped back to the image's own pixels."
)


def add_arguments(p):
    p.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF/OME-TIFF or file.h5:/dataset")
    p.add_argument("--model", metavar="DIR", help="model folder (default: the shipped model)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", metavar="points.csv", help="output CSV (one IMAGE only)")
    out.add_argument("--out-dir", metavar="DIR", help="write DIR/<image name>.csv for each IMAGE")
    p.add_argument("--labels-out", metavar="labels.tif", help="also write the label image (one IMAGE only)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in µm, overrides the file's (default: file, else the model's)")
    p.add_argument("--axes", metavar="TZCYX", help="axes of the file when it does not say (e.g. TZYX, ZCYX)")
    p.add_argument("--channel", type=int, metavar="N", help="spot (EGFP) channel for 1-channel models (default 0)")
    p.add_argument("--prob-thresh", type=float, metavar="P", help="probability threshold (default: model's)")
    p.add_argument("--nms-thresh", type=float, metavar="T", help="NMS overlap threshold (default: model's)")
    p.add_argument("--refine", choices=["gauss", "centroid", "none"], default="gauss",
                   help="sub-voxel refinement (default gauss)")
    p.add_argument("--no-split", action="store_true",
                   help="do not look inside detections for a merged close sister (gauss refinement only)")
    p.add_argument("--max-memory-gb", type=float, default=4.0, metavar="GB",
                   help="frames larger than this as float32 are read and predicted block by block, "
                        "with the same points (default 4; 0: always)")
    p.add_argument("--pairs", action="store_true", help="also assign sister pairs (pair_id, sister), as `pairs`")
    p.add_argument("--track", action="store_true", help="also link points over frames (track_id), as `track`")
    b = p.add_argument_group("batch (with --out-dir: one task per frame, resumable, on dask)")
    b.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local worker processes (default 1: in this process); jobs with --cluster")
    b.add_argument("--scheduler", metavar="ADDRESS", help="a running dask scheduler, e.g. tcp://host:8786")
    b.add_argument("--cluster", choices=["slurm", "pbs", "sge", "lsf"],
                   help="start workers through dask-jobqueue (pip install dask-jobqueue)")
    b.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dask-jobqueue option, e.g. queue=gpu, memory=16GB, walltime=01:00:00 (repeat)")


def _out_path(args, image_path):
    from pathlib import Path

    from kt_stardist.distributed import file_stem

    if args.out:
        return Path(args.out)
    return Path(args.out_dir) / f"{file_stem(image_path)}.csv"


def run(args) -> int:
    import sys
    from pathlib import Path

    from kt_stardist.errors import InputError

    if args.out and len(args.images) > 1:
        raise InputError(f"--out takes one IMAGE, {len(args.images)} given; use --out-dir DIR")
    if args.labels_out and len(args.images) > 1:
        raise InputError("--labels-out takes one IMAGE")
    if args.prob_thresh is not None and not 0 < args.prob_thresh < 1:
        raise InputError(f"--prob-thresh must be in (0, 1), got {args.prob_thresh}")
    if args.nms_thresh is not None and not 0 < args.nms_thresh < 1:
        raise InputError(f"--nms-thresh must be in (0, 1), got {args.nms_thresh}")
    if args.max_memory_gb < 0:
        raise InputError(f"--max-memory-gb must be at least 0, got {args.max_memory_gb}")

    if args.out_dir and not args.labels_out and not (args.pairs or args.track):
        return _run_batch(args)
    if args.workers != 1 or args.scheduler or args.cluster:
        raise InputError("--workers/--scheduler/--cluster need --out-dir DIR")

    from kt_stardist import io
    from kt_stardist import predict as P

    vs_override = io.check_voxel_size(args.voxel_size) if args.voxel_size else None
    images = [_read(p, args, vs_override) for p in args.images[:1]]
    model = P.load(args.model)
    facts = P.model_facts(model)
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(args.images):
        image = images[0] if k == 0 else _read(path, args, vs_override)
        P.check_image_for_model(image, facts, args.channel)
        vs = image.voxel_size_um or facts["voxel_size_um"]
        res = P.predict_image(model, image, voxel_size_um=vs, channel=args.channel,
                              prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh,
                              refine=args.refine, labels=bool(args.labels_out),
                              max_in_memory_gb=args.max_memory_gb, split=not args.no_split)
        df, lab = res if args.labels_out else (res, None)
        df = _chain(df, args, vs)
        out = _out_path(args, path)
        io.write_points(df, out, voxel_size_um=vs)
        if lab is not None:
            axes = "TZYX" if lab.shape[0] > 1 else "ZYX"
            io.write_image(args.labels_out, lab if lab.shape[0] > 1 else lab[0], axes=axes, voxel_size_um=vs)
        n_t = image.data.shape[0]
        print(f"{path}: {len(df)} points" + (f" in {n_t} frames" if n_t > 1 else "") + f" -> {out}",
              file=sys.stderr)
    return 0


def _read(path, args, voxel_size_um):
    """The image, left lazy when a frame is larger than --max-memory-gb (as float32); small
    images are read whole, which also checks them for NaN and empty volumes."""
    from kt_stardist import io
    from kt_stardist.predict import exceeds_memory

    image = io.read_image(path, axes=args.axes, voxel_size_um=voxel_size_um, lazy=True)
    if exceeds_memory(image.shape_zyx, image.n_channels, args.max_memory_gb):
        return image
    return io.read_image(path, axes=args.axes, voxel_size_um=voxel_size_um)


def _chain(df, args, voxel_size_um):
    """--pairs / --track: sister pairs and tracks on the detections (pairs first, then tracks)."""
    if args.pairs and len(df):
        from kt_stardist.pairs import assign_pairs

        df = assign_pairs(df, voxel_size_um=voxel_size_um)
    if args.track and len(df):
        from kt_stardist.tracks import track_points

        df = track_points(df if "t" in df else df.assign(t=0), voxel_size_um=voxel_size_um)
    return df


def _run_batch(args) -> int:
    """--out-dir: every frame of every IMAGE as its own task, resumable (kt_stardist.distributed)."""
    import sys

    from kt_stardist import distributed, io
    from kt_stardist.errors import InputError

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    opts = {}
    for kv in args.cluster_option:
        if "=" not in kv:
            raise InputError(f"--cluster-option: expected KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k.strip()] = v.strip()
    vs = io.check_voxel_size(args.voxel_size) if args.voxel_size else None
    kw = dict(channel=args.channel, prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh, refine=args.refine,
              max_in_memory_gb=args.max_memory_gb, split=not args.no_split)
    summary = distributed.run_batch(args.images, args.out_dir, model_dir=args.model, axes=args.axes,
                                    voxel_size_um=vs, predict_kwargs=kw, scheduler=args.scheduler,
                                    workers=args.workers, cluster=args.cluster, cluster_kwargs=opts)
    for line in summary.lines():
        print(line, file=sys.stderr)
    for path in summary.outputs:
        print(f"-> {path}", file=sys.stderr)
    return 1 if summary.failures else 0
