"""``kt-stardist simulate``: synthetic kinetochore volumes or time-lapses with ground truth."""

HELP = "simulate kinetochore volumes/time-lapses with ground-truth points (for training and tests)"
DESCRIPTION = (
    "Write N simulated volumes (or time-lapses) into folder OUT: sim_000.tif (ImageJ hyperstack "
    "with voxel size, camera counts), sim_000.csv (ground truth: t,z,y,x px, pair_id, sister, "
    "track_id) and simulation.json (every parameter and seed; volume i uses seed [S, i]). "
    "The same --seed gives the same bytes."
)


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="output folder (created)")
    parser.add_argument("--n", type=int, default=8, help="number of volumes/time-lapses (default 8)")
    parser.add_argument("--snr", default="mid", choices=["easy", "mid", "hard", "very_hard", "random"],
                        help="SNR preset; 'random': every parameter drawn from wide ranges (default mid)")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=None,
                        help="volume shape in px (default 48 128 128, or the condition's; 61 1000 1000 is a "
                             "whole frame)")
    parser.add_argument("--timelapse", type=int, default=0, metavar="T",
                        help="write time-lapses of T frames instead of single volumes")
    parser.add_argument("--channels", type=int, default=1, choices=[1, 2],
                        help="1: EGFP kinetochores; 2: + mCherry (chromatin or spindle)")
    parser.add_argument("--layout", default="plate", metavar="plate|real|POINTS.csv",
                        help="metaphase plate, the shipped real positions, or a points file (px)")
    parser.add_argument("--missing-sister", action="store_true",
                        help="leave out one member of one pair, as in real annotations")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: drawn, recorded)")
    parser.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        default=None, help="voxel size in µm (default 0.3 0.13 0.13)")
    parser.add_argument("--dtype", default="uint16", choices=["uint16", "float32"],
                        help="image type on disk (default uint16, as a camera writes)")
    parser.add_argument("--condition", metavar="NAME",
                        help="render through physical optics and a camera instead (a robustness-panel condition: "
                             "reference, aberrated_widefield, confocal_water, silicone_deep, hot_pixels, emccd, "
                             "clipped_8bit, bright_nuclei, dense_clusters, thin_stack, fine_pixels, deconvolved); "
                             "the condition sets the voxel size, camera type and default shape")


def run(args) -> int:
    import json
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from kt_stardist import io, simulate
    from kt_stardist.defaults import VOXEL_SIZE_UM
    from kt_stardist.errors import InputError

    if args.n < 1:
        raise InputError(f"--n: expected a positive number, got {args.n}")
    if args.timelapse < 0:
        raise InputError(f"--timelapse: expected 0 (volumes) or a number of frames, got {args.timelapse}")
    args.shape = args.shape if args.shape is not None or args.condition else [48, 128, 128]
    if args.shape is not None and min(args.shape) < 1:
        raise InputError(f"--shape: expected 3 positive integers Z Y X, got {args.shape}")
    from kt_stardist.validate import check_memory

    if args.shape is not None:
        check_memory((max(1, args.timelapse),) + tuple(args.shape) + (args.channels,), np.float32, "--shape",
                     copies=6)  # background, spots, noise and the written copy
    voxel = io.check_voxel_size(args.voxel_size or VOXEL_SIZE_UM, "--voxel-size")
    layout = args.layout
    if layout not in ("plate", "real"):
        if not Path(layout).is_file():
            raise InputError(f"--layout: expected plate, real or an existing points file, got {layout!r}")
        layout = io.read_points(layout)
    seed = args.seed if args.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
    out = Path(args.out)
    if args.condition:
        return _physical(args, seed, out)
    out.mkdir(parents=True, exist_ok=True)

    record = {
        "seed": seed,
        "arguments": {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "out")},
        "voxel_size_um": list(voxel),
        "volumes": [],
    }
    kind = "time-lapse" if args.timelapse else "volume"
    for i in tqdm(range(args.n), desc=f"simulate ({kind}s)", unit=kind):
        kw = dict(shape_px=args.shape, seed=[seed, i], snr=args.snr, channels=args.channels,
                  layout=layout, randomize=args.snr == "random", voxel_size_um=voxel,
                  missing_sister=args.missing_sister or None, return_params=True)
        if args.timelapse:
            image, points, params = simulate.simulate_timelapse(args.timelapse, **kw)
        else:
            image, points, params = simulate.simulate_volume(**kw)
            image = image[None]
            points = points.assign(t=0, track_id=points["point_id"])
        if args.dtype == "uint16":
            image = np.clip(np.rint(image), 0, 65535).astype(np.uint16)
        name = f"sim_{i:03d}"
        io.write_image(out / f"{name}.tif", image, axes="TZYXC", voxel_size_um=voxel)
        cols = ["t", "z", "y", "x", "pair_id", "sister", "track_id"]
        io.write_points(points[cols], out / f"{name}.csv", voxel_size_um=voxel)
        record["volumes"].append({"image": f"{name}.tif", "points": f"{name}.csv", "seed": [seed, i],
                                  "n_points": int(len(points)), "params": params.to_dict()})
    with io.atomic_write(out / "simulation.json", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"wrote {args.n} {kind}(s) to {out}/ (seed {seed})")
    return 0


def _physical(args, seed, out) -> int:
    """``--condition``: volumes of a physical-panel condition (:mod:`kt_stardist.physical`),
    written in the camera's own dtype with their voxel size, and the condition's recipe."""
    import json

    from tqdm import tqdm

    from kt_stardist import io
    from kt_stardist.errors import InputError
    from kt_stardist.physical import CONDITIONS, simulate_physical

    if args.condition not in CONDITIONS:
        raise InputError(f"--condition: expected one of {', '.join(CONDITIONS)}, got {args.condition!r}")
    if args.timelapse or args.channels != 1 or args.voxel_size:
        raise InputError("--condition renders single-channel volumes at the condition's own voxel size "
                         "(no --timelapse, --channels 2 or --voxel-size)")
    cond = CONDITIONS[args.condition]
    shape = None if args.shape is None else tuple(args.shape)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(seed=seed, condition=cond.to_dict(), volumes=[])
    for i in tqdm(range(args.n), desc=f"simulate ({args.condition})", unit="volume"):
        img, points, vox, info = simulate_physical(cond, seed=[seed, i], shape_px=shape)
        name = f"sim_{i:03d}"
        io.write_image(out / f"{name}.tif", img, axes="ZYX", voxel_size_um=vox)
        io.write_points(points, out / f"{name}.csv", voxel_size_um=vox)
        record["volumes"].append({"image": f"{name}.tif", "points": f"{name}.csv", "seed": [seed, i],
                                  "n_points": int(len(points)), "hot_yx": [list(map(int, p)) for p in info["hot_yx"]],
                                  "dead_yx": [list(map(int, p)) for p in info["dead_yx"]]})
    with io.atomic_write(out / "simulation.json", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=float)
        f.write("\n")
    print(f"wrote {args.n} volume(s) of condition {args.condition} to {out}/ (seed {seed})")
    return 0
