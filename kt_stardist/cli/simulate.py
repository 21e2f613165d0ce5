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
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"), default=[48, 128, 128],
                        help="volume shape in px (default 48 128 128; 61 1000 1000 is a whole frame)")
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
    if min(args.shape) < 1:
        raise InputError(f"--shape: expected 3 positive integers Z Y X, got {args.shape}")
    from kt_stardist.validate import check_memory

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
