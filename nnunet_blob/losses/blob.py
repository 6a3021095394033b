r"""Blob loss (Kofler et al., "blob loss: instance imbalance aware loss functions for semantic segmentation").

For sample b, foreground class c and instance n of class c (voxel set :math:`I_n`, :math:`G_n = |I_n|`), the
instance domain is Eq. (1) in its multi-class form (supplement 6.7):

.. math::  \Omega_{c,n} = \Omega \setminus \{ i : g_i = c,\ i \notin I_n \}

(all voxels but the other voxels labelled c; background and other classes stay in). The blob term is Eq. (2)/(4):

.. math::  L_{blob} = \operatorname{mean}_b \operatorname{mean}_{c} \frac{1}{N_c} \sum_n
           \mathcal{L}\big((p^c_i)_{i\in\Omega_{c,n}}, (\mathbb{1}[i \in I_n])_{i\in\Omega_{c,n}}\big)

where the means run over the classes that have instances in a sample and over the samples that have any instance;
a batch without instances gives 0 (with a graph). The total loss Eq. (3)/(5), ``alpha * global + beta * blob``,
is assembled by :class:`nnunet_blob.losses.BlobCompoundLoss`.

**One pass, any number of instances.** Every inner loss needs only sums of a function f of p over the domain.
With :math:`T_f` the sum of f(p^c) over all (unmasked) voxels, :math:`L_f` the sum over the voxels labelled c and
:math:`I_f` the sum over :math:`I_n`, the sum over the rest of the domain :math:`\Omega_{c,n} \setminus I_n` is
:math:`T_f - L_f` (masking) or :math:`T_f - I_f` (``masking=False``, supplement 6.4: the other instances stay in
the domain as negatives). All :math:`I_f` come from one segment sum (``index_add``) keyed by (sample, class, id),
so the cost does not depend on the number of instances and there is no Python loop over them. Then
TP = :math:`I_p`, FP = rest sum of p, FN = :math:`G_n - I_p`.

Instances are read where the target has a foreground class: a voxel's instance belongs to the class its target
label says (an id spanning two classes counts as one instance per class); ids on background voxels and id 0 are
no instance. Foreground voxels with id 0 are outside every domain of their class (masking) -- they are neither the
instance nor background.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch

from nnunet_blob.losses._common import (
    as_label_map,
    as_mask,
    check_label_range,
    check_probs,
    clamped_log,
    float32_math,
    mean_over_present,
    soft_dice_score,
    tversky_score,
    zero_with_graph,
)

InnerLoss = Literal["dice", "tversky", "bce"]
INNER_LOSSES = ("dice", "tversky", "bce")


def blob_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    instances: torch.Tensor,
    inner: InnerLoss = "dice",
    *,
    smooth: float = 1e-5,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    squared: bool = False,
    loss_mask: Optional[torch.Tensor] = None,
    masking: bool = True,
) -> torch.Tensor:
    """The blob term for softmax outputs (lower is better, 0 is perfect).

    Args:
        probs: (B, C, *spatial) softmax probabilities, background in channel 0; 2D or 3D.
        target: (B, 1, *spatial) integer class labels in [0, C) (outside ``loss_mask`` anything goes).
        instances: (B, 1, *spatial) integer instance ids, 0 = no instance, unique within a sample.
        inner: the binary loss on each instance domain: ``"dice"`` (soft Dice, nnU-Net smoothing),
            ``"tversky"`` (``tversky_alpha`` on FP, ``tversky_beta`` on FN) or ``"bce"`` (binary cross-entropy
            averaged over the domain, log clamped at -100 like torch).
        smooth: smoothing of Dice and Tversky.
        squared: Dice with squared denominator, sum g^2 + sum p^2.
        loss_mask: optional (B, 1, *spatial), nonzero = voxel counts (e.g. ``target != ignore_label``); masked
            voxels are in no term; an instance whose voxels are all masked has no term.
        masking: False is the ablation of supplement 6.4 (other instances of the class stay in the domain).
    """
    return _mean_over_samples(*blob_loss_per_sample(
        probs, target, instances, inner, smooth=smooth, tversky_alpha=tversky_alpha, tversky_beta=tversky_beta,
        squared=squared, loss_mask=loss_mask, masking=masking))


def blob_loss_regions(
    probs: torch.Tensor,
    target: torch.Tensor,
    instances: torch.Tensor,
    inner: InnerLoss = "dice",
    *,
    smooth: float = 1e-5,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    squared: bool = False,
    loss_mask: Optional[torch.Tensor] = None,
    masking: bool = True,
) -> torch.Tensor:
    """The blob term for region-based (sigmoid) outputs, e.g. BraTS-style nested regions.

    ``probs`` is (B, R, *spatial) with one sigmoid probability per region (no background channel), ``target``
    (B, R, *spatial) the binary region masks and ``instances`` (B, R, *spatial) instance ids per region (ids of
    different regions are independent). Each region is treated as a class of :func:`blob_loss`: its domain for
    instance n excludes the other voxels of that region. Other arguments as in :func:`blob_loss`.
    """
    return _mean_over_samples(*blob_loss_per_sample(
        probs, target, instances, inner, regions=True, smooth=smooth, tversky_alpha=tversky_alpha,
        tversky_beta=tversky_beta, squared=squared, loss_mask=loss_mask, masking=masking))


@float32_math
def blob_loss_per_sample(probs: torch.Tensor, target: torch.Tensor, instances: torch.Tensor,
                         inner: InnerLoss = "dice", *, regions: bool = False, loss_mask: Optional[torch.Tensor] = None,
                         **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) blob loss of each sample and (B,) flags "sample has instances" (for reductions across workers).

    Arguments as :func:`blob_loss` (``regions=True``: as :func:`blob_loss_regions`).
    """
    entries = (_region_entries if regions else _label_entries)(probs, target, instances, loss_mask)
    return _blob_from_entries(*entries, inner=inner, **options)


