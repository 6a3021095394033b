"""What an instance-aware trainer supplies to its loss, its online score and its final validation.

One frozen value, :class:`InstanceSetup`, made once by the trainer's start-up step
(:meth:`InstanceSetupTrainer.prepare_instances`, run by ``initialize()`` before nnU-Net builds the loss) and read,
never changed, by everything after it (:attr:`InstanceSetupTrainer.instance_setup`).
"""
from __future__ import annotations

from dataclasses import dataclass

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.trainers.instance_transforms import InstancePacking


@dataclass(frozen=True)
class InstanceSetup:
    """The instances of an instance-aware trainer.

    Attributes:
        packing: how the instance ids ride in the target's last channels (:class:`InstancePacking`); the loss
            (:class:`~.instance_transforms.PackedInstancesLoss`), the pipelines and the validation step unpack
            them this way.
        connectivity: the 3D connectivity (6, 18 or 26; 2D uses its 2D counterpart) of the reference instances
            (the instance maps' connectivity, or the components whose Voronoi cells the CC trainers carry) and of
            the predicted components in both instance scores: the online F1 on the validation patches and the
            lesion-wise metrics of the final validation (``validation/summary_instances.json``). One definition
            of an instance for every number the trainer reports.
    """

    packing: InstancePacking
    connectivity: int

    def __post_init__(self):
        if not isinstance(self.packing, InstancePacking):
            raise TypeError(f"InstanceSetup.packing must be an InstancePacking, got {type(self.packing).__name__}")
        if self.connectivity not in CONNECTIVITIES:
            raise ValueError(f"InstanceSetup.connectivity must be one of {CONNECTIVITIES} (3D neighbourhoods), "
                             f"got {self.connectivity!r}")

    def describe(self) -> str:
        """One log line: the connectivity and the packing."""
        ids = "one int16 channel" if self.packing.id_channels == 1 else \
            f"{self.packing.id_channels} int16 channels (int32 ids)"
        return (f"{self.packing.maps} instance map(s) per target, each id in {ids}; {self.connectivity}-connected "
                f"instances in the loss's data, the online F1 and the final validation")


class InstanceSetupTrainer(nnUNetTrainer):
    """Makes the :class:`InstanceSetup` once, in ``initialize()``, and holds it (read-only :attr:`instance_setup`).

    The data source (instance maps, Voronoi cells, ...) implements :meth:`prepare_instances`. ``initialize()`` runs
    it on every rank of a DDP run before nnU-Net builds the loss, so it is the place for heavy and collective work;
    reading :attr:`instance_setup` (and its shorthands) afterwards does none.
    """

    _instance_setup: InstanceSetup | None = None

    def prepare_instances(self) -> InstanceSetup:
        """The start-up step: make the instances available and say how they ride in the targets."""
        raise NotImplementedError

    def initialize(self):
        if not self.was_initialized and self._instance_setup is None:
            setup = self.prepare_instances()
            if not isinstance(setup, InstanceSetup):
                raise TypeError(f"{type(self).__name__}.prepare_instances must return an InstanceSetup, got "
                                f"{type(setup).__name__}")
            self._instance_setup = setup
            self.print_to_log_file(f"nnunet_blob: {setup.describe()}")
        super().initialize()

    @property
    def instance_setup(self) -> InstanceSetup:
        """The trainer's instances (packing, connectivity), made by :meth:`prepare_instances` in ``initialize()``."""
        if self._instance_setup is None:
            raise RuntimeError(f"{type(self).__name__}: its instance setup is made by initialize() (the start-up "
                               f"step, prepare_instances()); call trainer.initialize() first")
        return self._instance_setup

    @property
    def instance_packing(self) -> InstancePacking:
        """``instance_setup.packing``."""
        return self.instance_setup.packing

    @property
    def online_connectivity(self) -> int:
        """``instance_setup.connectivity``: the online F1's, and the final validation's."""
        return self.instance_setup.connectivity
