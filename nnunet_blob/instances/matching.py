"""One-to-one matching of reference and predicted components, and the overlap table it is built on.

Panoptic-quality style evaluation (A. Kirillov et al., "Panoptic Segmentation", CVPR 2019; F. Kofler et al.,
"Panoptica - instance-wise evaluation of 3D semantic and instance segmentation maps", the BrainLesion challenges'
tool) pairs every reference component with at most one predicted component and vice versa:

* a pair is **eligible** when the two components overlap and their IoU (or Dice) is at least the threshold
  (panoptica's default: IoU >= 0.5; ``>=`` as panoptica compares);
* among the eligible pairs the matching has the **largest number of pairs**, and among those the largest sum of
  the scores (PI-CAI's rule, A. Saha et al., "Artificial intelligence and radiologists in prostate cancer
  detection on MRI (PI-CAI)", Lancet Oncology 2024). With IoU >= 0.5 a component has at most one eligible
  partner (two would have to split it into equal halves that touch each other, and touching halves are one
  component), so there the matching is the set of eligible pairs and equals panoptica's greedy matching. Instance
  maps (``--reference-instances``, ``--prediction-instances``) may hold touching objects: there two eligible
  partners of IoU exactly 0.5 are possible, and the rule above picks one of them; above 0.5 the partner is unique
  for any objects (IoU > 0.5 with both would need more than half of the object twice).

The same rule is StarDist's ``matching`` (``linear_sum_assignment`` with cost ``-(IoU >= t) - IoU / (2 n)``: the
most pairs at ``IoU >= t``) and Cellpose's ``average_precision``; their tie-breaker among the matchings with the
most pairs may pick other pairs below 0.5, never another number of pairs.

Cost: one pass over the overlapping voxels for the table (``np.unique`` of the pair keys), vectorised scores and
a Hungarian assignment (``scipy.optimize.linear_sum_assignment``) only on the connected groups of eligible pairs
that have more than one pair; components with a single eligible partner are matched without it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the pair scores a matching can threshold on
MATCH_METRICS = ("iou", "dice")


@dataclass(frozen=True)
class OverlapTable:
    """Voxel counts of two component maps: sizes of every component and the intersection of every overlapping
    (reference, predicted) pair. Component ids run 1..n; index 0 of the size arrays is the background."""

    ref_sizes: np.ndarray  # (n_ref + 1,) int64
    pred_sizes: np.ndarray  # (n_pred + 1,) int64
    ref: np.ndarray  # (k,) reference id of each overlapping pair
    pred: np.ndarray  # (k,) predicted id
    intersection: np.ndarray  # (k,) shared voxels

    @property
    def n_ref(self) -> int:
        return self.ref_sizes.size - 1

    @property
    def n_pred(self) -> int:
        return self.pred_sizes.size - 1

    def iou(self) -> np.ndarray:
        """IoU of every pair: ``|R n P| / |R u P|``."""
        union = self.ref_sizes[self.ref] + self.pred_sizes[self.pred] - self.intersection
        return self.intersection / union

    def dice(self) -> np.ndarray:
        """Dice of every pair: ``2 |R n P| / (|R| + |P|)``."""
        return 2 * self.intersection / (self.ref_sizes[self.ref] + self.pred_sizes[self.pred])

    def scores(self, metric: str) -> np.ndarray:
        if metric not in MATCH_METRICS:
            raise ValueError(f"match metric must be one of {MATCH_METRICS}, got {metric!r}")
        return self.iou() if metric == "iou" else self.dice()


def overlap_table(ref_labels: np.ndarray, pred_labels: np.ndarray, n_ref: int | None = None,
                  n_pred: int | None = None) -> OverlapTable:
    """The overlap table of two component maps of one shape (ids 1..n, 0 background)."""
    ref_labels, pred_labels = np.asarray(ref_labels), np.asarray(pred_labels)
    if ref_labels.shape != pred_labels.shape:
        raise ValueError(f"component maps of shapes {ref_labels.shape} and {pred_labels.shape} must have one shape")
    n_ref = int(ref_labels.max(initial=0)) if n_ref is None else n_ref
    n_pred = int(pred_labels.max(initial=0)) if n_pred is None else n_pred
    ref_sizes = np.bincount(ref_labels.ravel(), minlength=n_ref + 1).astype(np.int64)
    pred_sizes = np.bincount(pred_labels.ravel(), minlength=n_pred + 1).astype(np.int64)
    both = (ref_labels > 0) & (pred_labels > 0)
    keys = ref_labels[both].astype(np.int64) * (n_pred + 1) + pred_labels[both].astype(np.int64)
    keys, counts = np.unique(keys, return_counts=True)
    return OverlapTable(ref_sizes, pred_sizes, keys // (n_pred + 1), keys % (n_pred + 1), counts.astype(np.int64))


@dataclass(frozen=True)
class Matching:
    """Matched pairs (sorted by reference id) with their IoU and Dice."""

    ref: np.ndarray
    pred: np.ndarray
    iou: np.ndarray
    dice: np.ndarray

    @property
    def n_matched(self) -> int:
        return int(self.ref.size)


def maximum_matching(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the pairs ``(rows[i], cols[i])`` forming a matching with the most pairs and, among those, the
    largest sum of ``scores`` (each scores in [0, 1]). Rows and columns are two separate id spaces."""
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols, scores = np.asarray(rows), np.asarray(cols), np.asarray(scores, float)
    if rows.size == 0:
        return np.zeros(0, np.int64)
    row_ids, row_index = np.unique(rows, return_inverse=True)
    col_ids, col_index = np.unique(cols, return_inverse=True)
    single = (np.bincount(row_index)[row_index] == 1) & (np.bincount(col_index)[col_index] == 1)
    chosen = [np.flatnonzero(single)]
    rest = np.flatnonzero(~single)
    if rest.size:
        n_rows = row_ids.size
        graph = coo_matrix((np.ones(rest.size), (row_index[rest], n_rows + col_index[rest])),
                           shape=(n_rows + col_ids.size,) * 2)
        _, group = connected_components(graph, directed=False)
        pair_group = group[row_index[rest]]
        order = np.argsort(pair_group, kind="stable")
        bounds = np.flatnonzero(np.diff(pair_group[order])) + 1
        for members in np.split(rest[order], bounds):
            r_ids, r = np.unique(row_index[members], return_inverse=True)
            c_ids, c = np.unique(col_index[members], return_inverse=True)
            # one more pair always outweighs any difference in the summed scores (each in [0, 1])
            bonus = float(min(r_ids.size, c_ids.size) + 1)
            # pairs that are not eligible: a penalty larger than everything the eligible pairs can add
            weight = np.full((r_ids.size, c_ids.size), -bonus * (r_ids.size + c_ids.size + 1))
            weight[r, c] = bonus + scores[members]
            i, j = linear_sum_assignment(weight, maximize=True)
            lookup = {(a, b): m for a, b, m in zip(r, c, members, strict=True)}
            chosen.append(np.array([lookup[(a, b)] for a, b in zip(i, j, strict=True) if (a, b) in lookup], np.int64))
    return np.sort(np.concatenate(chosen))


def match_components(table: OverlapTable, metric: str = "iou", threshold: float = 0.5) -> Matching:
    """The one-to-one matching of a table's components: eligible pairs have ``metric >= threshold``
    (``threshold`` in (0, 1]); see the module docstring for the rule."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"match threshold must be in (0, 1], got {threshold}")
    score = table.scores(metric)
    eligible = np.flatnonzero(score >= threshold)
    picked = eligible[maximum_matching(table.ref[eligible], table.pred[eligible], score[eligible])]
    picked = picked[np.argsort(table.ref[picked], kind="stable")]
    return Matching(table.ref[picked], table.pred[picked], table.iou()[picked], table.dice()[picked])
