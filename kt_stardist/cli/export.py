"""``kt-stardist export``: a model folder as a bioimage.io model package (deepImageJ, ilastik, QuPath)."""

HELP = "export a model's StarDist network as a bioimage.io model package (zip) for deepImageJ/ilastik/QuPath"
DESCRIPTION = (
    "Write OUT.zip, a bioimage.io model package (bioimageio.spec format 0.5) of the StarDist network in "
    "MODEL_DIR (default: the shipped model): Keras HDF5 and TensorFlow SavedModel weights, input and output "
    "axes at the model's voxel size and grid, percentile normalisation, test tensors computed by the network, "
    "a cover image and a README. The package is validated before it is written. Other tools get the "
    "network's probability and distance maps only: NMS with the calibrated thresholds, sub-voxel refinement, "
    "the close-sister search, pairing and tracking stay in kt-stardist (kt-stardist predict). "
    'Needs: pip install "kt-stardist[bioimageio]".'
)


def add_arguments(parser):
    parser.add_argument("model_dir", nargs="?", metavar="MODEL_DIR",
                        help="kt-stardist model folder (default: the shipped model)")
    parser.add_argument("out", metavar="OUT.zip", help="package to write")
    parser.add_argument("--name", help="model name in the package (default: kt-stardist MODEL kinetochores)")
    parser.add_argument("--author", action="append", metavar="NAME",
                        help="author (repeat; default: kt-stardist developers)")
    parser.add_argument("--license", default="BSD-3-Clause", help="SPDX licence id of the weights (default BSD-3-Clause)")
    parser.add_argument("--no-saved-model", action="store_true",
                        help="Keras HDF5 weights only (no TensorFlow SavedModel bundle; deepImageJ needs the bundle)")


def run(args) -> int:
    import sys

    from kt_stardist.cli import info
    from kt_stardist.model.bioimageio import export_bioimageio

    info(f"exporting {args.model_dir or 'the shipped model'} ...")
    out = export_bioimageio(args.model_dir, args.out, name=args.name,
                            authors=tuple(args.author or ("kt-stardist developers",)), license=args.license,
                            saved_model=not args.no_saved_model)
    print(f"-> {out} (bioimage.io model format 0.5, validated by bioimageio.spec)", file=sys.stderr)
    return 0
