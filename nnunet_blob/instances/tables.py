"""The per-case instance table and its file: class, size and a bounded sample of voxels of every instance.

The table is what instance-balanced patch sampling draws from (it never reads the full map). On disk it is one
``.npz`` per case with the arrays of :data:`TABLE_KEYS`; a region-based dataset's table also holds the table of the
connected components of each region mask, under the same keys with the prefix :data:`REGION_PREFIX`, and the file
can carry an identity (a JSON object under :data:`IDENTITY_KEY`: whose table it is) that its reader checks.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, fields

import numpy as np

from nnunet_blob.files import atomic_write_bytes

#: voxels kept per instance (all of them if it has fewer)
SAMPLES_PER_INSTANCE = 50
#: prefix of the arrays of the region table in a case's file
REGION_PREFIX = "region_"
#: the array holding the file's identity (a JSON object as a 0-d string array)
IDENTITY_KEY = "identity"


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


#: the arrays of a table, in the order of :class:`InstanceLocations`' fields (the names in the file)
TABLE_KEYS = tuple(f.name for f in fields(InstanceLocations))


def sample_instance_locations(instance_map: np.ndarray, seg: np.ndarray, max_per_instance: int = SAMPLES_PER_INSTANCE,
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


def region_instance_locations(region_ids: np.ndarray, max_per_instance: int = SAMPLES_PER_INSTANCE,
                              seed: int = 1234) -> InstanceLocations:
    """One table for the (R, *spatial) component maps of a case's regions (instance ids restart in every region,
    see :func:`~nnunet_blob.instances.components.instances_per_region`); region r's instances get class r + 1.
    """
    tables = [sample_instance_locations(ids, np.broadcast_to(np.int64(r + 1), ids.shape), max_per_instance,
                                        seed + r) for r, ids in enumerate(region_ids)]
    if not tables:
        return sample_instance_locations(np.zeros(region_ids.shape[1:], np.uint8), np.zeros(1, np.int64))
    offsets, shift = [np.zeros(1, np.int64)], 0
    for table in tables:
        offsets.append(table.offsets[1:] + shift)
        shift += table.offsets[-1]
    return InstanceLocations(np.concatenate([t.classes for t in tables]), np.concatenate([t.sizes for t in tables]),
                             np.concatenate([t.coordinates for t in tables]), np.concatenate(offsets))


def write_table(path: str | os.PathLike, table: InstanceLocations,
                region_table: InstanceLocations | None = None, identity: dict | None = None) -> None:
    """Write a case's table (and its region table, and its ``identity``) as one ``.npz``, atomically."""
    arrays = {key: getattr(table, key) for key in TABLE_KEYS}
    if region_table is not None:
        arrays.update({REGION_PREFIX + key: getattr(region_table, key) for key in TABLE_KEYS})
    if identity is not None:
        arrays[IDENTITY_KEY] = np.array(json.dumps(identity, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_table(path: str | os.PathLike, regions: bool = False, identity: dict | None = None) -> InstanceLocations:
    """A case's table, or with ``regions=True`` its region table; with ``identity``, only if the file carries it.

    Raises FileNotFoundError when the file is missing and ValueError naming the file when it is damaged, has no
    region table or carries another identity.
    """
    prefix = REGION_PREFIX if regions else ""
    try:
        with np.load(path) as f:
            arrays = {key: f[prefix + key] for key in TABLE_KEYS if prefix + key in f.files}
            stored = _identity(f) if identity is not None else None
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile and numpy raise many kinds of errors for damaged files
        raise ValueError(f"{path} is not a readable instance table ({type(e).__name__}: {e})") from e
    missing = [prefix + key for key in TABLE_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{path} has no {', '.join(missing)} (written by an older version or damaged)")
    if identity is not None and stored != identity:
        raise ValueError(f"{path} is the table of {stored} ({identity} expected)")
    return InstanceLocations(**arrays)


def read_table_identity(path: str | os.PathLike) -> dict | None:
    """The identity a table file carries; None when it has none or cannot be read."""
    try:
        with np.load(path) as f:
            return _identity(f)
    except Exception:
        return None


def _identity(npz) -> dict | None:
    if IDENTITY_KEY not in npz.files:
        return None
    return json.loads(str(npz[IDENTITY_KEY]))
