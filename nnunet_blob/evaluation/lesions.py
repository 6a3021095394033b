"""Lesion-wise scores beyond overlap detection: panoptic quality of a one-to-one matching, sensitivity by lesion
volume, CC-Dice, and the empty-case rule.

* **One-to-one matching** (:mod:`nnunet_blob.instances.matching`): with TP matched pairs, FP = n_pred - TP,
  FN = n_ref - TP, panoptica's recognition quality ``RQ = TP / (TP + FP/2 + FN/2)`` (the F1 of the matching),
  segmentation quality ``SQ`` = mean IoU of the matched pairs, ``PQ = SQ * RQ`` (A. Kirillov et al., "Panoptic
  Segmentation", CVPR 2019), and ``SQ_Dice`` = mean Dice of the matched pairs (panoptica's ``sq_dsc``). With
  TP = 0 they are 0, or NaN when the case has no component at all (panoptica's edge cases).
* **Cell scores** (``--cell-scores``; the 2018 Data Science Bowl's score, J. C. Caicedo et al., "Nucleus
  segmentation across imaging experiments: the 2018 Data Science Bowl", Nature Methods 16, 2019): per IoU
  threshold t in 0.5, 0.55, ..., 0.95 the one-to-one matching of pairs with ``IoU >= t`` (the matching of
  :mod:`nnunet_blob.instances.matching`; ``>=`` as StarDist's ``matching`` and Cellpose's ``average_precision``
  compare, where the challenge's text says "greater than": the two differ only for a pair whose IoU is exactly t)
  gives TP(t), ``FP = n_pred - TP``, ``FN = n_ref - TP`` and ``AP@t = TP / (TP + FP + FN)``; ``DSB_AP`` is the
  mean of AP@t over the ten thresholds. At t = 0.5 also ``F1@0.5 = 2 TP / (2 TP + FP + FN)``,
  ``precision@0.5 = TP / n_pred`` and ``recall@0.5 = TP / n_ref``. A ratio whose denominator is 0 is NaN (StarDist
  writes 0): without reference and prediction all are NaN (1 with ``--empty-case one``), without a prediction
  precision is NaN and AP, F1 and recall are 0. The per-threshold counts ``TP@t`` are kept for pooling.
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

from nnunet_blob.evaluation.metric_facts import CELL_REPORTED_THRESHOLD, CELL_THRESHOLDS, EMPTY_CASE_METRICS, at
from nnunet_blob.instances.matching import Matching, OverlapTable, match_components
from nnunet_blob.instances.voronoi import component_cells

NAN = float("nan")


def panoptic_from_counts(tp: int, n_ref: int, n_pred: int, iou_sum: float) -> dict:
    """``RQ``, ``SQ`` and ``PQ`` from the counts of a one-to-one matching (module docstring), of one case or pooled
    over cases: ``RQ = TP / (TP + FP/2 + FN/2)`` with ``FP = n_pred - TP``, ``FN = n_ref - TP``,
    ``SQ = iou_sum / TP``, ``PQ = SQ * RQ``; all three 0 when nothing was matched and NaN without any instance."""
    if tp == 0:
        zero = NAN if n_ref + n_pred == 0 else 0.0
        return {"RQ": zero, "SQ": zero, "PQ": zero}
    rq = tp / (tp + 0.5 * (n_pred - tp) + 0.5 * (n_ref - tp))
    sq = iou_sum / tp
    return {"RQ": rq, "SQ": sq, "PQ": sq * rq}


def panoptic_quality(matching: Matching, n_ref: int, n_pred: int) -> dict:
    """``n_matched``, ``RQ``, ``SQ``, ``PQ`` and ``SQ_Dice`` of a one-to-one matching (module docstring)."""
    tp = matching.n_matched
    out = {"n_matched": tp, **panoptic_from_counts(tp, n_ref, n_pred, float(np.sum(matching.iou)))}
    out["SQ_Dice"] = float(np.mean(matching.dice)) if tp else out["SQ"]
    return out


def cell_scores(table: OverlapTable, thresholds=CELL_THRESHOLDS) -> dict:
    """``TP@t``, ``AP@t``, ``DSB_AP`` and ``F1``/``precision``/``recall`` at 0.5 of a case's overlap table (module
    docstring)."""
    n_ref, n_pred = table.n_ref, table.n_pred
    out: dict = {}
    for t in thresholds:
        tp = match_components(table, "iou", t).n_matched
        out[at("TP", t)] = tp
        out.update(_cell_ratios(tp, n_ref, n_pred, t))
    out["DSB_AP"] = NAN if n_ref + n_pred == 0 else float(np.mean([out[at("AP", t)] for t in thresholds]))
    return out


def detection_ratios(tp: int, n_ref: int, n_pred: int) -> dict:
    """``AP``, ``F1``, ``precision`` and ``recall`` of a one-to-one matching with ``tp`` pairs (module docstring):
    with ``FP = n_pred - TP`` and ``FN = n_ref - TP``, ``AP = TP / (TP + FP + FN)``,
    ``F1 = 2 TP / (2 TP + FP + FN)``, ``precision = TP / n_pred``, ``recall = TP / n_ref`` (NaN over zero)."""
    fp, fn = n_pred - tp, n_ref - tp
    return {"AP": _ratio(tp, tp + fp + fn), "F1": _ratio(2 * tp, 2 * tp + fp + fn),
            "precision": _ratio(tp, n_pred), "recall": _ratio(tp, n_ref)}


def _cell_ratios(tp: int, n_ref: int, n_pred: int, t: float) -> dict:
    """``AP@t`` (and at the reported threshold ``F1``, ``precision``, ``recall``) from the counts."""
    ratios = detection_ratios(tp, n_ref, n_pred)
    kept = ratios if t == CELL_REPORTED_THRESHOLD else {"AP": ratios["AP"]}
    return {at(name, t): value for name, value in kept.items()}


def pooled_cell_scores(cases: list[dict], thresholds=CELL_THRESHOLDS) -> dict:
    """The cell scores of the counts added over the cases (as StarDist's ``matching_dataset(by_image=False)``):
    ``TP@t``, ``AP@t``, ``DSB_AP`` (mean of the pooled AP@t), and ``F1``, ``precision``, ``recall`` at every
    threshold (``cell_scores``: ``{metric: [value per threshold]}``)."""
    n_ref = int(sum(m["n_ref_instances"] for m in cases))
    n_pred = int(sum(m["n_pred_instances"] for m in cases))
    out: dict = {}
    table: dict = {"thresholds": list(thresholds), "TP": [], "AP": [], "F1": [], "precision": [], "recall": []}
    for t in thresholds:
        tp = int(sum(m[at("TP", t)] for m in cases))
        out[at("TP", t)] = tp
        out.update(_cell_ratios(tp, n_ref, n_pred, t))
        table["TP"].append(tp)
        for name, value in detection_ratios(tp, n_ref, n_pred).items():
            table[name].append(value)
    out["DSB_AP"] = NAN if n_ref + n_pred == 0 else float(np.mean(table["AP"]))
    out["cell_scores"] = table
    return out


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else NAN


def size_bin_counts(ref_sizes: np.ndarray, found: np.ndarray, voxel_ml: float, edges_ml, names) -> dict:
    """``n_ref_<bin>``, ``TP_ref_<bin>`` and ``IS_<bin>`` (NaN for an empty bin) of reference components of
    ``ref_sizes`` voxels, ``found`` marking those detected. A component of volume v lies in the bin
    ``edges[i-1] <= v < edges[i]``."""
    ref_sizes = np.asarray(ref_sizes, np.int64)
    bins = np.searchsorted(np.asarray(edges_ml, float), ref_sizes * voxel_ml, side="right")
    n = np.bincount(bins, minlength=len(names))
    tp = np.bincount(bins, weights=np.asarray(found, bool), minlength=len(names)).astype(np.int64)
    out: dict = {}
    for name, count, hit in zip(names, n, tp, strict=True):
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
