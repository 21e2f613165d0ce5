"""``kt-stardist predict``: kinetochore points from volumes or time-lapses (``kt_stardist.pipeline.run``)."""

from __future__ import annotations

HELP = "find kinetochores in 3D/4D images: points CSV (t, z, y, x px, z_um.., prob) + run.json"
DESCRIPTION = (
    "Find kinetochores with a StarDist model in 3D volumes or time-lapses (every frame). "
    "Writes one points CSV per image (t, z, y, x in px with sub-voxel precision, z_um, y_um, x_um, "
    "prob, split) and a run record beside it (<name>.run.json: version, model, thresholds, settings, "
    "input, voxel size, seconds, warnings). A time-lapse's points are linked over frames (track_id) and "
    "spots a track missed for 1-2 frames searched for in the image (recovered=True); --no-track turns "
    "that off. Images at another voxel size than the model's are "
    "rescaled to it and the points mapped back to the image's own pixels. Camera defects (hot or "
    "dead pixel columns) are repaired first. Every frame is its own resumable task: rerun an "
    "interrupted command to finish it."
)


def add_arguments(p):
    from kt_stardist.settings import REFINE_METHODS, DetectSettings, RefineSettings

    d, r = DetectSettings(), RefineSettings()
    p.add_argument("images", nargs="+", metavar="IMAGE", help="TIFF/OME-TIFF or file.h5:/dataset")
    p.add_argument("--model", metavar="DIR", help="model folder, or a shipped model: 'default' (EGFP, 1 channel; "
                   "the default), 'nuclei' (EGFP, trained with bright textured nuclei: for spots over bright nuclear "
                   "backgrounds), 'temporal' (EGFP of frames t-1, t, t+1: more spots found on very dim "
                   "time-lapses), '2ch' (EGFP + mCherry channels) or '6ch' (EGFP + mCherry of frames t-1, t, "
                   "t+1); see the README")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", metavar="points.csv", help="output CSV (one IMAGE only)")
    out.add_argument("--out-dir", metavar="DIR", help="write DIR/<image name>.csv for each IMAGE (+ all_points.csv)")
    p.add_argument("--labels-out", metavar="labels.tif", help="also write the label image (one IMAGE only)")
    p.add_argument("--report", metavar="DIR", help="also write the HTML report (DIR/index.html)")
    p.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                   help="voxel size in µm, overrides the file's (default: file, else the model's)")
    p.add_argument("--axes", metavar="TZCYX", help="axes of the file when it does not say (e.g. TZYX, ZCYX)")
    p.add_argument("--channel", type=int, metavar="N", help="spot (EGFP) channel for 1-channel models (default 0)")
    p.add_argument("--settings", metavar="JSON", help="detection settings from a file (a run.json or the "
                   "'settings' it holds); the flags below override it")
    p.add_argument("--prob-thresh", type=float, metavar="P",
                   help="probability threshold (default: the model's, lowered per frame into a clean gap "
                        "between background and spots when there is one)")
    p.add_argument("--stored-threshold", action="store_true",
                   help="use the model's stored probability threshold as it is (no per-frame adaptation, "
                        "no confirm band)")
    p.add_argument("--no-confirm", action="store_true",
                   help="keep no detection below the probability threshold (default: those down to 0.4 "
                        "whose fit places them to within 25 nm laterally are kept)")
    p.add_argument("--nms-thresh", type=float, metavar="T", help="NMS overlap threshold (default: model's)")
    p.add_argument("--refine", choices=list(REFINE_METHODS),
                   help=f"sub-voxel refinement (default {r.method}; spline: fit the PSF measured from the "
                        f"image's own isolated spots, Gaussian kept when too few; lsq: the former least squares)")
    p.add_argument("--no-psf-bias", action="store_true",
                   help="gauss refinement: do not take off the offset a Gaussian fit makes on the image's own "
                        "PSF (measured from its isolated spots; an aberrated PSF's axial tail pulls fits 40-60 nm)")
    p.add_argument("--no-split", action="store_true",
                   help="do not look inside detections for a merged close sister (gauss refinement only)")
    p.add_argument("--no-defect-repair", action="store_true",
                   help="do not repair camera defects (pixel columns hot or dead in every z plane)")
    p.add_argument("--max-memory-gb", type=float, metavar="GB",
                   help=f"frames larger than this as float32 are read and predicted block by block, "
                        f"with the same points (default {d.max_in_memory_gb:g}; 0: always)")
    p.add_argument("--pairs", action="store_true", help="also assign sister pairs (pair_id, sister), as `pairs`")
    tr = p.add_mutually_exclusive_group()
    tr.add_argument("--track", dest="track", action="store_const", const=True, default=None,
                    help="link points over frames (track_id), as `track` (the default for time-lapses); "
                         "spots missed for 1-2 frames of a track are searched for in the image "
                         "(recovered=True when a likelihood-ratio test passes)")
    tr.add_argument("--no-track", dest="track", action="store_const", const=False,
                    help="do not link a time-lapse's points over frames (no track_id, nothing recovered)")
    p.add_argument("--no-recover", action="store_true", help="with tracks: do not recover missed spots")
    b = p.add_argument_group("batch (one task per frame, resumable, on dask)")
    b.add_argument("--workers", type=int, default=1, metavar="N",
                   help="local worker processes (default 1: in this process); jobs with --cluster")
    b.add_argument("--scheduler", metavar="ADDRESS", help="a running dask scheduler, e.g. tcp://host:8786")
    b.add_argument("--cluster", choices=["slurm", "pbs", "sge", "lsf"],
                   help="start workers through dask-jobqueue (pip install dask-jobqueue)")
    b.add_argument("--cluster-option", action="append", default=[], metavar="KEY=VALUE",
                   help="dask-jobqueue option, e.g. queue=gpu, memory=16GB, walltime=01:00:00 (repeat)")


