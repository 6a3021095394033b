"""``nnunet_blob evaluate`` and ``nnunet_blob compare``."""
from __future__ import annotations

import argparse
import sys

from nnunet_blob.cli_errors import reports
from nnunet_blob.evaluation.options import BRATS_PRESETS
from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.workers import WorkerDied


@reports(FileNotFoundError, ValueError, WorkerDied, command="evaluate")
def _evaluate(args: argparse.Namespace) -> int:
    import os

    from nnunet_blob.evaluation import folder
    from nnunet_blob.evaluation.options import options_from_arguments
    from nnunet_blob.evaluation.report import format_summary

    if args.l is None and not (args.djfile and args.pfile):
        print("nnunet_blob evaluate: error: give -djfile and -pfile, or -l (and -il)", file=sys.stderr)
        return 2
    if args.l is not None and (args.djfile or args.pfile):
        print("nnunet_blob evaluate: error: give either -djfile and -pfile, or -l (and -il), not both",
              file=sys.stderr)
        return 2
    options = options_from_arguments(
        preset=args.preset, gt_dilation=args.gt_dilation, min_lesion_volume=args.min_lesion_volume,
        matching=args.matching, match_metric=args.match_metric, match_threshold=args.match_threshold,
        confidence=args.confidence, detection_iou=args.detection_iou, size_bins=args.size_bins,
        tolerance_mm=args.tolerance_mm, connectivity=args.connectivity, empty_case=args.empty_case,
        cc_dice=args.cc_dice, allow_geometry_mismatch=args.allow_geometry_mismatch, cell_scores=args.cell_scores,
        reference_instances=args.reference_instances, prediction_instances=args.prediction_instances,
        instance_inputs=args.instance_inputs)
    output = args.o or os.path.join(args.pred_folder, "summary_instances.json")
    common = dict(num_processes=args.np, chill=args.chill, png_dir=args.png, images_dir=args.images,
                  options=options)
    if args.l is not None:
        summary = folder.evaluate_folder_simple(args.gt_folder, args.pred_folder, args.l, args.il, output, **common)
    else:
        summary = folder.evaluate_folder_from_json(args.gt_folder, args.pred_folder, args.djfile, args.pfile, output,
                                                   **common)
    print(format_summary(summary, output, args.png))
    return 0


@reports(FileNotFoundError, ValueError, command="compare")
def _compare(args: argparse.Namespace) -> int:
    from nnunet_blob.evaluation.compare import compare, format_report, metric_directions

    names = args.names or [f"{i}:{p}" for i, p in enumerate(args.summaries)]
    if len(names) != len(args.summaries) or len(set(names)) != len(names):
        print("nnunet_blob compare: error: --names needs one distinct name per summary", file=sys.stderr)
        return 2
    metrics = metric_directions(args.metrics) if args.metrics else None
    print(format_report(compare(dict(zip(names, args.summaries, strict=True)), metrics=metrics, alpha=args.alpha)))
    return 0


