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

Region-based datasets (BraTS-style) key ``class_locations`` by region (a label tuple): their tables hold the
connected components of each region mask (:func:`~nnunet_blob.instances.tables.region_instance_locations`),
the table's ``classes`` being the region's position + 1 in nnU-Net's ``foreground_regions``
(:func:`region_groups`).
"""
from __future__ import annotations

import numpy as np

from nnunet_blob.instances.tables import InstanceLocations

#: resolution of the uniform index nnU-Net draws (``np.random.choice(len(locations))``)
INDEX_RESOLUTION = 1 << 24


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


def _label_set(key) -> tuple[int, ...] | None:
    """A ``class_locations`` key as a sorted label tuple (3 -> (3,), (3, 2) -> (2, 3)); None for other keys."""
    if isinstance(key, (int, np.integer)):
        return (int(key),)
    if isinstance(key, tuple) and key and all(isinstance(k, (int, np.integer)) for k in key):
        return tuple(sorted(int(k) for k in key))
    return None


def region_groups(foreground_regions) -> dict[tuple[int, ...], int]:
    """{label tuple of region r: r + 1} for nnU-Net's ``LabelManager.foreground_regions``."""
    groups = {}
    for r, region in enumerate(foreground_regions):
        labels = _label_set(tuple(int(label) for label in np.atleast_1d(region)))
        if labels is None:
            raise ValueError(f"region {region!r} of the label manager is not a set of integer labels")
        groups[labels] = r + 1
    return groups


def balanced_class_locations(class_locations: dict, table: InstanceLocations, exponent: float,
                             groups: dict[tuple[int, ...], int] | None = None) -> dict:
    """nnU-Net's ``class_locations`` with every class (or region) that has instances replaced by instance-balanced
    picks.

    ``groups`` maps a key's label tuple to the table's ``classes`` value: by default label c is (c,) -> c; region
    datasets pass :func:`region_groups`. Keys nnU-Net uses for other purposes (the ignore label's "annotated" key,
    ``(-1, 0, 1, ...)``) match no group and are kept as they are.
    """
    balanced = dict(class_locations)
    for key in class_locations:
        labels = _label_set(key)
        if labels is None:
            continue
        group = (labels[0] if len(labels) == 1 else None) if groups is None else groups.get(labels)
        if group is not None and len(table.of_class(group)):
            balanced[key] = InstanceBalancedLocations(table, group, exponent)
    return balanced
