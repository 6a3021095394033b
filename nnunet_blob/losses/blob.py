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
the domain as negatives; BCE takes the sum over the voxels not labelled c directly, as its gradients 1/(1 - p)
would cancel in float32). :math:`T_f` is a dense reduction in float32 blocks added in float64
(:func:`~._common.dense_sum`) and all :math:`I_f` and :math:`L_f` come from segment sums (``index_add``,
accumulated in float64; voxel counts in int32) into a table
with a slot per (sample, class, id) over the id range (256 for uint8 ids, 32768 for the loader's int16 ids), so
the cost does not depend on the number of instances, there is no Python loop over instances or classes, and
nothing waits for the device (no host synchronisation on an accelerator). On an accelerator every voxel is an entry
(of its own class's channel; background and masked voxels add to the background channel's rows, which no term
reads), and each slot is spread over sub-slots by voxel position (:func:`~._common.spread_keys`) so that no
address collects more than :data:`~._common.MAX_PILE` atomic additions. Then TP = :math:`I_p`, FP = rest sum of
p, FN = :math:`G_n - I_p`; the per-instance arithmetic after the float64 sums and differences runs in float32.

Instances are read where the target has a foreground class: a voxel's instance belongs to the class its target
label says (an id spanning two classes counts as one instance per class); ids on background voxels and id 0 are
no instance. Foreground voxels with id 0 are outside every domain of their class (masking) -- they are neither the
instance nor background.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from nnunet_blob.losses._common import (
    as_label_map,
    as_mask,
    check_label_range,
    check_nonnegative_ids,
    check_probs,
    clamped_log,
    dense_sum,
    entry_positions,
    float32_math,
    host_reads_are_free,
    mean_over_finite_present,
    mean_over_samples,
    numbered_ids,
    sample_bases,
    segment_sums,
    slot_dtype,
    soft_dice_score,
    spread_factor,
    spread_keys,
    tversky_score,
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
    loss_mask: torch.Tensor | None = None,
    masking: bool = True,
    max_id: int | None = None,
    check_values: bool = True,
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
        max_id: largest instance id that can occur. Default: from the dtype of ``instances`` (255 for uint8,
            32767 for int16, as the trainers' loader delivers them); for wider dtypes the largest id present is read
            from the data, which waits for the device once per call. A bound known in advance (the trainers pass
            the largest instance count of any case) keeps the segment-sum tables small.
        check_values: check the values of ``target`` and ``instances`` (labels in [0, C), ids in [0, max_id]),
            which costs a few kernels per call on an accelerator. False: the caller guarantees them, as the
            trainers' loader does (it checks every patch on the CPU); an id above ``max_id`` would then corrupt
            the table.

    Raises:
        ValueError: bad shapes, dtypes or options; labels outside [0, C), negative or non-integer ids (on an
            accelerator the value checks are device-side assertions, see :func:`~._common.require`).
    """
    return mean_over_samples(*blob_loss_per_sample(
        probs, target, instances, inner, smooth=smooth, tversky_alpha=tversky_alpha, tversky_beta=tversky_beta,
        squared=squared, loss_mask=loss_mask, masking=masking, max_id=max_id, check_values=check_values))


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
    loss_mask: torch.Tensor | None = None,
    masking: bool = True,
    max_id: int | None = None,
    check_values: bool = True,
) -> torch.Tensor:
    """The blob term for region-based (sigmoid) outputs, e.g. BraTS-style nested regions.

    ``probs`` is (B, R, *spatial) with one sigmoid probability per region (no background channel), ``target``
    (B, R, *spatial) the binary region masks and ``instances`` (B, R, *spatial) instance ids per region (ids of
    different regions are independent). Each region is treated as a class of :func:`blob_loss`: its domain for
    instance n excludes the other voxels of that region. Other arguments as in :func:`blob_loss`.
    """
    return mean_over_samples(*blob_loss_per_sample(
        probs, target, instances, inner, regions=True, smooth=smooth, tversky_alpha=tversky_alpha,
        tversky_beta=tversky_beta, squared=squared, loss_mask=loss_mask, masking=masking, max_id=max_id,
        check_values=check_values))


@float32_math
def blob_loss_per_sample(probs: torch.Tensor, target: torch.Tensor, instances: torch.Tensor,
                         inner: InnerLoss = "dice", *, regions: bool = False, loss_mask: torch.Tensor | None = None,
                         max_id: int | None = None, check_values: bool = True,
                         **options) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) blob loss of each sample and (B,) flags "sample has instances" (for reductions across workers).

    Arguments as :func:`blob_loss` (``regions=True``: as :func:`blob_loss_regions`).
    """
    if inner not in INNER_LOSSES:
        raise ValueError(f"inner must be one of {INNER_LOSSES}, got {inner!r}")
    entries = (_region_entries if regions else _label_entries)(probs, target, instances, loss_mask, max_id,
                                                               check_values)
    return _blob_from_entries(entries, inner=inner, **options)


@dataclass
class _Entries:
    """The (sample, channel, voxel) entries a blob term reads, and where each one adds up.

    ``p`` is (B, K, N) and ``valid`` (B, 1, N) or None. Entry e adds to slot ``group * id_space + instance id`` of
    a segment-sum table with ``id_space`` slots per group (group = sample * K + channel); entries that carry no
    label add to rows no term reads (the background channel's rows, or a spare row after the groups). ``keys``
    (flat) are those slots spread over ``spread`` sub-slots by position (:func:`~._common.spread_keys`).
    ``values()`` gives the sum of p over the unmasked voxels per (sample, channel) (float64) and p at each entry,
    both differentiable. Channels below ``first`` have no term (softmax: the background).
    """

    p: torch.Tensor
    valid: torch.Tensor | None
    keys: torch.Tensor
    spread: int
    num_slots: int
    id_space: int
    first: int
    values: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    target: torch.Tensor  # (B, 1, N) integer class labels (softmax form) or (B, K, N) bool region masks (sigmoid)

    def unlabelled(self) -> torch.Tensor:
        """(B, K, N) bool: the voxel does not carry the channel's class (is outside the region)."""
        if self.target.dtype == torch.bool:  # region masks
            return ~self.target
        channels = torch.arange(self.p.shape[1], device=self.target.device).reshape(1, -1, 1)
        return self.target != channels


def _label_entries(probs, target, instances, loss_mask, max_id, check_values) -> _Entries:
    """Softmax form: every voxel is an entry of the channel of its target class; labelled where that is > 0."""
    check_probs(probs, min_channels=2)
    batch, num_classes = probs.shape[:2]
    target = as_label_map("target", target, probs, to_long=False)
    instances = as_label_map("instances", instances, probs, to_long=False)
    valid = as_mask(loss_mask, probs)
    if check_values:
        check_label_range(target, num_classes, valid)
        check_nonnegative_ids(instances, "instances must be >= 0 (0 = no instance)")

    p = probs.reshape(batch, num_classes, -1)
    t = target.reshape(batch, 1, -1)
    num_voxels = t.shape[2]
    valid = None if valid is None else valid.reshape(batch, 1, -1)
    ids, id_space = numbered_ids(instances.reshape(-1), instances.dtype, max_id, batch * num_classes,
                                 check_values=check_values)
    num_slots = batch * num_classes * id_space
    keep = entry_positions(t > 0 if valid is None else (t > 0) & valid) if host_reads_are_free(t) else None
    if keep is None:  # every voxel: unlabelled or masked ones count for the background channel, which has no term
        spread = spread_factor(num_voxels, p)  # a slot holds voxels of one sample
        dtype = slot_dtype(num_slots * spread)
        if t.is_floating_point() or torch.promote_types(t.dtype, dtype) != dtype:
            t = t.to(dtype)
        if valid is not None:
            t = torch.where(valid, t, 0)
        ids = ids.reshape(t.shape)
        if torch.promote_types(ids.dtype, dtype) != dtype:
            ids = ids.to(dtype)
        # slot (b * C + t) * id_space + id, spread: the sample's first sub-slot (cached) + (t * id_space + id) *
        # spread
        bases = sample_bases(batch, num_classes * id_space, num_voxels, spread, dtype, p.device)
        keys = torch.add(bases, t, alpha=id_space * spread).add_(ids, alpha=spread).reshape(-1)
        return _Entries(p, valid, keys, spread, num_slots, id_space, 1,
                        lambda: _TotalsAndClassEntries.apply(p, t, valid), t)
    sample = keep.div(num_voxels, rounding_mode="floor")
    channel = t.reshape(-1)[keep].long()
    group = sample * num_classes + channel
    position = group * num_voxels + keep.remainder(num_voxels)
    slot = group * id_space + ids[keep]
    return _Entries(p, valid, slot, 1, num_slots, id_space, 1,
                    lambda: _TotalsAndEntries.apply(p, valid, position), t)


def _region_entries(probs, target, instances, loss_mask, max_id, check_values) -> _Entries:
    """Sigmoid form: every (sample, region, voxel) is an entry; labelled where the voxel is inside the region."""
    check_probs(probs, min_channels=1)
    batch, num_regions = probs.shape[:2]
    target = as_label_map("target", target, probs, channels=num_regions, to_long=False)
    instances = as_label_map("instances", instances, probs, channels=num_regions, to_long=False)
    valid = as_mask(loss_mask, probs)
    if check_values:
        check_nonnegative_ids(instances, "instances must be >= 0 (0 = no instance)")

    p = probs.reshape(batch, num_regions, -1)
    valid = None if valid is None else valid.reshape(batch, 1, -1)
    inside = target.reshape(p.shape) != 0
    if valid is not None:
        inside = inside & valid
    num_groups = batch * num_regions
    ids, id_space = numbered_ids(instances.reshape(-1), instances.dtype, max_id, num_groups,
                                 check_values=check_values)
    num_slots = (num_groups + 1) * id_space  # a spare row for the entries outside the regions
    keep = entry_positions(inside)
    if keep is None:
        position = torch.arange(inside.numel(), device=p.device)
        slot = position.div(p.shape[2], rounding_mode="floor") * id_space + ids.long()
        # outside the regions: the spare row, spread over its slots so that no single slot collects them all
        slot = torch.where(inside.reshape(-1), slot, num_groups * id_space + position.remainder(id_space))
        spread = spread_factor(p.shape[2], p)
        keys = spread_keys(slot.reshape(p.shape), spread).reshape(-1)
    else:
        position, spread = keep, 1
        keys = position.div(p.shape[2], rounding_mode="floor") * id_space + ids[keep].long()
    return _Entries(p, valid, keys, spread, num_slots, id_space, 0,
                    lambda: _TotalsAndEntries.apply(p, valid, position), inside)


def _blob_from_entries(
    e: _Entries,
    *,
    inner: str,
    smooth: float = 1e-5,
    tversky_alpha: float = 0.3,
    tversky_beta: float = 0.7,
    squared: bool = False,
    masking: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blob term of every instance from segment sums over the entries (see the module docstring).

    Slot ``group * id_space + id`` of the table collects the entries of instance ``id`` of a group (id 0: labelled
    voxels without an instance); the rows no term reads are dropped.
    """
    batch, channels, num_voxels = e.p.shape
    first = e.first
    terms = channels - first  # channels with a term
    total_p, x = e.values()
    total_p = total_p[:, first:]  # (B, K): groups are (sample, channel with a term), kept as two axes (views)
    p = e.p[:, first:]
    valid = e.valid

    def totals(f: torch.Tensor) -> torch.Tensor:  # sum of f over every unmasked voxel, per group
        return dense_sum(f if valid is None else f * valid)

    # per slot: voxel count, then the sums the inner loss needs
    one = torch.ones(1, device=x.device, dtype=torch.int32)
    count = segment_sums(e.keys, e.spread, e.num_slots, one.expand(e.keys.numel()))
    if inner == "bce":
        columns = [clamped_log(x), clamped_log(1 - x)]
    else:
        columns = [x, x * x] if squared else [x]
    sums = _SegmentSums.apply(e.keys, e.spread, e.num_slots, *columns)

    def per_group(table: torch.Tensor) -> torch.Tensor:  # (B, K, S, ...) without the rows no term reads (a view)
        rows = table[:batch * channels * e.id_space].reshape(batch, channels, e.id_space, *table.shape[1:])
        return rows[:, first:]

    # differences of large sums in float64; then the per-instance arithmetic in p's dtype
    dtype = e.p.dtype
    count = per_group(count)
    sums = per_group(sums)
    labelled_sums = sums.sum(2)  # (B, K, k): sums over the voxels labelled with each group's class
    instance_sums = sums[:, :, 1:].to(dtype)  # (B, K, S - 1, k): sums over each instance
    size = count[:, :, 1:].to(dtype)

    def rest(total: torch.Tensor, column: int) -> torch.Tensor:
        """Sum over each instance's domain without the instance itself (column -1: the voxel count)."""
        if column < 0:
            part = count.sum(2, keepdim=True) if masking else count[:, :, 1:]
        else:
            part = labelled_sums[..., column].unsqueeze(-1) if masking else sums[:, :, 1:, column]
        return (total.unsqueeze(-1) - part).to(dtype)

    if inner == "bce":  # -(sum of log p over the instance + sum of log(1 - p) over the rest) / |domain|
        voxels = total_p.new_full((batch, 1), num_voxels) if valid is None \
            else valid.sum(-1).to(total_p.dtype)
        domain_size = size + rest(voxels.expand(batch, terms), -1)
        # the sum over the unlabelled voxels is taken directly: as a total minus the labelled voxels' sum, the
        # gradients of both (1 / (1 - p), large where p -> 1) would cancel in float32 on the labelled voxels
        unlabelled_log = totals(clamped_log(1 - p) * e.unlabelled()[:, first:])
        neg_log = unlabelled_log.unsqueeze(-1).to(dtype) if masking \
            else ((unlabelled_log + labelled_sums[..., 1]).unsqueeze(-1) - sums[:, :, 1:, 1]).to(dtype)
        losses = -(instance_sums[..., 0] + neg_log) / domain_size.clamp_min(1)
    else:
        tp = instance_sums[..., 0]
        fp = rest(total_p, 0)
        if inner == "tversky":
            losses = 1 - tversky_score(tp, fp, size - tp, tversky_alpha, tversky_beta, smooth)
        elif squared:
            sum_sq = instance_sums[..., 1] + rest(totals(p * p), 1)
            losses = 1 - soft_dice_score(tp, size, sum_sq, smooth)
        else:
            losses = 1 - soft_dice_score(tp, size, tp + fp, smooth)
    return _mean_over_instances_and_classes(losses, size > 0, batch, terms)


class _SegmentSums(torch.autograd.Function):
    """(num_slots, k) sums of k columns (M,) over the entries of each slot (:func:`~._common.segment_sums`, float64),
    from ``keys`` spread over sub-slots. Backward: each entry gets its slot's gradient (repeated over the slot's
    sub-slots), one ``index_select`` by ``keys`` for all columns."""

    @staticmethod
    def forward(ctx, keys, spread, num_slots, *columns):
        ctx.save_for_backward(keys)
        ctx.dtype, ctx.spread = columns[0].dtype, spread
        sums = [segment_sums(keys, spread, num_slots, c) for c in columns]
        return sums[0].unsqueeze(1) if len(sums) == 1 else torch.stack(sums, 1)

    @staticmethod
    def backward(ctx, grad):
        (keys,) = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        if ctx.spread > 1:
            grad = grad.repeat_interleave(ctx.spread, 0)
        per_entry = grad.index_select(0, keys)
        return (None, None, None, *per_entry.unbind(1))


class _TotalsAndClassEntries(torch.autograd.Function):
    """Softmax form, every voxel an entry: (sum of p over the unmasked voxels per (sample, channel),
    :func:`~._common.dense_sum`; p of each voxel's own class, ``t`` (B, 1, N)).

    With two channels the entries are simply p of channel 1 at every voxel: the background voxels' entries land in
    the background channel's rows, which no term reads, so no gather by class is needed. Backward: the broadcast
    total gradient plus each voxel's entry gradient in its class's channel (one ``scatter_add`` with one entry per
    address; with two channels, added to channel 1)."""

    @staticmethod
    def forward(ctx, p, t, valid):
        two_channels = p.shape[1] == 2
        index = None if two_channels else t.long()
        ctx.save_for_backward(index, valid)
        ctx.shape = p.shape
        totals = dense_sum(p if valid is None else p * valid)
        return totals, p[:, 1].reshape(-1) if two_channels else p.gather(1, index).reshape(-1)

    @staticmethod
    def backward(ctx, grad_totals, grad_entries):
        index, valid = ctx.saved_tensors
        grad_totals = grad_totals.to(grad_entries.dtype).unsqueeze(-1)
        if index is None:  # two channels
            batch, _, num_voxels = ctx.shape
            entries = torch.add(grad_entries.reshape(batch, num_voxels), grad_totals[:, 1])
            grad = torch.stack((grad_totals[:, 0].expand(batch, num_voxels), entries), 1)
            return (grad if valid is None else grad * valid), None, None
        grad = grad_totals.expand(ctx.shape)
        grad = grad.clone(memory_format=torch.contiguous_format) if valid is None else grad * valid
        return grad.scatter_add_(1, index, grad_entries.reshape(index.shape)), None, None


class _TotalsAndEntries(torch.autograd.Function):
    """(sum of p over the unmasked voxels per (sample, channel), :func:`~._common.dense_sum`; p at the entries' flat
    positions).

    Fused so that the backward pass writes one gradient buffer (broadcast total gradient plus a sparse
    ``index_add`` of the entries' gradients) instead of a zero-filled buffer per term.
    """

    @staticmethod
    def forward(ctx, p, valid, position):
        ctx.save_for_backward(valid, position)
        ctx.shape = p.shape
        totals = dense_sum(p if valid is None else p * valid)
        return totals, p.reshape(-1)[position]

    @staticmethod
    def backward(ctx, grad_totals, grad_entries):
        valid, position = ctx.saved_tensors
        grad = grad_totals.to(grad_entries.dtype).unsqueeze(-1).expand(ctx.shape)
        grad = grad.clone(memory_format=torch.contiguous_format) if valid is None else grad * valid
        grad.view(-1).index_add_(0, position, grad_entries)
        return grad, None, None


def _mean_over_instances_and_classes(losses: torch.Tensor, present: torch.Tensor, batch: int,
                                     channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: mean over the instances of a class, then over the classes with instances.

    ``losses`` and ``present`` are (B, K, S - 1) per id slot. Returns (B,) sample losses and (B,) flags
    "sample has instances".
    """
    class_mean, class_has = mean_over_finite_present(losses, present, dim=2)
    return mean_over_finite_present(class_mean, class_has, dim=1)
