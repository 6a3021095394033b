r"""CC-DiceCE (L. Bouteille, A. Jaus, J. Kleesiek, R. Stiefelhagen, J. Heine, "Learning to Look Closer: A New
Instance-Wise Loss for Small Cerebral Lesion Segmentation", ISBI 2026).

Each reference component owns the Voronoi cell of the voxels nearest to it (see
:mod:`nnunet_blob.instances.voronoi`); a Dice + cross-entropy term is computed inside every cell, so a false
positive far from every lesion is charged to its nearest lesion's term. For sample b, foreground class c (the
binary problem "c against the rest", :math:`p = p^c`, :math:`y = [g = c]`) and cell :math:`V_k` of class c:

.. math::  l_{c,k} = 1 - \frac{2 \sum_{V_k} p y + s}{\max(\sum_{V_k} p + \sum_{V_k} y + s,\ 10^{-7})}
           + \frac{1}{|V_k|} \sum_{V_k} -\log \max(q, 10^{-7}),\qquad q = p \text{ where } y = 1,\ 1 - p
           \text{ elsewhere}

with smoothing s = 0 as published. The loss is the mean of :math:`l_{c,k}` over the cells of a class, then over the
classes with components, then over the samples with any component, as the blob term of this package averages
(``empty_samples="skip"``): a sample without any component has no CC term (the global term, nnU-Net's Dice + CE,
still covers it), and a batch without any component gives 0 with a graph. The published code instead scores such
a sample as one region, ``1 + its mean cross-entropy``, and averages over every sample (``empty_samples=
"published"``; the cross-entropy of the true class, or of each region's binary problem). Masked voxels
(``loss_mask``, e.g. the ignore label) are in no sum. The binary definition of the paper is the case of one
foreground class.

**Cost.** All cell sums come from three segment sums keyed by (sample, class, cell, y) over a fixed id range
(:func:`_cell_keys`): the voxel counts (:func:`_slot_counts`, int32) and the sums of p and log q (:class:`_CellSums`,
whose backward is one pass over the voxels), accumulated in float64, as a cell can hold millions of voxels. On an
accelerator each slot is spread over sub-slots by voxel position (:func:`~._common.spread_keys`), so that no address
collects more than :data:`~._common.MAX_PILE` atomic additions. No loop over components or classes, and nothing
waits for the device.
"""
from __future__ import annotations

import math
from typing import Literal

import torch

from nnunet_blob.losses._common import (
    as_label_map,
    as_mask,
    check_label_range,
    check_nonnegative_ids,
    check_probs,
    float32_math,
    host_reads_are_free,
    mean_over_finite_present,
    mean_over_samples,
    numbered_ids,
    sample_bases,
    segment_sums,
    slot_dtype,
    spread_factor,
)

#: floor of the Dice denominator and of the probability inside the log, as in the published code
EPS = 1e-7
#: what a sample without any component contributes (see the module docstring)
EmptySamples = Literal["skip", "published"]


def cc_dice_ce_loss(probs: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, *, smooth: float = 0.0,
                    loss_mask: torch.Tensor | None = None, max_cell: int | None = None,
                    empty_samples: EmptySamples = "skip", check_values: bool = True) -> torch.Tensor:
    """The CC term for softmax outputs (lower is better).

    Args:
        probs: (B, C, *spatial) softmax probabilities, background in channel 0; 2D or 3D.
        target: (B, 1, *spatial) integer class labels in [0, C) (outside ``loss_mask`` anything goes).
        cells: (B, C - 1, *spatial) cell ids per foreground class, as
            :func:`nnunet_blob.instances.voronoi.voronoi_cells` returns them (0: the class has no component).
        smooth: added to the Dice numerator and denominator (0 as published).
        loss_mask: optional (B, 1, *spatial), nonzero = voxel counts.
        max_cell: largest cell id that can occur. Default: from the dtype of ``cells`` (255 for uint8, 32767 for
            int16); for wider dtypes the largest id is read from the data (one wait for the device per call). A
            bound known in advance keeps the segment-sum tables small (see :func:`cells_bound`).
        empty_samples: ``"skip"`` (no term for a sample without components) or ``"published"`` (such a sample
            scores 1 + its mean cross-entropy, every sample is averaged), see the module docstring.
        check_values: check the values of ``target`` and ``cells`` (labels in [0, C), cells in [0, max_cell]),
            a few kernels per call on an accelerator. False: the caller guarantees them, as the trainers' loader
            does (it makes the cells and checks them against the bound on the CPU).

    Raises:
        ValueError: bad shapes or dtypes; labels outside [0, C), negative cell ids (on an accelerator the value
            checks are device-side assertions, see :func:`~._common.require`).
    """
    return mean_over_samples(*cc_dice_ce_per_sample(probs, target, cells, smooth=smooth, loss_mask=loss_mask,
                                                    max_cell=max_cell, empty_samples=empty_samples,
                                                    check_values=check_values))


