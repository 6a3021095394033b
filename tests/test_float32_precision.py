"""float32 losses on a training-size patch give their float64 values and gradients.

A 96^3 patch with one large structure (60% of the voxels) and small lesions, predicted confidently: the per-slot
sums then run over hundreds of thousands of voxels, and the background sums the Dice terms need are small
differences of large sums. Sums over voxels accumulated in float32 one value after the other (``index_add``) lose
whole percents there; the losses accumulate in float64 (``accumulation_dtype``).
"""
from __future__ import annotations

import pytest
import torch

from nnunet_blob.instances.voronoi import voronoi_cells
from nnunet_blob.losses import blob_loss, cc_dice_ce_loss, topk_dice_loss

pytestmark = pytest.mark.usefixtures("loss_path")

SIZE = 96


def confident_patch():
    target = torch.zeros(1, 1, SIZE, SIZE, SIZE, dtype=torch.long)
    instances = torch.zeros_like(target, dtype=torch.int16)
    target[0, 0, :58], instances[0, 0, :58] = 1, 1
    for number, z in enumerate(range(64, 92, 5)):
        box = (0, 0, slice(z, z + 2), slice(40, 42), slice(40 + number, 42 + number))
        target[box], instances[box] = 1, number + 2
    logits = torch.randn(1, 2, SIZE, SIZE, SIZE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    logits[:, 1] += torch.where(target[:, 0] == 1, 6.0, -6.0)  # p_1 ~ 0.9975 on the labels, ~0.0025 elsewhere
    return torch.softmax(logits, 1), target, instances


LOSSES = {
    "blob dice": lambda p, t, i: blob_loss(p, t, i, "dice"),
    "blob dice squared": lambda p, t, i: blob_loss(p, t, i, "dice", squared=True),
    "blob dice without masking": lambda p, t, i: blob_loss(p, t, i, "dice", masking=False),
    "blob tversky": lambda p, t, i: blob_loss(p, t, i, "tversky"),
    "blob bce": lambda p, t, i: blob_loss(p, t, i, "bce"),
    "blob bce without masking": lambda p, t, i: blob_loss(p, t, i, "bce", masking=False),
    "topk dice": lambda p, t, i: topk_dice_loss(p, t, 10),
    "cc dice ce": lambda p, t, i: cc_dice_ce_loss(p, t, voronoi_cells(t, 2).to(torch.int16)),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_float32_matches_float64(name):
    probs, target, instances = confident_patch()
    values, grads = {}, {}
    for dtype in (torch.float32, torch.float64):  # the same float32 probabilities, computed in float32 / float64
        p = probs.float().to(dtype).requires_grad_()
        values[dtype] = LOSSES[name](p, target, instances)
        (grads[dtype],) = torch.autograd.grad(values[dtype], p)
    assert values[torch.float32].dtype == torch.float32
    reference = grads[torch.float64]
    torch.testing.assert_close(values[torch.float32].double(), values[torch.float64], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grads[torch.float32].double(), reference, rtol=1e-4,
                               atol=1e-4 * reference.abs().max().item())
