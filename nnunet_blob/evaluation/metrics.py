"""Per-case, per-label metrics on numpy arrays.

* volumetric: nnU-Net's own ``compute_tp_fp_fn_tn`` / ``region_or_label_to_mask`` (Dice, IoU, TP/FP/FN/TN,
  n_ref/n_pred voxels are nnU-Net's numbers exactly), plus volumetric sensitivity ``TP/(TP+FN)`` and precision
  ``TP/(TP+FP)``;
* surface Dice at a tolerance in mm, as DeepMind's ``surface-distance`` computes it (Nikolov et al. 2021; the
  MSD/FLARE reference): marching-cubes surfels weighted by their area (contour length in 2D), spacing-aware;
* instance metrics of F. Kofler et al., "blob loss: instance imbalance aware loss functions for semantic
  segmentation" (IPMI 2023), section 2.5, defined once in :mod:`nnunet_blob.instances.detection`: connected
  components, a component counts as detected when it overlaps the other mask by at least one voxel.

Instance sensitivity IS counts on reference components and instance precision IP on predicted ones (the WMH
challenge convention the paper follows). A reference lesion split into two predicted blobs gives IS = 1 and
IP = 1; two reference lesions merged into one predicted blob also give IS = IP = 1. One-to-one matching tools
(e.g. panoptica) would count the extra blob as a false positive, or the second lesion as a false negative, and
report lower numbers on such cases.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_blob.evaluation._surfel_table import NORMALS_IN_EIGHTHS
from nnunet_blob.instances.detection import instance_scores, label_components, overlap_detection
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


# ----------------------------------------------------------------------------------------------- surface Dice
def _surfel_areas(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (3D) or length (2D) in mm of the surface element of each neighbourhood code (DeepMind's tables)."""
    if len(spacing) == 3:
        normals = np.asarray([n + [(0, 0, 0)] * (4 - len(n)) for n in NORMALS_IN_EIGHTHS], float) / 8.0
        s = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
        return np.linalg.norm(normals * s, axis=-1).sum(-1)
    first, second = spacing
    diag = 0.5 * float(np.hypot(first, second))
    lengths = np.full(16, diag)  # codes with one or three pixels inside
    lengths[[0b0000, 0b1111]] = 0.0
    lengths[[0b0011, 0b1100]] = second
    lengths[[0b0101, 0b1010]] = first
    lengths[[0b0110, 0b1001]] = 2 * diag
    return lengths


def _borders(mask: np.ndarray, full: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhood codes (DeepMind's encoding kernel) and the mask of surface-carrying neighbourhoods."""
    kernel = (2 ** np.arange(2 ** mask.ndim)[::-1]).reshape((2,) * mask.ndim)
    codes = ndimage.correlate(mask.astype(np.uint16), kernel, mode="constant", cval=0)
    return codes, (codes != 0) & (codes != full)


def surface_dice(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm`` (Nikolov et al. 2021), as DeepMind's
    ``surface_distance.compute_surface_dice_at_tolerance``.

    ``(|S_ref within tol of S_pred| + |S_pred within tol of S_ref|) / (|S_ref| + |S_pred|)`` with surface
    measured in mm^2 (3D) or mm (2D). NaN when both masks are empty, 0 when exactly one is.
    """
    mask_ref, mask_pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if mask_ref.shape != mask_pred.shape or mask_ref.ndim not in (2, 3) or len(spacing) != mask_ref.ndim:
        raise ValueError(f"surface Dice needs two 2D/3D masks of one shape and a matching spacing, got "
                         f"{mask_ref.shape}, {mask_pred.shape}, spacing {tuple(spacing)}")
    has_ref, has_pred = mask_ref.any(), mask_pred.any()
    if not (has_ref or has_pred):
        return float("nan")
    if not (has_ref and has_pred):
        return 0.0
    # crop to the union's bounding box plus one empty voxel at the end (DeepMind's _crop_to_bounding_box)
    coords = np.argwhere(mask_ref | mask_pred)
    lo, hi = coords.min(0), coords.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    pad = [(0, 1)] * mask_ref.ndim
    ref, pred = np.pad(mask_ref[crop], pad), np.pad(mask_pred[crop], pad)

    spacing = tuple(float(s) for s in spacing)
    areas = _surfel_areas(spacing)
    full = len(areas) - 1
    code_ref, border_ref = _borders(ref, full)
    code_pred, border_pred = _borders(pred, full)
    dist_to_ref = ndimage.distance_transform_edt(~border_ref, sampling=spacing)
    dist_to_pred = ndimage.distance_transform_edt(~border_pred, sampling=spacing)
    area_ref, area_pred = areas[code_ref[border_ref]], areas[code_pred[border_pred]]
    overlap = area_ref[dist_to_pred[border_ref] <= tolerance_mm].sum() + \
        area_pred[dist_to_ref[border_pred] <= tolerance_mm].sum()
    return float(overlap / (area_ref.sum() + area_pred.sum()))


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


def components(mask_ref: np.ndarray, mask_pred: np.ndarray, connectivity: int = 26) -> Components:
    """Label both masks and find the components overlapping the other mask by >= 1 voxel
    (:mod:`nnunet_blob.instances.detection`)."""
    ref_labels, n_ref = label_components(mask_ref, connectivity)
    pred_labels, n_pred = label_components(mask_pred, connectivity)
    ref_detected, pred_true = overlap_detection(ref_labels, pred_labels)
    return Components(ref_labels, pred_labels, n_ref, n_pred, ref_detected, pred_true)


#: the summary's names of the detection counts, in the order of :data:`~nnunet_blob.instances.detection.COUNT_KEYS`
COUNT_METRICS = ("n_ref_instances", "TP_ref_instances", "n_pred_instances", "TP_pred_instances")


def instance_metrics(counts: np.ndarray) -> dict:
    """Instance counts, IS, IP and F1 (:func:`~nnunet_blob.instances.detection.instance_scores`) and the lesion
    count difference of one row of detection counts, under the summary's names."""
    n_ref, ref_detected, n_pred, pred_correct = (int(v) for v in counts)
    return {
        **dict(zip(COUNT_METRICS, (n_ref, ref_detected, n_pred, pred_correct))),
        "FN_instances": n_ref - ref_detected, "FP_instances": n_pred - pred_correct,
        **instance_scores(counts),
        "lesion_count_difference": abs(n_pred - n_ref),
    }


# --------------------------------------------------------------------------------------------- one case
def label_metrics(seg_ref: np.ndarray, seg_pred: np.ndarray, label_or_region, spacing: Sequence[float],
                  ignore_label: int | None = None, tolerance_mm: float = 1.0, connectivity: int = 26,
                  return_components: bool = False):
    """All metrics of one label (or region) of one case.

    ``seg_ref``/``seg_pred`` are label maps (2D or 3D, no channel axis) with ``spacing`` in mm per axis. The
    volumetric numbers use nnU-Net's functions with its ignore mask, so they equal ``compute_metrics``. For the
    other metrics ignore-label voxels are set to background in both masks first.
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
    out["SurfaceDice"] = surface_dice(mask_ref, mask_pred, spacing, tolerance_mm)
    comps = components(mask_ref, mask_pred, connectivity)
    out.update(instance_metrics(comps.counts()))
    voxel_ml = float(np.prod(spacing)) / 1000.0  # mm^3 -> ml (2D: mm^2 / 1000)
    out["absolute_volume_difference_ml"] = abs(int(mask_pred.sum()) - int(mask_ref.sum())) * voxel_ml
    return (out, comps) if return_components else out
