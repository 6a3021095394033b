"""nn.Module losses on network logits, shaped for nnU-Net trainers and its ``DeepSupervisionWrapper``.

* :class:`BlobCompoundLoss`: ``alpha * L_global + beta * L_blob`` (blob loss paper, Eq. 3 / supplement Eq. 5).
  Called as ``loss(logits, target, instances)``; wrapped in ``DeepSupervisionWrapper`` it takes three lists, one
  entry per output scale.
* :class:`CCDiceCELoss`: ``alpha * L_global + beta * L_CC`` (CC-DiceCE, Bouteille et al.), called as
  ``loss(logits, target, cells)`` like the blob loss (one cell map per foreground class).
* :class:`TopKDiceAndCELoss`: the TopK-Dice paper's "CE + topK-Dice", ``loss(logits, target)``.

The global Tversky term is nnU-Net's ``DC_and_CE_loss`` with ``dice_class=TverskyLoss`` (same interface).
Probabilities are computed in float32 with autocast disabled.
"""
from __future__ import annotations

import torch
from torch import nn

from nnunet_blob.losses._common import ID_SPACE, autocast_disabled, ddp_active
from nnunet_blob.losses.blob import INNER_LOSSES, blob_loss_per_sample
from nnunet_blob.losses.cc_dice_ce import cc_dice_ce_per_sample, cells_bound
from nnunet_blob.losses.topk_dice import topk_dice_loss
from nnunet_blob.nnunet_internals import overlap_term_probabilities