def add_parser(subparsers) -> None:
    ev = subparsers.add_parser(
        "evaluate", help="lesion-wise evaluation of a prediction folder (like nnUNetv2_evaluate_folder)",
        usage="nnunet_blob evaluate GT_FOLDER PRED_FOLDER (-djfile DATASET_JSON -pfile PLANS_JSON | -l LABEL "
              "[LABEL ...] [-il IGNORE]) [options]",
        description="Voxel metrics as nnU-Net, surface Dice, instance sensitivity/precision/F1 (blob loss paper), "
                    "one-to-one matching with panoptic quality (panoptica), BraTS lesion-wise Dice/HD95, "
                    "sensitivity by lesion volume, CC-Dice, FROC/AP from nnU-Net's probabilities, and with instance "
                    "maps of touching objects (cells, nuclei) the 2018 Data Science Bowl's AP over IoU thresholds. "
                    "Required: -djfile and -pfile, or -l.")
    ev.add_argument("gt_folder", metavar="GT_FOLDER", help="folder with reference segmentations")
    ev.add_argument("pred_folder", metavar="PRED_FOLDER", help="folder with predicted segmentations")
    ev.add_argument("-djfile", help="dataset.json (file ending, labels/regions, ignore label); with -pfile, "
                                    "required unless -l is given")
    ev.add_argument("-pfile", help="plans.json; with -djfile, required unless -l is given")
    ev.add_argument("-l", type=int, nargs="+", help="labels, instead of -djfile/-pfile (required without them)")
    ev.add_argument("-il", type=int, default=None, help="ignore label (with -l)")
    ev.add_argument("-o", default=None, help="output json (default PRED_FOLDER/summary_instances.json)")
    ev.add_argument("-np", type=int, default=1, help="number of processes (default 1)")
    ev.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance in mm (default 1)")
    ev.add_argument("--connectivity", type=int, default=26, choices=CONNECTIVITIES,
                    help="3D connectivity of components (default 26; 2D uses 8, or 4 for 6)")
    ev.add_argument("--chill", action="store_true",
                    help="allow references without a prediction: only the predicted cases are evaluated (the summary "
                         "lists the others)")
    ev.add_argument("--png", default=None, metavar="DIR", help="write one detection picture (MIP) per case")
    ev.add_argument("--images", default=None, metavar="DIR",
                    help="nnU-Net raw imagesTr/imagesTs folder; channel 0000 is the background of the pictures "
                         "(without it the background is plain black)")
    ev.add_argument("--allow-geometry-mismatch", action="store_true",
                    help="compare predictions whose spacing/origin/direction differ from the reference's")
    ev.add_argument("--empty-case", choices=("nan", "one"), default="nan",
                    help="a case with empty reference and prediction: metrics NaN (default, nnU-Net) or 1.0 (WMH)")
    lesions = ev.add_argument_group("lesion matching and lesion-wise scores")
    lesions.add_argument("--matching", choices=("overlap", "one-to-one"), default=None,
                         help="overlap (default without instance maps): a component is found when touched by >= 1 "
                              "voxel; one-to-one (default with instance maps): pairs above --match-threshold, each "
                              "object in at most one pair (panoptica); adds n_matched, RQ, SQ, PQ, SQ_Dice")
    lesions.add_argument("--match-metric", choices=("iou", "dice"), default=None,
                         help="pair score of --matching one-to-one (default iou)")
    lesions.add_argument("--match-threshold", type=float, default=None,
                         help="a pair is eligible when its score is >= this (default 0.5)")
    lesions.add_argument("--cell-scores", action=argparse.BooleanOptionalAction, default=None,
                         help="the cell field's scores: DSB_AP, the 2018 Data Science Bowl's mean over IoU thresholds "
                              "0.5:0.05:0.95 of TP/(TP+FP+FN) with one-to-one matches at IoU >= t, AP@t per "
                              "threshold, F1@0.5, precision@0.5, recall@0.5 (default: on with instance maps)")
    lesions.add_argument("--reference-instances", default=None, metavar="DIR",
                         help="instance maps of the reference cases (file names and grid of GT_FOLDER's labels; ids "
                              "> 0, 0 = none; each object inside one foreground label): the objects instead of "
                              "the connected components, so touching objects count apart")
    lesions.add_argument("--prediction-instances", default=None, metavar="DIR",
                         help="instance maps of the predicted cases (as --reference-instances, for PRED_FOLDER), "
                              "e.g. from your own postprocessing (default: connected components of the prediction)")
    lesions.add_argument("--instance-inputs", action="store_true",
                         help="GT_FOLDER and PRED_FOLDER hold instance maps of one class (0 = background, ids > 0): "
                              "evaluated as label 1 (-l 1) with their objects")
    lesions.add_argument("--size-bins", type=float, nargs="+", default=None, metavar="ML",
                         help="edges in ml of the reference-lesion volume bins of the sensitivity by size "
                              "(default 0.01 0.1 1 10)")
    lesions.add_argument("--cc-dice", action="store_true",
                         help="CC-Dice: Dice inside each reference component's Voronoi cell (CC-Metrics)")
    lesions.add_argument("--preset", choices=sorted(BRATS_PRESETS), default=None,
                         help="BraTS 2023 lesion-wise Dice and HD95 with the challenge's dilation and volume "
                              "threshold")
    lesions.add_argument("--gt-dilation", type=int, default=None, metavar="N",
                         help="BraTS lesion-wise scores with N dilations of the reference (0: none)")
    lesions.add_argument("--min-lesion-volume", type=float, default=None, metavar="MM3",
                         help="with --gt-dilation: reference lesions of at most this volume (mm^3) are dropped")
    lesions.add_argument("--confidence", action="store_true",
                         help="FROC and AP from nnU-Net's probabilities (PRED_FOLDER/<case>.npz of nnUNetv2_predict "
                              "--save_probabilities); a candidate's confidence is its largest probability")
    lesions.add_argument("--detection-iou", type=float, default=None,
                         help="with --confidence: IoU a candidate needs with a lesion to be a hit (default 0.1, "
                              "PI-CAI)")
    ev.set_defaults(func=_evaluate)

    cp = subparsers.add_parser(
        "compare", help="compare evaluation summaries: Wilcoxon tests and Loss Odyssey rank score",
        description="Per-metric table (mean, median, per-case wins), paired Wilcoxon p-values and rank score.")
    cp.add_argument("summaries", nargs="+", help="summary_instances.json files over the same cases")
    cp.add_argument("--names", nargs="+", help="method names, one per summary (default: index:path)")
    cp.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    cp.add_argument("--metrics", nargs="+", default=None, metavar="METRIC",
                    help="per-case metrics to compare (default: Dice, SurfaceDice, F1, IS, IP and, when evaluated, "
                         "RQ, SQ, PQ, SQ_Dice, DSB_AP, F1@0.5, CC_Dice, lesion_wise_Dice, lesion_wise_HD95), e.g. "
                         "FP_instances, AP@0.75 or a size bin's IS_0.01-0.1ml")
    cp.set_defaults(func=_compare)
