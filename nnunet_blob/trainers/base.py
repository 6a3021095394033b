"""Shared plumbing of the nnunet_blob trainers. Concrete trainers (``variants.py``) only choose a loss.

* :class:`LossVariantTrainer`: ``_build_loss`` lets nnU-Net build its own loss (with its deep-supervision
  weights, batch Dice, ignore label, regions, compile settings) and swaps the loss *inside* nnU-Net's
  ``DeepSupervisionWrapper`` for ``self.build_inner_loss(nnunet_loss)``. Nothing of nnU-Net's body is repeated.
* :class:`InstanceAwareTrainer`: instance maps carried through nnU-Net's loader and augmentation
  (:mod:`.instance_data`, :mod:`.instance_transforms`), a loss that receives them, and an online instance F1
  on the validation patches, logged per epoch and plotted in ``progress_instances.png`` next to nnU-Net's
  ``progress.png``.
"""
from __future__ import annotations

import contextlib
import json
from os.path import join

import numpy as np
import torch
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_blob.trainers.instance_data import InstanceDataset
from nnunet_blob.trainers.instance_sampling import region_groups
from nnunet_blob.trainers.instance_transforms import make_instance_aware, unpack_instances
from nnunet_blob.trainers.online_detection import COUNT_KEYS, batch_detection_counts, f1_from_counts

INSTANCE_F1_KEY = "instance_f1"


class LossVariantTrainer(nnUNetTrainer):
    """nnU-Net's trainer with the loss inside nnU-Net's deep-supervision wrapper replaced."""

    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        """The loss for one output scale, given the one nnU-Net built (``DC_and_CE_loss``/``DC_and_BCE_loss``)."""
        return nnunet_loss

    def _build_loss(self):
        loss = super()._build_loss()
        if isinstance(loss, DeepSupervisionWrapper):
            loss.loss = self.build_inner_loss(loss.loss)
            return loss
        return self.build_inner_loss(loss)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation, then the lesion-wise metrics next to its ``summary.json``."""
        super().perform_actual_validation(save_probabilities)
        if self.local_rank != 0:
            return
        from nnunet_blob.evaluation.folder import evaluate_validation_folder
        from nnunetv2.configuration import default_num_processes

        summary = evaluate_validation_folder(join(self.output_folder, "validation"),
                                             join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                                             self.dataset_json, self.plans_manager.plans,
                                             num_processes=default_num_processes)
        pooled = json.loads(summary.read_text())["pooled_instances"]
        scores = {k: {m: round(v[m], 4) for m in ("F1", "IS", "IP")} for k, v in pooled.items()}
        self.print_to_log_file(f"nnunet_blob: lesion-wise validation metrics (pooled over cases) {scores}; "
                               f"per case in {summary}")


class PackedInstancesLoss(nn.Module):
    """Adapter for nnU-Net's ``loss(output, target)`` calls: the instance maps ride in the last target channels."""

    def __init__(self, loss: nn.Module, num_instance_channels: int, regions: bool):
        super().__init__()
        self.loss, self.num_instance_channels, self.regions = loss, num_instance_channels, regions

    def forward(self, output: torch.Tensor, packed_target: torch.Tensor) -> torch.Tensor:
        target, instances = unpack_instances(packed_target, self.num_instance_channels, as_bool=self.regions)
        return self.loss(output, target, instances)


