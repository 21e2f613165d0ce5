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
    from kt_stardist.settings import FinetuneSettings

    ft = FinetuneSettings()
    tr, sim = ft.train, ft.simulation
    parser.add_argument("--out", default="models/kt-finetuned", metavar="DIR",
                        help="model folder to write (default models/kt-finetuned)")
    parser.add_argument("--from", dest="from_model", metavar="MODEL",
                        help="model folder to transfer weights from; 'default' = the shipped model")
    parser.add_argument("--config", default=ft.config, metavar="NAME",
                        help=f"configuration name or JSON file (default {ft.config})")
    parser.add_argument("--rays", type=int, metavar="N", help="number of rays (default: the config's)")
    parser.add_argument("--grid", type=int, nargs=3, metavar=("Z", "Y", "X"), help="grid (default: the config's)")
    parser.add_argument("--channels", type=int, choices=(1, 2, 3, 6),
                        help="input channels: 1 EGFP, 2 EGFP+mCherry, 3 / 6 the same at t-1, t, t+1")
    parser.add_argument("--images", nargs="+", default=[], metavar="IMG", help="training images")
    parser.add_argument("--points", nargs="+", default=[], metavar="CSV", help="their points (same order)")
    parser.add_argument("--axes", metavar="AXES", help="axes of the images when the files do not say (e.g. TZYX)")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="voxel size of the images in µm when the files do not say; images are rescaled "
                             "to the model's voxel size for training, as predict does")
    parser.add_argument("--simulate", type=int, default=0, metavar="N", help="simulated training volumes")
    parser.add_argument("--sim-shape", type=int, nargs=3, default=sim.shape_px, metavar=("Z", "Y", "X"),
                        help=f"simulated volume shape px (default {' '.join(map(str, sim.shape_px))})")
    parser.add_argument("--sim-snrs", nargs="+", default=list(sim.kinds), metavar="KIND",
                        help="kinds of simulated volume, cycled: SNR presets (easy, mid, hard, very_hard), "
                             "random (domain-randomised) and/or physical (physical optics, cameras, samples; "
                             "physical_crowded: more dense clusters and bright nuclei; EGFP only, movies for "
                             "--channels 3); "
                             f"default: {' '.join(sim.kinds)}")
    parser.add_argument("--warmup", type=int, metavar="E",
                        help="epochs on the easy/mid simulations (and your frames) before the full mix "
                             "(default: a quarter of --epochs, at least 2, when the mix has both)")
    parser.add_argument("--epochs", type=int, default=tr.epochs, metavar="E", help=f"epochs (default {tr.epochs}; 0: keep the weights of --from and only re-choose the "
                             "thresholds on your data)")
    parser.add_argument("--steps-per-epoch", type=int, default=tr.steps_per_epoch, metavar="S",
                        help=f"default {tr.steps_per_epoch}")
    parser.add_argument("--freeze", type=int, default=tr.freeze_epochs, metavar="E",
                        help="keep the transferred U-Net backbone fixed for the first E epochs")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch size px")
    parser.add_argument("--batch", type=int, metavar="B", help="batch size")
    parser.add_argument("--lr", type=float, default=tr.lr, help=f"learning rate (default {tr.lr:g})")
    parser.add_argument("--patience", type=int, default=tr.patience,
                        help=f"early stopping patience, epochs (0: off; default {tr.patience})")
    parser.add_argument("--val-fraction", type=float, default=ft.val_fraction,
                        help=f"share of user frames held out (default {ft.val_fraction:g})")
    parser.add_argument("--seed", type=int, default=tr.seed)
    parser.add_argument("--resume", action="store_true", help="continue from weights_last.h5 in --out")
    parser.add_argument("--augment-intensity", action="store_true",
                        help="also augment intensities (gamma, scale, offset, noise); default: y-x flips and "
                             "rotations only, which lets a fresh network start learning sooner")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")
    parser.add_argument("--settings", metavar="JSON",
                        help="start from these settings (e.g. the train_settings.json of an earlier model, "
                             "which also holds the threshold search); the flags given override them")


#: command-line flag → FinetuneSettings field (``section__field`` for nested settings)
FLAGS = dict(config="config", rays="n_rays", grid="grid", channels="channels", val_fraction="val_fraction",
             epochs="train__epochs", steps_per_epoch="train__steps_per_epoch", lr="train__lr",
             batch="train__batch_size", patch="train__patch_size_px", freeze="train__freeze_epochs",
             warmup="train__warmup_epochs", patience="train__patience", seed="train__seed",
             augment_intensity="train__augment_intensity", simulate="simulation__n", sim_shape="simulation__shape_px",
             sim_snrs="simulation__kinds")


def settings_from_args(args):
    """The :class:`kt_stardist.settings.FinetuneSettings` of the command line: those of
    ``--settings`` (a ``train_settings.json`` of an earlier run, or any JSON of the same shape),
    else the defaults; then every flag given with a value other than its default."""
    from kt_stardist.settings import FinetuneSettings, read_file, replace

    base = read_file(FinetuneSettings, args.settings, drop=("job",)) if args.settings else FinetuneSettings()
    defaults = FinetuneSettings()
    changes = {}
    for flag, field in FLAGS.items():
        v = getattr(args, flag)
        v = tuple(v) if isinstance(v, list) else v
        sec, _, name = field.rpartition("__")
        default = getattr(getattr(defaults, sec) if sec else defaults, name)
        if v is not None and v != default:
            changes[field] = v
    return replace(base, **changes) if changes else base


def run(args) -> int:
    from kt_stardist.errors import InputError

    if len(args.images) != len(args.points):
        raise InputError(f"--images/--points: {len(args.images)} images but {len(args.points)} point files")
    settings = settings_from_args(args)  # --simulate may come from a --settings file
    if not args.images and settings.simulation.n <= 0:
        raise InputError("no training data: give --images with --points and/or --simulate N")
    from kt_stardist import io, train
    from kt_stardist.model import model_folder

    src = model_folder(args.from_model) if args.from_model is not None else None
    vs = io.check_voxel_size(args.voxel_size) if args.voxel_size else None
    model, rep = train.finetune(args.out, settings, from_model=src, images=args.images,
                                points=args.points, axes=args.axes, voxel_size_um=vs, resume=args.resume,
                                tensorboard=not args.no_tensorboard)
    th = rep["thresholds"]
    print(f"model folder: {model.folder}  (prob_thresh {th['prob']:.3f}, nms_thresh {th['nms']:.2f}, "
          f"validation F1 {th['f1']:.3f}, {rep['steps']} steps, {rep['seconds']:.0f} s)")
    return 0
