"""The instance data of a trainer: the maps beside nnU-Net's data, the datasets and pipelines that carry them.

* the maps: found, checked and (when missing or stale) computed at the start of training with the connectivity they
  were made with (:func:`nnunet_blob.preprocessing.ensure_instance_maps`); under DDP rank 0 computes while the
  other ranks wait, then only check them (:func:`~.rank_zero.after_rank_zero`);
* the datasets: nnU-Net's, wrapped so that each crop carries its instance map (:mod:`.instance_data`), optionally
  with instance-balanced foreground sampling (:mod:`.instance_sampling`);
* the pipelines: nnU-Net's training and validation transforms made instance-aware (:mod:`.instance_transforms`);
* the packing of the maps into the targets (:class:`~.instance_transforms.InstancePacking`): one int16 channel per
  map, or two for a dataset whose manifest counts more than 32767 instances in a case (read when the maps are
  prepared, before the pipelines are built; region-based datasets, whose instances are the components of the
  augmented patch, take two already from 16384 instances per case, as augmentation can split a component).
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_blob.trainers.instance_data import InstanceDataset, id_channels_for
from nnunet_blob.trainers.instance_sampling import region_groups
from nnunet_blob.trainers.instance_transforms import InstancePacking, make_instance_aware
from nnunet_blob.trainers.rank_zero import after_rank_zero


class InstanceMapsTrainer(nnUNetTrainer):
    """Loaders and augmentation that carry instance maps to the loss (packed into the target's last channels)."""

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
    def instance_packing(self) -> InstancePacking:
        """How the maps ride in the targets; the loss and the validation step share this object, whose id channels
        are set when the maps are prepared (:meth:`instance_maps`)."""
        if getattr(self, "_instance_packing", None) is None:
            self._instance_packing = InstancePacking(self.num_instance_channels)
        return self._instance_packing

    @property
    def reads_instance_maps(self) -> bool:
        """Region instances are labelled on each patch: their maps are only read for instance sampling."""
        return not self.label_manager.has_regions or self.instance_sampling_exponent is not None

    @property
    def online_connectivity(self) -> int:
        """The connectivity of the instances: the maps' (as ``nnunet_blob preprocess`` made them, or as this trainer
        asked for them)."""
        connectivity = self.instance_maps().connectivity
        assert connectivity is not None, "instance maps without a connectivity in their manifest"
        return connectivity

    def instance_maps(self):
        """This configuration's instance map store, found, checked and (if missing or stale) computed once."""
        if getattr(self, "_instance_store", None) is None:
            from nnunet_blob.preprocessing import ensure_instance_maps

            def ensure(write: bool):
                return ensure_instance_maps(self.plans_manager.dataset_name, self.plans_manager.plans_name,
                                            self.configuration_name, connectivity=self.instance_connectivity,
                                            write=write, log=self.print_to_log_file)

            store = after_rank_zero(lambda: ensure(True), lambda: ensure(False), log=self.print_to_log_file)
            largest = store.max_instances * (2 if self.label_manager.has_regions else 1)
            self.instance_packing.id_channels = id_channels_for(largest)
            if not self.label_manager.has_regions:  # ids of the maps, renumbered 1..n per case: a sound bound
                self.instance_packing.max_id = store.max_instances
            if self.instance_packing.id_channels > 1:
                self.print_to_log_file(f"nnunet_blob: up to {store.max_instances} instances in a case: instance ids "
                                       f"ride in two int16 channels and reach the loss as int32")
            self._instance_store = store
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
        id_channels = self.instance_packing.id_channels
        return tuple(InstanceDataset(d, maps.open, maps.table, exponent, id_channels=id_channels)
                     for d in (dataset_tr, dataset_val))

    def _instance_pipeline(self, pipeline):
        self.instance_maps()  # the id channels
        id_channels = self.instance_packing.id_channels
        if not self.label_manager.has_regions:
            return make_instance_aware(pipeline, id_channels=id_channels, max_id=self.instance_packing.max_id)
        return make_instance_aware(pipeline, len(self.label_manager.foreground_regions), self.online_connectivity,
                                   id_channels)

    def get_training_transforms(self, *args, **kwargs):
        return self._instance_pipeline(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs):
        return self._instance_pipeline(super().get_validation_transforms(*args, **kwargs))
