"""``kt-stardist pretrain``: train StarDist 3D on example nuclei (or your labelled images)."""

from __future__ import annotations

HELP = "pretrain a StarDist 3D model on StarDist's example nuclei (or folders of images + labels)"
DESCRIPTION = (
    "Train StarDist 3D from scratch on the synthetic 3D nuclei that ship with StarDist "
    "(stardist.data.test_image_nuclei_3d), or on --data IMG_DIR LBL_DIR (TIFFs matched by sorted "
    "name), with augmentation (flips and 90° rotations in y-x, intensity scaling). Writes a model "
    "folder (config.json, weights_best.h5, weights_last.h5, model.json, history.csv/png, "
    "TensorBoard logs in logs/) to start `kt-stardist finetune --from` with."
)


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="models/pretrain", metavar="DIR", help="model folder to write (default models/pretrain)")
    parser.add_argument("--data", nargs="+", default=["example"], metavar="D",
                        help="'example' (default) or IMG_DIR LBL_DIR")
    parser.add_argument("--config", default="nuclei-pretrain", metavar="NAME",
                        help="configuration name or JSON file (default nuclei-pretrain: kt-default's U-Net, so every backbone layer transfers)")
    parser.add_argument("--epochs", type=int, default=4, metavar="E", help="epochs (default 4)")
    parser.add_argument("--steps", type=int, default=25, metavar="N", help="steps per epoch (default 25)")
    parser.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="patch size px (default: the config's, capped at the image size)")
    parser.add_argument("--batch", type=int, metavar="B", help="batch size (default: the config's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from weights_last.h5 in --out")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard logs")


def run(args) -> int:
    from kt_stardist.errors import InputError

    if args.data == ["example"]:
        data = "example"
    elif len(args.data) == 2:
        data = tuple(args.data)
    else:
        raise InputError("--data: expected 'example' or IMG_DIR LBL_DIR")
    from kt_stardist import train

    from kt_stardist.settings import PretrainSettings, TrainSettings

    tr = TrainSettings(epochs=args.epochs, steps_per_epoch=args.steps, seed=args.seed, lr=args.lr,
                       patch_size_px=tuple(args.patch) if args.patch else None, batch_size=args.batch, patience=0)
    model = train.pretrain(args.out, data, PretrainSettings(config=args.config, train=tr), resume=args.resume,
                           tensorboard=not args.no_tensorboard)
    print(f"model folder: {model.folder}")
    return 0
