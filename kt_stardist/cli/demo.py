"""``kt-stardist demo``: the whole pipeline on a simulated time-lapse, scored against its truth."""

HELP = "run the whole pipeline on a simulated time-lapse (no downloads): detect, pair, track, score, report"
DESCRIPTION = (
    "Simulate a short two-channel (EGFP + mCherry) time-lapse with kinetochores near the centre of "
    "a large frame, find them with the shipped model, pair sisters, track them, score the "
    "detections against the simulation's truth and write an HTML report. Needs no downloads."
)


def add_arguments(parser):
    parser.add_argument("--out", default="kt-stardist-demo", metavar="DIR",
                        help="output folder (default ./kt-stardist-demo)")
    parser.add_argument("--frames", type=int, default=4, help="time points (default 4)")
    parser.add_argument("--shape", type=int, nargs=3, default=[61, 512, 512], metavar=("Z", "Y", "X"),
                        help="frame shape in px (default 61 512 512; 61 1000 1000 is a whole frame)")
    parser.add_argument("--snr", default="mid", choices=["easy", "mid", "hard", "very_hard"],
                        help="SNR preset of the simulation (default mid)")
    parser.add_argument("--seed", type=int, default=2026, help="simulation seed (default 2026)")
    parser.add_argument("--model", default=None, metavar="DIR", help="model folder (default: the shipped model)")
    parser.add_argument("--detector", default="auto", choices=["auto", "model", "log"],
                        help="auto: the model when one is available, else the LoG baseline (tuned on "
                             "separate simulations); model; log (default auto)")


