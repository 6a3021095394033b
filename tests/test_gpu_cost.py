"""What one training step's loss would cost an accelerator, counted on the CPU (:mod:`gpu_cost`).

Each trainer's per-scale loss, built as the trainer builds it (value checks in the loader, tables sized from the
bounds the trainer knows), wrapped in nnU-Net's ``DeepSupervisionWrapper`` over five scales of a 2 x C x 96^3
patch (one large structure and 20 small lesions per sample; int16 targets, instance ids and Voronoi cells as the
trainers' loader delivers them), forward and backward, on the accelerator's path of the losses, is compared with
stock nnU-Net's ``DC_and_CE_loss`` counted in the same test. Budgets (counting is machine-independent, so they are
exact): no accumulating scatter adds more than :data:`MAX_PILE` entries into one slot (a GPU serialises atomic
additions into one address; one slot per instance, cell or group without sub-slots piles 100,063 (blob),
1,568,152 (TopK-Dice group sizes) and 634,155 (CC-DiceCE) entries here); bytes read and written at most 2x
stock's (2.5x for TopK-Dice, which sorts) and eager kernels at most 3x stock's.
"""
from __future__ import annotations

import pytest

from gpu_cost import count_training_step, deep_supervision_inputs, lesion_batch, training_step_losses

#: largest number of atomic additions into one slot by any accumulating scatter
MAX_PILE = 1 << 16
#: bytes read + written, as a multiple of stock nnU-Net's DC_and_CE_loss
BYTES_BUDGET = {"BlobCompoundLoss (blob Dice)": 2.0, "BlobCompoundLoss (blob Tversky)": 2.0,
                "CE + TopK-Dice (k 30)": 2.5, "CCDiceCELoss": 2.0}
#: eager kernels, as a multiple of stock's
KERNEL_BUDGET = {"BlobCompoundLoss (blob Dice)": 3.0, "BlobCompoundLoss (blob Tversky)": 3.0,
                 "CE + TopK-Dice (k 30)": 3.0, "CCDiceCELoss": 3.0}
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
        if kernels > KERNEL_BUDGET[name]:
            failures.append(f"{name}: {kernels:.2f}x stock's kernels, budget {KERNEL_BUDGET[name]}x")
    assert not failures, "\n".join(failures + ["", f"stock: {stock.kernels} kernels, {stock.bytes / 1e6:.0f} MB"]
                                   + report)


def test_counter_counts_kernels_bytes_and_piles():
    import torch

    from gpu_cost import GpuCostCounter

    table, index, source = torch.zeros(10), torch.tensor([1, 1, 1, 2, 3]), torch.ones(5)
    with GpuCostCounter() as cost:
        table.index_add_(0, index, source)  # reads 40 + 40 + 20 bytes, writes 40; slot 1 gets 3 entries
        table.view(2, 5).expand(3, 2, 5).sum(0)  # views are free; the sum reads the 40 addressed bytes, writes 40
        torch.zeros(3, 4).scatter_add_(1, torch.tensor([[0, 0, 1, 1]]).expand(3, 4), source[:4].expand(3, 4))
    assert cost.kernels == 4 and cost.ops["zeros"] == 1
    assert cost.bytes == (40 + 40 + 20 + 40) + (40 + 40) + 48 + (48 + 32 + 16 + 48)
    assert cost.piles == [("index_add_", 3, 5), ("scatter_add_", 2, 12)] and cost.pile == 3


def test_tables_sized_from_bounds_give_the_same_loss_and_gradients():
    """The accelerator's path with tables sized from the bounds the trainers know (largest instance id; cells a
    grid can hold, capped) and without value checks equals the default (every int16 id), up to the order of
    float64 additions."""
    import torch

    import nnunet_blob.losses._common as common
    from nnunet_blob.instances.voronoi import voronoi_cells
    from nnunet_blob.losses import blob_loss, cc_dice_ce_loss
    from nnunet_blob.losses.cc_dice_ce import cells_bound

    target, instances = lesion_batch(3, 24, lesions=6)
    cells = voronoi_cells(target, 3).to(torch.int16)
    logits = torch.randn(2, 3, 24, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    saved, common.COMPACT_ON_HOST = common.COMPACT_ON_HOST, False
    try:
        for term, maps, bounded in (
                (lambda p, m, **kw: blob_loss(p, target, m, "tversky", **kw), instances, {"max_id": 7}),
                (lambda p, m, **kw: cc_dice_ce_loss(p, target, m, **kw), cells,
                 {"max_cell": cells_bound((24, 24, 24), 26, 9)})):
            results = []
            for options in ({}, {**bounded, "check_values": False}):
                x = logits.clone().requires_grad_()
                value = term(torch.softmax(x, 1), maps, **options)
                value.backward()
                results.append((value.detach(), x.grad))
            torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-15)
    finally:
        common.COMPACT_ON_HOST = saved


def test_ids_above_the_tables_bound_are_refused_never_summed():
    """An id above the bound a loss's tables were sized for: the trainers' loader refuses the patch on the CPU
    (naming the fix), and the loss with value checks refuses it too (a device-side assertion on an accelerator)."""
    import numpy as np
    import torch

    from nnunet_blob.losses import blob_loss
    from nnunet_blob.trainers.cells import VoronoiCellsPerScale
    from nnunet_blob.trainers.instance_transforms import INSTANCES, PackInstances

    seg = torch.zeros(1, 8, 8, 8, dtype=torch.int16)
    instances = torch.zeros_like(seg)
    seg[0, 1, 1, 1:3], instances[0, 1, 1, 1:3] = 1, 4
    with pytest.raises(ValueError, match="instance id 4, above 3.*nnunet_blob preprocess"):
        PackInstances(max_id=3)(segmentation=[seg, seg[:, ::2, ::2, ::2]], **{INSTANCES: [instances, instances]})
    packed = PackInstances(max_id=4)(segmentation=seg, **{INSTANCES: instances})["segmentation"]
    assert packed.shape == (2, 8, 8, 8)

    three = np.zeros((1, 8, 8, 8), dtype=np.int16)
    three[0, 0, 0, 0] = three[0, 4, 4, 4] = three[0, 7, 0, 7] = 1
    with pytest.raises(ValueError, match="3 components of one class, more than the 2 .*max_cells_per_class"):
        VoronoiCellsPerScale(classes=[1], max_cells=2)(segmentation=torch.from_numpy(three))
    assert int(VoronoiCellsPerScale(classes=[1], max_cells=3).cells(torch.from_numpy(three)).max()) == 3

    probs = torch.softmax(torch.randn(1, 2, 8, 8, 8), 1)
    with pytest.raises(ValueError, match="above the given maximum 3"):
        blob_loss(probs, seg.unsqueeze(0), instances.unsqueeze(0), max_id=3)
