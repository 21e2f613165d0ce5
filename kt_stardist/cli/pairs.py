"""``kt-stardist pairs``: assign sister kinetochore pairs in every frame of a points table."""

HELP = "pair sister kinetochores in each frame (optimal matching on distance and plate normal)"
DESCRIPTION = (
    "Pair sister kinetochores frame by frame: an optimal matching (no point in two pairs) whose "
    "cost grows with the distance in µm and with the angle between the sister axis and the "
    "metaphase plate normal (smallest principal axis of the frame's points). Points farther than "
    "--max-dist-um from any partner stay unpaired (pair_id -1, paired False). Adds pair_id, "
    "sister (1/2) and paired to the points; --pairs-table writes one row per pair and frame "
    "(inter-sister distance in µm, midpoint in px and µm, angle to the plate normal in degrees)."
)


def add_arguments(parser):
    from kt_stardist.defaults import VOXEL_SIZE_UM

    parser.add_argument("points", metavar="POINTS", help="points CSV (t, z, y, x in px; arivis/napari accepted)")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        default=list(VOXEL_SIZE_UM), help="voxel size in µm (default %(default)s)")
    parser.add_argument("--max-dist-um", type=float, default=1.6,
                        help="largest inter-sister distance in µm (default %(default)s)")
    parser.add_argument("--angle-weight", type=float, default=1.0,
                        help="weight of the plate-normal term, 0 for distance only (default %(default)s)")
    parser.add_argument("--method", choices=["optimal", "greedy"], default="optimal",
                        help="matching: optimal (blossom) or greedy cheapest-first (default %(default)s)")
    parser.add_argument("--use-tracks", action="store_true",
                        help="with a track_id column, pair whole tracks by a vote over frames")
    parser.add_argument("--out", required=True, help="points CSV with pair_id, sister, paired")
    parser.add_argument("--pairs-table", metavar="CSV", help="also write one row per pair and frame")


def run(args):
    import sys

    from kt_stardist.io import atomic_write, read_points, write_points
    from kt_stardist.pairs import assign_pairs, pairs_table

    df = read_points(args.points)
    out = assign_pairs(df, voxel_size_um=args.voxel_size, max_dist_um=args.max_dist_um,
                       angle_weight=args.angle_weight, method=args.method,
                       use_tracks=args.use_tracks)
    write_points(out, args.out, voxel_size_um=args.voxel_size)
    table = pairs_table(out, voxel_size_um=args.voxel_size)
    if args.pairs_table:
        with atomic_write(args.pairs_table, "w", newline="") as f:
            table.to_csv(f, index=False, float_format="%.4f", lineterminator="\n")
    n = len(out)
    med = table["distance_um"].median() if len(table) else float("nan")
    print(f"{int(out['paired'].sum())}/{n} points paired ({len(table)} pairs), "
          f"median inter-sister distance {med:.2f} µm -> {args.out}", file=sys.stderr)
    return 0
