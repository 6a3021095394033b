"""Per-case, per-label metrics on numpy arrays.

* volumetric: nnU-Net's own ``compute_tp_fp_fn_tn`` / ``region_or_label_to_mask`` (Dice, IoU, TP/FP/FN/TN,
  n_ref/n_pred voxels are nnU-Net's numbers exactly), plus volumetric sensitivity ``TP/(TP+FN)`` and precision
  ``TP/(TP+FP)``;
* surface Dice at a tolerance in mm, as DeepMind's ``surface-distance`` computes it (Nikolov et al. 2021; the
  MSD/FLARE reference): marching-cubes surfels weighted by their area (contour length in 2D), spacing-aware;
* instance metrics of F. Kofler et al., "blob loss: instance imbalance aware loss functions for semantic
  segmentation" (IPMI 2023), section 2.5, defined once in :mod:`nnunet_blob.instances.detection`: connected
  components, a component counts as detected when it overlaps the other mask by at least one voxel;
* with the :class:`~nnunet_blob.evaluation.options.EvaluationOptions`: one-to-one matching and panoptic quality,
  the cell scores (average precision over IoU thresholds of the 2018 Data Science Bowl, F1 at IoU 0.5),
  sensitivity by lesion volume, CC-Dice and the empty-case rule (:mod:`~nnunet_blob.evaluation.lesions`), BraTS
  lesion-wise scores (:mod:`~nnunet_blob.evaluation.brats`) and detection entries from confidences
  (:mod:`~nnunet_blob.evaluation.confidence`).

Instance sensitivity IS counts on reference components and instance precision IP on predicted ones (the WMH
challenge convention the paper follows). A reference lesion split into two predicted blobs gives IS = 1 and
IP = 1; two reference lesions merged into one predicted blob also give IS = IP = 1. One-to-one matching
(``--matching one-to-one``, as panoptica) counts the extra blob as a false positive, or the second lesion as a
false negative, and reports lower numbers on such cases.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from nnunet_blob.evaluation.brats import brats_lesion_wise
from nnunet_blob.evaluation.confidence import candidate_confidences, case_detections
from nnunet_blob.evaluation.lesions import apply_empty_case, cc_dice, cell_scores, panoptic_quality, size_bin_counts
from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.evaluation.surface import surface_dice
from nnunet_blob.instances.detection import class_instances, instance_scores, label_components, overlap_detection
from nnunet_blob.instances.matching import match_components, overlap_table
from nnunet_blob.nnunet_internals import label_or_region_mask, tp_fp_fn_tn


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def spatial_view(seg: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop nnU-Net's channel axis and the dummy axis of 2D images.

    nnU-Net's readers return segmentations as ``(1, *spatial)``; 2D images come as ``(1, 1, y, x)`` with the
    spacing of the dummy axis set to 999 (``SimpleITKIO``/``NaturalImage2DIO``). Returns the 2D or 3D array and
    the matching spacing in mm.
    """
    arr = seg[0] if seg.ndim == len(spacing) + 1 else seg
    spacing = tuple(float(s) for s in spacing)
    if arr.ndim != len(spacing):
        raise ValueError(f"segmentation of shape {seg.shape} does not match spacing {spacing}")
    if arr.ndim == 3 and arr.shape[0] == 1:
        return arr[0], spacing[1:]
    return arr, spacing


# ------------------------------------------------------------------------------------------- instance metrics
@dataclass
class Components:
    """Connected components of one reference/prediction mask pair and their detection status."""

    ref_labels: np.ndarray  # component ids of the reference (0 = background)
    pred_labels: np.ndarray
    n_ref: int
    n_pred: int
    ref_detected: np.ndarray  # ids of reference components touched by the prediction
    pred_true: np.ndarray  # ids of predicted components touching the reference

    def counts(self) -> np.ndarray:
        """int64 ``[n_ref, ref_detected, n_pred, pred_correct]`` (as
        :func:`~nnunet_blob.instances.detection.detection_counts`)."""
        return np.array([self.n_ref, self.ref_detected.size, self.n_pred, self.pred_true.size], dtype=np.int64)


def components(mask_ref: np.ndarray, mask_pred: np.ndarray, connectivity: int = 26,
               ref_instances: np.ndarray | None = None, pred_instances: np.ndarray | None = None) -> Components:
    """Label both masks and find the components overlapping the other mask by >= 1 voxel
    (:mod:`nnunet_blob.instances.detection`). With an instance map of the case (``ref_instances``,
    ``pred_instances``) a mask's objects are the instances inside it instead of its connected components."""
    ref_labels, n_ref = label_components(mask_ref, connectivity) if ref_instances is None else \
        class_instances(ref_instances, mask_ref)
    pred_labels, n_pred = label_components(mask_pred, connectivity) if pred_instances is None else \
        class_instances(pred_instances, mask_pred)
    ref_detected, pred_true = overlap_detection(ref_labels, pred_labels)
    return Components(ref_labels, pred_labels, n_ref, n_pred, ref_detected, pred_true)


#: the summary's names of the detection counts, in the order of :data:`~nnunet_blob.instances.detection.COUNT_KEYS`
COUNT_METRICS = ("n_ref_instances", "TP_ref_instances", "n_pred_instances", "TP_pred_instances")