def _label_entries(probs, target, instances, loss_mask):
    """Softmax form: the unmasked foreground voxels, their class (channel) and instance id."""
    check_probs(probs, min_channels=2)
    batch, num_classes = probs.shape[:2]
    target = as_label_map("target", target, probs)
    instances = as_label_map("instances", instances, probs)
    valid = as_mask(loss_mask, probs)
    check_label_range(target, num_classes, valid)

    t = target.reshape(batch, -1)
    valid = None if valid is None else valid.reshape(batch, 1, -1)
    labelled = t > 0 if valid is None else (t > 0) & valid[:, 0]
    sample, voxel = labelled.nonzero(as_tuple=True)
    channel = t[sample, voxel]
    entry_id = instances.reshape(batch, -1)[sample, voxel]
    return probs.reshape(batch, num_classes, -1), valid, sample, channel, voxel, entry_id


def _region_entries(probs, target, instances, loss_mask):
    """Sigmoid form: the unmasked voxels inside each region, the region (channel) and its instance id there."""
    check_probs(probs, min_channels=1)
    batch, num_regions = probs.shape[:2]
    target = as_label_map("target", target, probs, channels=num_regions)
    instances = as_label_map("instances", instances, probs, channels=num_regions)
    valid = as_mask(loss_mask, probs)

    valid = None if valid is None else valid.reshape(batch, 1, -1)
    inside = target.reshape(batch, num_regions, -1) != 0
    if valid is not None:
        inside = inside & valid
    sample, channel, voxel = inside.nonzero(as_tuple=True)
    entry_id = instances.reshape(batch, num_regions, -1)[sample, channel, voxel]
    return probs.reshape(batch, num_regions, -1), valid, sample, channel, voxel, entry_id


