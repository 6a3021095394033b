"""The nnunet_blob trainers: each one a choice of loss on the shared plumbing of :mod:`.base`.

Train with ``nnUNetv2_train DATASET CONFIG FOLD -tr <class name>``. Other weights are a three-line subclass::

    class nnUNetTrainerBlobDice_a4b1(nnUNetTrainerBlobDice):
        blob_alpha = 4.0
        blob_beta = 1.0

(put it in a module of a folder listed in ``nnUNet_extTrainer``; never use ``__`` in a trainer name).
"""
from __future__ import annotations

from typing import Any

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_blob.losses import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss, TverskyLoss
from nnunet_blob.nnunet_internals import (
    compile_enabled,
    drop_cross_entropy,
    overlap_term,
    replace_overlap_term,
    set_dice_smoothing,
)
from nnunet_blob.trainers.base import InstanceAwareTrainer, LossVariantTrainer
from nnunet_blob.trainers.cells import CellAwareTrainer


class GlobalTerm(nnUNetTrainer):
    """Chooses the global term: nnU-Net's ``DC_and_CE_loss`` with Dice or Tversky, with or without CE
    (:meth:`build_global_loss`). Builds no loss of its own: :class:`GlobalTermTrainer` trains with the global term
    alone, an instance-aware trainer adds it to its instance term in ``build_instance_loss``."""

    #: "dice" (nnU-Net's MemoryEfficientSoftDiceLoss) or "tversky" (:class:`~nnunet_blob.losses.TverskyLoss`)
    global_overlap = "dice"
    #: Tversky weights of false positives and false negatives (Salehi et al., as in the blob loss paper)
    tversky_alpha, tversky_beta = 0.3, 0.7
    #: keep nnU-Net's cross-entropy (or BCE for regions) in the global term
    global_ce = True

    def build_global_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        """nnU-Net's ``DC_and_CE_loss``/``DC_and_BCE_loss`` with the overlap term and CE chosen (changed in place)."""
        if self.global_overlap == "tversky":
            dice = overlap_term(nnunet_loss)
            replace_overlap_term(nnunet_loss, TverskyLoss(apply_nonlin=dice.apply_nonlin, batch_dice=dice.batch_dice,
                                                          do_bg=dice.do_bg, smooth=dice.smooth,
                                                          alpha=self.tversky_alpha, beta=self.tversky_beta,
                                                          ddp=dice.ddp))
            if compile_enabled(self):
                self.print_to_log_file("nnunet_blob: the Tversky term is compiled, as nnU-Net compiles its Dice")
        elif self.global_overlap != "dice":
            raise ValueError(f"global_overlap must be 'dice' or 'tversky', got {self.global_overlap!r}")
        if not self.global_ce:
            drop_cross_entropy(nnunet_loss)
        return nnunet_loss


class GlobalTermTrainer(GlobalTerm, LossVariantTrainer):
    """Trains with the global term alone (:class:`GlobalTerm`)."""

    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        return self.build_global_loss(nnunet_loss)


class nnUNetTrainerTversky(GlobalTermTrainer):
    """CE + Tversky (0.3 on FP, 0.7 on FN): the blob loss paper's Tversky baseline."""

    global_overlap = "tversky"


class nnUNetTrainerTversky_noCE(nnUNetTrainerTversky):
    """Tversky alone (0.3 on FP, 0.7 on FN): exactly the paper's tversky baseline."""

    global_ce = False


class nnUNetTrainerTopKDice(LossVariantTrainer):
    """CE + TopK-Dice (Hosseini) over the 50% hardest foreground voxels of each class."""

    topk_k = 50.0
    #: "present": mean over the classes present in each patch (the paper's Eq. 7); "all": every foreground class
    topk_classes = "present"

    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        if self.label_manager.has_regions:
            raise RuntimeError(f"{type(self).__name__}: TopK-Dice is defined for softmax outputs; this dataset is "
                               f"region-based (dataset.json 'regions_class_order'). Use a blob or stock trainer.")
        return TopKDiceAndCELoss(k=self.topk_k, ignore_label=self.label_manager.ignore_label,
                                 batch_dice=self.configuration_manager.batch_dice, ddp=self.is_ddp,
                                 classes=self.topk_classes)


class nnUNetTrainerTopKDice_k30(nnUNetTrainerTopKDice):
    """CE + TopK-Dice with K = 30 (Hosseini's choice for MS lesions)."""

    topk_k = 30.0


class nnUNetTrainerTopKDice_k10(nnUNetTrainerTopKDice):
    """CE + TopK-Dice with K = 10."""

    topk_k = 10.0


