"""The two base classes of the nnunet_blob trainers, composed of one class per responsibility.

* :class:`LossVariantTrainer`: the loss swap (:mod:`.loss_swap`) and lesion-wise metrics at nnU-Net's final
  validation (:mod:`.lesion_validation`). Concrete trainers (:mod:`.variants`) only choose a loss.
* :class:`InstanceAwareTrainer`: in addition, the instance data (:mod:`.instance_maps`: maps, datasets,
  pipelines), a loss that receives the instance maps, and the online instance F1 on the validation patches
  (:mod:`.lesion_validation`).
"""
from __future__ import annotations

from torch import nn

from nnunet_blob.trainers.instance_maps import InstanceMapsTrainer
from nnunet_blob.trainers.instance_transforms import PackedInstancesLoss
from nnunet_blob.trainers.lesion_validation import FinalLesionWiseValidation, OnlineInstanceScore
from nnunet_blob.trainers.loss_swap import LossSwapTrainer


class LossVariantTrainer(FinalLesionWiseValidation, LossSwapTrainer):
    """nnU-Net's trainer with the loss inside its deep-supervision wrapper replaced (``build_inner_loss``), and
    lesion-wise metrics next to its final validation's ``summary.json``."""


class InstanceAwareTrainer(OnlineInstanceScore, InstanceMapsTrainer, LossVariantTrainer):
    """Trains with instance maps: loaders, augmentation and deep supervision carry them to the loss.

    Subclasses build a loss ``(output, target, instances) -> scalar`` in :meth:`build_instance_loss`.
    """

    def build_instance_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        return PackedInstancesLoss(self.build_instance_loss(nnunet_loss), self.instance_packing,
                                   self.label_manager.has_regions)
