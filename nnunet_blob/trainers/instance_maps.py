"""The instance data of a trainer: the maps beside nnU-Net's data, the datasets and pipelines that carry them.

* the maps: found, checked and (when missing or stale) computed in the trainer's start-up step
  (:meth:`InstanceMapsTrainer.prepare_instances`, run by ``initialize()``) with the connectivity they were made
  with (:func:`nnunet_blob.preprocessing.ensure_instance_maps`); under DDP rank 0 computes while the other ranks
  wait, then only check them (:func:`~.rank_zero.after_rank_zero`);
* the datasets: nnU-Net's, wrapped so that each crop carries its instance map (:mod:`.instance_data`), optionally
  with instance-balanced foreground sampling (:mod:`.instance_sampling`);
* the pipelines: nnU-Net's training and validation transforms made instance-aware (:mod:`.instance_transforms`);
* the packing of the maps into the targets (:class:`~.instance_transforms.InstancePacking`): one int16 channel per
  map, or two for a dataset whose manifest counts more than 32767 instances in a case (read in the start-up step,
  before the loss is built; region-based datasets, whose instances are the components of the augmented patch, take
  two already from 16384 instances per case, as augmentation can split a component).
"""
from __future__ import annotations

from nnunet_blob.trainers.instance_data import InstanceDataset, id_channels_for
from nnunet_blob.trainers.instance_sampling import region_groups
from nnunet_blob.trainers.instance_setup import InstanceSetup, InstanceSetupTrainer
from nnunet_blob.trainers.instance_transforms import InstancePacking, make_instance_aware
from nnunet_blob.trainers.rank_zero import after_rank_zero


class InstanceMapsTrainer(InstanceSetupTrainer):
    """Loaders and augmentation that carry instance maps to the loss (packed into the target's last channels): the
    data source of :class:`~nnunet_blob.trainers.base.InstanceAwareTrainer`, which runs :meth:`prepare_instances`
    once in ``initialize()`` and holds its result as ``instance_setup``."""

    #: connectivity of the instance maps; None: the existing maps' own (26 for new ones). A number that differs
    #: from the existing maps' recomputes them
    instance_connectivity: int | None = None
    #: None: nnU-Net's foreground sampling. A number: forced-foreground patches are centred on an instance drawn
    #: with probability ~ size ** exponent (0 = uniform over instances, 1 = nnU-Net's voxel-uniform behaviour)
    instance_sampling_exponent: float | None = None

    @property
    def num_instance_channels(self) -> int:
        """Instance maps after the segmentation in each target: one, or one per region."""
        return len(self.label_manager.foreground_regions) if self.label_manager.has_regions else 1

    @property
    def reads_instance_maps(self) -> bool:
        """Region instances are labelled on each patch: their maps are only read for instance sampling."""
        return not self.label_manager.has_regions or self.instance_sampling_exponent is not None

    def prepare_instances(self) -> InstanceSetup:
        """The start-up step (run by ``initialize()`` on every rank): the maps found, checked or computed
        (:meth:`instance_maps`); their connectivity, and the id channels their manifest's largest instance count
        needs."""
        store = self.instance_maps()
        if store.connectivity is None:
            raise RuntimeError(f"the instance maps in {store.folder} have no connectivity in their manifest; "
                               f"recompute them with `nnunet_blob preprocess --overwrite`")
        largest = store.max_instances * (2 if self.label_manager.has_regions else 1)
        id_channels = id_channels_for(largest)
        if id_channels > 1:
            self.print_to_log_file(f"nnunet_blob: up to {store.max_instances} instances in a case: instance ids "
                                   f"ride in two int16 channels and reach the loss as int32")
        # label-based maps are renumbered 1..n per case: the largest count bounds every patch's ids; region instances
        # are labelled on each patch, without a bound known in advance
        max_id = None if self.label_manager.has_regions else store.max_instances
        return InstanceSetup(InstancePacking(self.num_instance_channels, id_channels, max_id), store.connectivity)

    def instance_maps(self):
        """This configuration's instance map store, found, checked and (if missing or stale) computed on the first
        call. Collective under DDP (rank 0 computes while the other ranks wait): every rank calls it, in the
        start-up step."""
        if getattr(self, "_instance_store", None) is None:
            from nnunet_blob.preprocessing import ensure_instance_maps

            def ensure(write: bool):
                return ensure_instance_maps(self.plans_manager.dataset_name, self.plans_manager.plans_name,
                                            self.configuration_name, connectivity=self.instance_connectivity,
                                            write=write, log=self.print_to_log_file)

            self._instance_store = after_rank_zero(lambda: ensure(True), lambda: ensure(False),
                                                   log=self.print_to_log_file)
        return self._instance_store

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        if not self.reads_instance_maps:
            return dataset_tr, dataset_val
        exponent = self.instance_sampling_exponent
        regions = self.label_manager.has_regions
        maps = self.instance_maps()
        if exponent is not None:
            self.print_to_log_file(f"nnunet_blob: instance-balanced foreground sampling, weight ~ size ** {exponent}"
                                   + (" (components of each region)" if regions else ""))
        if regions:  # sampling only: the segmentation stays as nnU-Net loads it
            groups = region_groups(self.label_manager.foreground_regions)
            return tuple(InstanceDataset(d, None, maps.region_table, exponent, groups)
                         for d in (dataset_tr, dataset_val))
        id_channels = self.instance_setup.packing.id_channels
        return tuple(InstanceDataset(d, maps.open, maps.table, exponent, id_channels=id_channels)
                     for d in (dataset_tr, dataset_val))

    def _instance_pipeline(self, pipeline):
        setup = self.instance_setup
        id_channels = setup.packing.id_channels
        if not self.label_manager.has_regions:
            return make_instance_aware(pipeline, id_channels=id_channels, max_id=setup.packing.max_id)
        return make_instance_aware(pipeline, len(self.label_manager.foreground_regions), setup.connectivity,
                                   id_channels)

    def get_training_transforms(self, *args, **kwargs):
        return self._instance_pipeline(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs):
        return self._instance_pipeline(super().get_validation_transforms(*args, **kwargs))
