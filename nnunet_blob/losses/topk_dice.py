r"""TopK-Dice loss (S. M. Hosseini, "TopK Dice Loss for Medical Image Segmentation", Eq. 1-7).

Per foreground class c, among the :math:`n_c` voxels labelled c the :math:`D_c = \lfloor (1 - K/100)\, n_c \rfloor`
easiest ones (highest :math:`TP^c = Y^c \odot P^c`, Eq. 2-3) form the ignore map (Eq. 4) and are set to zero in
both the target and the prediction (Eq. 5-6). The loss is squared soft Dice on what remains (Eq. 7):

.. math::  L = 1 - \frac{1}{C} \sum_c \frac{2 \sum Yk^c Pk^c + s}{\sum (Yk^c)^2 + \sum (Pk^c)^2 + s}

where, as the paper says, C is the number of classes present in the image: the mean runs over the classes with
foreground voxels in a sample, then over the samples that have any foreground (with ``batch_dice`` once over the
batch). A patch without foreground therefore gets no Dice penalty for false positives (a cross-entropy term still
acts); ``classes="all"`` averages over every foreground class instead, so a class predicted where it is absent
scores ``s / (sum P^2 + s)``. Background voxels are never ignored. Under multi-GPU DDP with ``batch_dice`` and
``ddp=True`` the sums are added over all workers' batches before the Dice, as nnU-Net's
``MemoryEfficientSoftDiceLoss`` does; the K% are still chosen within each worker's batch.

**Selection.** Exactly :math:`D_c` voxels are removed even with tied probabilities: the paper adds a fixed random
perturbation for this; here, among voxels with equal probability the first ones in memory order are removed, which
is exact and deterministic. All (sample, class) groups are selected at once, with no Python loop over classes or
samples and nothing waiting for the device. Where the host can list the foreground voxels (CPU), one sort of them by
(probability descending, position) and a stable sort by group give each voxel its rank in its group; on an
accelerator every voxel is kept: each group is a row holding p on its foreground voxels and -1 elsewhere, one stable
descending sort of the rows ranks them, and the sums are dense reductions (no atomic additions). The :math:`D_c`
first of each group are removed. The selection carries no gradient; removed voxels get none.
"""
from __future__ import annotations

from typing import Literal

import torch

from nnunet_blob.losses._common import (
    accumulation_dtype,
    as_label_map,
    as_mask,
    check_label_range,
    check_probs,
    ddp_active,
    dense_sum,
    entry_positions,
    float32_math,
    host_reads_are_free,
    mean_over_present,
    soft_dice_score,
)

ClassAverage = Literal["present", "all"]


def removed_counts(num_foreground: torch.Tensor, k: float) -> torch.Tensor:
    """D = floor((1 - K/100) n): how many of n foreground voxels TopK-Dice ignores (Eq. 3), per group."""
    return torch.floor(num_foreground.to(torch.float64) * (100.0 - k) / 100.0 + 1e-9).to(torch.int64)


def descending_order(values: torch.Tensor) -> torch.Tensor:
    """Indices that order the non-negative ``values`` from largest to smallest, equal values by position."""
    if values.dtype == torch.float32 and values.numel() < (1 << 31):
        # non-negative floats order like their bit patterns: one integer sort of a unique key (fast on CPU and GPU)
        bits = (values + 0.0).view(torch.int32).to(torch.int64)  # + 0.0 turns -0.0 into 0.0
        position = torch.arange(values.numel(), device=values.device)
        return torch.sort(((0x7F800000 - bits) << 31) | position).indices
    return torch.sort(values, descending=True, stable=True).indices