def _probabilities(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    with autocast_disabled(logits):
        x = logits if logits.dtype == torch.float64 else logits.float()
        return torch.sigmoid(x) if sigmoid else torch.softmax(x, 1)


class InstanceTermCompoundLoss(nn.Module):
    """``alpha * global_loss(logits, target) + beta * term(probs, target, maps)``: the shared frame of the loss
    terms computed per instance (or per cell), which read one extra map per sample.

    Args:
        global_loss: any nnU-Net style loss ``(logits, target) -> scalar`` (e.g. ``DC_and_CE_loss``), or None
            when ``alpha == 0``.
        alpha, beta: weights of the global and the instance term.
        regions: sigmoid outputs and region targets (B, R, ...) as nnU-Net builds them for region-based
            datasets; the maps are then (B, R, ...), one per region.
        ignore_label: label-based datasets: voxels with this label are masked out of the instance term. For
            regions, True means nnU-Net's convention that the last target channel marks ignored voxels.
        ddp: under ``torch.distributed`` make the instance term the mean over the samples with instances of *all*
            workers (DDP averages the workers' gradients; each worker's term is rescaled by one all-reduce of
            its sample count), so the result does not depend on how samples are spread over the workers.
        check_values: check the values of the target and the maps on every call (labels in range, ids >= 0 and
            within the bound), a few kernels per call on an accelerator; the trainers pass False, as their loader
            checks every patch on the CPU.

    Raises:
        ValueError: negative weights, both 0, or ``alpha > 0`` without a global loss.
    """

    def __init__(self, global_loss: nn.Module | None, alpha: float, beta: float, *, regions: bool = False,
                 ignore_label=None, ddp: bool = True, check_values: bool = True):
        super().__init__()
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"alpha and beta must be >= 0 and not both 0, got alpha={alpha}, beta={beta}")
        if alpha != 0 and global_loss is None:
            raise ValueError("alpha > 0 needs a global_loss")
        self.global_loss, self.alpha, self.beta = global_loss, alpha, beta
        self.regions, self.ignore_label, self.ddp = regions, ignore_label, ddp
        self.check_values = check_values

    def per_sample(self, probs: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                   loss_mask: torch.Tensor | None, max_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) term of each sample and (B,) flags "sample has a term"; ``max_id``: the largest id the maps can
        hold, where the caller knows it (sizes the segment-sum tables)."""
        raise NotImplementedError

    def instance_term(self, logits: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                      max_id: int | None = None) -> torch.Tensor:
        """The instance term alone, on logits (softmax, or sigmoid for regions, in float32)."""
        return self._term_of_probabilities(_probabilities(logits, sigmoid=self.regions), target, maps, max_id)

    def _term_of_probabilities(self, probs: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                               max_id: int | None) -> torch.Tensor:
        if self.regions:
            mask = None
            if self.ignore_label:
                mask, target = target[:, -1:] == 0, target[:, :-1]
        else:
            mask = None if self.ignore_label is None else target != self.ignore_label
        return _mean_over_all_workers(*self.per_sample(probs, target, maps, mask, max_id), self.ddp)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, maps: torch.Tensor,
                max_id: int | None = None) -> torch.Tensor:
        """``alpha * global + beta * instance term``; where the global loss is nnU-Net's compound loss, its Dice
        term takes the probabilities the instance term uses instead of computing them again (one softmax or sigmoid
        forward and backward, :func:`~nnunet_blob.nnunet_internals.overlap_term_probabilities`). ``max_id``: the
        largest id the maps can hold, where the caller knows it (the trainers: the largest instance count of any
        case), see :meth:`per_sample`."""
        probs = _probabilities(logits, sigmoid=self.regions) if self.beta else None
        total = self.beta * self._term_of_probabilities(probs, target, maps, max_id) if probs is not None else None
        if self.alpha and self.global_loss is not None:
            if probs is None:
                weighted = self.alpha * self.global_loss(logits, target)
            else:
                with overlap_term_probabilities(self.global_loss, logits, probs, self.regions):
                    weighted = self.alpha * self.global_loss(logits, target)
            total = weighted if total is None else total + weighted
        assert total is not None  # alpha + beta > 0 (checked in __init__)
        return total


class BlobCompoundLoss(InstanceTermCompoundLoss):
    """``alpha * global_loss(logits, target) + beta * blob(probs, target, instances)`` (Kofler et al., Eq. 3 and
    supplement Eq. 5; paper default alpha = 2, beta = 1).

    ``inner`` is the blob term's inner loss (see :func:`nnunet_blob.losses.blob_loss`), ``blob_kwargs`` are passed
    on (``smooth``, ``squared``, ``masking``, ``tversky_alpha``, ``tversky_beta``, ``max_id``: the largest
    instance id that can occur, which sizes the segment-sum tables); the maps are instance ids (B, 1, ...), or
    (B, R, ...) per region. Other arguments as :class:`InstanceTermCompoundLoss`.
    """

    def __init__(self, global_loss: nn.Module | None, alpha: float = 2.0, beta: float = 1.0,
                 inner: str = "dice", *, regions: bool = False, ignore_label=None, ddp: bool = True,
                 check_values: bool = True, **blob_kwargs):
        super().__init__(global_loss, alpha, beta, regions=regions, ignore_label=ignore_label, ddp=ddp,
                         check_values=check_values)
        if inner not in INNER_LOSSES:
            raise ValueError(f"inner must be one of {INNER_LOSSES}, got {inner!r}")
        self.inner, self.blob_kwargs = inner, blob_kwargs

    def per_sample(self, probs, target, maps, loss_mask, max_id=None):
        options = self.blob_kwargs if max_id is None else {**self.blob_kwargs, "max_id": max_id}
        return blob_loss_per_sample(probs, target, maps, self.inner, regions=self.regions, loss_mask=loss_mask,
                                    check_values=self.check_values, **options)

    def blob_term(self, logits: torch.Tensor, target: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
        """The blob term alone (``instance_term``)."""
        return self.instance_term(logits, target, instances)


class CCDiceCELoss(InstanceTermCompoundLoss):
    """``alpha * global_loss(logits, target) + beta * CC-DiceCE(probs, target, cells)`` (Bouteille et al.: the
    global DiceCE and the CC term 1:1 by default, as published).

    The maps are the Voronoi cells of the target's components, (B, C - 1, ...) per foreground class or (B, R, ...)
    per region (:func:`nnunet_blob.instances.voronoi.voronoi_cells`); ``smooth`` is the CC term's Dice smoothing
    (0 as published) and ``empty_samples`` what a sample without components contributes (see
    :func:`~nnunet_blob.losses.cc_dice_ce.cc_dice_ce_loss`). The segment-sum tables hold, per (sample, class),
    :func:`~nnunet_blob.losses.cc_dice_ce.cells_bound` cells of each call's grid for the components'
    ``connectivity``, at most ``max_cells`` (a bound the caller guarantees, as the trainers' loader does), by
    default every id the cells' dtype can hold. Other arguments as :class:`InstanceTermCompoundLoss`.
    """

    def __init__(self, global_loss: nn.Module | None, alpha: float = 1.0, beta: float = 1.0, *,
                 smooth: float = 0.0, empty_samples: str = "skip", regions: bool = False, ignore_label=None,
                 ddp: bool = True, check_values: bool = True, max_cells: int | None = None,
                 connectivity: int | None = None):
        super().__init__(global_loss, alpha, beta, regions=regions, ignore_label=ignore_label, ddp=ddp,
                         check_values=check_values)
        self.smooth, self.empty_samples = smooth, empty_samples
        self.max_cells, self.connectivity = max_cells, connectivity

    def per_sample(self, probs, target, maps, loss_mask, max_id=None):
        cap = self.max_cells if max_id is None else max_id
        bounded = cap is not None or self.connectivity is not None
        max_cell = cells_bound(tuple(probs.shape[2:]), self.connectivity, cap) if bounded else None
        if max_cell is not None and maps.dtype in ID_SPACE:  # never more than every id the dtype holds
            max_cell = min(max_cell, ID_SPACE[maps.dtype] - 1)
        return cc_dice_ce_per_sample(probs, target, maps, regions=self.regions, smooth=self.smooth,
                                     loss_mask=loss_mask, max_cell=max_cell, empty_samples=self.empty_samples,
                                     check_values=self.check_values)


def _mean_over_all_workers(per_sample: torch.Tensor, has_instances: torch.Tensor, ddp: bool) -> torch.Tensor:
    """Mean of the per-sample terms over the samples with instances, across DDP workers when ``ddp``."""
    local_sum = per_sample.sum()  # samples without instances hold 0
    count = has_instances.sum().to(per_sample.dtype)
    if ddp_active(ddp):
        total = count.detach().clone()
        torch.distributed.all_reduce(total)
        # DDP averages gradients over the workers: scaled by the world size, that average is the global mean
        return local_sum * torch.distributed.get_world_size() / total.clamp_min(1)
    return local_sum / count.clamp_min(1)


class TopKDiceAndCELoss(nn.Module):
    """CE + TopK-Dice (Hosseini, section 3.2: "the final loss is the summation of CE and topK Dice loss").

    ``ignore_label`` voxels are left out of both terms, like nnU-Net's ``DC_and_CE_loss`` (cross-entropy is the mean
    over the other voxels, 0 when there are none); ``ddp`` as in
    :func:`~nnunet_blob.losses.topk_dice.topk_dice_loss` (the trainers pass nnU-Net's ``is_ddp``), ``classes`` too.
    """

    def __init__(self, k: float = 50.0, weight_ce: float = 1.0, weight_topk_dice: float = 1.0,
                 ignore_label: int | None = None, batch_dice: bool = False, squared: bool = True,
                 smooth: float = 1e-5, ddp: bool = False, classes: str = "present"):
        super().__init__()
        from nnunet_blob.nnunet_internals import robust_cross_entropy

        RobustCrossEntropyLoss = robust_cross_entropy()

        self.ce = RobustCrossEntropyLoss(ignore_index=-100 if ignore_label is None else ignore_label,
                                         reduction="mean" if ignore_label is None else "sum")
        self.k, self.weight_ce, self.weight_topk_dice, self.ignore_label = k, weight_ce, weight_topk_dice, ignore_label
        self.topk_kwargs = dict(batch_dice=batch_dice, squared=squared, smooth=smooth, ddp=ddp, classes=classes)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mask = None if self.ignore_label is None else target != self.ignore_label
        total = logits.new_zeros((), dtype=torch.float32)
        if self.weight_topk_dice:
            labels = target if mask is None else torch.where(mask, target, 0)
            probs = _probabilities(logits, sigmoid=False)
            total = self.weight_topk_dice * topk_dice_loss(probs, labels, self.k, loss_mask=mask, **self.topk_kwargs)
        if self.weight_ce:
            ce = self.ce(logits, target[:, 0])
            if mask is not None:  # mean over the annotated voxels without asking the device whether there are any
                ce = ce / mask.sum().clamp_min(1)
            total = total + self.weight_ce * ce
        return total