class nnUNetTrainerBlobDice(InstanceAwareTrainer, GlobalTerm):
    """2 x (Dice + CE) + 1 x blob Dice (Kofler et al., Eq. 3, weights of Table 2).

    ``alpha * (Dice + CE) + beta * blob Dice`` with alpha = 2, beta = 1.
    """

    blob_alpha = 2.0
    blob_beta = 1.0
    blob_inner = "dice"
    #: False is the ablation of the paper's supplement 6.4 (other instances stay in each instance's domain)
    blob_masking = True

    def build_instance_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        options: dict[str, Any] = {"masking": self.blob_masking}
        if self.blob_inner == "tversky":
            options.update(tversky_alpha=self.tversky_alpha, tversky_beta=self.tversky_beta)
        regions = self.label_manager.has_regions
        ignore = self.label_manager.ignore_label
        return BlobCompoundLoss(
            self.build_global_loss(nnunet_loss) if self.blob_alpha else None, self.blob_alpha, self.blob_beta,
            self.blob_inner, regions=regions, ignore_label=(ignore is not None) if regions else ignore,
            ddp=self.is_ddp, check_values=False, **options)


class nnUNetTrainerBlobDice_noCE(nnUNetTrainerBlobDice):
    """The paper's blob dice exactly: 2 x soft Dice + 1 x blob Dice, without CE."""

    global_ce = False


class nnUNetTrainerBlobTversky(nnUNetTrainerBlobDice):
    """2 x (Tversky + CE) + 1 x blob Tversky, Tversky 0.3 on FP and 0.7 on FN.

    ``alpha * (Tversky + CE) + beta * blob Tversky``, alpha = 2, beta = 1.
    """

    global_overlap = "tversky"
    blob_inner = "tversky"


class nnUNetTrainerBlobTversky_noCE(nnUNetTrainerBlobTversky):
    """The paper's blob tversky exactly: 2 x Tversky + 1 x blob Tversky, without CE."""

    global_ce = False


class nnUNetTrainerBlobDice_instSampling(nnUNetTrainerBlobDice):
    """Blob Dice, forced-foreground patches centred on an instance drawn uniformly."""

    instance_sampling_exponent = 0.0


class nnUNetTrainerCCDiceCE(CellAwareTrainer, GlobalTerm):
    """Dice + CE plus CC-DiceCE 1:1 (Bouteille et al.): Dice + CE in each lesion's cell.

    nnU-Net's Dice + CE plus the CC term: Dice + CE inside the Voronoi cell of each connected component.
    """

    cc_alpha = 1.0
    cc_beta = 1.0
    #: Dice smoothing of the CC term (0 as published); the global term keeps nnU-Net's
    cc_smooth = 0.0
    #: "skip": a patch without components has no CC term; "published": it scores 1 + its mean cross-entropy
    cc_empty_samples = "skip"

    def build_instance_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        regions = self.label_manager.has_regions
        ignore = self.label_manager.ignore_label
        return CCDiceCELoss(
            self.build_global_loss(nnunet_loss) if self.cc_alpha else None, self.cc_alpha, self.cc_beta,
            smooth=self.cc_smooth, empty_samples=self.cc_empty_samples, regions=regions,
            ignore_label=(ignore is not None) if regions else ignore, ddp=self.is_ddp, check_values=False,
            max_cells=self.max_cells_per_class, connectivity=self.cell_connectivity)


class nnUNetTrainerCCDiceCE_noGlobal(nnUNetTrainerCCDiceCE):
    """The CC-DiceCE term alone (the published "CC" trainer)."""

    cc_alpha = 0.0


class nnUNetTrainerCCDiceCE_paper(nnUNetTrainerCCDiceCE):
    """CC-DiceCE exactly as published, for comparisons with the authors' results.

    Dice smoothing 0 in the global and the CC term, and a patch without components scored 1 + its mean
    cross-entropy.
    """

    cc_empty_samples = "published"

    def build_global_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        loss = super().build_global_loss(nnunet_loss)
        set_dice_smoothing(loss, 0.0)
        return loss


# ablations of the paper's Table 2 (alpha / beta) and supplement 6.4 (no masking)
class nnUNetTrainerBlobDice_a3b1(nnUNetTrainerBlobDice):
    """Blob Dice ablation (Table 2): alpha = 3, beta = 1."""

    blob_alpha, blob_beta = 3.0, 1.0


class nnUNetTrainerBlobDice_a1b1(nnUNetTrainerBlobDice):
    """Blob Dice ablation (Table 2): alpha = 1, beta = 1."""

    blob_alpha, blob_beta = 1.0, 1.0


class nnUNetTrainerBlobDice_a1b2(nnUNetTrainerBlobDice):
    """Blob Dice ablation (Table 1/2): alpha = 1, beta = 2."""

    blob_alpha, blob_beta = 1.0, 2.0


class nnUNetTrainerBlobDice_a0b1(nnUNetTrainerBlobDice):
    """Blob Dice ablation (Table 2): the blob term alone, alpha = 0, beta = 1."""

    blob_alpha, blob_beta = 0.0, 1.0


class nnUNetTrainerBlobDice_noMasking(nnUNetTrainerBlobDice):
    """Blob Dice ablation (supplement 6.4): other instances are not masked out."""

    blob_masking = False


__all__ = [name for name, obj in dict(globals()).items()
           if name.startswith("nnUNetTrainer") and isinstance(obj, type) and obj.__module__ == __name__]


def comparable_trainers() -> dict[str, type]:
    """Stock ``nnUNetTrainer`` and every nnunet_blob trainer, by name: what the demo and the benchmark compare."""
    return {"nnUNetTrainer": nnUNetTrainer, **{name: globals()[name] for name in __all__}}
