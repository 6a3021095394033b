"""Lesion-wise validation: an online instance F1 on the validation patches every epoch, and the lesion-wise
metrics of nnU-Net's final validation.

* :class:`FinalLesionWiseValidation`: after nnU-Net's ``perform_actual_validation`` (its ``summary.json``), the
  lesion-wise metrics of the same predictions, ``validation/summary_instances.json``.
* :class:`OnlineInstanceScore`: nnU-Net's validation step (same loss, same pseudo-Dice counts) plus the
  detection counts of each validation batch (:mod:`.online_detection`), the instance F1 logged per epoch next to
  nnU-Net's pseudo Dice and plotted in ``progress_instances.png`` beside nnU-Net's ``progress.png``; and
  ``checkpoint_best_instances.pth``, kept by the exponential moving average of that F1 the way nnU-Net keeps
  ``checkpoint_best.pth`` by the moving average of its pseudo Dice.
"""
from __future__ import annotations

import json
from os.path import join
from pathlib import Path

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.instances.detection import COUNT_KEYS, instance_scores
from nnunet_blob.nnunet_internals import (
    autocast_like_nnunet,
    logged_values,
    save_checkpoint_of_epoch,
    validation_tp_fp_fn,
)
from nnunet_blob.trainers.instance_setup import InstanceSetupTrainer
from nnunet_blob.trainers.instance_transforms import unpack_instances
from nnunet_blob.trainers.online_detection import BackgroundScorer, labels_to_host, predicted_labels

#: logger key of the online instance F1 (one value per epoch, saved in nnU-Net's checkpoints)
INSTANCE_F1_KEY = "instance_f1"
#: logger key of its exponential moving average (:func:`moving_average`)
INSTANCE_F1_EMA_KEY = "ema_instance_f1"
#: the checkpoint of the epoch with the best moving average of the online instance F1
BEST_INSTANCES_CHECKPOINT = "checkpoint_best_instances.pth"
#: the connectivity of the final validation's lesion-wise metrics for trainers without instances (``nnunet_blob
#: evaluate``'s default)
DEFAULT_LESION_CONNECTIVITY = EvaluationOptions.connectivity
#: key of a validation step's detection counts (a future of the background scorer)
_COUNTS = "instance_counts"


class FinalLesionWiseValidation(nnUNetTrainer):
    """nnU-Net's final validation, then the lesion-wise metrics next to its ``summary.json``."""

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0:
            self.write_lesion_wise_metrics()

    def lesion_connectivity(self) -> int:
        """The connectivity of the lesion-wise metrics: ``nnunet_blob evaluate``'s default (26) here; an
        instance-aware trainer's instances' (:class:`~.instance_setup.InstanceSetup`), the one its online F1 uses."""
        return DEFAULT_LESION_CONNECTIVITY

    def write_lesion_wise_metrics(self) -> Path:
        """``validation/summary_instances.json``: the lesion-wise metrics of the predictions nnU-Net's final
        validation wrote, with :meth:`lesion_connectivity`; returns the file."""
        from nnunet_blob.evaluation.folder import evaluate_validation_folder
        from nnunet_blob.workers import default_num_processes

        connectivity = self.lesion_connectivity()
        summary = evaluate_validation_folder(join(self.output_folder, "validation"),
                                             join(self.preprocessed_dataset_folder_base, "gt_segmentations"),
                                             self.dataset_json, self.plans_manager.plans,
                                             num_processes=default_num_processes(), connectivity=connectivity)
        pooled = json.loads(summary.read_text())["pooled_instances"]
        scores = {k: {m: round(v[m], 4) for m in ("F1", "IS", "IP")} for k, v in pooled.items()}
        self.print_to_log_file(f"nnunet_blob: lesion-wise validation metrics ({connectivity}-connectivity, pooled "
                               f"over cases) {scores}; per case in {summary}")
        return summary


def moving_average(previous: float, value: float) -> float:
    """nnU-Net's moving average of its pseudo Dice, ``0.9 * previous + 0.1 * value`` (the first value as it is),
    for the online instance F1: an epoch whose F1 is undefined (no instance in any validation patch) keeps the
    previous average."""
    if np.isnan(value):
        return previous
    if np.isnan(previous):
        return value
    return 0.9 * previous + 0.1 * value


def moving_averages(values) -> list[float]:
    """The moving average after each epoch of a list of per-epoch values."""
    out, current = [], float("nan")
    for value in values:
        current = moving_average(current, float(value))
        out.append(current)
    return out


def _to(target, device):
    return [t.to(device, non_blocking=True) for t in target] if isinstance(target, list) else \
        target.to(device, non_blocking=True)