def instance_metrics(counts: np.ndarray) -> dict:
    """Instance counts, IS, IP and F1 (:func:`~nnunet_blob.instances.detection.instance_scores`) and the lesion
    count difference of one row of detection counts, under the summary's names."""
    n_ref, ref_detected, n_pred, pred_correct = (int(v) for v in counts)
    return {
        **dict(zip(COUNT_METRICS, (n_ref, ref_detected, n_pred, pred_correct), strict=True)),
        "FN_instances": n_ref - ref_detected, "FP_instances": n_pred - pred_correct,
        **instance_scores(counts),
        "lesion_count_difference": abs(n_pred - n_ref),
    }


# --------------------------------------------------------------------------------------------- one case
def label_metrics(seg_ref: np.ndarray, seg_pred: np.ndarray, label_or_region, spacing: Sequence[float],
                  ignore_label: int | None = None, tolerance_mm: float = 1.0, connectivity: int = 26,
                  return_components: bool = False, options: EvaluationOptions | None = None):
    """All metrics of one label (or region) of one case (:func:`label_evaluation` without confidences).

    ``options`` (default: ``tolerance_mm`` and ``connectivity`` with everything else at its default) chooses the
    metrics; returns the metrics, and with ``return_components`` also the :class:`Components`.
    """
    if options is None:
        options = EvaluationOptions(tolerance_mm=tolerance_mm, connectivity=connectivity)
    out, comps, _ = label_evaluation(seg_ref, seg_pred, label_or_region, spacing, ignore_label, options)
    return (out, comps) if return_components else out


def label_evaluation(seg_ref: np.ndarray, seg_pred: np.ndarray, label_or_region, spacing: Sequence[float],
                     ignore_label: int | None, options: EvaluationOptions,
                     probabilities: np.ndarray | None = None, ref_instances: np.ndarray | None = None,
                     pred_instances: np.ndarray | None = None) -> tuple[dict, Components, list | None]:
    """(metrics, components, detection entries) of one label (or region) of one case.

    ``seg_ref``/``seg_pred`` are label maps (2D or 3D, no channel axis) with ``spacing`` in mm per axis. The
    volumetric numbers use nnU-Net's functions with its ignore mask, so they equal ``compute_metrics``. For the
    other metrics ignore-label voxels are set to background in both masks first. ``probabilities`` (same shape,
    this label's or region's probability) gives the detection entries
    (:func:`~nnunet_blob.evaluation.confidence.case_detections`), else they are None. ``ref_instances`` and
    ``pred_instances`` (instance maps of the case, same shape; every object inside one label) replace the
    connected components of the reference or the prediction by the objects of these maps.
    """
    if seg_ref.shape != seg_pred.shape:
        raise ValueError(f"reference shape {seg_ref.shape} != prediction shape {seg_pred.shape}")
    ignore = (seg_ref == ignore_label) if ignore_label is not None else None
    mask_ref = label_or_region_mask(seg_ref, label_or_region)
    mask_pred = label_or_region_mask(seg_pred, label_or_region)
    tp, fp, fn, tn = (int(v) for v in tp_fp_fn_tn(mask_ref, mask_pred, ignore))
    out = {
        "Dice": _ratio(2 * tp, 2 * tp + fp + fn), "IoU": _ratio(tp, tp + fp + fn),
        "TP": tp, "FP": fp, "FN": fn, "TN": tn, "n_pred": tp + fp, "n_ref": tp + fn,
        "sensitivity": _ratio(tp, tp + fn), "precision": _ratio(tp, tp + fp),
    }
    if ignore is not None:
        mask_ref, mask_pred = mask_ref & ~ignore, mask_pred & ~ignore
    out["SurfaceDice"] = surface_dice(mask_ref, mask_pred, spacing, options.tolerance_mm)
    comps = components(mask_ref, mask_pred, options.connectivity, ref_instances, pred_instances)
    if options.matching == "one-to-one" or options.cell_scores:
        table = overlap_table(comps.ref_labels, comps.pred_labels, comps.n_ref, comps.n_pred)
    if options.matching == "one-to-one":
        matching = match_components(table, options.match_metric, options.match_threshold)
        comps = replace(comps, ref_detected=matching.ref, pred_true=np.sort(matching.pred))
    out.update(instance_metrics(comps.counts()))
    voxel_ml = float(np.prod(spacing)) / 1000.0  # mm^3 -> ml (2D: mm^2 / 1000)
    out["absolute_volume_difference_ml"] = abs(int(mask_pred.sum()) - int(mask_ref.sum())) * voxel_ml
    if options.matching == "one-to-one":
        out.update(panoptic_quality(matching, comps.n_ref, comps.n_pred))
    if options.cell_scores:
        out.update(cell_scores(table))
    ref_sizes = np.bincount(comps.ref_labels.ravel(), minlength=comps.n_ref + 1)[1:]
    found = np.zeros(comps.n_ref + 1, bool)
    found[comps.ref_detected] = True
    out.update(size_bin_counts(ref_sizes, found[1:], voxel_ml, options.size_bins_ml, options.size_bin_names()))
    if options.cc_dice:
        out["CC_Dice"] = cc_dice(comps.ref_labels, comps.n_ref, mask_pred)
    if options.brats:
        out.update(brats_lesion_wise(mask_ref, mask_pred, spacing, int(options.gt_dilation or 0),
                                     options.min_lesion_volume_mm3, options.connectivity))
    apply_empty_case(out, options.empty_case, comps.n_ref == 0 and comps.n_pred == 0)
    detections = None
    if probabilities is not None:
        confidences = candidate_confidences(comps.pred_labels, comps.n_pred, probabilities)
        detections = case_detections(comps.ref_labels, comps.n_ref, comps.pred_labels, comps.n_pred, confidences,
                                     options.detection_iou)
    return out, comps, detections
