"""Instances <-> border-core labels on arrays (one case, spatial axes only; 2D images may be one-slice volumes).

**Instances -> labels** (:func:`border_core_labels`). For nucleus A (the voxels of one instance id) and a border
thickness r in the units of the spacing (mm, µm), a voxel x of A is *border* when some voxel of the image that is
not in A (background or another nucleus) lies within physical distance r of it,

    border(A) = { x in A : min_{y in image, y not in A} ||(x - y) * spacing||_2 <= r },   core(A) = A \\ border(A),

i.e. core(A) is A eroded by a ball of radius r, nnU-Net v1's ``generate_border_as_suggested_by_twollmann`` (which
erodes with a resampled, rounded ball) with exact Euclidean distances (``scipy.ndimage.distance_transform_edt`` with
the spacing). Outside the image is not outside the nucleus: a nucleus cut by the image edge gets no border along the
edge (its voxels beyond the edge are unknown, as with nnU-Net's ``reflect`` erosion). Labels: 0 background,
:data:`CORE` (1) core, :data:`BORDER` (2) border. The default r is the length of one voxel's diagonal
(:func:`default_border_thickness`), which keeps the cores of touching nuclei apart under full (26, in 2D 8)
connectivity: every voxel one step (face, edge or corner) from a core voxel of A is at most that far from it, so it
is in A.

**Labels -> instances** (:func:`instances_from_border_core`, nnU-Net v1's ``convert_to_instance_seg``). The cores
(connected components of the core label, 26-connectivity, 8 in 2D, unless told otherwise) are the instances' seeds;
cores of fewer than ``min_core_size`` voxels do not seed (a spurious speck of core would otherwise split a nucleus)
and are treated as border. Every other foreground voxel (border, or core too small to seed) goes to the nearest
seed of its own foreground component (connected components of core and border together), nearest in straight-line
physical distance (``distance_transform_edt`` with the spacing and ``return_indices``; at equal distance, the one
the transform returns). A foreground component without any seed (a nucleus predicted as border only) becomes one
instance of its own. Ids are 1..N: seeds in the order connected-components-3d labels them, then the seedless
components.

**When the round trip is exact** (``instances_from_border_core(border_core_labels(I)) == I`` up to renumbering):
with r at least the voxel diagonal, when every nucleus is one connected piece whose core is non-empty and
connected, and each of its border voxels is nearer to its own core than to the core of any nucleus it touches
(true for convex nuclei wider than about 2r + 2 voxels that meet along flat-ish interfaces). Every other nucleus'
core is farther than r from a voxel of A, so a voxel within r of its own core always comes back right; only voxels
farther than r from their own core can go astray: the tips of sharp wedges where three nuclei, or two and the
background, meet. A nucleus with no core is lost into a touching neighbour (or kept, if it touches none); one whose
core splits comes back as several.
:func:`compare_instances` counts the nuclei that come back exactly, and ``nnunet_blob border-core-dataset`` reports
it per dataset, so a too-thick border is seen before training.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np
from scipy import ndimage

from nnunet_blob.instances.components import smallest_id_dtype
from nnunet_blob.instances.connectivity import cc3d_connectivity

#: label of the cores and of the borders in a border-core segmentation
CORE, BORDER = 1, 2
#: relative tolerance of the distance comparison (a distance equal to r in exact arithmetic is border)
_RELATIVE_TOLERANCE = 1e-9


class BorderCoreError(ValueError):
    """An input that cannot be converted; the message names the file or case and the fix."""


def _checked_spacing(spacing: Sequence[float], shape: tuple[int, ...], what: str) -> np.ndarray:
    steps = np.asarray(spacing, dtype=np.float64)
    if steps.shape != (len(shape),):
        raise BorderCoreError(f"{what}: {steps.size} spacing values for an array of shape {shape}")
    if not np.all(np.isfinite(steps)) or np.any(steps <= 0):
        raise BorderCoreError(f"{what}: spacing {tuple(steps.tolist())} must be positive")
    return steps


def _integer_ids(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as a non-negative integer array; BorderCoreError otherwise."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise BorderCoreError(f"{what}: holds non-integer values; instance and label maps must be integer maps")
        array = array.astype(np.int64)
    elif array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype.kind not in "iu":
        raise BorderCoreError(f"{what}: values of type {array.dtype} are not integer ids")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        raise BorderCoreError(f"{what}: holds negative values ({int(array.min())}); ids must be >= 0")
    if array.ndim not in (2, 3):
        raise BorderCoreError(f"{what}: expected a 2D or 3D array, got shape {array.shape}")
    return array


def default_border_thickness(spacing: Sequence[float], shape: tuple[int, ...]) -> float:
    """The length of one voxel's diagonal, ``||spacing||_2`` over the axes longer than one voxel (nnU-Net reads a
    2D image as a one-slice volume with spacing 999 on that axis, which is no axis of the image)."""
    steps = [float(s) for s, n in zip(spacing, shape, strict=True) if n > 1]
    return float(np.sqrt(np.sum(np.square(steps)))) if steps else 0.0


def border_core_labels(instances: np.ndarray, spacing: Sequence[float], border_thickness: float | None = None,
                       what: str = "instances") -> tuple[np.ndarray, np.ndarray]:
    """(labels, cores) of an instance map (module docstring).

    Args:
        instances: (*spatial) non-negative integer ids, 0 background, one id per nucleus.
        spacing: voxel size per axis of ``instances``.
        border_thickness: r in the units of ``spacing``; None: :func:`default_border_thickness`.
        what: names the input in errors (a file or case).

    Returns:
        labels: uint8, 0 background, :data:`CORE`, :data:`BORDER`.
        cores: the nucleus' id on its core voxels, 0 elsewhere (dtype of ``instances``).
    """
    instances = _integer_ids(instances, what)
    steps = _checked_spacing(spacing, instances.shape, what)
    r = (default_border_thickness(steps.tolist(), instances.shape) if border_thickness is None
         else float(border_thickness))
    if not np.isfinite(r) or r < 0:
        raise BorderCoreError(f"{what}: border thickness {r} must be >= 0")
    foreground = instances > 0
    border = np.zeros(instances.shape, dtype=bool)
    if r > 0:
        limit = r * (1 + _RELATIVE_TOLERANCE)
        margin = [int(np.floor(limit / s)) for s in steps]  # any voxel within r is this many steps away at most
        for index, box in enumerate(ndimage.find_objects(instances), start=1):
            if box is None:
                continue
            crop = tuple(slice(max(b.start - m, 0), min(b.stop + m, n))
                         for b, m, n in zip(box, margin, instances.shape, strict=True))
            mask = instances[crop] == index
            if mask.all():  # no voxel outside the nucleus within reach: all core
                continue
            distance = ndimage.distance_transform_edt(mask, sampling=steps)
            border[crop] |= mask & (distance <= limit)
    labels = np.where(foreground, np.where(border, BORDER, CORE), 0).astype(np.uint8)
    cores = np.where(labels == CORE, instances, 0).astype(instances.dtype)
    return labels, cores


def instances_from_border_core(segmentation: np.ndarray, spacing: Sequence[float], core_label: int = CORE,
                               border_label: int = BORDER, min_core_size: int = 0, connectivity: int = 26,
                               what: str = "segmentation") -> np.ndarray:
    """Instance map (ids 1..N, smallest dtype holding N) of a border-core segmentation (module docstring).

    Args:
        segmentation: (*spatial) integer labels: 0 background, ``core_label``, ``border_label``; any other value is
            an error.
        spacing: voxel size per axis (the distances to the cores are physical).
        min_core_size: cores with fewer voxels do not seed an instance (0 or 1: every core seeds).
        connectivity: 6, 18 or 26 (in 2D 4, 8, 8) for the cores and the foreground components.
        what: names the input in errors.
    """
    segmentation = _integer_ids(segmentation, what)
    steps = _checked_spacing(spacing, segmentation.shape, what)
    if core_label == border_label or core_label <= 0 or border_label <= 0:
        raise BorderCoreError(f"core label {core_label} and border label {border_label} must be two different "
                              f"foreground labels (> 0)")
    core = segmentation == core_label
    foreground = core | (segmentation == border_label)
    unknown = (segmentation != 0) & ~foreground
    if unknown.any():
        values = np.unique(segmentation[unknown])[:10].tolist()
        raise BorderCoreError(f"{what}: labels {values} are neither background (0), core ({core_label}) nor border "
                              f"({border_label}); is it a border-core segmentation? (set --core-label/--border-label)")
    neighbourhood = cc3d_connectivity(segmentation.ndim, connectivity)
    # uint8, not bool: connected-components-3d 4.1 mislabels boolean arrays of shape (1, n) and (1, 1, n)
    seeds, n = cc3d.connected_components(np.ascontiguousarray(core, dtype=np.uint8), connectivity=neighbourhood,
                                         return_N=True)
    seeds = seeds.astype(np.int64)
    if min_core_size > 1 and n:
        keep = np.bincount(seeds.ravel(), minlength=n + 1) >= min_core_size
        keep[0] = False
        renumber = np.where(keep, np.cumsum(keep), 0)
        seeds, n = renumber[seeds], int(keep.sum())
    components = cc3d.connected_components(np.ascontiguousarray(foreground, dtype=np.uint8),
                                           connectivity=neighbourhood)
    result = seeds.copy()
    next_id = n + 1
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        if box is None:
            continue
        component = components[box] == index
        own_seeds = np.where(component, seeds[box], 0)
        targets = component & (own_seeds == 0)
        if not targets.any():
            continue
        view = result[box]
        if not own_seeds.any():  # no core: the component is one instance
            view[targets] = next_id
            next_id += 1
            continue
        nearest = ndimage.distance_transform_edt(own_seeds == 0, sampling=steps, return_distances=False,
                                                 return_indices=True)
        view[targets] = own_seeds[tuple(nearest)][targets]
    return result.astype(smallest_id_dtype(next_id - 1))


@dataclass(frozen=True)
class InstanceComparison:
    """How a decoded instance map matches the reference nuclei."""

    nuclei: int  # reference instances
    exact: int  # reference instances whose voxel set is exactly one decoded instance
    decoded: int  # decoded instances
    voxels_off: int  # reference voxels outside their matched decoded instance (mutual largest overlap), or unmatched


def compare_instances(reference: np.ndarray, decoded: np.ndarray) -> InstanceComparison:
    """Compare two instance maps of one case (ids need not agree). A nucleus is *exact* when some decoded instance
    has exactly its voxels; a nucleus and a decoded instance are *matched* when each is the other's largest overlap,
    and ``voxels_off`` counts the reference voxels not in their nucleus' matched instance (a merged or lost nucleus
    counts whole, the smaller part of a split one too)."""
    reference = np.asarray(reference).astype(np.int64).ravel()
    decoded = np.asarray(decoded).astype(np.int64).ravel()
    foreground = (reference > 0) | (decoded > 0)
    reference, decoded = reference[foreground], decoded[foreground]
    base = int(decoded.max(initial=0)) + 1
    keys, counts = np.unique(reference * base + decoded, return_counts=True)  # one key per (nucleus, decoded) pair
    pairs = np.stack([keys // base, keys % base])
    partners_r: dict[int, int] = {}
    partners_d: dict[int, int] = {}
    best_r: dict[int, tuple[int, int]] = {}  # nucleus -> (overlap, decoded id) of its largest overlap
    best_d: dict[int, tuple[int, int]] = {}  # decoded id -> (overlap, nucleus)
    sizes: dict[int, int] = {}
    for (r, d), count in zip(pairs.T.tolist(), counts.tolist(), strict=True):
        partners_r[r] = partners_r.get(r, 0) + 1
        partners_d[d] = partners_d.get(d, 0) + 1
        if r > 0:
            sizes[r] = sizes.get(r, 0) + count
        if r > 0 and d > 0:
            best_r[r] = max(best_r.get(r, (0, 0)), (count, -d))
            best_d[d] = max(best_d.get(d, (0, 0)), (count, -r))
    exact = sum(1 for r, d in pairs.T.tolist() if r > 0 and d > 0 and partners_r[r] == 1 and partners_d[d] == 1)
    matched = sum(count for r, (count, minus_d) in best_r.items() if best_d[-minus_d][1] == -r)
    return InstanceComparison(len(sizes), int(exact), sum(1 for d in partners_d if d > 0),
                              int(sum(sizes.values()) - matched))
