"""What one training step's loss would cost an accelerator, counted on the CPU (:mod:`gpu_cost`).

Each trainer's per-scale loss, wrapped in nnU-Net's ``DeepSupervisionWrapper`` over five scales of a 2 x C x 96^3
patch (one large structure and 20 small lesions per sample; int16 targets, instance ids and Voronoi cells as the
trainers' loader delivers them), forward and backward, on the accelerator's path of the losses, is compared with
stock nnU-Net's ``DC_and_CE_loss`` counted in the same test. Budgets (counting is machine-independent, so they are
exact): no accumulating scatter adds more than :data:`MAX_PILE` entries into one slot (a GPU serialises atomic
additions into one address); bytes read and written at most :data:`BYTES_BUDGET` times stock's; eager kernels at
most :data:`KERNEL_BUDGET` times stock's.
"""
from __future__ import annotations

import pytest

from gpu_cost import count_training_step, deep_supervision_inputs, training_step_losses

#: largest number of atomic additions into one slot by any accumulating scatter
MAX_PILE = 1 << 16
#: bytes read + written, as a multiple of stock nnU-Net's DC_and_CE_loss (TopK-Dice sorts)
BYTES_BUDGET = {"BlobCompoundLoss (blob Dice)": 2.0, "BlobCompoundLoss (blob Tversky)": 2.0,
                "CE + TopK-Dice (k 30)": 2.5, "CCDiceCELoss": 2.0}
#: eager kernels, as a multiple of stock's
KERNEL_BUDGET = 3.0
SIZE = 96


@pytest.mark.parametrize("classes", [2, 3])
def test_training_step_loss_costs_stay_near_stock(classes):
    scales = deep_supervision_inputs(classes, SIZE)
    losses = training_step_losses(classes)
    stock = count_training_step(*losses.pop("stock DC_and_CE_loss"), scales)
    assert stock.pile == 0 and stock.kernels > 100  # the reference itself: no atomics, nnU-Net's ~45 ops per scale
    report, failures = [], []
    for name, (loss, maps) in losses.items():
        cost = count_training_step(loss, maps, scales)
        kernels, moved = cost.kernels / stock.kernels, cost.bytes / stock.bytes
        report.append(f"{name}: {cost.kernels} kernels ({kernels:.2f}x), {cost.bytes / 1e6:.0f} MB ({moved:.2f}x), "
                      f"largest pile {cost.pile}")
        if cost.pile > MAX_PILE:
            worst = max(cost.piles, key=lambda p: p[1])
            failures.append(f"{name}: {worst[1]} of {worst[2]} entries of one {worst[0]} land in one slot")
        if moved > BYTES_BUDGET[name]:
            failures.append(f"{name}: {moved:.2f}x stock's bytes, budget {BYTES_BUDGET[name]}x")
        if kernels > KERNEL_BUDGET:
            failures.append(f"{name}: {kernels:.2f}x stock's kernels, budget {KERNEL_BUDGET}x")
    assert not failures, "\n".join(failures + ["", f"stock: {stock.kernels} kernels, {stock.bytes / 1e6:.0f} MB"]
                                   + report)
