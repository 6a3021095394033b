"""Online instance detection score on validation patches (blob loss paper, conference version section 2.5).

A reference instance is detected when the prediction overlaps it by at least one voxel (instance sensitivity,
IS); a predicted connected component is correct when it overlaps the reference (instance precision, IP);
F1 = 2 IS IP / (IS + IP). Counts are pooled over all patches of an epoch.
"""
from __future__ import annotations

import cc3d
import numpy as np
import torch

#: keys of the per-patch counts, pooled over an epoch
COUNT_KEYS = ("ref_instances", "ref_detected", "pred_components", "pred_correct")


def detection_counts(pred: np.ndarray, ref_ids: np.ndarray, ref_mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """[reference instances, detected ones, predicted components, correct ones] of one binary map.

    ``pred`` and ``ref_mask`` are boolean, ``ref_ids`` the reference instance ids (0 = none) inside ``ref_mask``.
    """
    if pred.ndim == 2:
        connectivity = 8 if connectivity in (18, 26) else 4
    components, num_components = cc3d.connected_components(pred.astype(np.uint8), connectivity=connectivity,
                                                           return_N=True)
    ids = np.unique(ref_ids[ref_ids > 0])
    detected = np.unique(ref_ids[(ref_ids > 0) & pred])
    correct = np.unique(components[ref_mask & (components > 0)])
    return np.array([ids.size, detected.size, num_components, correct.size], dtype=np.int64)


def batch_detection_counts(output: torch.Tensor, target: torch.Tensor, instances: torch.Tensor, regions: bool,
                           ignore_label=None, connectivity: int = 26) -> np.ndarray:
    """(classes or regions, 4) counts of a batch from network logits, targets and the patch instance maps."""
    output, target, instances = (t.detach().cpu() for t in (output, target, instances))
    if regions:
        predicted = (torch.sigmoid(output.float()) > 0.5).numpy()
        valid = None if not ignore_label else (target[:, -1:] == 0).numpy()
        reference = target[:, : output.shape[1]].numpy().astype(bool)
        channels = range(output.shape[1])
    else:
        labels = output.argmax(1, keepdim=True).numpy()
        valid = None if ignore_label is None else (target != ignore_label).numpy()
        channels = range(1, output.shape[1])
    counts = np.zeros((len(channels), len(COUNT_KEYS)), dtype=np.int64)
    for b in range(output.shape[0]):
        keep = True if valid is None else valid[b, 0]
        for row, c in enumerate(channels):
            if regions:
                pred, ref_mask, ids = predicted[b, c] & keep, reference[b, c] & keep, instances[b, c].numpy()
            else:
                pred, ref_mask = (labels[b, 0] == c) & keep, (target[b, 0] == c).numpy() & keep
                ids = instances[b, 0].numpy()
            counts[row] += detection_counts(pred, np.where(ref_mask, ids, 0), ref_mask, connectivity)
    return counts


def f1_from_counts(counts: np.ndarray) -> float:
    """Instance F1 over all classes from pooled counts; NaN when there is neither reference nor prediction."""
    ref, detected, pred, correct = np.asarray(counts).reshape(-1, 4).sum(0)
    if ref == 0 and pred == 0:
        return float("nan")
    sensitivity = detected / ref if ref else 0.0
    precision = correct / pred if pred else 0.0
    return 0.0 if sensitivity + precision == 0 else float(2 * sensitivity * precision / (sensitivity + precision))
