r"""Tversky loss (Salehi et al. 2017), the blob-loss paper's ``tversky`` baseline, in nnU-Net's style.

Per sample (or, with ``batch_dice``, over the batch) and class c:

.. math::  TI_c = \frac{TP_c + s}{TP_c + \alpha FP_c + \beta FN_c + s},\quad
           TP_c = \sum p^c g^c,\ FP_c = \sum p^c (1 - g^c),\ FN_c = \sum (1 - p^c) g^c

and the loss is :math:`1 - \operatorname{mean} TI` over all (sample, class) pairs, like nnU-Net's
``MemoryEfficientSoftDiceLoss`` (background excluded unless ``do_bg``). alpha = 0.3 weighs false positives,
beta = 0.7 false negatives. FP and FN are taken as sum p - TP and sum g - TP, so no one-hot product is needed twice.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from nnunet_blob.losses._common import (
    as_mask,
    check_probs,
    check_tversky_weights,
    ddp_active,
    float32_math,
    tversky_score,
)


def tversky_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1e-5,
    batch_dice: bool = False,
    do_bg: bool = False,
    loss_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Global Tversky loss (lower is better).

    ``probs`` (B, C, *spatial) probabilities; ``target`` (B, 1, *spatial) class labels or a (B, C, *spatial)
    one-hot / region encoding; ``loss_mask`` (B, 1, *spatial), nonzero = voxel counts.
    """
    module = TverskyLoss(batch_dice=batch_dice, do_bg=do_bg, smooth=smooth, alpha=alpha, beta=beta, ddp=False)
    return _tversky_module_loss(probs, target, loss_mask, module)


def _overlap_sums(probs, target, do_bg, valid):
    """Per (sample, class): sum p g, sum p, sum g over the unmasked voxels."""
    check_probs(probs, min_channels=1)
    axes = tuple(range(2, probs.ndim))
    with torch.no_grad():
        if target.ndim == probs.ndim - 1:
            target = target.unsqueeze(1)
        if target.shape == probs.shape:
            onehot = target.to(probs.dtype)
        else:
            onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1)
        if valid is not None:
            onehot = onehot * valid
        if not do_bg:
            onehot = onehot[:, 1:]
    if not do_bg:
        probs = probs[:, 1:]
    if valid is not None:
        probs = probs * valid
    return (probs * onehot).sum(axes), probs.sum(axes), onehot.sum(axes)


class TverskyLoss(nn.Module):
    """nn.Module form of :func:`tversky_loss` with nnU-Net's Dice-loss interface (``apply_nonlin``, DDP).

    Raises:
        ValueError: ``alpha``, ``beta`` or ``smooth`` negative or not finite, or ``alpha`` and ``beta`` both 0
            (:func:`~nnunet_blob.losses._common.check_tversky_weights`).
    """

    def __init__(self, apply_nonlin: Callable | None = None, batch_dice: bool = False, do_bg: bool = False,
                 smooth: float = 1e-5, alpha: float = 0.3, beta: float = 0.7, ddp: bool = True):
        super().__init__()
        check_tversky_weights(alpha, beta, smooth)
        self.apply_nonlin, self.batch_dice, self.do_bg = apply_nonlin, batch_dice, do_bg
        self.smooth, self.alpha, self.beta, self.ddp = smooth, alpha, beta, ddp

    def forward(self, x: torch.Tensor, y: torch.Tensor, loss_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.apply_nonlin is not None:
            x = self.apply_nonlin(x)
        return _tversky_module_loss(x, y, loss_mask, self)


@float32_math
def _tversky_module_loss(x, y, loss_mask, m: TverskyLoss):
    """Like :func:`tversky_loss`; with batch dice under DDP the sums cover all workers, as in nnU-Net's Dice."""
    sums = _overlap_sums(x, y, m.do_bg, as_mask(loss_mask, x))
    if m.batch_dice:
        if ddp_active(m.ddp):
            from nnunet_blob.nnunet_internals import all_gather_grad

            AllGatherGrad = all_gather_grad()

            sums = [AllGatherGrad.apply(s).sum(0) for s in sums]
        sums = [s.sum(0) for s in sums]
    tp, sum_pred, sum_gt = sums
    return 1 - tversky_score(tp, sum_pred - tp, sum_gt - tp, m.alpha, m.beta, m.smooth).mean()