def settings_from_args(args):
    """The :class:`kt_stardist.settings.PipelineSettings` of the command line (``--settings`` file,
    then the flags)."""
    from kt_stardist.settings import DetectSettings, PipelineSettings, read_file, replace, stored_threshold_only

    det = read_file(DetectSettings, args.settings, within=("settings", "detect")) if args.settings else DetectSettings()
    changes = {}
    if args.prob_thresh is not None:
        changes["prob_thresh"] = args.prob_thresh
    if args.nms_thresh is not None:
        changes["nms_thresh"] = args.nms_thresh
    if args.no_confirm:
        changes["confirm__enabled"] = False
    if args.refine is not None:
        changes["refine__method"] = args.refine
    if args.no_psf_bias:
        changes["refine__psf_bias"] = False
    if args.no_split:
        changes["split__enabled"] = False
    if args.no_defect_repair:
        changes["repair_defects"] = False
    if args.max_memory_gb is not None:
        changes["max_in_memory_gb"] = args.max_memory_gb
    det = replace(det, **changes) if changes else det
    if args.stored_threshold:
        det = stored_threshold_only(det)
    return PipelineSettings(detect=det, channel=args.channel, pairs=args.pairs, tracks=args.track,
                            recover=not args.no_recover)


def run(args) -> int:
    import sys

    from kt_stardist import io, pipeline
    from kt_stardist.cli import info
    from kt_stardist.errors import InputError

    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, got {args.workers}")
    opts = {}
    for kv in args.cluster_option:
        if "=" not in kv:
            raise InputError(f"--cluster-option: expected KEY=VALUE, got {kv!r}")
        k, v = kv.split("=", 1)
        opts[k.strip()] = v.strip()
    settings = settings_from_args(args)
    pipeline.check_outputs(args.out, args.out_dir, len(args.images), args.labels_out, args.images)
    vs = io.check_voxel_size(args.voxel_size) if args.voxel_size else None
    for path in args.images[:20]:
        try:
            im = io.read_image(path, axes=args.axes, voxel_size_um=vs, lazy=True)
        except InputError:
            continue  # reported by the run, with the other failures
        src = " (--voxel-size)" if vs else " (file)"
        note = "" if im.voxel_size_um else ": not in the file, the model's is assumed (pass --voxel-size Z Y X)"
        info(f"{path}: {im.summary()}{src if im.voxel_size_um else note}")
    summary = pipeline.run(args.images, out=args.out, out_dir=args.out_dir, model_dir=args.model, settings=settings,
                           axes=args.axes, voxel_size_um=vs, labels_out=args.labels_out, report_dir=args.report,
                           workers=args.workers, scheduler=args.scheduler, cluster=args.cluster,
                           cluster_kwargs=opts, command=" ".join(["kt-stardist"] + sys.argv[1:]))
    for w in summary.warnings:
        print(f"kt-stardist predict: warning: {w}", file=sys.stderr)
    for line in summary.lines():
        info(line)
    for path in summary.outputs:
        print(f"-> {path}", file=sys.stderr)
    if summary.failures and not summary.outputs and len(args.images) == 1:
        raise InputError(summary.failures[0][2] if summary.failures[0][1] is None
                         else f"frame {summary.failures[0][1]}: {summary.failures[0][2]}")
    return 1 if summary.failures else 0
