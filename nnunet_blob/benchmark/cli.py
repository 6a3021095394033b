"""``nnunet_blob benchmark``."""
from __future__ import annotations

import argparse

from nnunet_blob.benchmark.run import BenchmarkError, Budget, run_benchmark
from nnunet_blob.cli_errors import reports

DESCRIPTION = (
    "Time stock nnUNetTrainer and the trainers you name on your own preprocessed dataset, the way nnU-Net's "
    "nnUNetTrainerBenchmark_5epochs and _noDataLoading do: each trainer runs nnUNetv2_train twice (its "
    "<trainer>_benchmark class with data loading, and <trainer>_benchmark_noDataLoading on reused batches), each "
    "in its own process, with the same plans, fold, budget and seed, no checkpoints and no final validation. "
    "Prints per trainer the fastest epoch and the peak GPU memory (torch.cuda.max_memory_allocated; '-' on the "
    "CPU), each with its ratio to stock, and writes them with the GPU, torch, CUDA, cuDNN, nnU-Net and nnunet_blob "
    "versions to a JSON. Needs nnUNetv2_plan_and_preprocess done; instance maps missing are computed at the "
    "start of the first instance-aware run (outside the timed epochs), or beforehand with nnunet_blob preprocess. "
    "Cost: 2 x (1 + trainers) runs of EPOCHS x (ITERATIONS + validation iterations) steps, plus start-up "
    "(with torch.compile on a GPU, about a minute per run).")


def _budget(args: argparse.Namespace) -> Budget:
    val_iterations = args.val_iterations if args.val_iterations is not None else max(1, args.iterations // 5)
    for option, value in (("--epochs", args.epochs), ("--iterations", args.iterations),
                          ("--val-iterations", val_iterations)):
        if value < 1:
            raise BenchmarkError(f"{option} must be at least 1 (got {value})")
    return Budget(args.epochs, args.iterations, val_iterations)


@reports(BenchmarkError, command="benchmark")
def _benchmark(args: argparse.Namespace) -> int:
    report, _ = run_benchmark(args.d, args.c, args.p, args.tr, args.f, _budget(args), args.device, args.o)
    failed = [f"{name} ({key.replace('_', ' ')})" for name, runs in report["trainers"].items()
              for key, run in runs.items() if "error" in run]
    if failed:
        print(f"nnunet_blob benchmark: {len(failed)} run(s) failed: {', '.join(failed)}; see their logs above")
        return 1
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("benchmark", help="time and memory of trainers next to stock nnU-Net on your dataset "
                                                "and GPU (nnU-Net's benchmark trainers' way)",
                              description=DESCRIPTION)
    p.add_argument("-d", required=True, help="dataset name or id, as for nnUNetv2_train (e.g. 501)")
    p.add_argument("-c", required=True, help="configuration, e.g. 3d_fullres")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    p.add_argument("-tr", nargs="+", required=True,
                   help="trainers to compare with stock nnUNetTrainer (which always runs first), e.g. "
                        "nnUNetTrainerBlobDice nnUNetTrainerCCDiceCE; nnunet_blob trainers lists them")
    p.add_argument("-f", type=int, default=0, help="fold whose training cases are loaded (default 0)")
    p.add_argument("--epochs", type=int, default=5,
                   help="epochs per run (default 5, as nnU-Net's benchmark); the fastest counts, the first carries "
                        "compilation and cuDNN autotuning")
    p.add_argument("--iterations", type=int, default=50,
                   help="training iterations per epoch (default 50; nnU-Net's epoch has 250)")
    p.add_argument("--val-iterations", type=int, default=None,
                   help="validation iterations per epoch (default: a fifth of --iterations, at least 1, nnU-Net's "
                        "250:50)")
    p.add_argument("-device", default="cuda", choices=["cuda", "cpu", "mps"],
                   help="as nnUNetv2_train's -device (default cuda)")
    p.add_argument("-o", default=None,
                   help="JSON to write (default $nnUNet_results/DatasetXXX_Name/"
                        "nnunet_blob_benchmark_PLANS_CONFIGURATION_foldF.json); each run's output goes to the "
                        "folder beside it, <name>_logs/")
    p.set_defaults(func=_benchmark)
