"""Lesion-wise scores beyond overlap detection: panoptic quality of a one-to-one matching, sensitivity by lesion
volume, CC-Dice, and the empty-case rule.

* **One-to-one matching** (:mod:`nnunet_blob.instances.matching`): with TP matched pairs, FP = n_pred - TP,
  FN = n_ref - TP, panoptica's recognition quality ``RQ = TP / (TP + FP/2 + FN/2)`` (the F1 of the matching),
  segmentation quality ``SQ`` = mean IoU of the matched pairs, ``PQ = SQ * RQ`` (A. Kirillov et al., "Panoptic
  Segmentation", CVPR 2019), and ``SQ_Dice`` = mean Dice of the matched pairs (panoptica's ``sq_dsc``). With
  TP = 0 they are 0, or NaN when the case has no component at all (panoptica's edge cases).
* **Size bins**: the reference components are binned by volume (ml); per bin the number of components, the
  number found (touched with ``--matching overlap``, matched with ``one-to-one``) and their ratio IS.
* **CC-Dice** (A. Jaus et al., "Every Component Counts: Rethinking the Measure of Success for Medical Semantic
  Segmentation in Multi-Instance Segmentation Tasks", AAAI 2025): the Dice of prediction and reference inside
  the Voronoi cell of every reference component (:func:`nnunet_blob.instances.voronoi.component_cells`, in voxel
  units as CC-Metrics computes the cells), averaged over the components of the case. No reference component:
  0 when something is predicted, else NaN (CC-Metrics scores that 1: ``--empty-case one``).
* **Empty case** ``one`` (the WMH challenge's rule): a metric left undefined because reference and prediction
  are both empty scores 1.0 instead of NaN (the size bins' IS stay NaN: an empty bin is common in any case).
"""
from __future__ import annotations

import math

import numpy as np

from nnunet_blob.instances.matching import Matching
from nnunet_blob.instances.voronoi import component_cells

NAN = float("nan")
#: the metrics a case without reference and prediction leaves undefined (NaN), scored 1 by ``--empty-case one``
EMPTY_CASE_METRICS = ("Dice", "IoU", "sensitivity", "precision", "SurfaceDice", "IS", "IP", "F1", "RQ", "SQ", "PQ",
                      "SQ_Dice", "CC_Dice")


def panoptic_quality(matching: Matching, n_ref: int, n_pred: int) -> dict:
    """``n_matched``, ``RQ``, ``SQ``, ``PQ`` and ``SQ_Dice`` of a one-to-one matching (module docstring)."""
    tp = matching.n_matched
    if tp == 0:
        zero = NAN if n_ref + n_pred == 0 else 0.0
        return {"n_matched": 0, "RQ": zero, "SQ": zero, "PQ": zero, "SQ_Dice": zero}
    rq = tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_ref - tp))
    sq = float(np.mean(matching.iou))
    return {"n_matched": tp, "RQ": rq, "SQ": sq, "PQ": sq * rq, "SQ_Dice": float(np.mean(matching.dice))}


def size_bin_counts(ref_sizes: np.ndarray, found: np.ndarray, voxel_ml: float, edges_ml, names) -> dict:
    """``n_ref_<bin>``, ``TP_ref_<bin>`` and ``IS_<bin>`` (NaN for an empty bin) of reference components of
    ``ref_sizes`` voxels, ``found`` marking those detected. A component of volume v lies in the bin
    ``edges[i-1] <= v < edges[i]``."""
    ref_sizes = np.asarray(ref_sizes, np.int64)
    bins = np.searchsorted(np.asarray(edges_ml, float), ref_sizes * voxel_ml, side="right")
    n = np.bincount(bins, minlength=len(names))
    tp = np.bincount(bins, weights=np.asarray(found, bool), minlength=len(names)).astype(np.int64)
    out: dict = {}
    for name, count, hit in zip(names, n, tp):
        out[f"n_ref_{name}"] = int(count)
        out[f"TP_ref_{name}"] = int(hit)
        out[f"IS_{name}"] = hit / count if count else NAN
    return out


def cc_dice(ref_labels: np.ndarray, n_ref: int, mask_pred: np.ndarray) -> float:
    """CC-Dice of a case (module docstring): ``ref_labels`` the reference components (ids 1..n_ref)."""
    mask_pred = np.asarray(mask_pred, bool)
    if n_ref == 0:
        return 0.0 if mask_pred.any() else NAN
    cells = component_cells(ref_labels).ravel()
    ref, pred = (np.asarray(ref_labels) > 0).ravel(), mask_pred.ravel()
    tp = np.bincount(cells[ref & pred], minlength=n_ref + 1)[1:]
    fp = np.bincount(cells[pred & ~ref], minlength=n_ref + 1)[1:]
    fn = np.bincount(cells[ref & ~pred], minlength=n_ref + 1)[1:]
    return float(np.mean(2 * tp / (2 * tp + fp + fn)))


def apply_empty_case(metrics: dict, empty_case: str, both_empty: bool) -> dict:
    """With ``empty_case == "one"`` and an empty reference and prediction, the undefined metrics become 1.0."""
    if empty_case == "one" and both_empty:
        for key in EMPTY_CASE_METRICS:
            if key in metrics and isinstance(metrics[key], float) and math.isnan(metrics[key]):
                metrics[key] = 1.0
    return metrics
