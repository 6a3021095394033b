"""Lesion-wise Dice and HD95 by the rules of the BraTS 2023 challenges (R. Saluja et al., the BraTS 2023
lesion-wise performance metrics; the challenges' ``get_lesion_wise_results``).

For one label or region, with ``N`` dilation iterations and a volume threshold ``V`` (mm^3):

1. the reference mask is dilated ``N`` times with the 18-neighbourhood (``generate_binary_structure(3, 2)``);
   reference voxels in one connected component of the dilated mask form one **lesion** (nearby lesions merge);
2. a predicted component belongs to a lesion when it overlaps the lesion's dilated mask (which is the dilated
   component, so one overlap table finds every pair); a predicted component belonging to no lesion is a
   **false positive**;
3. a lesion's Dice and HD95 compare it with the union of its predicted components (HD95: DeepMind's robust
   Hausdorff at 95 %, :func:`~nnunet_blob.evaluation.surface.robust_hausdorff`; no predicted component:
   HD95 = 374 mm, the challenge's value for infinity);
4. lesions of volume <= V are dropped (but the predicted components they own are not false positives);
5. ``lesion_wise_Dice = sum(Dice of kept lesions) / (kept lesions + FP)``, ``lesion_wise_HD95 = (sum(HD95 of
   kept lesions) + 374 * FP) / (kept lesions + FP)``; with no kept lesion and no false positive they are 1 and 0.

``lesion_wise_TP``/``_FN`` count the kept lesions with/without a predicted component, ``lesion_wise_FP`` the false
positives. ``N = 0`` does not dilate (lesions are the connected components). Dice, volumes and the threshold use
the voxel spacing (BraTS images are 1 mm isotropic, so V is a voxel count there).

Cost: one dilation, two labelings, one overlap table and one surface computation per lesion with a prediction,
each on the bounding box of the lesion and its predicted components.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from nnunet_blob.evaluation.surface import robust_hausdorff, surface_distances
from nnunet_blob.instances.detection import label_components
from nnunet_blob.instances.matching import overlap_table

#: the HD95 (mm) the BraTS 2023 scripts give a missed lesion or a false positive
BRATS_MAX_HD95 = 374.0


def _union_box(boxes) -> tuple[slice, ...]:
    return tuple(slice(min(b[d].start for b in boxes), max(b[d].stop for b in boxes)) for d in range(len(boxes[0])))


def brats_lesion_wise(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float], dilation: int,
                      min_volume_mm3: float, connectivity: int = 26) -> dict:
    """``lesion_wise_Dice``, ``lesion_wise_HD95``, ``lesion_wise_TP``, ``lesion_wise_FN``, ``lesion_wise_FP`` of
    one label or region (module docstring)."""
    mask_ref, mask_pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    spacing = tuple(float(s) for s in spacing)
    if dilation > 0:
        structure = ndimage.generate_binary_structure(mask_ref.ndim, 2)
        dilated = ndimage.binary_dilation(mask_ref, structure=structure, iterations=dilation)
    else:
        dilated = mask_ref
    dilated_labels, n_lesions = label_components(dilated, connectivity)
    lesions = np.where(mask_ref, dilated_labels, 0)
    pred_labels, n_pred = label_components(mask_pred, connectivity)
    pairs = overlap_table(dilated_labels, pred_labels, n_lesions, n_pred)
    n_fp = n_pred - np.unique(pairs.pred).size

    lesion_sizes = np.bincount(lesions.ravel(), minlength=n_lesions + 1)[1:]
    covered = np.bincount(lesions[mask_pred], minlength=n_lesions + 1)[1:]  # |prediction n lesion|
    owned_voxels = np.bincount(pairs.ref, weights=pairs.pred_sizes[pairs.pred], minlength=n_lesions + 1)[1:]
    has_prediction = np.bincount(pairs.ref, minlength=n_lesions + 1)[1:] > 0
    dice = 2 * covered / (owned_voxels + lesion_sizes)
    kept = lesion_sizes * float(np.prod(spacing)) > min_volume_mm3

    hd95 = np.full(n_lesions, BRATS_MAX_HD95)
    wanted = np.flatnonzero(kept & has_prediction) + 1
    if wanted.size:
        lesion_boxes = ndimage.find_objects(lesions, max_label=n_lesions)
        pred_boxes = ndimage.find_objects(pred_labels, max_label=n_pred)
        order = np.argsort(pairs.ref, kind="stable")
        starts = np.searchsorted(pairs.ref[order], np.arange(n_lesions + 2))
        for k in wanted:
            owned = pairs.pred[order[starts[k]:starts[k + 1]]]
            box = _union_box([lesion_boxes[k - 1]] + [pred_boxes[p - 1] for p in owned])
            lesion = lesions[box] == k
            prediction = pred_labels[box] == owned[0] if owned.size == 1 else np.isin(pred_labels[box], owned)
            hd = robust_hausdorff(surface_distances(lesion, prediction, spacing), 95.0)
            hd95[k - 1] = BRATS_MAX_HD95 if np.isinf(hd) else hd
    n_kept = int(kept.sum())
    denominator = n_kept + n_fp
    return {
        "lesion_wise_Dice": float(dice[kept].sum() / denominator) if denominator else 1.0,
        "lesion_wise_HD95": float((hd95[kept].sum() + BRATS_MAX_HD95 * n_fp) / denominator) if denominator else 0.0,
        "lesion_wise_TP": int((kept & has_prediction).sum()),
        "lesion_wise_FN": int((kept & ~has_prediction).sum()),
        "lesion_wise_FP": int(n_fp),
    }
