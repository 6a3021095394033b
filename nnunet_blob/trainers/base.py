"""The base classes of the nnunet_blob trainers, composed of one class per responsibility.

* :class:`LossVariantTrainer`: the loss swap (:mod:`.loss_swap`) and lesion-wise metrics at nnU-Net's final
  validation (:mod:`.lesion_validation`). Concrete trainers (:mod:`.variants`) only choose a loss.
* :class:`InstanceTermTrainer`: the contract of an instance-aware trainer (see the package docstring): its
  :class:`~.instance_setup.InstanceSetup`, made once by ``prepare_instances()`` in ``initialize()``
  (:class:`~.instance_setup.InstanceSetupTrainer`); one hook for its loss,
  :meth:`~InstanceTermTrainer.build_instance_loss`; the online instance F1
  (:class:`~.lesion_validation.OnlineInstanceScore`) and the final validation scoring with the setup's
  connectivity.
* :class:`InstanceAwareTrainer`: the contract fulfilled with instance maps (:mod:`.instance_maps`: maps, datasets,
  pipelines). The CC-DiceCE trainers fulfil it with Voronoi cells (:class:`~.cells.CellAwareTrainer`).
"""
from __future__ import annotations

from typing import final

from torch import nn

from nnunet_blob.trainers.instance_maps import InstanceMapsTrainer
from nnunet_blob.trainers.instance_transforms import PackedInstancesLoss
from nnunet_blob.trainers.lesion_validation import FinalLesionWiseValidation, OnlineInstanceScore
from nnunet_blob.trainers.loss_swap import LossSwapTrainer


class LossVariantTrainer(FinalLesionWiseValidation, LossSwapTrainer):
    """nnU-Net's trainer with the loss inside its deep-supervision wrapper replaced (``build_inner_loss``), and
    lesion-wise metrics next to its final validation's ``summary.json``."""


class InstanceTermTrainer(OnlineInstanceScore, LossVariantTrainer):
    """A trainer whose loss receives instances: the contract its data source and its loss fulfil.

    A subclass supplies

    * ``prepare_instances()`` (the data source: instance maps, Voronoi cells, ...): the start-up step, run once by
      ``initialize()`` on every rank before nnU-Net builds the loss
      (:class:`~.instance_setup.InstanceSetupTrainer`); it may do heavy or collective work (rank 0 computing the
      instance maps while the other ranks wait) and returns the :class:`~.instance_setup.InstanceSetup`;
    * :meth:`build_instance_loss` (the loss): ``(output, target, instances) -> scalar`` for one output scale.

    and reads ``instance_setup`` (frozen) everywhere after the start-up step. What it may not do: override
    :meth:`build_inner_loss` or :meth:`lesion_connectivity`, or list another loss trainer (``GlobalTermTrainer``,
    ``nnUNetTrainerTopKDice``, ...) before this class among its bases; either would silently train another loss or
    score another definition of an instance, so the class is refused when it is defined.
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("build_inner_loss", "lesion_connectivity"):
            if getattr(cls, name) is not getattr(InstanceTermTrainer, name):
                owner = next(c for c in cls.__mro__ if name in vars(c))
                raise TypeError(
                    f"{cls.__name__}: its {name} is {owner.__qualname__}'s, not the instance-aware trainer's; "
                    f"an instance-aware trainer builds its loss in build_instance_loss and scores with "
                    f"instance_setup.connectivity. Do not override {name}, and list no other loss trainer before "
                    f"{InstanceTermTrainer.__name__} among the bases of {cls.__name__}.")

    # ---- the contract ---------------------------------------------------------------------------------------------

    def build_instance_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        """The loss ``(output, target, instances) -> scalar`` of one output scale, given the one nnU-Net built
        (``DC_and_CE_loss``/``DC_and_BCE_loss``, for a global term)."""
        raise NotImplementedError

    # ---- how the contract is used ---------------------------------------------------------------------------------

    @final
    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        """:meth:`build_instance_loss`, receiving the instances unpacked from the target (:attr:`instance_setup`)."""
        return PackedInstancesLoss(self.build_instance_loss(nnunet_loss), self.instance_setup.packing,
                                   self.label_manager.has_regions)

    @final
    def lesion_connectivity(self) -> int:
        """The final validation's connectivity: the instances', as the online F1's."""
        return self.instance_setup.connectivity


class InstanceAwareTrainer(InstanceMapsTrainer, InstanceTermTrainer):
    """Trains with instance maps: loaders and augmentation carry them to the loss (:class:`InstanceMapsTrainer`).

    Subclasses build a loss ``(output, target, instances) -> scalar`` in :meth:`build_instance_loss`.
    """
