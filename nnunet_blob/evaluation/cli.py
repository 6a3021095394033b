"""``nnunet_blob evaluate`` and ``nnunet_blob compare``."""
from __future__ import annotations

import argparse
import sys

from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.io import reports


@reports(FileNotFoundError, ValueError, command="evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    from nnunet_blob.evaluation import folder

    common = dict(num_processes=args.np, tolerance_mm=args.tolerance_mm, connectivity=args.connectivity,
                  chill=args.chill, png_dir=args.png, images_dir=args.images)
    if args.l is not None:
        folder.evaluate_folder_simple(args.gt_folder, args.pred_folder, args.l, args.il, args.o, **common)
    elif args.djfile and args.pfile:
        folder.evaluate_folder_from_json(args.gt_folder, args.pred_folder, args.djfile, args.pfile, args.o,
                                         **common)
    else:
        print("nnunet_blob evaluate: error: give -djfile and -pfile, or -l (and -il)", file=sys.stderr)
        return 2
    return 0


@reports(FileNotFoundError, ValueError, command="compare")
def _compare(args: argparse.Namespace) -> int:
    from nnunet_blob.evaluation.compare import compare, format_report

    names = args.names or [f"{i}:{p}" for i, p in enumerate(args.summaries)]
    if len(names) != len(args.summaries) or len(set(names)) != len(names):
        print("nnunet_blob compare: error: --names needs one distinct name per summary", file=sys.stderr)
        return 2
    print(format_report(compare(dict(zip(names, args.summaries)), alpha=args.alpha)))
    return 0


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser(
        "evaluate", help="lesion-wise evaluation of a prediction folder (like nnUNetv2_evaluate_folder)",
        description="Voxel metrics as nnU-Net, surface Dice, instance sensitivity/precision/F1 (blob loss paper).")
    ev.add_argument("gt_folder", help="folder with reference segmentations")
    ev.add_argument("pred_folder", help="folder with predicted segmentations")
    ev.add_argument("-djfile", help="dataset.json (file ending, labels/regions, ignore label)")
    ev.add_argument("-pfile", help="plans.json")
    ev.add_argument("-l", type=int, nargs="+", help="labels, instead of -djfile/-pfile")
    ev.add_argument("-il", type=int, default=None, help="ignore label (with -l)")
    ev.add_argument("-o", default=None, help="output json (default PRED_FOLDER/summary_instances.json)")
    ev.add_argument("-np", type=int, default=1, help="number of processes (default 1)")
    ev.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    ev.add_argument("--connectivity", type=int, default=26, choices=CONNECTIVITIES,
                    help="3D connectivity of components (default 26; 2D uses 8, or 4 for 6)")
    ev.add_argument("--chill", action="store_true", help="allow references without a prediction")
    ev.add_argument("--png", default=None, metavar="DIR", help="write one detection picture (MIP) per case")
    ev.add_argument("--images", default=None, metavar="DIR",
                    help="nnU-Net raw imagesTr/imagesTs folder; channel 0000 is the background of the pictures "
                         "(without it the background is plain black)")
    ev.set_defaults(func=_evaluate)

    cp = subparsers.add_parser(
        "compare", help="compare evaluation summaries: Wilcoxon tests and Loss Odyssey rank score",
        description="Per-metric table (mean, median, per-case wins), paired Wilcoxon p-values and rank score.")
    cp.add_argument("summaries", nargs="+", help="summary_instances.json files over the same cases")
    cp.add_argument("--names", nargs="+", help="method names, one per summary (default: index:path)")
    cp.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    cp.set_defaults(func=_compare)
