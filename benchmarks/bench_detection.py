"""Detection benchmark (science, not speed): stock nnU-Net against the instance-aware trainers.

Runs the demo pipeline (:func:`nnunet_blob.demo.run.run_demo`: synthetic instance-imbalanced dataset, real nnU-Net
planning, preprocessing, training, prediction on a held-out test split, ``nnunet_blob evaluate`` and ``compare``)
with the ``detection`` budget: 20 training and 24 test cases, every trainer with the same seed and budget (reduced
network on a CPU, nnU-Net's own on a GPU). Prints the paper's metrics per trainer, the machine, and the Wilcoxon
comparison. The dataset and budget are fixed in :mod:`nnunet_blob.demo.budgets`; they were not tuned to make any
trainer win. Re-running the same command resumes (finished trainers are not trained again).

``--tune``: every trainer's five cross-validation folds, the postprocessing tuned on their validation predictions
(``nnunet_blob tune-postprocessing``) and the test split's five-fold ensemble reported raw and tuned.
``--seeds 0 1 2``: one run per seed (dataset and training; workspace ``<workspace>_seed<k>``), each run's paired
tests, then the mean +- sd over the seeds of each trainer's test-split means.

    python benchmarks/bench_detection.py [--workspace nnunet_blob_detection] [--trainers ...] [--tune] [--seeds ...]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from nnunet_blob.demo.budgets import BUDGETS
from nnunet_blob.demo.report import COLUMNS, row_key
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--tune", action="store_true")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    tables = {}
    for seed in args.seeds:
        start = time.time()
        workspace = Path(args.workspace if len(args.seeds) == 1 else f"{args.workspace}_seed{seed}")
        tables[seed] = run_demo(workspace, args.budget, args.trainers, device=args.device, seed=seed,
                                tune=args.tune)
        print(f"\n# bench_detection: budget {args.budget} {BUDGETS[args.budget].describe()}, seed {seed}"
              f"{', five folds, tuned postprocessing' if args.tune else ''}\n# machine: {machine()}\n"
              f"# {time.time() - start:.0f} s in all (stages done before not counted)\n")
        print((workspace / "logs" / "compare.log").read_text())
        pooled = {row: _pooled(workspace, row) for row in tables[seed]}
        print("pooled instance counts (missed, false-positive objects): "
              + "; ".join(f"{row} {missed}, {false}" for row, (missed, false) in pooled.items()))
    if len(args.seeds) > 1:
        print(f"\n# mean +- sd over seeds {args.seeds} of the test-split means")
        print("| trainer | " + " | ".join(COLUMNS) + " |")
        print("|---" * (len(COLUMNS) + 1) + "|")
        for row in tables[args.seeds[0]]:
            cells = []
            for column in COLUMNS:
                values = [tables[seed][row][column] for seed in args.seeds]
                cells.append(f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}")
            print(f"| {row} | " + " | ".join(cells) + " |")


def _pooled(workspace: Path, row: str) -> tuple[int, int]:
    """(missed, false-positive) objects over the test split, foreground labels together."""
    summary = json.loads((workspace / "evaluation" / row_key(row) / "summary_instances.json").read_text())
    labels = summary["pooled_instances"].values()
    return sum(int(v["FN_instances"]) for v in labels), sum(int(v["FP_instances"]) for v in labels)


if __name__ == "__main__":
    main()
