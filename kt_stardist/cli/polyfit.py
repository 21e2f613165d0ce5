"""kt-stardist polyfit: how well star-convex polyhedra fit the labels, and how learnable they are."""

HELP = "sweep label radius x rays x anisotropy x grid: polyhedron fit (mean IoU) and learnable fraction"
DESCRIPTION = (
    "For each label radius (um), number of rays, anisotropy and output grid: the mean IoU of "
    "StarDist's star-convex reconstruction of each object (StarDist's own star_dist3D / "
    "polyhedron_to_label / matching), and the fraction of objects the network can learn at that "
    "grid (a lattice voxel with training target >= 0.5). Prints a table and a recommendation. "
    "Input: --labels, --points (with --shape or --like), --simulate N, or --example (StarDist's "
    "3D example nuclei). Axis order z, y, x."
)


def _triple(kind):
    def parse(s):
        parts = s.replace("x", ",").split(",")
        if len(parts) != 3:
            import argparse

            raise argparse.ArgumentTypeError(f"expected Z,Y,X, got {s!r}")
        return tuple(kind(p) for p in parts)
    return parse


def add_arguments(p):
    src = p.add_argument_group("input (one of)")
    g = src.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", metavar="L.tif", help="label image (z, y, x), 0 = background")
    g.add_argument("--points", metavar="P.csv", help="points table (px); labels drawn at each --radii")
    g.add_argument("--simulate", type=int, metavar="N", help="N simulated volumes (kt_stardist.simulate)")
    g.add_argument("--example", action="store_true", help="StarDist's 3D example nuclei labels")
    src.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                     help="volume shape for --points (default for --simulate: 48 128 128)")
    src.add_argument("--like", metavar="IMAGE", help="take the volume shape (and voxel size) from this image")
    src.add_argument("--frame", type=int, default=0, help="time point of --points to use (default 0)")
    src.add_argument("--no-crop", action="store_true", help="don't crop --points labels to the points' box")
    p.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="voxel size um (default 0.3 0.13 0.13; --example: from object extents)")
    p.add_argument("--radii", type=float, nargs="+", default=None, metavar="UM",
                   help="label radii um (default 0.3 0.4 0.5 0.6)")
    p.add_argument("--rays", type=int, nargs="+", default=None, help="default 32 64 128 256 512 1024")
    p.add_argument("--anisotropy", nargs="+", default=["voxel", "1,1,1"], metavar="A",
                   help="'voxel' (from the voxel size) and/or Z,Y,X (default: voxel 1,1,1)")
    p.add_argument("--grids", type=_triple(int), nargs="+", default=None, metavar="Z,Y,X",
                   help="default 1,1,1 1,2,2 1,4,4 1,8,8 1,16,16")
    p.add_argument("--max-objects", type=int, default=200,
                   help="fit at most this many randomly sampled objects per label image (default 200; 0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-iou", type=float, default=0.7, help="recommendation: minimum mean IoU")
    p.add_argument("--min-learnable", type=float, default=0.95, help="recommendation: minimum learnable fraction (0.95)")
    p.add_argument("--max-radius", type=float, default=0.5,
                   help="recommendation: largest label radius um (0.5: sisters are ~1 um apart; 0 = no limit)")
    p.add_argument("--csv", metavar="OUT.csv", help="write the table")
    p.add_argument("--plot", metavar="OUT.png", help="write a plot")


