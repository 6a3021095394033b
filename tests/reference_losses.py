"""Literal, obviously-correct implementations of the papers' equations, for the exactness tests.

Deliberately slow: explicit loops over samples, classes and instances, one explicit domain mask per instance,
no algebraic shortcuts. Inputs float64.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _inner(p, g, inner, smooth, tversky_alpha, tversky_beta, squared):
    """The binary loss L((p_i), (g_i)) on one domain."""
    if inner == "bce":
        return F.binary_cross_entropy(p, g)
    tp = (p * g).sum()
    if inner == "tversky":
        fp = (p * (1 - g)).sum()
        fn = ((1 - p) * g).sum()
        return 1 - (tp + smooth) / (tp + tversky_alpha * fp + tversky_beta * fn + smooth)
    denominator = (g * g).sum() + (p * p).sum() if squared else g.sum() + p.sum()
    return 1 - (2 * tp + smooth) / (denominator + smooth)


def literal_blob_loss(probs, target, instances, inner="dice", *, smooth=1e-5, tversky_alpha=0.3,
                      tversky_beta=0.7, squared=False, loss_mask=None, masking=True, regions=False):
    """Blob loss, Eq. (1)-(2) with the multi-class extension (supplement Eq. 4), one mask per instance.

    Softmax form: channel c of ``probs`` against label c of ``target`` (B, 1, ...). Region form
    (``regions=True``): channel r against the binary mask ``target[:, r]`` and ids ``instances[:, r]``.
    """
    batch, channels = probs.shape[:2]
    sample_losses = []
    for b in range(batch):
        valid = torch.ones_like(target[b, 0], dtype=torch.bool) if loss_mask is None else loss_mask[b, 0].bool()
        class_losses = []
        for c in (range(channels) if regions else range(1, channels)):
            labelled = (target[b, c] != 0 if regions else target[b, 0] == c) & valid
            ids_map = instances[b, c] if regions else instances[b, 0]
            ids = [int(i) for i in torch.unique(ids_map[labelled]) if i != 0]
            if not ids:
                continue
            instance_losses = []
            for n in ids:
                instance = labelled & (ids_map == n)
                other_labelled = labelled & ~instance
                domain = valid & ~other_labelled if masking else valid
                p = probs[b, c][domain]
                g = instance[domain].to(probs.dtype)
                instance_losses.append(_inner(p, g, inner, smooth, tversky_alpha, tversky_beta, squared))
            class_losses.append(torch.stack(instance_losses).mean())
        if class_losses:
            sample_losses.append(torch.stack(class_losses).mean())
    if not sample_losses:
        return probs.sum() * 0
    return torch.stack(sample_losses).mean()


def _literal_topk_sums(p, y, v, k, squared):
    """(2 * sum Yk Pk, denominator, n) of one class over one selection unit (flat tensors): a full descending sort
    picks the D_c easiest of the n foreground voxels (ties: lowest index first), which are zeroed in Y and P."""
    n = int(y.sum())
    removed_count = int((n * (100 - k)) // 100) if float(k).is_integer() else int(n * (100 - k) / 100)
    fg_index = torch.nonzero(y)[:, 0]
    tp_map = p.detach()[fg_index]
    # stable sort on (-value) keeps the lowest index first among ties
    order = torch.sort(-tp_map, stable=True).indices
    ignore = torch.zeros_like(y)
    ignore[fg_index[order[:removed_count]]] = True
    yk = (y & ~ignore).to(p.dtype)
    pk = p * (v & ~ignore).to(p.dtype)
    return 2 * (yk * pk).sum(), (yk ** 2).sum() + ((pk ** 2).sum() if squared else pk.sum()), n


def _topk_rows(probs, target, loss_mask):
    valid = torch.ones_like(target, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    return [(probs[:, c], (target[:, 0] == c) & valid[:, 0], valid[:, 0]) for c in range(1, probs.shape[1])]


def literal_topk_dice_loss(probs, target, k=50.0, *, squared=True, smooth=1e-5, batch_dice=False, loss_mask=None,
                           classes="present"):
    """TopK-Dice, Eq. (1)-(7): squared soft Dice over the classes present after removing the D_c easiest
    foreground voxels of each class (per sample, or over the batch with ``batch_dice``). ``classes="all"``: the
    mean of the Dice of every (sample, class) pair, present or not."""
    rows = _topk_rows(probs, target, loss_mask)
    if batch_dice:
        units = [[(p.reshape(-1), y.reshape(-1), v.reshape(-1)) for p, y, v in rows]]
    else:
        units = [[(p[b].reshape(-1), y[b].reshape(-1), v[b].reshape(-1)) for p, y, v in rows]
                 for b in range(probs.shape[0])]
    unit_scores = []
    for unit in units:
        sums = [_literal_topk_sums(p, y, v, k, squared) for p, y, v in unit]
        class_scores = [(tp2 + smooth) / (den + smooth) for tp2, den, n in sums if n or classes == "all"]
        if class_scores:
            unit_scores.append(torch.stack(class_scores).mean())
    if not unit_scores:
        return probs.sum() * 0
    return 1 - torch.stack(unit_scores).mean()


def literal_topk_batch_dice_across_workers(probs, target, k, workers, *, squared=True, smooth=1e-5):
    """Batch TopK-Dice under DDP: each worker (an equal share of the batch) removes the D_c easiest voxels of its
    own share; the Dice sums are then added over the workers (a share without the class adds its predictions)."""
    shares = torch.arange(probs.shape[0]).chunk(workers)
    scores = []
    for p, y, v in _topk_rows(probs, target, None):
        sums = [_literal_topk_sums(p[i].reshape(-1), y[i].reshape(-1), v[i].reshape(-1), k, squared) for i in shares]
        if sum(x[2] for x in sums):
            scores.append((sum(x[0] for x in sums) + smooth) / (sum(x[1] for x in sums) + smooth))
    return 1 - torch.stack(scores).mean()


def literal_tversky_loss(probs, target, *, alpha=0.3, beta=0.7, smooth=1e-5, batch_dice=False, do_bg=False,
                         loss_mask=None):
    """Tversky index per (sample, class) with explicit TP/FP/FN sums; 1 - mean."""
    batch, channels = probs.shape[:2]
    valid = torch.ones_like(target, dtype=torch.bool) if loss_mask is None else loss_mask.bool()
    scores = []
    samples = [slice(None)] if batch_dice else [slice(b, b + 1) for b in range(batch)]
    for s in samples:
        for c in range(0 if do_bg else 1, channels):
            v = valid[s, 0]
            p = probs[s, c][v]
            g = (target[s, 0] == c)[v].to(probs.dtype)
            tp, fp, fn = (p * g).sum(), (p * (1 - g)).sum(), ((1 - p) * g).sum()
            scores.append((tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return 1 - torch.stack(scores).mean()


def literal_cc_dice_ce_loss(probs, target, cells, *, smooth=0.0, loss_mask=None, regions=False, empty_samples="skip"):
    """CC-DiceCE (Bouteille et al., ISBI 2026) from its definition: for every sample, class and cell an explicit
    cell mask, Dice (linear denominator floored at 1e-7) plus the mean of -log max(q, 1e-7) over the cell; means
    over cells, classes with cells, samples with any. ``empty_samples="published"``: a sample without cells scores
    1 + the mean over its voxels of -log max(q, 1e-7) (q: probability of the true class; for regions the mean over
    regions and voxels of the binary q), and every sample is averaged."""
    batch, channels = probs.shape[:2]
    sample_losses = []
    for b in range(batch):
        valid = torch.ones_like(cells[b, 0], dtype=torch.bool) if loss_mask is None else loss_mask[b, 0].bool()
        class_losses = []
        for k, c in enumerate(range(channels) if regions else range(1, channels)):
            y_class = target[b, k] != 0 if regions else target[b, 0] == c
            cell_losses = []
            for cell in [int(i) for i in torch.unique(cells[b, k]) if i > 0]:
                inside = (cells[b, k] == cell) & valid
                if not inside.any():
                    continue
                p = probs[b, c][inside]
                y = y_class[inside].to(probs.dtype)
                dice = 1 - (2 * (p * y).sum() + smooth) / torch.clamp(p.sum() + y.sum() + smooth, min=1e-7)
                q = torch.where(y > 0, p, 1 - p)
                cross_entropy = (-torch.log(torch.clamp(q, min=1e-7))).mean()
                cell_losses.append(dice + cross_entropy)
            if cell_losses:
                class_losses.append(torch.stack(cell_losses).mean())
        if class_losses:
            sample_losses.append(torch.stack(class_losses).mean())
        elif empty_samples == "published":
            if regions:
                q = torch.where(target[b] != 0, probs[b], 1 - probs[b])  # (R, ...)
                ce_map = (-torch.log(torch.clamp(q, min=1e-7))).mean(0)
            else:
                q = probs[b].gather(0, target[b].long())[0]
                ce_map = -torch.log(torch.clamp(q, min=1e-7))
            sample_losses.append(1 + ce_map[valid].mean())
    if not sample_losses:
        return probs.sum() * 0
    return torch.stack(sample_losses).mean()
