r"""TopK-Dice loss (Hosseini, "TopK Dice Loss for Medical Image Segmentation", Eq. 1-7).

Per foreground class c, among the :math:`n_c` voxels labelled c the :math:`D_c = \lfloor (1 - K/100)\, n_c \rfloor`
easiest ones (highest :math:`TP^c = Y^c \odot P^c`, Eq. 2-3) form the ignore map (Eq. 4) and are set to zero in
both the target and the prediction (Eq. 5-6). The loss is squared soft Dice on what remains (Eq. 7):

.. math::  L = 1 - \frac{1}{C} \sum_c \frac{2 \sum Yk^c Pk^c + s}{\sum (Yk^c)^2 + \sum (Pk^c)^2 + s}

averaged over the classes present in the target (per sample, then over the samples that have any foreground;
with ``batch_dice`` once over the batch). Background voxels are never ignored.

Exactly :math:`D_c` voxels are removed even with tied probabilities: the paper adds a fixed random perturbation
for this; here the threshold is the :math:`D_c`-th largest value (``torch.kthvalue``, O(voxels), no sort) and among
the voxels equal to it the first ones in memory order are removed, which is exact and deterministic. The
selection carries no gradient; removed voxels get none.
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from nnunet_blob.losses._common import (
    as_label_map,
    as_mask,
    check_label_range,
    check_probs,
    float32_math,
    mean_over_present,
    soft_dice_score,
    zero_with_graph,
)


def num_removed(num_foreground: int, k: float) -> int:
    """D = floor((1 - K/100) * n): how many of n foreground voxels TopK-Dice ignores (Eq. 3)."""
    return int(math.floor(num_foreground * (100.0 - k) / 100.0 + 1e-9))


def largest_mask(values: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of exactly ``count`` largest entries of a 1D tensor; ties go to the lowest index.

    O(n): the threshold comes from ``kthvalue``, ties are resolved with a cumulative sum.
    """
    n = values.numel()
    if count <= 0:
        return torch.zeros_like(values, dtype=torch.bool)
    if count >= n:
        return torch.ones_like(values, dtype=torch.bool)
    threshold = torch.kthvalue(values, n - count + 1).values  # the count-th largest value
    above = values > threshold
    tied = values == threshold
    ties_needed = count - above.sum()
    return above | (tied & (torch.cumsum(tied, 0) <= ties_needed))


@float32_math
def topk_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    k: float = 50.0,
    *,
    squared: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    loss_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """TopK-Dice over the K% hardest foreground voxels of each class (lower is better, 0 is perfect).

    Args:
        probs: (B, C, *spatial) softmax probabilities, background in channel 0.
        target: (B, 1, *spatial) integer class labels.
        k: percentage of each class's foreground voxels kept (0 < k <= 100); 100 is plain soft Dice.
        squared: squared denominator (the paper's Eq. 1/7); False uses sum p.
        smooth: added to numerator and denominator.
        batch_dice: select and score each class over the whole batch instead of per sample.
        loss_mask: optional (B, 1, *spatial), nonzero = voxel counts; masked voxels are in no sum.
    """
    if not 0 < k <= 100:
        raise ValueError(f"k is the percentage of foreground voxels kept and must be in (0, 100], got {k}")
    check_probs(probs, min_channels=2)
    batch, num_classes = probs.shape[:2]
    target = as_label_map("target", target, probs)
    valid = as_mask(loss_mask, probs)
    check_label_range(target, num_classes, valid)

    p = probs.reshape(batch, num_classes, -1)[:, 1:]
    t = target.reshape(batch, 1, -1)
    fg = t == torch.arange(1, num_classes, device=p.device).reshape(1, -1, 1)
    valid = None if valid is None else valid.reshape(batch, 1, -1)
    if valid is not None:
        fg = fg & valid
    if batch_dice:  # one selection and one score per class over the batch: move the batch into the voxel axis
        p, fg = p.transpose(0, 1).reshape(1, num_classes - 1, -1), fg.transpose(0, 1).reshape(1, num_classes - 1, -1)
        valid = None if valid is None else valid.transpose(0, 1).reshape(1, 1, -1)

    ignored = _easiest_foreground(p.detach(), fg, k)
    kept_fg = (fg & ~ignored).to(p.dtype)
    kept_pred = p * ~ignored if valid is None else p * (valid & ~ignored)
    tp = (kept_pred * kept_fg).sum(-1)
    sum_pred = (kept_pred * kept_pred).sum(-1) if squared else kept_pred.sum(-1)
    dice = soft_dice_score(tp, kept_fg.sum(-1), sum_pred, smooth)

    present = fg.any(-1)
    if not bool(present.any()):
        return zero_with_graph(probs)
    per_sample, sample_has = mean_over_present(dice, present, dim=1)
    mean_dice, _ = mean_over_present(per_sample, sample_has, dim=0)
    return 1 - mean_dice


def _easiest_foreground(p: torch.Tensor, fg: torch.Tensor, k: float) -> torch.Tensor:
    """Ignore map (Eq. 4) of every (row, class): the D_c foreground voxels with the highest probability."""
    ignored = torch.zeros_like(fg)
    counts = fg.sum(-1).tolist()
    for row, row_counts in enumerate(counts):
        for c, n in enumerate(row_counts):
            d = num_removed(n, k)
            if d == 0:
                continue
            where = fg[row, c].nonzero()[:, 0]
            ignored[row, c, where[largest_mask(p[row, c, where], d)]] = True
    return ignored
