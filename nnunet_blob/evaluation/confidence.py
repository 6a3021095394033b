"""Detection from confidences: every predicted component scored by nnU-Net's probabilities, FROC and AP pooled
over cases, as PI-CAI evaluates lesion detection (``picai_eval``; A. Saha et al., "Artificial intelligence and
radiologists in prostate cancer detection on MRI (PI-CAI)", Lancet Oncology 2024).

* **Candidates**: the connected components of the predicted label (or region); a candidate's confidence is its
  largest probability of that label (``nnUNetv2_predict --save_probabilities`` writes them beside the
  segmentation as ``<case>.npz``).
* **Matching rule**: a candidate and a reference component are a hit when their IoU is at least
  ``detection_iou`` (PI-CAI: 0.1); each reference component is matched to at most one candidate, with the most
  matched pairs and then the largest total IoU (:mod:`nnunet_blob.instances.matching`). Every case lists its
  reference components as ``(1, confidence of the matched candidate)`` or ``(1, 0)`` when missed, and its
  unmatched candidates as ``(0, confidence)``; a candidate with enough overlap that lost its reference component
  to another candidate is left out (neither hit nor false positive, PI-CAI's default).
* **FROC**: at each confidence threshold t (every confidence > 0 in the pool), sensitivity = hits with
  confidence >= t / reference components and false positives per case = false candidates with confidence >= t /
  cases; the FROC value at f false positives per case is the largest sensitivity of a threshold with at most f
  (read at 1/8, 1/4, ..., 8; ``FROC_mean`` their mean, the competition performance metric of LUNA16).
* **AP**: the area under the precision-recall step curve over the same thresholds,
  ``sum_k (R_k - R_(k-1)) P_k`` (scikit-learn's ``average_precision_score``, as PI-CAI computes it). NaN without
  reference components.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnunet_blob.instances.matching import match_components, overlap_table


def candidate_confidences(pred_labels: np.ndarray, n_pred: int, probabilities: np.ndarray) -> np.ndarray:
    """(n_pred,) largest probability inside each predicted component (ids 1..n_pred)."""
    if n_pred == 0:
        return np.zeros(0)
    return np.asarray(ndimage.maximum(probabilities, pred_labels, index=np.arange(1, n_pred + 1)), float)


def case_detections(ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray, n_pred: int,
                    confidences: np.ndarray, detection_iou: float = 0.1) -> list[list[float]]:
    """The case's ``[is_lesion, confidence]`` entries (module docstring)."""
    table = overlap_table(ref_labels, pred_labels, n_ref, n_pred)
    matching = match_components(table, "iou", detection_iou)
    matched_conf = np.zeros(n_ref + 1)
    matched_conf[matching.ref] = confidences[matching.pred - 1]
    entries = [[1, float(c)] for c in matched_conf[1:]]
    sufficient = np.zeros(n_pred + 1, bool)
    sufficient[table.pred[table.iou() >= detection_iou]] = True
    entries += [[0, float(confidences[p - 1])] for p in range(1, n_pred + 1) if not sufficient[p]]
    return entries


def _curve(entries, n_cases: int):
    """(thresholds descending, hits, false positives at each, number of reference components)."""
    data = np.asarray(entries, float).reshape(-1, 2)
    is_lesion, conf = data[:, 0] > 0, data[:, 1]
    thresholds = np.unique(conf[conf > 0])[::-1]
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    hits_cum = np.cumsum(is_lesion[order])
    fps_cum = np.cumsum(~is_lesion[order])
    last = np.searchsorted(-sorted_conf, -thresholds, side="right") - 1  # last entry with conf >= t
    return thresholds, hits_cum[last], fps_cum[last], int(is_lesion.sum())


def froc(entries, n_cases: int, fp_per_case) -> dict:
    """``{f: sensitivity}`` at each false-positive rate ``f`` and ``mean`` over them (module docstring)."""
    thresholds, hits, fps, n_lesions = _curve(entries, n_cases)
    out = {}
    for f in fp_per_case:
        if n_lesions == 0 or n_cases == 0:
            out[f"{f:g}"] = float("nan")
            continue
        allowed = fps / n_cases <= f
        out[f"{f:g}"] = float(hits[allowed].max() / n_lesions) if allowed.any() else 0.0
    values = list(out.values())
    out["mean"] = float(np.mean(values)) if values else float("nan")
    return out


def average_precision(entries) -> float:
    """AP of the pooled entries (module docstring)."""
    thresholds, hits, fps, n_lesions = _curve(entries, 1)
    if n_lesions == 0:
        return float("nan")
    recall = hits / n_lesions
    precision = hits / np.maximum(hits + fps, 1)
    return float(np.sum(np.diff(np.concatenate(([0.0], recall))) * precision))
