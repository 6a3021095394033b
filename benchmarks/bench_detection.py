"""Detection benchmark (science, not speed): stock nnU-Net against the instance-aware trainers.

Runs the demo pipeline (``nnunet_blob demo``: synthetic instance-imbalanced dataset, real nnU-Net planning,
preprocessing, training, prediction on a held-out test split, ``nnunet_blob evaluate`` and ``compare``) with the
``detection`` budget: 20 training and 24 test cases, every trainer with the same seed and budget (reduced network on
a CPU, nnU-Net's own on a GPU). Prints the paper's metrics per trainer and the Wilcoxon comparison. The dataset and
budget are fixed in :mod:`nnunet_blob.demo.budgets`; they were not tuned to make any trainer win.

    python benchmarks/bench_detection.py [--workspace nnunet_blob_detection] [--trainers ...]
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from nnunet_blob.demo.run import run_demo

TRAINERS = ["nnUNetTrainer", "nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerTopKDice",
            "nnUNetTrainerBlobDice_instSampling"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="nnunet_blob_detection")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--budget", default="detection")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    run_demo(args.workspace, args.budget, args.trainers, seed=args.seed)
    print(f"\n# bench_detection: budget {args.budget}, seed {args.seed}, {platform.machine()}, "
          f"{time.time() - start:.0f} s in all (resumed stages not counted)")
    print((Path(args.workspace) / "logs" / "compare.log").read_text())


if __name__ == "__main__":
    main()