def largest_per_group(values: torch.Tensor, group: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Boolean mask of the ``count[g]`` largest ``values`` of each group g (ties: lowest position first).

    ``values`` (M,) non-negative, ``group`` (M,) in [0, G], where group G holds entries never chosen (its count
    is ignored), ``count`` (G,) with ``0 <= count[g] <=`` size of group g.
    """
    num_groups = count.numel()
    order = descending_order(values)
    order = order[torch.sort(group[order], stable=True).indices]  # by group; each group still in descending order
    sorted_group = group[order]
    size = torch.zeros(num_groups + 1, dtype=torch.int64, device=values.device).index_add_(
        0, group, torch.ones_like(group))
    start = torch.cumsum(size, 0) - size
    rank = torch.arange(values.numel(), device=values.device) - start[sorted_group]
    quota = torch.cat((count.to(torch.int64), count.new_zeros(1, dtype=torch.int64)))
    chosen = torch.empty_like(values, dtype=torch.bool)
    return chosen.scatter_(0, order, rank < quota[sorted_group])


@float32_math
def topk_dice_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    k: float = 50.0,
    *,
    squared: bool = True,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    loss_mask: torch.Tensor | None = None,
    ddp: bool = False,
    classes: ClassAverage = "present",
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
        classes: ``"present"`` (the paper's Eq. 7: mean over the classes present in the target) or ``"all"``
            (mean over every foreground class and every sample).

    Raises:
        ValueError: bad shapes, dtypes or options; labels outside [0, C) where not masked (on an accelerator a
            device-side assertion, see :func:`~._common.require`).
    """
    if not 0 < k <= 100:
        raise ValueError(f"k is the percentage of foreground voxels kept and must be in (0, 100], got {k}")
    if classes not in ("present", "all"):
        raise ValueError(f"classes must be 'present' or 'all', got {classes!r}")
    check_probs(probs, min_channels=2)
    batch, num_classes = probs.shape[:2]
    target = as_label_map("target", target, probs, to_long=False)
    valid = as_mask(loss_mask, probs)
    check_label_range(target, num_classes, valid)

    p = probs.reshape(batch, num_classes, -1)
    valid = None if valid is None else valid.reshape(batch, 1, -1)
    labels = target.reshape(batch, -1)
    if host_reads_are_free(labels):
        fg = _Foreground.of(p, labels, valid)
        removed = fg.removed(p.detach(), k, batch_dice)
        tp, sum_pred, num_fg, num_removed = _KeptSums.apply(p, fg.position, fg.channel, fg.labelled, removed, valid,
                                                            squared)
        num_kept = num_fg - num_removed
    else:
        tp, sum_pred, num_kept = _dense_kept_sums(p, labels.unsqueeze(1), valid, k, batch_dice, squared)
    if batch_dice:  # one score per class over the whole batch
        tp, sum_pred, num_kept = tp.sum(0, keepdim=True), sum_pred.sum(0, keepdim=True), num_kept.sum(0, keepdim=True)
        if ddp_active(ddp):
            tp, sum_pred, num_kept = _sum_over_workers(tp, sum_pred, num_kept)
    dice = soft_dice_score(tp, num_kept.to(tp.dtype), sum_pred, smooth)
    if classes == "all":
        return 1 - dice.mean()
    per_sample, sample_has = mean_over_present(dice, num_kept > 0, dim=1)
    mean_dice, any_present = mean_over_present(per_sample, sample_has, dim=0)
    return (1 - mean_dice) * any_present  # 0, with a graph, when no class is present


def _dense_kept_sums(p: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor | None, k: float, batch_dice: bool,
                     squared: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The accelerator's path: TP, sum of p^2 (or p) and kept voxels per (sample, class >= 1), every voxel kept.

    Each selection group is a row of the foreground channels (a (sample, class), or a class over the batch with
    ``batch_dice``) holding p where the voxel carries the class and -1 elsewhere; one stable descending sort of the
    rows orders every group at once (ties by position), and the first D of each row are removed. Then every sum is
    a dense reduction over the rows (:func:`~._common.dense_sum`): no atomics, nothing waits for the device.
    """
    batch, num_classes, num_voxels = p.shape
    classes = torch.arange(1, num_classes, device=p.device).reshape(1, -1, 1)
    fg = labels == classes  # (B, C - 1, N)
    if valid is not None:
        fg = fg & valid
    rows = torch.where(fg, p[:, 1:].detach(), -1.0)
    num_fg = fg.sum(-1)
    if batch_dice:
        rows, num_fg = rows.transpose(0, 1).reshape(num_classes - 1, -1), num_fg.sum(0)
    order = torch.sort(rows.reshape(-1, rows.shape[-1]), dim=-1, descending=True, stable=True).indices
    first = torch.arange(order.shape[-1], device=p.device) < removed_counts(num_fg, k).reshape(-1, 1)
    removed = torch.empty_like(first).scatter_(-1, order, first)
    if batch_dice:
        removed = removed.reshape(num_classes - 1, batch, num_voxels).transpose(0, 1)
    removed = removed.reshape(fg.shape)
    kept = fg & ~removed
    domain = ~removed if valid is None else valid & ~removed
    tp, sum_pred = _DenseKeptSums.apply(p, kept, domain, squared)
    return tp, sum_pred, kept.sum(-1)


class _DenseKeptSums(torch.autograd.Function):
    r"""Per (sample, class >= 1): :math:`TP = \sum_{kept} p` and :math:`\sum_{domain} p^2` (or :math:`p`), dense
    reductions in float32 blocks added in float64. Backward: ``2 p`` (or 1) times the second sum's gradient on the
    domain plus TP's gradient on the kept voxels; 0 in the background channel."""

    @staticmethod
    def forward(ctx, p, kept, domain, squared):
        fg_p = p[:, 1:]
        in_domain = torch.where(domain, fg_p, 0)
        tp = dense_sum(torch.where(kept, fg_p, 0))
        sum_pred = dense_sum(in_domain * in_domain if squared else in_domain)
        ctx.save_for_backward(in_domain if squared else domain, kept)
        ctx.squared = squared
        return tp.to(p.dtype), sum_pred.to(p.dtype)

    @staticmethod
    def backward(ctx, grad_tp, grad_sum):
        saved, kept = ctx.saved_tensors
        grad_sum = grad_sum.unsqueeze(-1)
        base = saved * (2 * grad_sum) if ctx.squared else torch.where(saved, grad_sum, 0)
        grad = torch.where(kept, base + grad_tp.unsqueeze(-1), base)
        return torch.nn.functional.pad(grad, (0, 0, 1, 0)), None, None, None


def _sum_over_workers(tp: torch.Tensor, sum_pred: torch.Tensor, num_kept: torch.Tensor):
    """The batch sums of every DDP worker added up (gradients flow back to each worker's own part)."""
    from nnunet_blob.nnunet_internals import all_gather_grad

    AllGatherGrad = all_gather_grad()

    num_kept = num_kept.clone()
    torch.distributed.all_reduce(num_kept)
    return AllGatherGrad.apply(tp).sum(0), AllGatherGrad.apply(sum_pred).sum(0), num_kept


class _Foreground:
    """The voxels TopK-Dice selects among, as flat (M,) arrays over the (B, C, N) probabilities.

    Entry e is voxel ``position[e] % N`` of sample ``position[e] // (C N)`` in channel ``channel[e]`` (its class
    for labelled entries); ``labelled[e]`` is None when every entry is an unmasked foreground voxel (the others were
    dropped, see :func:`~._common.entry_positions`), else a mask of those.
    """

    def __init__(self, position, channel, labelled, batch, num_classes, num_voxels):
        self.position, self.channel, self.labelled = position, channel, labelled
        self.batch, self.num_classes, self.num_voxels = batch, num_classes, num_voxels

    @classmethod
    def of(cls, p: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None) -> _Foreground:
        batch, num_classes, num_voxels = p.shape
        labelled = target > 0 if valid is None else (target > 0) & valid[:, 0]
        keep = entry_positions(labelled)
        if keep is None:
            voxel, flags = torch.arange(labelled.numel(), device=p.device), labelled.reshape(-1)
            channel = torch.where(flags, target.reshape(-1), 0).long()
        else:
            voxel, flags, channel = keep, None, target.reshape(-1)[keep].long()
        sample = voxel.div(num_voxels, rounding_mode="floor")
        position = (sample * num_classes + channel) * num_voxels + voxel.remainder(num_voxels)
        return cls(position, channel, flags, batch, num_classes, num_voxels)

    def removed(self, p: torch.Tensor, k: float, batch_dice: bool) -> torch.Tensor:
        """The entries TopK-Dice ignores: the D_c with the highest probability in each selection group (a
        (sample, class), or a class over the batch with ``batch_dice``)."""
        if k >= 100:
            return torch.zeros_like(self.channel, dtype=torch.bool)
        num_groups = self.num_classes if batch_dice else self.batch * self.num_classes
        group = self.channel
        if not batch_dice:
            group = self.position.div(self.num_classes * self.num_voxels, rounding_mode="floor") * self.num_classes \
                + self.channel
        if self.labelled is not None:
            group = torch.where(self.labelled, group, num_groups)
        size = torch.zeros(num_groups + 1, dtype=torch.int64, device=p.device).index_add_(
            0, group, torch.ones_like(group))[:num_groups]
        return largest_per_group(p.reshape(-1)[self.position], group, removed_counts(size, k))


class _KeptSums(torch.autograd.Function):
    r"""Per (sample, class >= 1): :math:`TP = \sum_{kept\ fg} p`, :math:`\sum_{valid,\ not\ ignored} p^2` (or
    :math:`p` when not squared), and the numbers of foreground and of ignored voxels, from one pass over ``p`` plus
    one segment sum over the foreground entries.

    The backward writes the gradient into one buffer: ``2p`` (or 1) times the sum's gradient everywhere valid,
    plus TP's gradient at the kept foreground voxels, zero at the ignored ones and in the background channel.
    """

    @staticmethod
    def forward(ctx, p, position, channel, labelled, removed, valid, squared):
        batch, num_classes, num_voxels = p.shape
        fg_p = p[:, 1:]
        domain = fg_p if valid is None else fg_p * valid
        accumulate = accumulation_dtype(p)
        total = dense_sum(domain * fg_p if squared else domain)
        x = p.reshape(-1)[position]
        kept = ~removed if labelled is None else labelled & ~removed
        removed_part = x * x if squared else x
        columns = torch.stack((torch.where(kept, x, 0), torch.where(removed, removed_part, 0),
                               torch.ones_like(x) if labelled is None else labelled.to(x.dtype),
                               removed.to(x.dtype)), 1)
        sums = p.new_zeros(batch * num_classes, 4, dtype=accumulate).index_add_(
            0, position.div(num_voxels, rounding_mode="floor"), columns.to(accumulate)).reshape(
            batch, num_classes, 4)[:, 1:]
        ctx.save_for_backward(p, position, kept, removed, valid)
        ctx.squared = squared
        ctx.mark_non_differentiable(sums[..., 2], sums[..., 3])
        return (sums[..., 0].to(p.dtype), (total - sums[..., 1]).to(p.dtype), sums[..., 2].round().long(),
                sums[..., 3].round().long())

    @staticmethod
    def backward(ctx, grad_tp, grad_total, _grad_num_fg, _grad_num_removed):
        p, position, kept, removed, valid = ctx.saved_tensors
        batch, num_classes, num_voxels = p.shape
        scale = torch.cat((grad_total.new_zeros(batch, 1), grad_total), 1).unsqueeze(-1)  # 0: background
        grad = p * (2 * scale) if ctx.squared else scale.expand(p.shape).contiguous()
        if valid is not None:
            grad = grad * valid
        flat = grad.view(-1)
        grad_tp = torch.cat([grad_tp.new_zeros(batch, 1), grad_tp], 1).reshape(-1)
        at_entries = flat[position] + torch.where(kept, grad_tp[position.div(num_voxels, rounding_mode="floor")], 0)
        flat.index_put_((position,), torch.where(removed, 0, at_entries))
        return grad, None, None, None, None, None, None