class InstanceAwareTrainer(LossVariantTrainer):
    """Trains with instance maps: loaders, augmentation and deep supervision carry them to the loss.

    Subclasses build a loss ``(output, target, instances) -> scalar`` in :meth:`build_instance_loss`.
    """

    #: connectivity of the connected components (instance maps and online detection score)
    instance_connectivity = 26
    #: None: nnU-Net's foreground sampling. A number: forced-foreground patches are centred on an instance drawn
    #: with probability ~ size ** exponent (0 = uniform over instances, 1 = nnU-Net's voxel-uniform behaviour)
    instance_sampling_exponent = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._ensure_logging_key()

    # ---- the loss ---------------------------------------------------------------------------------------------
    def build_instance_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        raise NotImplementedError

    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        return PackedInstancesLoss(self.build_instance_loss(nnunet_loss), self.num_instance_channels,
                                   self.label_manager.has_regions)

    @property
    def num_instance_channels(self) -> int:
        return len(self.label_manager.foreground_regions) if self.label_manager.has_regions else 1

    # ---- data: instance maps beside the segmentation ------------------------------------------------------------
    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        exponent = self.instance_sampling_exponent
        regions = self.label_manager.has_regions
        if regions and exponent is None:  # region instances are labelled on each patch (RegionInstances)
            return dataset_tr, dataset_val
        maps = self._instance_maps()
        if exponent is not None:
            self.print_to_log_file(f"nnunet_blob: instance-balanced foreground sampling, weight ~ size ** {exponent}"
                                   + (" (components of each region)" if regions else ""))
        if regions:  # sampling only: the segmentation stays as nnU-Net loads it
            groups = region_groups(self.label_manager.foreground_regions)
            return tuple(InstanceDataset(d, None, maps.region_table, exponent, groups)
                         for d in (dataset_tr, dataset_val))
        return tuple(InstanceDataset(d, maps.open, maps.table, exponent) for d in (dataset_tr, dataset_val))

    def _instance_maps(self):
        """Find, check and (if missing or stale) compute this configuration's instance maps."""
        from nnunet_blob.preprocessing import ensure_instance_maps

        def ensure():
            return ensure_instance_maps(self.plans_manager.dataset_name, self.plans_manager.plans_name,
                                        self.configuration_name, connectivity=self.instance_connectivity,
                                        log=self.print_to_log_file)

        if not self.is_ddp:
            return ensure()
        if self.local_rank == 0:  # one worker computes, the others wait and then only read
            maps = ensure()
        torch.distributed.barrier()
        return maps if self.local_rank == 0 else ensure()

    def _instance_pipeline(self, pipeline):
        regions = self.label_manager.foreground_regions if self.label_manager.has_regions else None
        return make_instance_aware(pipeline, None if regions is None else len(regions), self.instance_connectivity)

    def get_training_transforms(self, *args, **kwargs):
        return self._instance_pipeline(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs):
        return self._instance_pipeline(super().get_validation_transforms(*args, **kwargs))

    # ---- validation: nnU-Net's step on the plain target, plus the online instance score --------------------------
    def validation_step(self, batch: dict) -> dict:
        packed = batch["target"]
        packed = [t.to(self.device, non_blocking=True) for t in packed] if isinstance(packed, list) else \
            packed.to(self.device, non_blocking=True)
        target, instances = unpack_instances(packed, self.num_instance_channels, self.label_manager.has_regions)
        captured = {}
        full_loss = self.loss

        def loss_on_packed_target(output, _plain_target):
            captured["output"] = output
            return full_loss(output, packed)

        # nnU-Net's step zeroes the ignore label in its target in place: give it a copy
        plain = [t.clone() for t in target] if isinstance(target, list) else target.clone()
        with _replaced(self, "loss", loss_on_packed_target):
            result = super().validation_step({**batch, "target": plain})
        output, first_target, first_instances = captured["output"], target, instances
        if self.enable_deep_supervision:
            output, first_target, first_instances = output[0], target[0], instances[0]
        result["instance_counts"] = batch_detection_counts(
            output, first_target, first_instances, self.label_manager.has_regions, self.label_manager.ignore_label,
            self.instance_connectivity)
        return result

    def on_validation_epoch_end(self, val_outputs):
        counts = np.sum([o.pop("instance_counts") for o in val_outputs], axis=0)
        super().on_validation_epoch_end(val_outputs)
        if self.is_ddp:
            gathered = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, counts)
            counts = np.sum(gathered, axis=0)
        f1 = f1_from_counts(counts)
        self.logger.log(INSTANCE_F1_KEY, f1, self.current_epoch)
        totals = dict(zip(COUNT_KEYS, counts.sum(0).tolist()))
        self.print_to_log_file(f"Online instance F1 (validation patches): {np.round(f1, 4)} {totals}")

    def on_epoch_end(self):
        super().on_epoch_end()
        if self.local_rank == 0:
            _plot_instance_progress(self.logger, self.output_folder)

    # ---- logging key survives checkpoints of older runs ----------------------------------------------------------
    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._ensure_logging_key()

    def _ensure_logging_key(self):
        logs = self.logger.local_logger.my_fantastic_logging
        if INSTANCE_F1_KEY not in logs:
            logs[INSTANCE_F1_KEY] = [float("nan")] * len(logs["val_losses"])


@contextlib.contextmanager
def _replaced(obj, name, value):
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def _plot_instance_progress(logger, output_folder: str) -> None:
    """``progress_instances.png``: online instance F1 next to nnU-Net's pseudo Dice, per epoch."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    f1 = logger.get_value(INSTANCE_F1_KEY, step=None)
    dice = logger.get_value("mean_fg_dice", step=None)
    epochs = min(len(f1), len(dice))
    fig, ax = plt.subplots(figsize=(12, 6))
    ax.plot(range(epochs), f1[:epochs], color="tab:purple", lw=2, label="instance F1 (validation patches)")
    ax.plot(range(epochs), dice[:epochs], color="g", ls="dotted", lw=2, label="pseudo Dice")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("nnunet_blob: online instance detection")
    fig.tight_layout()
    fig.savefig(join(output_folder, "progress_instances.png"))
    plt.close(fig)
