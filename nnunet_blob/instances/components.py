"""Connected components per class with connected-components-3d.

One multi-label ``cc3d.connected_components`` call labels every class at once: a component never spans two
labels, so every instance lies inside one class and ids are unique within the case. Background (0), the ignore
label and nnU-Net's "outside the image" value (-1) are never instances. 2D configurations are 3D volumes too and
get 3D components (an object across slices keeps one id).

Region-based datasets (``regions_class_order``) store labels, not regions, in the preprocessed segmentation: the
stored maps are per label, and :func:`instances_per_region` gives the components of each region mask instead.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cc3d
import numpy as np

from nnunet_blob.instances.connectivity import CC3DConnectivity, cc3d_connectivity


@dataclass(frozen=True)
class CaseInstances:
    """The instance map of one case and what the manifest records about it."""

    instance_map: np.ndarray  # (1, *spatial), smallest dtype holding the ids (smallest_id_dtype)
    classes: np.ndarray  # (n,) class label of instance i + 1
    sizes: np.ndarray  # (n,) voxel count of instance i + 1

    @property
    def num_instances(self) -> int:
        return int(self.classes.size)

    def counts_per_class(self) -> dict[str, int]:
        labels, counts = np.unique(self.classes, return_counts=True)
        return {str(int(label)): int(n) for label, n in zip(labels, counts, strict=True)}


def smallest_id_dtype(max_id: int) -> np.dtype:
    """uint8, int16, int32 or int64: the smallest holding ``max_id`` (up to int16, nnU-Net's loader takes the
    crops without a range check, see :mod:`nnunet_blob.trainers.instance_data`)."""
    for dtype in (np.uint8, np.int16, np.int32):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _label_volume(seg: np.ndarray, connectivity: int, case: str) -> tuple[np.ndarray, CC3DConnectivity]:
    """((*spatial) integer labels of a (1, *spatial) or (*spatial) segmentation, the cc3d connectivity for them);
    ValueError naming the case."""
    seg = np.asarray(seg)
    if seg.ndim == 4:
        if seg.shape[0] != 1:
            raise ValueError(f"case {case}: expected a single-channel segmentation, got shape {seg.shape}")
        seg = seg[0]
    if seg.dtype.kind == "f":
        if not np.all(np.equal(np.mod(seg, 1), 0)):
            raise ValueError(f"case {case}: the segmentation holds non-integer labels; nnU-Net segmentations must "
                             f"be integer label maps (re-run nnUNetv2_preprocess on integer labelsTr)")
        seg = seg.astype(np.int32)
    elif seg.dtype.kind not in "iub":
        raise ValueError(f"case {case}: segmentation of dtype {seg.dtype} is not an integer label map")
    return seg, cc3d_connectivity(seg.ndim, connectivity)


def compute_instances(seg: np.ndarray, ignore_label: int | None = None, connectivity: int = 26,
                      case: str = "") -> CaseInstances:
    """Instance map of a preprocessed segmentation (1, *spatial) or (*spatial) with integer labels."""
    seg, cc3d_neighbourhood = _label_volume(seg, connectivity, case)
    labels = np.where(seg > 0, seg, 0)
    if ignore_label is not None:
        labels = np.where(labels == ignore_label, 0, labels)
    components, n = cc3d.connected_components(np.ascontiguousarray(labels), connectivity=cc3d_neighbourhood,
                                              return_N=True)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    classes = np.zeros(n, dtype=np.int64)
    foreground = components > 0
    classes[components[foreground] - 1] = labels[foreground]
    instance_map = components.astype(smallest_id_dtype(n))[None]
    return CaseInstances(instance_map, classes, sizes.astype(np.int64))


def instances_per_region(seg: np.ndarray, regions: Sequence[int | Sequence[int]], connectivity: int = 26,
                         case: str = "") -> np.ndarray:
    """(R, *spatial) ids: the connected components of each region mask (region = label or tuple of labels).

    ``regions`` as nnU-Net's ``LabelManager.foreground_regions`` (BraTS: ``[(1, 2, 3), (2, 3), (3,)]``). Ids restart
    at 1 in every region channel; voxels outside a region (background, ignore label, -1) are 0.
    """
    seg, cc3d_neighbourhood = _label_volume(seg, connectivity, case)
    maps = [cc3d.connected_components(np.isin(seg, np.atleast_1d(region)), connectivity=cc3d_neighbourhood)
            for region in regions]
    max_id = max((int(m.max()) for m in maps), default=0)
    return np.stack(maps).astype(smallest_id_dtype(max_id)) if maps else np.zeros((0, *seg.shape), np.uint8)
