"""On-disk instance maps: one blosc2 map, one sampling table and one record per case, plus manifest.json.

Per case ``<case>`` in the instance folder:

* ``<case>.b2nd``: (1, *spatial) instance ids (uint8, int16 or wider), blosc2 chunked like nnU-Net's data so the
  loader reads crops cheaply;
* ``<case>_table.npz``: class, voxel count and up to 50 sampled voxel coordinates per instance (for
  instance-balanced patch sampling); for region-based datasets also the same for the components of each region
  mask (``region_*`` arrays); format and reader in :mod:`nnunet_blob.instances.tables`;
* ``<case>.json``: the record: fingerprint of the segmentation it was computed from (shape, sha1 of the labels,
  plus file size and mtime for a fast check), connectivity, instances per class, voxel counts.

Every file is written to a temporary name and renamed, and the record is written last: a case counts only when its
record exists and matches, so an interrupted run never leaves a half-written map that is later accepted.
``manifest.json`` gathers the records and the run's settings (written atomically at the end of each run).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from nnunet_blob.instances.components import CaseInstances
from nnunet_blob.instances.tables import (
    InstanceLocations,
    read_table,
    region_instance_locations,
    sample_instance_locations,
    write_table,
)
from nnunet_blob.io import atomic_path, atomic_write_json
from nnunet_blob.nnunet_internals import blosc2_block_and_chunk
from nnunet_blob.preprocessing.errors import InstanceMapError

MANIFEST = "manifest.json"
#: 2: tables of region-based datasets also hold the region components (maps of format 1 are recomputed)
FORMAT_VERSION = 2


def seg_fingerprint(seg: np.ndarray, seg_file: Path) -> dict:
    """Shape + sha1 of the labels (content), and the file's size and mtime (fast check)."""
    seg = np.ascontiguousarray(seg)
    stat = seg_file.stat()
    return {"shape": list(seg.shape), "sha1": hashlib.sha1(seg.tobytes()).hexdigest(), "dtype": str(seg.dtype),
            "file": seg_file.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def file_unchanged(fingerprint: dict, seg_file: Path) -> bool:
    try:
        stat = seg_file.stat()
    except FileNotFoundError:
        return False
    return (fingerprint.get("file") == seg_file.name and fingerprint.get("size") == stat.st_size
            and fingerprint.get("mtime_ns") == stat.st_mtime_ns)


class InstanceMapStore:
    """The instance maps of one (dataset, plans, configuration). ``open(case)`` gives a lazily read map."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def map_path(self, case: str) -> Path:
        return self.folder / f"{case}.b2nd"

    def table_path(self, case: str) -> Path:
        return self.folder / f"{case}_table.npz"

    def record_path(self, case: str) -> Path:
        return self.folder / f"{case}.json"

    # ---- reading ----------------------------------------------------------------------------------------------
    def record(self, case: str) -> dict | None:
        try:
            return json.loads(self.record_path(case).read_text())
        except (OSError, ValueError):  # missing or damaged: the case is recomputed
            return None

    def open(self, case: str):
        """The (1, *spatial) instance map of ``case`` as a memory-mapped blosc2 array (crops decompress lazily)."""
        import blosc2

        path = self.map_path(case)
        try:
            return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1},
                               **({} if os.name == "nt" else {"mmap_mode": "r"}))
        except Exception as e:  # blosc2 raises various errors for missing or damaged files
            raise InstanceMapError(f"case {case}: cannot read its instance map {path} ({e}). Recompute it with "
                                   f"`nnunet_blob preprocess ... --overwrite`.") from e

    def table(self, case: str) -> InstanceLocations:
        """The instance table of ``case`` (:class:`~nnunet_blob.instances.tables.InstanceLocations`)."""
        return self._table(case, regions=False)

    def region_table(self, case: str) -> InstanceLocations:
        """The table of the components of each region mask of ``case`` (class = region position + 1)."""
        return self._table(case, regions=True)

    def _table(self, case: str, regions: bool) -> InstanceLocations:
        try:
            return read_table(self.table_path(case), regions)
        except (OSError, ValueError) as e:
            raise InstanceMapError(f"case {case}: cannot read its instance table {self.table_path(case)} ({e}). "
                                   f"Recompute it with `nnunet_blob preprocess ... --overwrite`.") from e

    @property
    def connectivity(self) -> int | None:
        """The connectivity the maps were computed with (from the manifest); None before any were made."""
        return self.manifest.get("connectivity")

    @property
    def manifest(self) -> dict:
        try:
            return json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):  # missing or damaged: as if no maps were made
            return {}

    # ---- writing ----------------------------------------------------------------------------------------------
    def write_case(self, case: str, instances: CaseInstances, fingerprint: dict, settings: dict,
                   patch_size, region_ids: np.ndarray | None = None) -> dict:
        """Write map and table atomically, then the record; returns the record. ``region_ids``: (R, *spatial)
        components of each region mask of a region-based dataset, tabled beside the instances."""
        import blosc2

        self.record_path(case).unlink(missing_ok=True)  # the old record must not vouch for the new files
        blocks, chunks = blosc2_block_and_chunk(instances.instance_map.shape, patch_size,
                                            instances.instance_map.dtype.itemsize)
        with atomic_path(self.map_path(case)) as tmp:
            blosc2.asarray(np.ascontiguousarray(instances.instance_map), urlpath=str(tmp), chunks=chunks,
                           blocks=blocks, cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
        table = sample_instance_locations(instances.instance_map[0], _class_map(instances))
        region_table = None if region_ids is None else region_instance_locations(region_ids)
        write_table(self.table_path(case), table, region_table)
        record = {
            **settings, "case": case, "seg_fingerprint": fingerprint, "dtype": str(instances.instance_map.dtype),
            "num_instances": instances.num_instances, "instances_per_class": instances.counts_per_class(),
            "instance_classes": instances.classes.tolist(), "instance_sizes": instances.sizes.tolist(),
        }
        atomic_write_json(self.record_path(case), record)
        return record

    def remove_case(self, case: str) -> None:
        for path in (self.record_path(case), self.map_path(case), self.table_path(case)):
            path.unlink(missing_ok=True)

    def cases_on_disk(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json") if p.name != MANIFEST and not p.name.startswith("."))

    def write_manifest(self, settings: dict, records: dict) -> None:
        """Write the manifest, unless it already says exactly this."""
        manifest = {**settings, "format": FORMAT_VERSION, "cases": records}
        if self.manifest != manifest:
            atomic_write_json(self.folder / MANIFEST, manifest)


def _class_map(instances: CaseInstances) -> np.ndarray:
    """(*spatial) class label of each voxel's instance (0 outside instances)."""
    lookup = np.concatenate(([0], instances.classes))
    return lookup[instances.instance_map[0]]
