"""Detection benchmark (science, not speed): stock nnU-Net against the instance-aware trainers.

Runs the demo pipeline (:func:`nnunet_blob.demo.run.run_demo`: synthetic instance-imbalanced dataset, real nnU-Net
planning, preprocessing, training, prediction on a held-out test split, ``nnunet_blob evaluate`` and ``compare``)
with the ``detection`` budget: 20 training and 24 test cases, every trainer with the same seed and budget (reduced
network on a CPU, nnU-Net's own on a GPU). Prints the paper's metrics per trainer, the machine, and the Wilcoxon
comparison. The dataset and budget are fixed in :mod:`nnunet_blob.demo.budgets`; they were not tuned to make any
trainer win. Re-running the same command resumes (finished trainers are not trained again).

    python benchmarks/bench_detection.py [--workspace nnunet_blob_detection] [--trainers ...]
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from nnunet_blob.demo.budgets import BUDGETS
from nnunet_blob.demo.run import run_demo

TRAINERS = ["nnUNetTrainer", "nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerTopKDice",
            "nnUNetTrainerBlobDice_instSampling"]


def machine() -> str:
    from importlib.metadata import version

    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu or platform.machine()}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"nnunetv2 {version('nnunetv2')}, Python {platform.python_version()}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", default="nnunet_blob_detection")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS)
    parser.add_argument("--budget", default="detection", choices=list(BUDGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    start = time.time()
    run_demo(args.workspace, args.budget, args.trainers, device=args.device, seed=args.seed)
    print(f"\n# bench_detection: budget {args.budget} {BUDGETS[args.budget].describe()}, seed {args.seed}\n"
          f"# machine: {machine()}\n# {time.time() - start:.0f} s in all (stages done before not counted)\n")
    print((Path(args.workspace) / "logs" / "compare.log").read_text())


if __name__ == "__main__":
    main()
