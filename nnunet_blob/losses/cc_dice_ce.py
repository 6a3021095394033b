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

**Cost.** All cell sums come from one segment sum keyed by (sample, class, cell) over a fixed id range (see
:func:`~._common.segment_table`): no loop over components or classes, and nothing waits for the device.
"""
from __future__ import annotations

from typing import Literal

import torch

from nnunet_blob.losses._common import (
    as_label_map,
    as_mask,
    check_label_range,
    check_probs,
    entry_positions,
    float32_math,
    mean_over_present,
    mean_over_samples,
    numbered_ids,
    require,
    segment_table,
)

#: floor of the Dice denominator and of the probability inside the log, as in the published code
EPS = 1e-7
#: what a sample without any component contributes (see the module docstring)
EmptySamples = Literal["skip", "published"]


def cc_dice_ce_loss(probs: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, *, smooth: float = 0.0,
                    loss_mask: torch.Tensor | None = None, max_cell: int | None = None,
                    empty_samples: EmptySamples = "skip") -> torch.Tensor:
    """The CC term for softmax outputs (lower is better).

    Args:
        probs: (B, C, *spatial) softmax probabilities, background in channel 0; 2D or 3D.
        target: (B, 1, *spatial) integer class labels in [0, C) (outside ``loss_mask`` anything goes).
        cells: (B, C - 1, *spatial) cell ids per foreground class, as
            :func:`nnunet_blob.instances.voronoi.voronoi_cells` returns them (0: the class has no component).
        smooth: added to the Dice numerator and denominator (0 as published).
        loss_mask: optional (B, 1, *spatial), nonzero = voxel counts.
        max_cell: largest cell id that can occur. Default: from the dtype of ``cells`` (255 for uint8, 32767 for
            int16); for wider dtypes the largest id is read from the data (one wait for the device per call).
        empty_samples: ``"skip"`` (no term for a sample without components) or ``"published"`` (such a sample
            scores 1 + its mean cross-entropy, every sample is averaged), see the module docstring.

    Raises:
        ValueError: bad shapes or dtypes; labels outside [0, C), negative cell ids (on an accelerator the value
            checks are device-side assertions, see :func:`~._common.require`).
    """
    return mean_over_samples(*cc_dice_ce_per_sample(probs, target, cells, smooth=smooth, loss_mask=loss_mask,
                                                    max_cell=max_cell, empty_samples=empty_samples))


def cc_dice_ce_loss_regions(probs: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, *, smooth: float = 0.0,
                            loss_mask: torch.Tensor | None = None, max_cell: int | None = None,
                            empty_samples: EmptySamples = "skip") -> torch.Tensor:
    """The CC term for region-based (sigmoid) outputs: ``probs`` (B, R, *spatial) per region, ``target``
    (B, R, *spatial) the binary region masks, ``cells`` (B, R, *spatial) the cells of each region's components.
    Each region is a class of :func:`cc_dice_ce_loss` ("region r against the rest")."""
    return mean_over_samples(*cc_dice_ce_per_sample(probs, target, cells, regions=True, smooth=smooth,
                                                    loss_mask=loss_mask, max_cell=max_cell,
                                                    empty_samples=empty_samples))


@float32_math
def cc_dice_ce_per_sample(probs: torch.Tensor, target: torch.Tensor, cells: torch.Tensor, *, regions: bool = False,
                          smooth: float = 0.0, loss_mask: torch.Tensor | None = None,
                          max_cell: int | None = None,
                          empty_samples: EmptySamples = "skip") -> tuple[torch.Tensor, torch.Tensor]:
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
    if cells.dtype.is_signed or cells.is_floating_point():
        require((cells >= 0).all(), "cells must be >= 0 (0 = the class has no component)")
    if regions:
        labels = as_label_map("target", target, probs, channels=num_classes, to_long=False) != 0
    else:
        target = as_label_map("target", target, probs, to_long=False)
        check_label_range(target, channels, valid)
        classes = torch.arange(1, channels, device=target.device).reshape(1, -1, *[1] * (target.ndim - 2))
        labels = target == classes  # (B, C - 1, *spatial): "class c against the rest"

    num_voxels = cells[0, 0].numel()
    active = cells.reshape(batch, num_classes, -1) > 0
    if valid is not None:
        active = active & valid.reshape(batch, 1, -1)
    keep = entry_positions(active)
    entry = torch.arange(active.numel(), device=probs.device) if keep is None else keep
    group = entry.div(num_voxels, rounding_mode="floor")  # sample * num_classes + class
    position = (group + group.div(num_classes, rounding_mode="floor") * first + first) * num_voxels \
        + entry.remainder(num_voxels)  # the same voxel of channel first + class in probs (B, C, N)
    ids, y = cells.reshape(-1)[entry].long(), labels.reshape(-1)[entry].to(probs.dtype)
    ids, id_space = numbered_ids(ids, cells.dtype, max_cell, batch * num_classes, name="cells")

    p = probs.reshape(-1)[position]
    q = torch.where(y > 0, p, 1 - p)
    columns = [torch.ones_like(p), p, y, p * y, -torch.log(q.clamp_min(EPS))]
    table = segment_table(columns, group, ids, None if keep is not None else active.reshape(-1), entry,
                          batch * num_classes, id_space)[:, 1:]  # (B * classes, cells, 5); cell id 0 is no cell
    size, sum_p, sum_y, tp, sum_ce = table.unbind(-1)
    dice = 1 - (2 * tp + smooth) / (sum_p + sum_y + smooth).clamp_min(EPS)
    cell_losses = dice + sum_ce / size.clamp_min(1)
    class_mean, class_has = mean_over_present(cell_losses, size > 0, dim=1)
    per_sample, sample_has = mean_over_present(class_mean.reshape(batch, num_classes),
                                               class_has.reshape(batch, num_classes), dim=1)
    if empty_samples == "skip":
        return per_sample, sample_has
    fallback = 1 + _mean_cross_entropy(probs, target if regions else labels, regions, valid)
    return torch.where(sample_has, per_sample, fallback), torch.ones_like(sample_has)


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
