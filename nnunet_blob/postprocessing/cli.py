"""``nnunet_blob tune-postprocessing``, ``apply-postprocessing``, ``find-best`` and ``export``."""
from __future__ import annotations

import argparse

from nnunet_blob.cli_errors import reports
from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.postprocessing.significance import CROSS_VALIDATED, RULES
from nnunet_blob.preprocessing.locate import InstanceMapError
from nnunet_blob.workers import WorkerDied

_ERRORS = (ValueError, FileNotFoundError, InstanceMapError, WorkerDied)


def _folds(values):
    from nnunet_blob.postprocessing.cases import parse_folds

    return parse_folds(values)


def _metric(args):
    from nnunet_blob.postprocessing.tuning import metric_named

    direction = "higher" if args.higher_is_better else "lower" if args.lower_is_better else None
    return metric_named(args.metric, direction)


def _tune_options(args) -> dict:
    from nnunet_blob.postprocessing.tuning import DEFAULT_THRESHOLDS

    return {"thresholds": None if args.no_thresholds else (args.thresholds or DEFAULT_THRESHOLDS),
            "min_volumes": args.min_volumes, "alpha": args.alpha, "connectivity": args.connectivity,
            "tolerance_mm": args.tolerance_mm, "rule": args.rule}


@reports(*_ERRORS, command="tune-postprocessing")
def _tune(args) -> int:
    from nnunet_blob.postprocessing.cases import cross_validation_predictions
    from nnunet_blob.postprocessing.settings import FILE_NAME
    from nnunet_blob.postprocessing.tuning import tune

    metric = _metric(args)
    predictions = cross_validation_predictions(args.d, args.tr, args.p, args.c, _folds(args.f))
    result = tune(predictions, metric, num_processes=args.np, **_tune_options(args))
    path = result.postprocessing_file().write(predictions.output_folder / FILE_NAME)
    print(result.report())
    print(f"\nwritten: {path}\napply it: nnunet_blob apply-postprocessing -i PREDICTIONS -o OUTPUT -pp {path}")
    return 0


@reports(*_ERRORS, command="apply-postprocessing")
def _apply(args) -> int:
    from nnunet_blob.postprocessing.apply import apply_to_folder

    written = apply_to_folder(args.i, args.o, args.pp, args.np)
    print(f"postprocessed {len(written)} cases into {args.o}")
    return 0


@reports(*_ERRORS, command="find-best")
def _find_best(args) -> int:
    from nnunet_blob.postprocessing.selection import find_best

    find_best(args.d, _metric(args), configurations=args.c, trainers=args.tr, plans=args.p, folds=_folds(args.f),
              allow_ensembling=not args.disable_ensembling, num_processes=args.np, **_tune_options(args))
    return 0


@reports(*_ERRORS, command="export")
def _export(args) -> int:
    from nnunet_blob.postprocessing.export import export_model

    export_model(args.d, args.o, args.c, args.tr, args.p, _folds(args.f), args.chk, stock=args.stock)
    return 0


def _add_tuning_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metric", default="F1",
                        help="per-case metric of nnunet_blob evaluate to maximise (default F1; e.g. IS, IP, Dice, "
                             "SurfaceDice, FP_instances)")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", action="store_true", help="for a metric this command does not know")
    direction.add_argument("--lower-is-better", action="store_true", help="for a metric this command does not know")
    parser.add_argument("--min-volumes", type=float, nargs="+", default=None, metavar="MM3",
                        help="minimum component volumes to try, mm³ (0 is added; default: 7 from two voxels to the "
                             "median reference lesion volume)")
    thresholds = parser.add_mutually_exclusive_group()
    thresholds.add_argument("--thresholds", type=float, nargs="+", default=None,
                            help="probability thresholds to try besides nnU-Net's rule (default 0.3 0.6 0.75 0.9; "
                                 "needs the probabilities: nnUNetv2_train --npz)")
    thresholds.add_argument("--no-thresholds", action="store_true", help="minimum volumes only")
    parser.add_argument("--rule", choices=RULES, default=CROSS_VALIDATED,
                        help="decision rule: cross-validated (default): per fold, the best setting on the other "
                             "folds' cases applied to the fold's cases, one Wilcoxon test of these out-of-fold scores "
                             "against no change (needs two or more folds, else bonferroni is used); bonferroni: the "
                             "best setting's Wilcoxon test on all cases, p times the other settings of the grid")
    parser.add_argument("--alpha", type=float, default=0.05,
                        help="significance level of the decision rule (default 0.05)")
    parser.add_argument("--connectivity", type=int, default=26, choices=CONNECTIVITIES,
                        help="3D connectivity of components (default 26; 2D uses 8, or 4 for 6)")
    parser.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance (default 1 mm)")
    parser.add_argument("-np", type=int, default=1, help="number of processes (default 1)")


