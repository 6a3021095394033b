"""Instance-balanced foreground sampling: small objects are drawn as often as large ones.

nnU-Net forces a share of each batch to contain foreground: ``get_bbox`` picks a random class among the case's
``class_locations`` and centres the patch on ``locations[np.random.choice(len(locations))]``, a voxel drawn
uniformly from a bounded sample of that class's voxels -- so a case with one large lesion and thirty small ones
centres almost every forced patch on the large one.

:class:`InstanceBalancedLocations` stands in for ``class_locations[c]`` and is indexed exactly like it: the
uniform index nnU-Net draws is turned into an instance chosen with probability proportional to
``size ** exponent`` (0: uniform over the class's instances; 1: proportional to size, i.e. nnU-Net's voxel-uniform
behaviour), and then a voxel drawn uniformly from that instance's stored locations, both from nnU-Net's single
draw. Everything else in nnU-Net's sampling (which samples are forced, the class choice, the bounding box) and the
sequence of random numbers the augmentation sees are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: resolution of the uniform index nnU-Net draws (``np.random.choice(len(locations))``)
INDEX_RESOLUTION = 1 << 24


@dataclass(frozen=True)
class InstanceLocations:
    """Per-case instance table: class, voxel count and a bounded sample of voxel coordinates of each instance.

    ``coordinates[offsets[i]:offsets[i + 1]]`` are instance i's sampled voxels, (k, ndim) spatial indices.
    """

    classes: np.ndarray
    sizes: np.ndarray
    coordinates: np.ndarray
    offsets: np.ndarray

    def of_class(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.classes == label)


class InstanceBalancedLocations:
    """``class_locations[c]`` replacement: index i -> a voxel of an instance drawn with weight size**exponent."""

    def __init__(self, table: InstanceLocations, label: int, exponent: float):
        self.table = table
        self.instances = table.of_class(label)
        weights = table.sizes[self.instances].astype(np.float64) ** exponent
        self.cdf = np.cumsum(weights) / weights.sum() if len(self.instances) else np.zeros(0)

    def __len__(self) -> int:
        return INDEX_RESOLUTION if len(self.instances) else 0

    def __getitem__(self, index) -> np.ndarray:
        u = (int(index) + 0.5) / INDEX_RESOLUTION
        i = min(int(np.searchsorted(self.cdf, u, side="right")), len(self.instances) - 1)
        # where u falls inside instance i's share of [0, 1) is again uniform: it picks the voxel, so a pick uses
        # nnU-Net's one random draw and nothing else (its augmentation draws stay as they would be)
        low = self.cdf[i - 1] if i else 0.0
        within = (u - low) / (self.cdf[i] - low)
        start, stop = self.table.offsets[self.instances[i]], self.table.offsets[self.instances[i] + 1]
        voxel = self.table.coordinates[start + min(int(within * (stop - start)), stop - start - 1)]
        return np.concatenate(([0], voxel))  # nnU-Net's locations carry a leading channel index


def balanced_class_locations(class_locations: dict, table: InstanceLocations, exponent: float) -> dict:
    """nnU-Net's ``class_locations`` with every class that has instances replaced by instance-balanced picks.

    Keys nnU-Net uses for other purposes (e.g. the ignore label's "annotated" key, a tuple) are kept as they are.
    """
    balanced = dict(class_locations)
    for key in class_locations:
        if isinstance(key, (int, np.integer)) and len(table.of_class(int(key))):
            balanced[key] = InstanceBalancedLocations(table, int(key), exponent)
    return balanced


def sample_instance_locations(instance_map: np.ndarray, seg: np.ndarray, max_per_instance: int = 50,
                              seed: int = 1234) -> InstanceLocations:
    """Build the table of one case: up to ``max_per_instance`` random voxels per instance (all if fewer).

    ``instance_map`` and ``seg`` are (*spatial) arrays; an instance's class is the segmentation label at its voxels.
    One pass over the foreground voxels: a random key per voxel and a sort by (id, key).
    """
    rng = np.random.default_rng(seed)
    coords = np.nonzero(instance_map > 0)
    ids = instance_map[coords]
    if ids.size == 0:
        ndim = instance_map.ndim
        return InstanceLocations(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, ndim), np.int64),
                                 np.zeros(1, np.int64))
    order = np.lexsort((rng.random(ids.size), ids))
    ids_sorted = ids[order]
    unique_ids, first, sizes = np.unique(ids_sorted, return_index=True, return_counts=True)
    rank = np.arange(ids.size) - np.repeat(first, sizes)
    keep = order[rank < max_per_instance]
    keep = keep[np.argsort(ids[keep], kind="stable")]
    kept_counts = np.minimum(sizes, max_per_instance)
    coordinates = np.stack([c[keep] for c in coords], 1).astype(np.int64)
    classes = seg[tuple(c[order[first]] for c in coords)].astype(np.int64)
    offsets = np.concatenate(([0], np.cumsum(kept_counts))).astype(np.int64)
    return InstanceLocations(classes, sizes.astype(np.int64), coordinates, offsets)