def cc_dice_ce_loss_regions(probs: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, *, smooth: float = 0.0,
                            loss_mask: torch.Tensor | None = None, max_cell: int | None = None,
                            empty_samples: EmptySamples = "skip", check_values: bool = True) -> torch.Tensor:
    """The CC term for region-based (sigmoid) outputs: ``probs`` (B, R, *spatial) per region, ``target``
    (B, R, *spatial) the binary region masks, ``cells`` (B, R, *spatial) the cells of each region's components.
    Each region is a class of :func:`cc_dice_ce_loss` ("region r against the rest")."""
    return mean_over_samples(*cc_dice_ce_per_sample(probs, target, cells, regions=True, smooth=smooth,
                                                    loss_mask=loss_mask, max_cell=max_cell,
                                                    empty_samples=empty_samples, check_values=check_values))


@float32_math
def cc_dice_ce_per_sample(probs: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, *, regions: bool = False,
                          smooth: float = 0.0, loss_mask: torch.Tensor | None = None,
                          max_cell: int | None = None,
                          empty_samples: EmptySamples = "skip",
                          check_values: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) CC term of each sample and (B,) flags "sample has a component" (for reductions across workers).

    Arguments as :func:`cc_dice_ce_loss` (``regions=True``: as :func:`cc_dice_ce_loss_regions`).
    """
    check_probs(probs, min_channels=1 if regions else 2)
    if empty_samples not in ("skip", "published"):
        raise ValueError(f"empty_samples must be 'skip' or 'published', got {empty_samples!r}")
    batch, channels = probs.shape[:2]
    first = 0 if regions else 1  # channel of the first class with cells
    num_classes = channels - first
    cells = as_label_map("cells", cells, probs, channels=num_classes, to_long=False)
    valid = as_mask(loss_mask, probs)
    if check_values:
        check_nonnegative_ids(cells, "cells must be >= 0 (0 = the class has no component)")
    if regions:
        labels = as_label_map("target", target, probs, channels=num_classes, to_long=False) != 0
    else:
        target = as_label_map("target", target, probs, to_long=False)
        if check_values:
            check_label_range(target, channels, valid)
        classes = torch.arange(1, channels, device=target.device).reshape(1, -1, *[1] * (target.ndim - 2))
        labels = target == classes  # (B, C - 1, *spatial): "class c against the rest"

    groups = batch * num_classes
    if valid is not None:  # masked voxels join cell 0 (no cell), which no sum reads
        cells = cells * valid.to(cells.dtype)
    ids, id_space = numbered_ids(cells.reshape(-1), cells.dtype, max_cell, groups, name="cells",
                                 check_values=check_values)
    p = probs[:, first:].reshape(batch, num_classes, -1)
    y = labels.reshape(batch, num_classes, -1)
    num_keys = groups * id_space * 2
    spread = spread_factor(y.shape[-1], p)  # a slot holds voxels of one sample
    keys = _cell_keys(ids.reshape(y.shape), y, id_space, spread).reshape(-1)
    # accumulated in float64, then rounded to p's dtype: no difference of large sums follows
    count = _slot_counts(keys, spread, num_keys, p.dtype).reshape(groups, id_space, 2)[:, 1:]
    sums = _CellSums.apply(probs, first, y, keys, spread, num_keys).reshape(groups, id_space, 2, 2)[:, 1:]
    slot_p, slot_log_q = sums.unbind(-1)  # (B * classes, cells, y); cell id 0 is no cell
    size, sum_y, tp, sum_p = count.sum(-1), count[..., 1], slot_p[..., 1], slot_p.sum(-1)
    dice = 1 - (2 * tp + smooth) / (sum_p + sum_y + smooth).clamp_min(EPS)
    cell_losses = dice - slot_log_q.sum(-1) / size.clamp_min(1)
    class_mean, class_has = mean_over_finite_present(cell_losses, size > 0, dim=1)
    per_sample, sample_has = mean_over_finite_present(class_mean.reshape(batch, num_classes),
                                               class_has.reshape(batch, num_classes), dim=1)
    if empty_samples == "skip":
        return per_sample, sample_has
    fallback = 1 + _mean_cross_entropy(probs, target if regions else labels, regions, valid)
    return torch.where(sample_has, per_sample, fallback), torch.ones_like(sample_has)


def cells_bound(spatial_shape: tuple[int, ...], connectivity: int | None = None, cap: int | None = None) -> int:
    r"""Largest cell id that components of one class can have in a grid of ``spatial_shape``: distinct components
    are never face-adjacent, so there are at most ceil(N / 2) of them (a checkerboard), and with full connectivity
    (26 in 3D, 8 in 2D) not even corner-adjacent, so at most one per 2 x ... x 2 block,
    :math:`\prod_i \lceil n_i / 2 \rceil`. ``cap``: a bound guaranteed otherwise (the trainers' loader refuses a
    patch with more cells, :class:`~nnunet_blob.trainers.cells.VoronoiCellsPerScale`)."""
    full = connectivity is not None and connectivity == 3 ** len(spatial_shape) - 1
    bound = math.prod(-(-n // 2) for n in spatial_shape) if full else -(-math.prod(spatial_shape) // 2)
    return bound if cap is None else min(bound, cap)


def _cell_keys(ids: torch.Tensor, y: torch.Tensor, id_space: int, spread: int) -> torch.Tensor:
    """(B, K, N) key of every voxel in the sums table: slot ``((b * K + k) * id_space + cell) * 2 + y`` spread over
    ``spread`` sub-slots (:func:`~._common.spread_keys`; the groups' first sub-slots are cached,
    :func:`~._common.sample_bases`). int32 where the table fits, as the index reads are the bulk of the cost."""
    batch, num_classes, num_voxels = y.shape
    dtype = slot_dtype(batch * num_classes * id_space * 2 * spread)
    bases = sample_bases(batch * num_classes, id_space * 2, num_voxels, spread, dtype, y.device).reshape(
        batch, num_classes, -1)
    if ids.dtype == torch.int16 and id_space <= 1 << 14:  # 2 * cell + y fits int16: one wide pass less
        return torch.add(bases, torch.add(y, ids, alpha=2), alpha=spread)
    return torch.add(bases, ids, alpha=2 * spread).add_(y, alpha=spread)


def _slot_counts(keys: torch.Tensor, spread: int, num_keys: int, dtype: torch.dtype) -> torch.Tensor:
    """Voxels per slot of the sums table (float); ``keys`` are the spread slots (:func:`~._common.spread_keys`).
    ``bincount`` where the host may size its output (CPU, :func:`~._common.host_reads_are_free`), else one int32
    ``index_add`` of a broadcast 1 (``bincount`` on an accelerator waits for the device to size its output)."""
    if host_reads_are_free(keys):
        return torch.bincount(keys, minlength=num_keys * spread).reshape(-1, spread).sum(1).to(dtype)
    one = torch.ones(1, device=keys.device, dtype=torch.int32)
    return segment_sums(keys, spread, num_keys, one.expand(keys.numel())).to(dtype)


class _CellSums(torch.autograd.Function):
    r"""Per slot (cell and :math:`y`, :func:`_cell_keys`) the sums of :math:`p` (channels ``first``... of
    ``probs``) and :math:`\log \max(q, 10^{-7})`, :math:`q = p` where :math:`y = 1`, :math:`1 - p` where
    :math:`y = 0`: a (num_keys, 2) table from two ``index_add`` passes over the voxels into sub-slots accumulated
    in :func:`~._common.accumulation_dtype` (:func:`~._common.segment_sums`; ``keys``: the spread slots), returned
    in p's dtype; the gradient comes back for all channels of ``probs`` (0 below ``first``).

    Backward in one pass: :math:`\partial/\partial p_v = G_p[k_v] + s_v G_{\log}[k_v] / q_v` with :math:`s_v = +1`
    where :math:`y = 1` and :math:`-1` where :math:`y = 0` (folded into the per-slot gradients: a slot's parity is
    its :math:`y`), and no :math:`1/q_v` term where the floor is active (:math:`q < 10^{-7}`, as ``clamp_min``).
    """

    @staticmethod
    def forward(ctx, probs, first, y, keys, spread, num_keys):
        p = probs[:, first:].reshape(y.shape)
        ctx.shape, ctx.first = probs.shape, first
        q = torch.where(y, p, 1 - p)
        sum_p = segment_sums(keys, spread, num_keys, p)
        sum_log_q = segment_sums(keys, spread, num_keys, q.clamp_min(EPS).log_())
        # kept for the backward pass as the divisor of the log's derivative: infinite (no derivative) on the floor
        ctx.save_for_backward(q.masked_fill_(q < EPS, torch.inf), keys)
        ctx.spread = spread
        return torch.stack((sum_p, sum_log_q), -1).to(p.dtype)

    @staticmethod
    def backward(ctx, grad):
        q, keys = ctx.saved_tensors
        sign = grad.new_tensor([[1.0, -1.0], [1.0, 1.0]]).repeat(grad.shape[0] // 2, 1)  # slot parity = y
        grad = grad * sign
        if ctx.spread > 1:
            grad = grad.repeat_interleave(ctx.spread, 0)
        per_voxel = grad.index_select(0, keys)
        grad_p = torch.addcdiv(per_voxel[:, 0].reshape(q.shape), per_voxel[:, 1].reshape(q.shape), q)
        if ctx.first:  # the channels below ``first`` (no cells) get 0
            grad_p = torch.cat((q.new_zeros((q.shape[0], ctx.first, q.shape[2])), grad_p), 1)
        return grad_p.reshape(ctx.shape), None, None, None, None, None


def _mean_cross_entropy(probs: torch.Tensor, labels: torch.Tensor, regions: bool,
                        valid: torch.Tensor | None) -> torch.Tensor:
    """(B,) mean over each sample's unmasked voxels of -log max(q, 1e-7): q the probability of the true class
    (softmax), or of each region's binary answer averaged over the regions (sigmoid)."""
    batch = probs.shape[0]
    if regions:
        inside = labels.reshape(batch, probs.shape[1], -1) != 0
        p = probs.reshape(batch, probs.shape[1], -1)
        q = torch.where(inside, p, 1 - p)
        ce = (-torch.log(q.clamp_min(EPS))).mean(1)
    else:  # labels: (B, C - 1, ...) one-hot of the foreground classes; background where none is set
        target = labels.reshape(batch, labels.shape[1], -1)
        true_class = torch.where(target.any(1), target.to(torch.int64).argmax(1) + 1, 0)
        q = probs.reshape(batch, probs.shape[1], -1).gather(1, true_class.unsqueeze(1))[:, 0]
        ce = -torch.log(q.clamp_min(EPS))
    if valid is None:
        return ce.mean(-1)
    weight = valid.reshape(batch, -1).to(ce.dtype)
    return (ce * weight).sum(-1) / weight.sum(-1).clamp_min(1)