def run(args) -> int:
    import json
    import sys
    import time
    from pathlib import Path

    import numpy as np

    from kt_stardist import io, simulate
    from kt_stardist.defaults import MATCH_CUTOFF_UM, VOXEL_SIZE_UM
    from kt_stardist.errors import InputError

    if args.frames < 1:
        raise InputError(f"--frames: expected a positive number, got {args.frames}")
    if min(args.shape) < 16:
        raise InputError(f"--shape: expected at least 16 px per axis, got {args.shape}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    from kt_stardist.cli import info

    def step(msg):
        info(f"[{time.perf_counter() - t_start:5.1f} s] {msg}")

    step(f"simulating {args.frames} frames of {'x'.join(map(str, args.shape))} px, 2 channels, SNR {args.snr}")
    movie, truth = simulate.simulate_timelapse(args.frames, tuple(args.shape), seed=args.seed, snr=args.snr,
                                               channels=2, layout="real", missing_sister=True)
    movie = np.clip(np.round(movie), 0, 65535).astype(np.uint16)  # what a camera writes
    image_path, truth_path = out / "demo_timelapse.tif", out / "truth.csv"
    io.write_image(image_path, movie, axes="TZYXC", voxel_size_um=VOXEL_SIZE_UM)
    io.write_points(truth, truth_path, voxel_size_um=VOXEL_SIZE_UM)

    from kt_stardist.model import DEFAULT_MODEL_DIR
    from kt_stardist.pairs import assign_pairs, pairs_table
    from kt_stardist.tracks import track_points, write_trackmate_xml

    image = io.read_image(image_path)
    vs = image.voxel_size_um or VOXEL_SIZE_UM
    use_model = args.detector == "model" or (
        args.detector == "auto" and (args.model is not None or (DEFAULT_MODEL_DIR / "config.json").is_file()))
    points_path = out / "points.csv"
    if use_model:
        from kt_stardist import pipeline
        from kt_stardist.settings import PipelineSettings

        step("finding, pairing and tracking kinetochores with the model (kt_stardist.pipeline.run, "
             "what `kt-stardist predict --pairs --track` runs)")
        summary = pipeline.run([image_path], out=points_path, model_dir=args.model,
                               settings=PipelineSettings(pairs=True, tracks=True), progress=True,
                               command=" ".join(["kt-stardist", "demo"] + sys.argv[2:]))
        for w in summary.warnings:
            step(f"warning: {w}")
        if summary.failures:
            raise InputError(f"demo: detection failed: {summary.failures[0][2]}")
        points = io.read_points(points_path)
        run_rec = json.loads(pipeline.run_json_path(points_path).read_text())
        detector = {"model": run_rec["model"]["folder"], "thresholds": run_rec["model"]["thresholds"]}
    else:
        points, detector = _log_baseline(image, args.seed, step)
        step("pairing sisters and tracking")
        points = track_points(assign_pairs(points, voxel_size_um=vs), voxel_size_um=vs)
        io.write_points(points, points_path, voxel_size_um=vs)
    ptable = pairs_table(points, voxel_size_um=vs)
    if len(ptable):
        io.write_points(ptable, out / "pairs.csv")
    write_trackmate_xml(points, out / "tracks.xml", voxel_size_um=vs, shape_px=image.shape_zyx)

    from kt_stardist.evaluate import evaluate_points

    per_frame, overall = evaluate_points(truth, points, voxel_size_um=vs, cutoff_um=MATCH_CUTOFF_UM)
    step("writing the report")
    from kt_stardist.report import write_report

    meta = {**detector, "command": " ".join(["kt-stardist", "demo"] + sys.argv[2:]),
            "simulation": f"{args.frames} frames, {args.shape} px, SNR {args.snr}, seed {args.seed}"}
    report = write_report(out / "report", image.data, vs, points, gt_df=truth, pair_table=ptable, meta=meta,
                          title="kt-stardist demo")
    with io.atomic_write(out / "scores.json", "w") as f:
        json.dump({"per_frame": per_frame.to_dict(orient="records"), "overall": overall}, f, indent=2,
                  default=float)

    print(per_frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"overall: {len(points)} detections for {len(truth)} kinetochores over {args.frames} frames — "
          f"precision {overall['precision']:.3f}, recall {overall['recall']:.3f}, F1 {overall['f1']:.3f}, "
          f"RMSE {overall['rmse_nm']:.0f} nm (match within {MATCH_CUTOFF_UM} µm)")
    n_pairs = int((points.get("pair_id", np.array([-1])) >= 0).sum() // 2)
    print(f"sister pairs per frame: {n_pairs / max(args.frames, 1):.1f}; "
          f"tracks: {points['track_id'].nunique() if 'track_id' in points else 0}")
    print(f"report: {report.resolve()}")
    print(f"files:  {out.resolve()} (demo_timelapse.tif, truth.csv, points.csv, pairs.csv, tracks.xml)")
    step("done")
    return 0


def _log_baseline(image, seed, step):
    """Points of every frame by the LoG baseline, its threshold tuned on separate simulations
    (used when no trained model is available)."""
    import pandas as pd
    from tqdm.auto import tqdm

    from kt_stardist import baselines, simulate
    from kt_stardist.defaults import VOXEL_SIZE_UM

    step("no trained model available: using the LoG baseline detector "
         "(threshold tuned on 3 separate simulated volumes)")
    tune = [simulate.simulate_volume(image.shape_zyx, seed=[seed, 1000 + i], snr=snr, layout="real")
            for i, snr in enumerate(("easy", "mid", "hard"))]
    thr, f1 = baselines.tune_log_threshold([v[..., 0] for v, _ in tune],
                                           [p[["z", "y", "x"]].to_numpy(float) for _, p in tune])
    vs = image.voxel_size_um or VOXEL_SIZE_UM
    frames = []
    for t in tqdm(range(image.n_frames), desc="frames"):
        df = baselines.log_detect(image.frame(t)[..., 0], vs, threshold=thr)
        df.insert(0, "t", t)
        frames.append(df)
    points = pd.concat(frames, ignore_index=True)  # io.write_points adds z_um, y_um, x_um
    return points, {"model": "LoG baseline (kt_stardist.baselines.log_detect); no trained model available",
                    "thresholds": {"log": thr, "tuning F1": f1}}
