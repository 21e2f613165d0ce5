"""``kt-stardist evaluate``: score detections against ground-truth points (TP, FP, FN, F1, RMSE)."""

from __future__ import annotations

import sys

HELP = "score detected points against ground truth (precision, recall, F1, RMSE), per frame"
DESCRIPTION = (
    "Match predicted to ground-truth points one-to-one (optimal assignment; a pair matches only "
    "within --cutoff-um µm) and print TP, FP, FN, precision, recall, F1 and the RMSE (nm) of "
    "matched pairs, per frame (column t) and overall. --metric seuclidean uses the historical "
    "weighted px distance sqrt(dz²/3 + dy²/1.3 + dx²/1.3); the cutoff is then in those units."
)


def add_arguments(parser) -> None:
    from kt_stardist.defaults import MATCH_CUTOFF_UM

    parser.add_argument("gt", metavar="GT", help="ground-truth points (CSV, arivis export, napari CSV)")
    parser.add_argument("pred", metavar="PRED", help="detected points (same formats)")
    parser.add_argument("--cutoff-um", type=float, default=MATCH_CUTOFF_UM, metavar="D",
                        help=f"match distance in µm (default {MATCH_CUTOFF_UM}); "
                        "with --metric seuclidean in weighted px units")
    parser.add_argument("--voxel-size", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        help="voxel size in µm (default 0.3 0.13 0.13)")
    parser.add_argument("--metric", choices=("euclidean", "seuclidean"), default="euclidean",
                        help="euclidean: physical µm (default); seuclidean: historical weighted px")
    parser.add_argument("--weights", nargs=3, type=float, metavar=("Z", "Y", "X"),
                        default=None, help="variances for --metric seuclidean (default 3 1.3 1.3)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the scores as JSON")


def _table(per_frame, overall) -> str:
    import pandas as pd

    cols = ["n_gt", "n_pred", "tp", "fp", "fn", "precision", "recall", "f1", "rmse_nm"]
    total = pd.DataFrame([{"t": "all"} | {c: overall[c] for c in cols}])
    if "t" in per_frame.columns:
        table = pd.concat([per_frame.astype({"t": str}), total], ignore_index=True)
    else:
        table = total
    table = table.rename(columns={"tp": "TP", "fp": "FP", "fn": "FN", "f1": "F1",
                                  "rmse_nm": "RMSE_nm"})
    return table.to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep="-")


def _jsonable(value):
    import math

    import numpy as np

    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def run(args) -> int:
    import json

    from kt_stardist import io
    from kt_stardist.errors import InputError
    from kt_stardist.evaluate import SEUCLIDEAN_WEIGHTS, evaluate_points

    if not args.cutoff_um >= 0:
        raise InputError(f"--cutoff-um: expected a non-negative distance, got {args.cutoff_um}")
    voxel = io.voxel_size_or_default(None, args.voxel_size)
    weights = tuple(args.weights) if args.weights else SEUCLIDEAN_WEIGHTS
    if args.weights and args.metric != "seuclidean":
        raise InputError("--weights applies only with --metric seuclidean")
    gt, pred = io.read_points(args.gt), io.read_points(args.pred)
    per_frame, overall = evaluate_points(gt, pred, voxel, args.cutoff_um, args.metric, weights)

    unit = "µm" if args.metric == "euclidean" else f"weighted px (variances {weights})"
    note = "" if args.voxel_size else " (default)"
    print(f"{args.metric} matching, cutoff {args.cutoff_um} {unit}, voxel {tuple(voxel)} µm{note}")
    print(_table(per_frame, overall))
    if args.json:
        doc = {
            "gt": str(args.gt), "pred": str(args.pred),
            "metric": args.metric, "cutoff": args.cutoff_um,
            "cutoff_unit": "um" if args.metric == "euclidean" else "weighted_px",
            "weights": list(weights) if args.metric == "seuclidean" else None,
            "voxel_size_um": list(voxel),
            "overall": overall,
            "per_frame": per_frame.to_dict(orient="records"),
        }
        with io.atomic_write(args.json, "w") as f:
            json.dump(_jsonable(doc), f, indent=2)
            f.write("\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
