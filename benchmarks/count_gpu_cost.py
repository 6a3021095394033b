"""What one training step's loss would cost an accelerator, counted on the CPU: eager kernels, bytes read and
written, and the largest pile of atomic additions into one slot, for each trainer's loss against stock nnU-Net's
``DC_and_CE_loss`` (forward + backward over nnU-Net's five deep-supervision scales of a 2 x C x S^3 patch with one
large structure and 20 small lesions per sample, on the accelerator's path of the losses).

The counter and the scenario are those of the test suite (tests/gpu_cost.py, asserted in tests/test_gpu_cost.py).
No GPU is used or needed: the numbers are counts, the same on any machine.

    python benchmarks/count_gpu_cost.py [--size 128] [--classes 2]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from gpu_cost import count_training_step, deep_supervision_inputs, training_step_losses  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="patch edge S (voxels)")
    parser.add_argument("--classes", type=int, default=2, help="C, background included")
    args = parser.parse_args()
    scales = deep_supervision_inputs(args.classes, args.size)
    print(f"2 x {args.classes} x {args.size}^3, {len(scales)} deep-supervision scales, forward + backward\n")
    print("| loss | aten kernels | bytes in+out | largest same-slot pile |")
    print("|---|---|---|---|")
    stock = None
    for name, (loss, maps) in training_step_losses(args.classes).items():
        cost = count_training_step(loss, maps, scales)
        stock = stock or cost
        print(f"| {name} | {cost.kernels} ({cost.kernels / stock.kernels:.2f}x) | {cost.bytes / 1e9:.2f} GB "
              f"({cost.bytes / stock.bytes:.2f}x) | {cost.pile:,} |")


if __name__ == "__main__":
    main()
