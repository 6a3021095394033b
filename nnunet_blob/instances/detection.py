"""Lesion-wise detection: which objects were found, and instance sensitivity, precision and F1.

The one definition used per case (``nnunet_blob evaluate``), pooled over cases (its summary) and online on the
validation patches during training, following F. Kofler et al., "blob loss: instance imbalance aware loss
functions for semantic segmentation" (IPMI 2023), section 2.5:

* a reference component is **detected** when the prediction overlaps it by at least one voxel;
* a predicted component is **true** when it overlaps the reference by at least one voxel;
* instance sensitivity ``IS = detected reference components / reference components``;
* instance precision ``IP = true predicted components / predicted components``;
* ``F1 = 2 IS IP / (IS + IP)``.

Sensitivity counts on reference components and precision on predicted ones (the WMH challenge convention): a
lesion split into two predicted blobs, or two lesions merged into one, is not punished twice.

Counts are kept as int64 rows ``[n_ref, ref_detected, n_pred, pred_correct]`` (:data:`COUNT_KEYS`); rows of
several cases, classes or patches are pooled by adding them, then scored with :func:`instance_scores`.
"""
from __future__ import annotations

import cc3d
import numpy as np

from nnunet_blob.instances.connectivity import cc3d_connectivity

#: the columns of a row of detection counts
COUNT_KEYS = ("n_ref", "ref_detected", "n_pred", "pred_correct")


def label_components(mask: np.ndarray, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """(ids 1..n of the connected components of a 2D or 3D binary mask, 0 outside; n).

    ``connectivity`` is a 3D neighbourhood (6, 18, 26), turned into 4 or 8 for 2D masks
    (:func:`~nnunet_blob.instances.connectivity.cc3d_connectivity`).
    """
    mask = np.asarray(mask)
    labels, n = cc3d.connected_components(np.ascontiguousarray(mask, dtype=np.uint8),
                                          connectivity=cc3d_connectivity(mask.ndim, connectivity), return_N=True)
    return labels, int(n)


def class_instances(instances: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """(ids 1..n of the objects of an instance map that lie in ``mask``, 0 elsewhere; n), as
    :func:`label_components` gives them: the objects of one class when ``mask`` is that class (every object lies
    in one class, so it is kept whole). Ids are renumbered in the order of the map's ids."""
    kept = np.where(np.asarray(mask, bool), np.asarray(instances), 0).astype(np.int64)
    if kept.min(initial=0) < 0:
        raise ValueError("instance ids must be >= 0 (0: no object)")
    largest = int(kept.max(initial=0))
    if largest < 1 << 24:  # a lookup table from the ids present to 1..n
        ids = np.flatnonzero(np.bincount(kept.ravel(), minlength=1)[1:]) + 1
        lookup = np.zeros(largest + 1, np.int64)
        lookup[ids] = np.arange(1, ids.size + 1)
        return lookup[kept], int(ids.size)
    ids = np.unique(kept[kept > 0])
    return np.where(kept > 0, np.searchsorted(ids, kept) + 1, 0), int(ids.size)


def overlap_detection(ref_labels: np.ndarray, pred_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the reference components the prediction overlaps, ids of the predicted components overlapping the
    reference), each sorted. Ids are > 0, 0 is background; they need not be consecutive."""
    ref_labels, pred_labels = np.asarray(ref_labels), np.asarray(pred_labels)
    if ref_labels.shape != pred_labels.shape:
        raise ValueError(f"reference components of shape {ref_labels.shape} and predicted components of shape "
                         f"{pred_labels.shape} must have one shape")
    both = (ref_labels > 0) & (pred_labels > 0)
    return np.unique(ref_labels[both]), np.unique(pred_labels[both])


def detection_counts(ref_labels: np.ndarray, pred_labels: np.ndarray) -> np.ndarray:
    """int64 ``[n_ref, ref_detected, n_pred, pred_correct]`` of two component (or instance id) maps.

    ``n_ref``/``n_pred`` count the distinct ids > 0 of each map, so instance maps with gaps in their ids (a patch
    of a case's map) count right.
    """
    ref_labels, pred_labels = np.asarray(ref_labels), np.asarray(pred_labels)
    ref_detected, pred_true = overlap_detection(ref_labels, pred_labels)
    n_ref = np.unique(ref_labels[ref_labels > 0]).size
    n_pred = np.unique(pred_labels[pred_labels > 0]).size
    return np.array([n_ref, ref_detected.size, n_pred, pred_true.size], dtype=np.int64)


def instance_scores(counts) -> dict[str, float]:
    """IS, IP and F1 of one row of counts, or of several rows pooled (added).

    IS is NaN without reference components, IP NaN without predicted components; F1 is NaN when there are neither,
    0 when there are only one of them or nothing was found (IS + IP = 0), else ``2 IS IP / (IS + IP)``.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape[-1:] != (len(COUNT_KEYS),):
        raise ValueError(f"detection counts are rows of {COUNT_KEYS}, got an array of shape {counts.shape}")
    n_ref, ref_detected, n_pred, pred_correct = (int(v) for v in counts.reshape(-1, len(COUNT_KEYS)).sum(0))
    sensitivity = ref_detected / n_ref if n_ref else float("nan")
    precision = pred_correct / n_pred if n_pred else float("nan")
    if n_ref == 0 and n_pred == 0:
        f1 = float("nan")
    elif n_ref == 0 or n_pred == 0 or sensitivity + precision == 0:
        f1 = 0.0
    else:
        f1 = 2 * sensitivity * precision / (sensitivity + precision)
    return {"IS": float(sensitivity), "IP": float(precision), "F1": float(f1)}
