"""Voronoi cells of connected components: every voxel belongs to the component nearest to it.

The cell of component k is the set of voxels whose nearest component voxel (exact Euclidean distance, in voxels or
in mm with ``spacing``) belongs to k. The cells partition the image and each component lies inside its own cell.
This is the region CC-Metrics scores each reference component on (A. Jaus et al., "Every Component Counts:
Rethinking the Measure of Success for Medical Semantic Segmentation in Multi-Instance Segmentation Tasks", AAAI
2025) and the region of one term of the CC-DiceCE loss (L. Bouteille et al., "Learning to Look Closer: A New
Instance-Wise Loss for Small Cerebral Lesion Segmentation", ISBI 2026).

Computed with the feature transform of ``scipy.ndimage.distance_transform_edt`` (exact, linear in the number of
voxels, whatever the number of components). **Ties**: a voxel at the same distance from two components goes to
the component of the voxel the feature transform returns; that choice is deterministic (the same input gives the
same cells on every machine) but follows the transform's scan, not a rule on component ids. Ties are voxels on
the bisector of two components.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from nnunet_blob.instances.detection import label_components


def component_cells(components: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """The Voronoi cells of a labelled component map (2D or 3D; 0 = no component): each voxel gets the id of the
    component nearest to it. All zeros when there is no component.

    ``spacing``: voxel size per axis (e.g. mm); default 1 along every axis.
    """
    components = np.asarray(components)
    if not components.any():
        return np.zeros_like(components)
    nearest = ndimage.distance_transform_edt(components == 0, sampling=spacing, return_distances=False,
                                             return_indices=True)
    return components[tuple(nearest)]


def class_cells(seg: np.ndarray, classes: Sequence[int], connectivity: int = 26,
                spacing: Sequence[float] | None = None, ignore_label: int | None = None) -> np.ndarray:
    """(len(classes), *spatial) int32: per class, the cells of its connected components (ids 1..n per class).

    ``seg`` is a 2D or 3D label map; voxels of ``ignore_label`` belong to no component (they still lie in some
    cell). A class without a component in ``seg`` has a channel of zeros.
    """
    seg = np.asarray(seg)
    cells = np.zeros((len(classes), *seg.shape), dtype=np.int32)
    for row, c in enumerate(classes):
        mask = seg == c
        if ignore_label is not None and ignore_label == c:
            continue
        if mask.any():
            cells[row] = component_cells(label_components(mask, connectivity)[0], spacing)
    return cells


def voronoi_cells(target, num_classes: int, *, connectivity: int = 26, spacing: Sequence[float] | None = None,
                  ignore_label: int | None = None):
    """(B, C - 1, *spatial) int32 tensor of a (B, 1, *spatial) label tensor: per foreground class 1..C-1, the id of
    the component (``connectivity``, 26 by default) whose nearest voxel is closest to each voxel, 0 where the class
    has no component in the sample.

    Computed on the host (connected components and the distance transform run on the CPU) and returned on
    ``target``'s device. For training, the trainers compute the cells of every augmented patch and every
    deep-supervision scale in nnU-Net's data-loading workers instead.
    """
    import torch

    labels = target.detach().cpu().numpy()
    if labels.ndim < 3 or labels.shape[1] != 1:
        raise ValueError(f"target must have shape (B, 1, *spatial), got {tuple(labels.shape)}")
    classes = range(1, num_classes)
    cells = np.stack([class_cells(sample[0], classes, connectivity, spacing, ignore_label) for sample in labels])
    return torch.from_numpy(cells).to(target.device)