def add_parser(subparsers) -> None:
    tp = subparsers.add_parser(
        "tune-postprocessing", help="choose a minimum component volume and probability threshold per class by an "
                                    "instance metric on the cross-validation predictions",
        description="Per class (or region): the minimum component volume (mm³) and, where the probabilities were "
                    "saved (nnUNetv2_train --npz), the probability threshold that maximise the metric on the folds' "
                    "validation predictions; 'no change' unless the gain is significant (paired Wilcoxon over the "
                    "cases of the selection's out-of-fold scores, or --rule bonferroni: of the best setting, "
                    "Bonferroni-corrected for the grid). Writes postprocessing_instances.json next to "
                    "nnU-Net's postprocessing.pkl (crossval_results_folds_*/).")
    tp.add_argument("-d", required=True, help="dataset name or id")
    tp.add_argument("-c", required=True, help="configuration")
    tp.add_argument("-tr", required=True, help="trainer")
    tp.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    tp.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    _add_tuning_options(tp)
    tp.set_defaults(func=_tune)

    ap = subparsers.add_parser(
        "apply-postprocessing", help="apply a postprocessing_instances.json to a folder of predictions",
        description="Postprocess nnU-Net's predictions (label files, or .npz probabilities with their .pkl when the "
                    "file has thresholds) and write label files as nnU-Net writes them.")
    ap.add_argument("-i", required=True, help="folder of predictions (nnUNetv2_predict / nnUNetv2_ensemble output)")
    ap.add_argument("-o", required=True, help="output folder")
    ap.add_argument("-pp", required=True, help="postprocessing_instances.json")
    ap.add_argument("-np", type=int, default=1, help="number of processes (default 1)")
    ap.set_defaults(func=_apply)

    fb = subparsers.add_parser(
        "find-best", help="like nnUNetv2_find_best_configuration, ranked by an instance metric after postprocessing",
        description="Trained models and their pairwise ensembles, each with its postprocessing tuned, ranked by the "
                    "metric's foreground mean over the cross-validation cases; prints the inference commands.")
    fb.add_argument("-d", required=True, help="dataset name or id")
    fb.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres"],
                    help="configurations (default: nnU-Net's four; untrained ones are skipped)")
    fb.add_argument("-tr", nargs="+", default=["nnUNetTrainer"], help="trainers (default nnUNetTrainer)")
    fb.add_argument("-p", nargs="+", default=["nnUNetPlans"], help="plans identifiers (default nnUNetPlans)")
    fb.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    fb.add_argument("--disable-ensembling", action="store_true", help="single models only")
    _add_tuning_options(fb)
    fb.set_defaults(func=_find_best)

    ex = subparsers.add_parser(
        "export", help="nnUNetv2_export_model_to_zip plus our files; --stock: plain nnU-Net predicts the model",
        description="nnU-Net's model zip with postprocessing_instances.json and summary_instances.json added. With "
                    "--stock the checkpoints name nnUNetTrainer (the network of our trainers is nnU-Net's own), so "
                    "a machine with only nnunetv2 installs (nnUNetv2_install_pretrained_model_from_zip) and "
                    "predicts it (nnUNetv2_predict -tr TRAINER).")
    ex.add_argument("-d", required=True, help="dataset name or id")
    ex.add_argument("-o", required=True, help="output zip file")
    ex.add_argument("-c", nargs="+", required=True, help="configurations")
    ex.add_argument("-tr", required=True, help="trainer")
    ex.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    ex.add_argument("-f", nargs="+", default=["0", "1", "2", "3", "4"], help="folds (default 0 1 2 3 4)")
    ex.add_argument("-chk", nargs="+", default=["checkpoint_final.pth"],
                    help="checkpoints to export (default checkpoint_final.pth; e.g. also "
                         "checkpoint_best_instances.pth)")
    ex.add_argument("--stock", action="store_true",
                    help="checkpoints that name nnUNetTrainer: predictable without nnunet_blob")
    ex.set_defaults(func=_export)
