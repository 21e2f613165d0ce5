"""``kt-stardist finetune``: train a kinetochore model on your points and/or simulations."""

from __future__ import annotations

HELP = "train a kinetochore model on annotated images and/or simulations (weights from --from)"
DESCRIPTION = (
    "Finetune StarDist 3D on kinetochores. Training data: --images with --points (TIFF/HDF5 "
    "images; canonical CSV, arivis or napari points; frames with points are used, column t) "
    "and/or --simulate N simulated volumes (cycling --sim-snrs; the first --warmup epochs use "
    "only the easy/mid ones, which is what lets a fresh network start). Points become spheres of the config's "
    "label radius (0.5 µm). Weights come from --from (every layer whose shape matches is copied, "
    "the others start fresh; the log lists them). Thresholds are chosen by point F1 (0.5 µm) on "
    "held-out data and saved in thresholds.json. --resume continues from weights_last.h5 in --out."
)


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="models/kt-finetuned", metavar="DIR",
                        help="model folder to write (default models/kt-finetuned)")
    parser.add_argument("--from", dest="from_model", metavar="MODEL",
                        help="model folder to transfer weights from; 'default' = the shipped model")
    parser.add_argument("--config", default="kt-default", metavar="NAME",
                        help="configuration name or JSON file (default kt-default)")
    parser.add_argument("--rays", type=int, metavar="N", help="number of rays (default: the config's)")
    parser.add_argument("--grid", type=int, nargs=3, metavar=("Z", "Y", "X"), help="grid (default: the config's)")
    parser.add_argument("--channels", type=int, choices=(1, 2, 3, 6),
                        help="input channels: 1 EGFP, 2 EGFP+mCherry, 3 / 6 the same at t-1, t, t+1")
    parser.add_argument("--images", nargs="+", default=[], metavar="IMG", help="training images")
    parser.add_argument("--points", nargs="+", default=[], metavar="CSV", help="their points (same order)")
    parser.add_argument("--axes", metavar="AXES", help="axes of the images when the files do not say (e.g. TZYX)")
    parser.add_argument("--simulate", type=int, default=0, metavar="N", help="simulated training volumes")
    parser.add_argument("--sim-shape", type=int, nargs=3, default=(32, 128, 128), metavar=("Z", "Y", "X"),
                        help="simulated volume shape px (default 32 128 128)")
    parser.add_argument("--sim-snrs", nargs="+", default=["easy", "mid"], metavar="KIND",
                        help="kinds of simulated volume, cycled: SNR presets (easy, mid, hard, very_hard) "
                             "and/or random (domain-randomised); default: easy mid, what the shipped model "
                             "learned from")
    parser.add_argument("--warmup", type=int, metavar="E",
                        help="epochs on the easy/mid simulations (and your frames) before the full mix "
                             "(default: a quarter of --epochs, at least 2, when the mix has both)")
    parser.add_argument("--epochs", type=int, default=20, metavar="E", help="epochs (default 20)")
    parser.add_argument("--steps-per-epoch", type=int, default=40, metavar="S", help="default 40")
    parser.add_argument("--freeze", type=int, default=0, metavar="E",
                        help="keep the transferred U-Net backbone fixed for the first E epochs")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch size px")
    parser.add_argument("--batch", type=int, metavar="B", help="batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--patience", type=int, default=10, help="early stopping patience, epochs (0: off)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of user frames held out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from weights_last.h5 in --out")
    parser.add_argument("--augment-intensity", action="store_true",
                        help="also augment intensities (gamma, scale, offset, noise); default: y-x flips and "
                             "rotations only, which lets a fresh network start learning sooner")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")


def run(args) -> int:
    from kt_stardist.errors import InputError

    if len(args.images) != len(args.points):
        raise InputError(f"--images/--points: {len(args.images)} images but {len(args.points)} point files")
    if not args.images and args.simulate <= 0:
        raise InputError("no training data: give --images with --points and/or --simulate N")
    from kt_stardist import train
    from kt_stardist.model import DEFAULT_MODEL_DIR

    src = DEFAULT_MODEL_DIR if args.from_model == "default" else args.from_model
    model, rep = train.finetune(
        args.out, from_model=src, config=args.config, n_rays=args.rays, grid=args.grid, channels=args.channels,
        images=args.images, points=args.points, axes=args.axes, simulate=args.simulate,
        sim_shape=tuple(args.sim_shape), sim_snrs=tuple(args.sim_snrs),
        warmup=args.warmup, val_fraction=args.val_fraction, epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch, freeze=args.freeze, seed=args.seed, lr=args.lr,
        patch_size=args.patch, batch_size=args.batch, patience=args.patience, resume=args.resume,
        tensorboard=not args.no_tensorboard, augment={} if args.augment_intensity else None)
    th = rep["thresholds"]
    print(f"model folder: {model.logdir}  (prob_thresh {th['prob']:.3f}, nms_thresh {th['nms']:.2f}, "
          f"validation F1 {th['f1']:.3f}, {rep['steps']} steps, {rep['seconds']:.0f} s)")
    return 0
