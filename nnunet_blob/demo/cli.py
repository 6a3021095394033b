"""``nnunet_blob demo``."""
from __future__ import annotations

import argparse

from nnunet_blob.cli_errors import reports
from nnunet_blob.demo.run import DemoError, StageError, run_demo


@reports(DemoError, StageError, command="demo")
def _demo(args: argparse.Namespace) -> int:
    run_demo(args.workspace, args.budget, args.trainers, args.device, args.clean, args.seed, args.np,
             verbose=args.verbose, tune=args.tune)
    return 0


def add_parser(subparsers) -> None:
    from nnunet_blob.demo.budgets import BUDGETS, DEFAULT_TRAINERS, MEASURED_CPU_SECONDS, idle_minutes

    smoke, default = MEASURED_CPU_SECONDS["smoke"], MEASURED_CPU_SECONDS["default"]

    p = subparsers.add_parser(
        "demo", help="run the whole pipeline on a synthetic dataset and compare stock nnU-Net with blob loss",
        description="Generate a synthetic instance-imbalanced dataset (large structures beside many small blobs, "
                    "held-out test split) in a workspace of its own, then run nnUNetv2_plan_and_preprocess, the "
                    "instance maps, nnUNetv2_train for each trainer (same seed and budget), nnUNetv2_predict on the "
                    "test split, nnunet_blob evaluate and compare, and print DSC, SDSC, F1, IS and IP per trainer. "
                    "Re-running resumes where it stopped.")
    p.add_argument("--workspace", default="nnunet_blob_demo",
                   help="folder for data, models and results (default ./nnunet_blob_demo); nnUNet_raw/"
                        "_preprocessed/_results are set inside it, your own nnU-Net folders are not touched")
    p.add_argument("--budget", default="default", choices=list(BUDGETS),
                   help=f"smoke: a pipeline check, meaningless numbers ({smoke} CPU-seconds measured); default: two "
                        f"trainers compared ({default} CPU-seconds measured: at least {idle_minutes(default):.1f} "
                        f"minutes on an idle 2-core CPU); detection: the detection benchmark's (24 test cases, "
                        f"longer); long: nnU-Net's own network size, for a GPU")
    p.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS),
                   help=f"trainers to compare (default: {' '.join(DEFAULT_TRAINERS)}); any nnunet_blob trainer, "
                        f"e.g. nnUNetTrainerBlobTversky nnUNetTrainerTopKDice nnUNetTrainerBlobDice_instSampling")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"],
                   help="auto: cuda when available, else cpu")
    p.add_argument("--clean", action="store_true",
                   help="delete the demo workspace first (says what it removed) and start over; a folder the demo "
                        "did not make is never deleted")
    p.add_argument("--verbose", action="store_true",
                   help="stream every tool's full output (nnU-Net's included); by default the console shows one line "
                        "per stage and per training epoch, and the full output is in each stage's log")
    p.add_argument("--tune", action="store_true",
                   help="train nnU-Net's five cross-validation folds of each trainer, tune the postprocessing on "
                        "their validation predictions (nnunet_blob tune-postprocessing), predict the test split with "
                        "the five-fold ensemble and report it raw and tuned (about five times the training time)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and of every trainer (default 0)")
    p.add_argument("-np", type=int, default=2, help="processes for preprocessing and data augmentation (default 2)")
    p.set_defaults(func=_demo)
