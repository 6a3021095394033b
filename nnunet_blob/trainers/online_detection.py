"""Online instance detection score on the validation patches, scored while training goes on.

A reference instance is detected when the prediction overlaps it by at least one voxel, a predicted connected
component is correct when it overlaps the reference (F. Kofler et al., "blob loss: instance imbalance aware loss
functions for semantic segmentation", IPMI 2023, section 2.5; :mod:`nnunet_blob.instances.detection`). Counts are
pooled over all patches of an epoch.

The work is split where it is cheapest: the predicted labels are taken on the device (:func:`predicted_labels`,
the argmax nnU-Net's pseudo Dice takes anyway, or its ``sigmoid > 0.5`` region masks) and cross to the host once
as uint8 (:func:`labels_to_host`); the reference (the target and the patch's instance ids) is on the host
already, as the loader delivered it. The connected components and counts (:func:`patch_detection_counts`) run on
the host, in a background thread (:class:`BackgroundScorer`) so that they overlap the next batch's forward pass.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from nnunet_blob.instances.detection import COUNT_KEYS, detection_counts, label_components

__all__ = ["COUNT_KEYS", "predicted_labels", "labels_to_host", "patch_detection_counts", "BackgroundScorer"]


def predicted_labels(output: torch.Tensor, regions: bool) -> torch.Tensor:
    """The prediction nnU-Net's pseudo Dice scores: argmax labels (B, 1, ...) of softmax logits, or the region
    masks ``sigmoid(output) > 0.5`` (B, R, ...) of region logits. Stays on the device of ``output``."""
    return torch.sigmoid(output) > 0.5 if regions else output.argmax(1, keepdim=True)


def labels_to_host(labels: torch.Tensor, num_channels: int) -> np.ndarray:
    """One small copy to the host, converted on the device first: uint8 (int16 for more than 256 output
    channels)."""
    return labels.to(torch.uint8 if num_channels <= 256 else torch.int16).cpu().numpy()


def patch_detection_counts(predicted: np.ndarray, target: np.ndarray, instances: np.ndarray, num_rows: int,
                           regions: bool, ignore_label: int | None, connectivity: int) -> np.ndarray:
    """int64 (num_rows, 4) detection counts (:data:`COUNT_KEYS`) of a batch of patches, per class or region.

    Args:
        predicted: (B, 1, ...) predicted labels, or (B, R, ...) region masks (:func:`predicted_labels`).
        target: (B, 1, ...) reference labels, or (B, R[+1], ...) region masks, the last channel the ignore mask when
            the dataset has an ignore label (nnU-Net's region target).
        instances: (B, 1, ...) or (B, R, ...) instance ids of the reference (0 = none), unique within a patch:
            the reference instances are the ids on the reference's voxels.
        num_rows: foreground classes (labels 1..num_rows) or regions.
        ignore_label: the ignore label (label-based), or anything not None for a region dataset with one; ignored
            voxels belong to neither the reference nor the prediction.
        connectivity: 3D connectivity of the predicted components (6, 18, 26; 2D patches use its 2D counterpart).
    """
    counts = np.zeros((num_rows, len(COUNT_KEYS)), dtype=np.int64)
    for b in range(predicted.shape[0]):
        if regions:
            valid = None if ignore_label is None else ~target[b, -1].astype(bool)
        else:
            valid = None if ignore_label is None else target[b, 0] != ignore_label
        for row in range(num_rows):
            if regions:
                pred, ref, ids = predicted[b, row].astype(bool), target[b, row].astype(bool), instances[b, row]
            else:
                pred, ref, ids = predicted[b, 0] == row + 1, target[b, 0] == row + 1, instances[b, 0]
            if valid is not None:
                pred, ref = pred & valid, ref & valid
            components, _ = label_components(pred, connectivity)
            counts[row] += detection_counts(np.where(ref, ids, 0), components)
    return counts


class BackgroundScorer:
    """Scores batches with :func:`patch_detection_counts` in one background thread; ``submit`` returns a future of
    the counts. The arrays handed over must not be changed afterwards (the loader's batches are fresh)."""

    def __init__(self, num_rows: int, regions: bool, ignore_label: int | None, connectivity: int):
        self.options: dict[str, Any] = {"num_rows": num_rows, "regions": regions, "ignore_label": ignore_label,
                        "connectivity": connectivity}
        self._executor: ThreadPoolExecutor | None = None

    def submit(self, predicted: np.ndarray, target: np.ndarray, instances: np.ndarray) -> Future:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nnunet_blob_online_detection")
        return self._executor.submit(patch_detection_counts, predicted, target, instances, **self.options)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
