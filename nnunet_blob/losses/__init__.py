"""Instance-imbalance aware losses for nnU-Net.

Functional API (probabilities in, ``1 - score`` out, lower is better):

* :func:`blob_loss` / :func:`blob_loss_regions` -- the blob term of Kofler et al. (softmax / sigmoid outputs)
* :func:`topk_dice_loss` -- TopK-Dice of Hosseini
* :func:`tversky_loss` -- global Tversky loss (Salehi et al.)
* :func:`cc_dice_ce_loss` / :func:`cc_dice_ce_loss_regions` -- the CC-DiceCE term of Bouteille et al. (Dice + CE in
  each reference component's Voronoi cell)

Modules on logits for trainers: :class:`BlobCompoundLoss`, :class:`CCDiceCELoss`, :class:`TopKDiceAndCELoss`,
:class:`TverskyLoss`.
"""
from nnunet_blob.losses.blob import blob_loss, blob_loss_per_sample, blob_loss_regions
from nnunet_blob.losses.cc_dice_ce import cc_dice_ce_loss, cc_dice_ce_loss_regions, cc_dice_ce_per_sample
from nnunet_blob.losses.compound import BlobCompoundLoss, CCDiceCELoss, InstanceTermCompoundLoss, TopKDiceAndCELoss
from nnunet_blob.losses.topk_dice import topk_dice_loss
from nnunet_blob.losses.tversky import TverskyLoss, tversky_loss

__all__ = [
    "blob_loss",
    "blob_loss_regions",
    "blob_loss_per_sample",
    "cc_dice_ce_loss",
    "cc_dice_ce_loss_regions",
    "cc_dice_ce_per_sample",
    "topk_dice_loss",
    "tversky_loss",
    "BlobCompoundLoss",
    "CCDiceCELoss",
    "InstanceTermCompoundLoss",
    "TopKDiceAndCELoss",
    "TverskyLoss",
]
