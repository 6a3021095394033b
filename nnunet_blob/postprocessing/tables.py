"""Component tables: the metrics of every minimum component volume of one case from one labelling.

Removing the components below a volume ``v`` only removes whole predicted components, so every number of
``nnunet_blob evaluate`` except the surface-based ones follows from a table of the case's components, labelled
once: per evaluated predicted component its voxels, its voxels inside the reference and the volume of the
component the postprocessing measures; per reference component the largest such volume among the predicted
components touching it. Scoring a whole grid of volumes is then a few vectorised sums (:func:`grid_counts`).

The evaluated components are those of ``nnunet_blob evaluate``: the masks without the ignore label's voxels.
The postprocessing does not know the ignore label and measures the components of the full predicted mask; an
evaluated component lies inside exactly one of them (its *parent*) and goes when its parent goes.

:func:`metrics_of_counts` turns a row of counts into the metrics under ``nnunet_blob evaluate``'s names, with its
definitions (:func:`nnunet_blob.evaluation.metrics.label_metrics`; the instance part is
:func:`nnunet_blob.evaluation.metrics.instance_metrics` itself). ``tests/test_postprocessing_tables.py`` checks every
metric against ``label_metrics`` on the postprocessed masks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_blob.evaluation.metrics import instance_metrics
from nnunet_blob.instances.detection import label_components
from nnunet_blob.nnunet_internals import label_or_region_mask
from nnunet_blob.postprocessing.rules import voxel_volume

#: columns of :func:`grid_counts`
COUNT_COLUMNS = ("TP", "FP", "FN", "TN", "n_ref_instances", "TP_ref_instances", "n_pred_instances",
                 "TP_pred_instances")

#: the metrics of ``nnunet_blob evaluate`` that a component table gives exactly (all but the surface-based ones)
TABLE_METRICS = ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "sensitivity", "precision",
                 "n_ref_instances", "TP_ref_instances", "n_pred_instances", "TP_pred_instances", "FN_instances",
                 "FP_instances", "IS", "IP", "F1", "lesion_count_difference", "absolute_volume_difference_ml")


@dataclass(frozen=True)
class ComponentTable:
    """One case, one class or region: its components as the minimum volume acts on them."""

    pred_parent_volume: np.ndarray  # (n_pred,) mm³ of the postprocessed component each evaluated one lies in
    pred_voxels: np.ndarray  # (n_pred,) voxels of each evaluated predicted component
    pred_overlap: np.ndarray  # (n_pred,) of them inside the reference
    ref_reach: np.ndarray  # (n_ref,) largest parent volume of the predicted components touching it; -inf if none
    ref_volume: np.ndarray  # (n_ref,) mm³ of each reference component
    ref_voxels: int  # reference voxels (outside the ignore label)
    voxels: int  # voxels outside the ignore label
    voxel_volume: float  # mm³ (mm² in 2D)


def component_table(seg_ref: np.ndarray, seg_pred: np.ndarray, label_or_region, spacing: Sequence[float],
                    ignore_label: int | None = None, connectivity: int = 26) -> ComponentTable:
    """The table of one class or region of a spatial reference/prediction pair (2D or 3D, one shape)."""
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(f"reference shape {seg_ref.shape} != prediction shape {seg_pred.shape}")
    mask_pred_full = label_or_region_mask(seg_pred, label_or_region)
    mask_ref = label_or_region_mask(seg_ref, label_or_region)
    valid = None if ignore_label is None else seg_ref != ignore_label
    mask_pred = mask_pred_full if valid is None else mask_pred_full & valid
    if valid is not None:
        mask_ref = mask_ref & valid
    vol = voxel_volume(spacing)
    parents, _ = label_components(mask_pred_full, connectivity)
    parent_volume = np.bincount(parents.ravel()).astype(np.float64) * vol
    evaluated, n_pred = (parents, int(parents.max(initial=0))) if valid is None else \
        label_components(mask_pred, connectivity)
    pred_voxels = np.bincount(evaluated.ravel(), minlength=n_pred + 1)[1:]
    pred_overlap = np.bincount(evaluated[mask_ref], minlength=n_pred + 1)[1:]
    parent_of = np.zeros(n_pred + 1, dtype=np.int64)
    parent_of[evaluated[mask_pred]] = parents[mask_pred]
    pred_parent_volume = parent_volume[parent_of[1:]]
    ref_labels, n_ref = label_components(mask_ref, connectivity)
    ref_volume = np.bincount(ref_labels.ravel(), minlength=n_ref + 1)[1:].astype(np.float64) * vol
    ref_reach = np.full(n_ref + 1, -np.inf)
    both = (ref_labels > 0) & (evaluated > 0)
    np.maximum.at(ref_reach, ref_labels[both], pred_parent_volume[evaluated[both] - 1])
    voxels = int(valid.sum()) if valid is not None else int(seg_ref.size)
    return ComponentTable(pred_parent_volume, pred_voxels.astype(np.int64), pred_overlap.astype(np.int64),
                          ref_reach[1:], ref_volume, int(mask_ref.sum()), voxels, vol)


def grid_counts(table: ComponentTable, min_volumes: Sequence[float]) -> np.ndarray:
    """int64 (len(min_volumes), len(COUNT_COLUMNS)): the counts after removing the components below each volume."""
    v = np.asarray(min_volumes, dtype=np.float64)[:, None]
    kept = table.pred_parent_volume[None, :] >= v
    tp = (kept * table.pred_overlap).sum(1)
    fp = (kept * (table.pred_voxels - table.pred_overlap)).sum(1)
    fn = table.ref_voxels - tp
    tn = table.voxels - tp - fp - fn
    n_pred = kept.sum(1)
    pred_correct = (kept & (table.pred_overlap > 0)).sum(1)
    ref_detected = (table.ref_reach[None, :] >= v).sum(1)
    n_ref = np.full_like(n_pred, table.ref_reach.size)
    return np.stack([tp, fp, fn, tn, n_ref, ref_detected, n_pred, pred_correct], 1).astype(np.int64)


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def metrics_of_counts(counts: Sequence[int], voxel_volume_mm3: float) -> dict:
    """The metrics of :data:`TABLE_METRICS` of one row of :func:`grid_counts`, as ``label_metrics`` defines them."""
    tp, fp, fn, tn, n_ref, ref_detected, n_pred, pred_correct = (int(c) for c in counts)
    return {
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn), "IoU": _ratio(tp, tp + fp + fn),
        "TP": tp, "FP": fp, "FN": fn, "TN": tn, "n_pred": tp + fp, "n_ref": tp + fn,
        "sensitivity": _ratio(tp, tp + fn), "precision": _ratio(tp, tp + fp),
        **instance_metrics(np.array([n_ref, ref_detected, n_pred, pred_correct], dtype=np.int64)),
        "absolute_volume_difference_ml": abs((tp + fp) - (tp + fn)) * (voxel_volume_mm3 / 1000.0),
    }
