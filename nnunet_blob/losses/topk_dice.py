r"""TopK-Dice loss (Hosseini, "TopK Dice Loss for Medical Image Segmentation", Eq. 1-7).

Per foreground class c, among the :math:`n_c` voxels labelled c the :math:`D_c = \lfloor (1 - K/100)\, n_c \rfloor`
easiest ones (highest :math:`TP^c = Y^c \odot P^c`, Eq. 2-3) form the ignore map (Eq. 4) and are set to zero in
both the target and the prediction (Eq. 5-6). The loss is squared soft Dice on what remains (Eq. 7):

.. math::  L = 1 - \frac{1}{C} \sum_c \frac{2 \sum Yk^c Pk^c + s}{\sum (Yk^c)^2 + \sum (Pk^c)^2 + s}

averaged over the classes present in the target (per sample, then over the samples that have any foreground;
with ``batch_dice`` once over the batch). Background voxels are never ignored. Under multi-GPU DDP with
``batch_dice`` and ``ddp=True`` the sums are added over all workers' batches before the Dice, as nnU-Net's
``MemoryEfficientSoftDiceLoss`` does; the K% are still chosen within each worker's batch.

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
    ddp: bool = False,
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
        ddp: with ``batch_dice`` inside an initialized ``torch.distributed`` group, sum over all workers' batches.
    """
    if not 0 < k <= 100:
        raise ValueError(f"k is the percentage of foreground voxels kept and must be in (0, 100], got {k}")
    check_probs(probs, min_channels=2)
    batch, num_classes = probs.shape[:2]
    target = as_label_map("target", target, probs, to_long=False)
    valid = as_mask(loss_mask, probs)
    check_label_range(target, num_classes, valid)

    p = probs.reshape(batch, num_classes, -1)
    valid = None if valid is None else valid.reshape(batch, 1, -1)
    kept, ignored, num_kept = _select(p.detach(), target.reshape(batch, -1), valid, k, batch_dice)
    tp, sum_pred = _KeptSums.apply(p, kept, ignored, valid, squared)
    if batch_dice:  # one score per class over the whole batch
        tp, sum_pred = tp.sum(0, keepdim=True), sum_pred.sum(0, keepdim=True)
        if ddp and torch.distributed.is_available() and torch.distributed.is_initialized():
            tp, sum_pred, num_kept = _sum_over_workers(tp, sum_pred, num_kept)
    dice = soft_dice_score(tp, num_kept.to(tp.dtype), sum_pred, smooth)

    present = num_kept > 0
    if not bool(present.any()):
        return zero_with_graph(probs)
    per_sample, sample_has = mean_over_present(dice, present, dim=1)
    mean_dice, _ = mean_over_present(per_sample, sample_has, dim=0)
    return 1 - mean_dice


def _sum_over_workers(tp: torch.Tensor, sum_pred: torch.Tensor, num_kept: torch.Tensor):
    """The batch sums of every DDP worker added up (gradients flow back to each worker's own part)."""
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    num_kept = num_kept.clone()
    torch.distributed.all_reduce(num_kept)
    return AllGatherGrad.apply(tp).sum(0), AllGatherGrad.apply(sum_pred).sum(0), num_kept


def _select(p: torch.Tensor, target: torch.Tensor, valid: Optional[torch.Tensor], k: float,
            batch_dice: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the foreground voxels of every (sample, class) into kept and ignored (Eq. 4): the ignored ones are
    the D_c with the highest probability, chosen within each sample, or over the batch with ``batch_dice``.

    Returns flat indices into ``p`` (B, C, N) of the kept and of the ignored foreground voxels, and the number of
    kept foreground voxels per (sample, class >= 1), or per class (1, C - 1) with ``batch_dice``.
    """
    batch, num_classes, n = p.shape
    flat = p.reshape(-1)
    kept, ignored = [], []
    num_kept = torch.zeros(1 if batch_dice else batch, num_classes - 1, dtype=torch.long)
    for c in range(1, num_classes):
        fg = target == c
        if valid is not None:
            fg &= valid[:, 0]
        sample, voxel = fg.nonzero(as_tuple=True)
        index = (sample * num_classes + c) * n + voxel
        groups = [index] if batch_dice else torch.split(index, torch.bincount(sample, minlength=batch).tolist())
        for row, group in enumerate(groups):
            remove = largest_mask(flat[group], num_removed(group.numel(), k))
            ignored.append(group[remove])
            kept.append(group[~remove])
            num_kept[row, c - 1] = kept[-1].numel()
    return torch.cat(kept), torch.cat(ignored), num_kept.to(p.device)


class _KeptSums(torch.autograd.Function):
    r"""Per (sample, class >= 1): :math:`TP = \sum_{kept\ fg} p` and :math:`\sum_{valid,\ not\ ignored} p^2`
    (or :math:`p` when not squared), from one pass over ``p`` plus gathers at the foreground voxels.

    The backward writes the gradient into one buffer: ``2p`` (or 1) times the sum's gradient everywhere valid,
    plus TP's gradient at the kept foreground voxels, zero at the ignored ones and in the background channel.
    """

    @staticmethod
    def forward(ctx, p, kept, ignored, valid, squared):
        batch, num_classes, n = p.shape
        fg_p = p[:, 1:]
        domain = fg_p if valid is None else fg_p * valid
        total = torch.linalg.vecdot(domain, fg_p) if squared else domain.sum(-1)
        flat = p.reshape(-1)
        removed = flat[ignored] ** 2 if squared else flat[ignored]
        total_per_channel = p.new_zeros(batch * num_classes)
        total_per_channel.index_add_(0, torch.div(ignored, n, rounding_mode="floor"), removed)
        tp = p.new_zeros(batch * num_classes).index_add_(0, torch.div(kept, n, rounding_mode="floor"), flat[kept])
        ctx.save_for_backward(p, kept, ignored, valid)
        ctx.squared = squared
        per_channel = lambda x: x.reshape(batch, num_classes)[:, 1:]  # noqa: E731
        return per_channel(tp), total - per_channel(total_per_channel)

    @staticmethod
    def backward(ctx, grad_tp, grad_total):
        p, kept, ignored, valid = ctx.saved_tensors
        batch, num_classes, n = p.shape
        grad = torch.empty_like(p)
        grad[:, 0] = 0
        scale = grad_total.unsqueeze(-1)
        if ctx.squared:
            torch.mul(p[:, 1:], 2 * scale, out=grad[:, 1:])
        else:
            grad[:, 1:] = scale
        if valid is not None:
            grad[:, 1:] *= valid
        flat = grad.view(-1)
        grad_tp_flat = torch.cat([grad_tp.new_zeros(batch, 1), grad_tp], 1).reshape(-1)
        flat.index_add_(0, kept, grad_tp_flat[torch.div(kept, n, rounding_mode="floor")])
        flat[ignored] = 0
        return grad, None, None, None, None
