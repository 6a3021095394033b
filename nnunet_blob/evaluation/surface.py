"""Surface metrics as DeepMind's ``surface-distance`` computes them (S. Nikolov et al., "Clinically applicable
segmentation of head and neck anatomy for radiotherapy", JMIR 2021): the surface is made of marching-cubes
surface elements (surfels) weighted by their area (contour length in 2D), spacing-aware.

* :func:`surface_distances`: ``compute_surface_distances`` (distances from each surfel of one mask to the
  surface of the other, with the surfel areas);
* :func:`surface_dice`: ``compute_surface_dice_at_tolerance``;
* :func:`robust_hausdorff`: ``compute_robust_hausdorff`` (HD95 with ``percent=95``), the lesion-wise HD95 of the
  BraTS challenges.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_blob.evaluation._surfel_table import NORMALS_IN_EIGHTHS


@functools.lru_cache(maxsize=64)
def _surfel_areas(spacing: tuple[float, ...]) -> np.ndarray:
    """Area (3D) or length (2D) in mm of the surface element of each neighbourhood code (DeepMind's tables);
    cached per spacing (read-only)."""
    if len(spacing) == 3:
        normals = np.asarray([n + [(0, 0, 0)] * (4 - len(n)) for n in NORMALS_IN_EIGHTHS], float) / 8.0
        s = np.array([spacing[1] * spacing[2], spacing[0] * spacing[2], spacing[0] * spacing[1]])
        areas = np.linalg.norm(normals * s, axis=-1).sum(-1)
        areas.flags.writeable = False
        return areas
    first, second = spacing
    diag = 0.5 * float(np.hypot(first, second))
    lengths = np.full(16, diag)  # codes with one or three pixels inside
    lengths[[0b0000, 0b1111]] = 0.0
    lengths[[0b0011, 0b1100]] = second
    lengths[[0b0101, 0b1010]] = first
    lengths[[0b0110, 0b1001]] = 2 * diag
    lengths.flags.writeable = False
    return lengths


def _borders(mask: np.ndarray, full: int) -> tuple[np.ndarray, np.ndarray]:
    """Neighbourhood codes (DeepMind's encoding kernel) and the mask of surface-carrying neighbourhoods."""
    kernel = (2 ** np.arange(2 ** mask.ndim)[::-1]).reshape((2,) * mask.ndim)
    codes = ndimage.correlate(mask.astype(np.uint16), kernel, mode="constant", cval=0)
    return codes, (codes != 0) & (codes != full)


@dataclass(frozen=True)
class SurfaceDistances:
    """Distances (mm) from every surfel of the reference to the predicted surface and back, with the surfels'
    areas (mm^2, or mm in 2D), in voxel order. Infinite distances when the other mask is empty."""

    ref_to_pred: np.ndarray
    ref_areas: np.ndarray
    pred_to_ref: np.ndarray
    pred_areas: np.ndarray


def _check(mask_ref, mask_pred, spacing) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    mask_ref, mask_pred = np.asarray(mask_ref, bool), np.asarray(mask_pred, bool)
    if mask_ref.shape != mask_pred.shape or mask_ref.ndim not in (2, 3) or len(spacing) != mask_ref.ndim:
        raise ValueError(f"surface metrics need two 2D/3D masks of one shape and a matching spacing, got "
                         f"{mask_ref.shape}, {mask_pred.shape}, spacing {tuple(spacing)}")
    return mask_ref, mask_pred, tuple(float(s) for s in spacing)


def surface_distances(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float]) -> SurfaceDistances:
    """DeepMind's ``compute_surface_distances`` of two masks, at least one of them non-empty."""
    mask_ref, mask_pred, spacing = _check(mask_ref, mask_pred, spacing)
    if not (mask_ref.any() or mask_pred.any()):
        raise ValueError("surface distances need at least one non-empty mask")
    # crop to the union's bounding box plus one empty voxel at the end (DeepMind's _crop_to_bounding_box)
    coords = np.argwhere(mask_ref | mask_pred)
    lo, hi = coords.min(0), coords.max(0) + 1
    crop = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    ref, pred = np.zeros(tuple(hi - lo + 1), bool), np.zeros(tuple(hi - lo + 1), bool)
    inner = tuple(slice(0, b - a) for a, b in zip(lo, hi, strict=True))
    ref[inner], pred[inner] = mask_ref[crop], mask_pred[crop]

    areas = _surfel_areas(spacing)
    full = len(areas) - 1
    code_ref, border_ref = _borders(ref, full)
    code_pred, border_pred = _borders(pred, full)

    def distance_to(border):
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=spacing)

    dist_to_ref, dist_to_pred = distance_to(border_ref), distance_to(border_pred)
    return SurfaceDistances(dist_to_pred[border_ref], areas[code_ref[border_ref]], dist_to_ref[border_pred],
                            areas[code_pred[border_pred]])


def robust_hausdorff(distances: SurfaceDistances, percent: float = 95.0) -> float:
    """DeepMind's ``compute_robust_hausdorff``: the larger of the two directed ``percent``-th percentile distances,
    each the distance at which the cumulative surfel area first reaches ``percent``% (inf for an empty side).
    Surfels are ordered by distance, then area, and summed in float64 as DeepMind does, so that where the
    cumulative area meets ``percent``% exactly the same rounding picks the same surfel."""

    def directed(dist: np.ndarray, area: np.ndarray) -> float:
        if dist.size == 0:
            return float("inf")
        order = np.lexsort((area, dist))
        dist, area = dist[order], area[order]
        cumulative = np.cumsum(area) / np.sum(area)
        index = int(np.searchsorted(cumulative, percent / 100.0))
        return float(dist[min(index, dist.size - 1)])

    return max(directed(distances.ref_to_pred, distances.ref_areas),
               directed(distances.pred_to_ref, distances.pred_areas))


def surface_dice(mask_ref: np.ndarray, mask_pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> float:
    """Surface Dice at ``tolerance_mm``, as DeepMind's ``compute_surface_dice_at_tolerance``.

    ``(|S_ref within tol of S_pred| + |S_pred within tol of S_ref|) / (|S_ref| + |S_pred|)`` with surface
    measured in mm^2 (3D) or mm (2D). NaN when both masks are empty, 0 when exactly one is.
    """
    mask_ref, mask_pred, spacing = _check(mask_ref, mask_pred, spacing)
    has_ref, has_pred = mask_ref.any(), mask_pred.any()
    if not (has_ref or has_pred):
        return float("nan")
    if not (has_ref and has_pred):
        return 0.0
    d = surface_distances(mask_ref, mask_pred, spacing)
    overlap = d.ref_areas[d.ref_to_pred <= tolerance_mm].sum() + d.pred_areas[d.pred_to_ref <= tolerance_mm].sum()
    return float(overlap / (d.ref_areas.sum() + d.pred_areas.sum()))