def _blob_from_entries(
    p: torch.Tensor,
    valid: Optional[torch.Tensor],
    sample: torch.Tensor,
    channel: torch.Tensor,
    voxel: torch.Tensor,
    entry_id: torch.Tensor,
    *,
    inner: str,
    smooth: float = 1e-5,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    squared: bool = False,
    masking: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob term from the labelled voxels ("entries") of every (sample, channel) group.

    ``p`` is (B, K, N); group ``b * K + k`` reads channel k of sample b; ``valid`` is (B, 1, N) or None. Entry e
    is the unmasked voxel ``voxel[e]`` of sample ``sample[e]`` labelled with channel ``channel[e]``'s class, with
    instance id ``entry_id[e]``. Its probability is read by one flat index, so the backward pass scatters into a
    single gradient buffer.
    """
    if inner not in INNER_LOSSES:
        raise ValueError(f"inner must be one of {INNER_LOSSES}, got {inner!r}")
    if entry_id.numel() and int(entry_id.min()) < 0:
        raise ValueError("instances must be >= 0 (0 = no instance)")
    batch, channels, num_voxels = p.shape
    num_groups = batch * channels
    entry_group = sample * channels + channel
    total_p, entry_p = _TotalsAndEntries.apply(p, valid, entry_group * num_voxels + voxel)

    is_instance = entry_id > 0
    instance_index, instance_group = _segment_ids(entry_group[is_instance], entry_id[is_instance], num_groups)
    num_instances = instance_group.numel()
    if num_instances == 0:
        return zero_with_graph(p).expand(batch), torch.zeros(batch, dtype=torch.bool, device=p.device)
    inst_p = entry_p[is_instance]

    def totals(f: torch.Tensor) -> torch.Tensor:  # sum of f over every unmasked voxel, per group
        return (f if valid is None else f * valid).sum(-1).reshape(num_groups)

    def per_group(f: torch.Tensor) -> torch.Tensor:  # sum of f over the voxels labelled with the group's class
        return torch.zeros(num_groups, dtype=f.dtype, device=f.device).index_add(0, entry_group, f)

    def per_instance(f: torch.Tensor) -> torch.Tensor:
        return torch.zeros(num_instances, dtype=f.dtype, device=f.device).index_add(0, instance_index, f)

    def rest(total: torch.Tensor, labelled: torch.Tensor, inst: torch.Tensor) -> torch.Tensor:
        """Sum over the domain without the instance itself."""
        return (total - labelled)[instance_group] if masking else total[instance_group] - inst

    size = per_instance(torch.ones_like(inst_p))
    tp = per_instance(inst_p)

    if inner == "bce":
        log_p = clamped_log(inst_p)
        log_1mp_all = clamped_log(1 - p)
        log_1mp_entries = clamped_log(1 - entry_p)
        neg_log = rest(totals(log_1mp_all), per_group(log_1mp_entries), per_instance(log_1mp_entries[is_instance]))
        ones_all = torch.ones_like(p[:, :, :1]).expand_as(p)
        domain_size = size + rest(totals(ones_all), per_group(torch.ones_like(entry_p)), size)
        losses = -(per_instance(log_p) + neg_log) / domain_size
    else:
        fp = rest(total_p.reshape(num_groups), per_group(entry_p), tp)
        if inner == "tversky":
            losses = 1 - tversky_score(tp, fp, size - tp, tversky_alpha, tversky_beta, smooth)
        elif squared:
            inst_sq = per_instance(inst_p * inst_p)
            sum_sq = inst_sq + rest(totals(p * p), per_group(entry_p * entry_p), inst_sq)
            losses = 1 - soft_dice_score(tp, size, sum_sq, smooth)
        else:
            losses = 1 - soft_dice_score(tp, size, tp + fp, smooth)
    return _mean_over_instances_and_classes(losses, instance_group, batch, channels)


class _TotalsAndEntries(torch.autograd.Function):
    """(sum of p over the unmasked voxels per (sample, channel), p at the entries' flat indices).

    Fused so that the backward pass writes one gradient buffer (broadcast total gradient plus a sparse
    ``index_add`` of the entries' gradients) instead of a zero-filled buffer per term.
    """

    @staticmethod
    def forward(ctx, p, valid, flat_index):
        ctx.save_for_backward(valid, flat_index)
        ctx.shape = p.shape
        totals = (p if valid is None else p * valid).sum(-1)
        return totals, p.reshape(-1)[flat_index]

    @staticmethod
    def backward(ctx, grad_totals, grad_entries):
        valid, flat_index = ctx.saved_tensors
        grad = grad_totals.unsqueeze(-1).expand(ctx.shape)
        grad = grad.clone(memory_format=torch.contiguous_format) if valid is None else grad * valid
        grad.view(-1).index_add_(0, flat_index, grad_entries)
        return grad, None, None


def _segment_ids(group: torch.Tensor, ids: torch.Tensor, num_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Number the distinct (group, id) pairs 0..M-1.

    Returns each entry's instance index and each instance's group. Instance ids are normally small (the loader
    renumbers them per patch) and a dense key table is used; very sparse ids fall back to ``torch.unique``.
    """
    if ids.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=ids.device)
        return empty, empty
    id_space = int(ids.max()) + 1
    keys = group * id_space + ids
    key_space = num_groups * id_space
    if key_space <= 4 * keys.numel() + (1 << 16):
        present = torch.zeros(key_space, dtype=torch.bool, device=keys.device)
        present[keys] = True
        present_keys = present.nonzero()[:, 0]
        dense_to_compact = torch.cumsum(present, 0) - 1
        index = dense_to_compact[keys]
    else:
        present_keys, index = torch.unique(keys, return_inverse=True)
    return index, torch.div(present_keys, id_space, rounding_mode="floor")


def _mean_over_instances_and_classes(losses: torch.Tensor, instance_group: torch.Tensor, batch: int,
                                     channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: mean over the instances of a class, then over the classes with instances.

    Returns (B,) sample losses and (B,) flags "sample has instances".
    """
    num_groups = batch * channels
    count = torch.zeros(num_groups, dtype=losses.dtype, device=losses.device).index_add(
        0, instance_group, torch.ones_like(losses))
    total = torch.zeros(num_groups, dtype=losses.dtype, device=losses.device).index_add(0, instance_group, losses)
    class_mean = (total / count.clamp_min(1)).reshape(batch, channels)
    return mean_over_present(class_mean, count.reshape(batch, channels) > 0, dim=1)


def _mean_over_samples(sample_losses: torch.Tensor, sample_has: torch.Tensor) -> torch.Tensor:
    """Mean over the samples that have instances (0, with a graph, when none has)."""
    return mean_over_present(sample_losses, sample_has, dim=0)[0]