def _labels(args, voxel, radii, align):
    """{radius or None: labels}, description, anisotropy override."""
    import numpy as np

    from kt_stardist import polyfit
    from kt_stardist.errors import InputError

    if args.example:
        lab, an = polyfit.example_labels()
        return {None: lab}, f"StarDist 3D example nuclei {lab.shape}", an
    if args.labels:
        from kt_stardist.io import read_image

        img = read_image(args.labels)
        if img.data.shape[0] != 1 or img.data.shape[-1] != 1:
            raise InputError(f"{args.labels}: expected one 3D label volume, got TZYXC {img.data.shape}")
        lab = np.asarray(img.data[0, ..., 0])
        if not np.issubdtype(lab.dtype, np.integer):
            raise InputError(f"{args.labels}: expected integer labels, got {lab.dtype}")
        return {None: polyfit.check_labels(lab, args.labels)}, f"{args.labels} {lab.shape}", None
    if args.points:
        from kt_stardist.io import points_zyx, read_points

        df = read_points(args.points)
        if "t" in df.columns:
            df = df[df["t"] == args.frame]
        if len(df) == 0:
            raise InputError(f"{args.points}: no points (frame {args.frame})")
        shape = args.shape
        if args.like:
            from kt_stardist.io import read_image

            shape = read_image(args.like, lazy=True).data.shape[1:4]
        if shape is None:
            raise InputError("--points needs --shape Z Y X or --like IMAGE")
        L, sl = polyfit.labels_from_points(points_zyx(df), shape, voxel, radii, align=align,
                                           crop=not args.no_crop)
        box = "x".join(str(s.stop - s.start) for s in sl)
        return L, f"{args.points} frame {args.frame}: {len(df)} points, labels on a {box} crop", None
    # simulate
    from kt_stardist.labels import points_to_labels
    from kt_stardist.simulate import simulate_volume

    shape = tuple(args.shape or (48, 128, 128))
    stack = {float(r): [] for r in radii}
    n_points = 0
    gap = align[0] * max(1, -(-4 // align[0]))
    for i in range(args.simulate):
        _, pts = simulate_volume(shape, seed=args.seed + i, snr="mid")
        n_points += len(pts)
        for r in radii:
            lab = points_to_labels(pts[["z", "y", "x"]].to_numpy(float), shape, voxel, r)
            nz = -(-shape[0] // align[0]) * align[0] + gap
            pad = np.zeros((nz,) + shape[1:], np.int32)
            off = max((int(l.max()) for l in stack[float(r)]), default=0)
            pad[: shape[0]] = np.where(lab > 0, lab + off, 0)
            stack[float(r)].append(pad)
    return ({r: np.concatenate(v, 0) for r, v in stack.items()},
            f"{args.simulate} simulated volumes {shape}, {n_points} points (stacked in z with gaps)", None)


def run(args):
    import numpy as np

    from kt_stardist import polyfit
    from kt_stardist.defaults import VOXEL_SIZE_UM
    from kt_stardist.errors import InputError

    voxel = tuple(args.voxel_size) if args.voxel_size else VOXEL_SIZE_UM
    if min(voxel) <= 0:
        raise InputError(f"--voxel-size: expected positive sizes, got {voxel}")
    radii = args.radii or list(polyfit.DEFAULT_RADII_UM)
    rays = args.rays or list(polyfit.DEFAULT_RAYS)
    grids = args.grids or list(polyfit.DEFAULT_GRIDS)
    if min(rays) < 4 or min(min(g) for g in grids) < 1 or min(radii) <= 0:
        raise InputError("--rays must be >= 4, --grids >= 1, --radii > 0")
    labels, what, an_example = _labels(args, voxel, radii, polyfit.grid_lcm(grids))
    an_voxel = an_example or tuple(round(v / min(voxel), 2) for v in voxel)
    anis = []
    for a in args.anisotropy:
        if a == "voxel":
            anis.append(an_voxel)
        else:
            try:
                anis.append(tuple(float(v) for v in a.split(",")))
                assert len(anis[-1]) == 3 and min(anis[-1]) > 0
            except (ValueError, AssertionError):
                raise InputError(f"--anisotropy: expected 'voxel' or Z,Y,X > 0, got {a!r}") from None
    max_obj = args.max_objects or None
    print(f"polyfit: {what}; anisotropies {', '.join(polyfit.fmt_triple(a) for a in anis)}")
    table = polyfit.sweep(labels, rays=rays, anisotropies=anis, grids=grids, max_objects=max_obj,
                          seed=args.seed, progress=True)
    sampled = table[table["n_fitted"] < table["n_objects"]]
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_rows", 1000, "display.float_format", "{:.3f}".format):
        print(table.to_string(index=False))
    if len(sampled):
        print(f"note: mean IoU from {int(sampled['n_fitted'].iloc[0])} randomly sampled objects "
              f"(--max-objects {max_obj}, seed {args.seed}) of {int(sampled['n_objects'].max())}; "
              f"learnable fractions from all objects")
    _, text = polyfit.recommend(table, args.min_iou, args.min_learnable, args.max_radius or None,
                               anisotropy=polyfit.fmt_triple(anis[0]))
    print(text)
    if args.csv:
        from kt_stardist.io import atomic_write

        with atomic_write(args.csv, "w") as f:
            table.to_csv(f, index=False, float_format="%.4f")
        print(f"wrote {args.csv}")
    if args.plot:
        polyfit.plot_sweep(table, args.plot, title=what)
        print(f"wrote {args.plot}")
    return 0 if np.isfinite(table["mean_iou"]).any() else 1