class OnlineInstanceScore(InstanceSetupTrainer):
    """Online instance F1 on the validation patches. The batches' targets carry the instance maps in their last
    channels, laid out as ``instance_setup.packing`` says; predicted components are labelled with
    ``instance_setup.connectivity`` (:class:`~.instance_setup.InstanceSetup`, made by the trainer's start-up step:
    :class:`~nnunet_blob.trainers.base.InstanceTermTrainer`)."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self._scorer: BackgroundScorer | None = None
        self._best_instance_ema: float | None = None
        self._ensure_logging_key()

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step on the packed target, one forward pass: the loss, nnU-Net's pseudo-Dice counts
        (:func:`~nnunet_blob.nnunet_internals.validation_tp_fp_fn`) and, in the background, the detection counts."""
        host_target = batch["target"]
        data = batch["data"].to(self.device, non_blocking=True)
        target = _to(host_target, self.device)
        with autocast_like_nnunet(self.device):
            output = self.network(data)
            del data
            loss = self.loss(output, target)
        if self.enable_deep_supervision:  # scores on the highest resolution only, as nnU-Net's
            output, target, host_target = output[0], target[0], host_target[0]
        regions = self.label_manager.has_regions
        packing = self.instance_setup.packing
        target, _ = unpack_instances(target, packing, as_bool=regions)
        labels = predicted_labels(output, regions)
        result = {"loss": loss.detach().cpu().numpy(),
                  **validation_tp_fp_fn(output, target, self.label_manager, predicted=labels)}
        reference, instances = unpack_instances(host_target.cpu(), packing, as_bool=regions)
        reference_np = reference.numpy()
        result[_COUNTS] = self._online_scorer().submit(labels_to_host(labels, output.shape[1]), reference_np,
                                                       self.online_reference_ids(reference_np, instances.numpy()))
        return result

    def online_reference_ids(self, reference: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """The reference instance ids of a batch, (B, 1, ...) or (B, R, ...) per region, from the maps its targets
        carry: here they are the instance maps themselves."""
        return maps

    def _online_scorer(self) -> BackgroundScorer:
        if self._scorer is None:
            regions = self.label_manager.has_regions
            rows = len(self.label_manager.foreground_regions) if regions else \
                self.label_manager.num_segmentation_heads - 1
            self._scorer = BackgroundScorer(rows, regions, self.label_manager.ignore_label,
                                            self.instance_setup.connectivity)
        return self._scorer

    def on_validation_epoch_end(self, val_outputs):
        counts = np.sum([o.pop(_COUNTS).result() for o in val_outputs], axis=0)
        super().on_validation_epoch_end(val_outputs)
        if self.is_ddp:
            gathered: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, counts)
            counts = np.sum(gathered, axis=0)
        f1 = instance_scores(counts)["F1"]
        epoch = self.current_epoch
        self.logger.log(INSTANCE_F1_KEY, f1, epoch)
        previous = logged_values(self.logger)[INSTANCE_F1_EMA_KEY][epoch - 1] if epoch > 0 else float("nan")
        self.logger.log(INSTANCE_F1_EMA_KEY, moving_average(previous, f1), epoch)
        totals = dict(zip(COUNT_KEYS, counts.sum(0).tolist(), strict=True))
        self.print_to_log_file(f"Online instance F1 (validation patches): {np.round(f1, 4)} {totals}")

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()  # nnU-Net's checkpoints, then the next epoch's number
        if self.local_rank == 0:
            plot_instance_progress(self.logger, self.output_folder)
        self._keep_best_instances_checkpoint(epoch)

    def _keep_best_instances_checkpoint(self, epoch: int) -> None:
        """``checkpoint_best_instances.pth`` when the moving average of the online instance F1 of ``epoch`` beats
        every earlier one (as nnU-Net's ``checkpoint_best.pth`` with its moving average of the pseudo Dice)."""
        ema = logged_values(self.logger)[INSTANCE_F1_EMA_KEY][epoch]
        if np.isnan(ema) or (self._best_instance_ema is not None and not ema > self._best_instance_ema):
            return
        self._best_instance_ema = float(ema)
        self.print_to_log_file(f"nnunet_blob: new best EMA instance F1 {np.round(ema, 4)}: "
                               f"{BEST_INSTANCES_CHECKPOINT}")
        save_checkpoint_of_epoch(self, join(self.output_folder, BEST_INSTANCES_CHECKPOINT), epoch)

    def on_train_end(self):
        super().on_train_end()
        if self._scorer is not None:
            self._scorer.close()

    # the logging keys survive checkpoints of runs that did not log them; the best moving average is the largest
    # one logged so far
    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._ensure_logging_key()
        averages = np.asarray(logged_values(self.logger)[INSTANCE_F1_EMA_KEY], dtype=np.float64)
        self._best_instance_ema = float(np.nanmax(averages)) if np.isfinite(averages).any() else None

    def _ensure_logging_key(self):
        logs = logged_values(self.logger)
        if INSTANCE_F1_KEY not in logs:
            logs[INSTANCE_F1_KEY] = [float("nan")] * len(logs["val_losses"])
        if INSTANCE_F1_EMA_KEY not in logs:
            logs[INSTANCE_F1_EMA_KEY] = moving_averages(logs[INSTANCE_F1_KEY])


def plot_instance_progress(logger, output_folder: str) -> None:
    """``progress_instances.png``: online instance F1 and its moving average next to nnU-Net's pseudo Dice, per
    epoch."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    f1 = logger.get_value(INSTANCE_F1_KEY, step=None)
    ema = logger.get_value(INSTANCE_F1_EMA_KEY, step=None)
    dice = logger.get_value("mean_fg_dice", step=None)
    epochs = min(len(f1), len(dice), len(ema))
    fig, ax = plt.subplots(figsize=(12, 6))
    ax.plot(range(epochs), f1[:epochs], color="tab:purple", ls="dotted", lw=2,
            label="instance F1 (validation patches)")
    ax.plot(range(epochs), ema[:epochs], color="tab:purple", lw=3,
            label=f"instance F1 (mov. avg.; best: {BEST_INSTANCES_CHECKPOINT})")
    ax.plot(range(epochs), dice[:epochs], color="g", ls="dotted", lw=2, label="pseudo Dice")
    ax.set_xlabel("epoch")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("nnunet_blob: online instance detection")
    fig.tight_layout()
    fig.savefig(join(output_folder, "progress_instances.png"))
    plt.close(fig)
