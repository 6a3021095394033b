"""On-disk instance maps: one blosc2 map, one sampling table and one record per case, plus manifest.json.

Per case ``<case>`` in the instance folder:

* ``<case>.b2nd``: (1, *spatial) instance ids (uint8, int16 or wider), blosc2 chunked like nnU-Net's data so the
  loader reads crops cheaply;
* ``<case>_table.npz``: class, voxel count and up to 50 sampled voxel coordinates per instance (for
  instance-balanced patch sampling); for region-based datasets also the same for the components of each region
  mask (``region_*`` arrays); format and reader in :mod:`nnunet_blob.instances.tables`;
* ``<case>.json``: the record: fingerprint of the segmentation it was computed from (shape, sha1 of the labels,
  plus file size and mtime for a fast check), connectivity, instances per class, voxel counts, the case's
  *identity* and the size, mtime and sha1 of its map and table files; for maps made from annotated instances
  (:mod:`.annotated`) also the annotation file's name, size, mtime and sha1, the annotated id of every stored id and
  what reconciliation changed.

The identity (:func:`case_identity`: the case, the settings the map depends on, the sha1 of the segmentation's
labels, of the map's ids and of the annotation file, if any) is also stored inside both files (the map's blosc2
metadata, an array of the table), so a file of another case, dataset or connectivity is recognised whatever its
name, size or date.

A case's files are trusted only as far as its record vouches for them (:meth:`InstanceMapStore.check_files`): the
size of each file must match, its content hash too when its mtime differs from the record's (so an unchanged case
costs two ``stat`` calls and reading the map's header, never its data), and the map must carry the record's
identity. Every file is written to a temporary name and renamed, and the record is written last: a case counts only
when its record exists and matches, so an interrupted run never leaves a half-written map that is later accepted.
``manifest.json`` gathers the records and the run's settings (written atomically at the end of each run).

Writers hold an exclusive lock on the folder's ``.lock`` file for their whole run and checkers a shared one
(:meth:`InstanceMapStore.lock`), so a checker sees the complete set before or after a run, never half of one. A
process that keeps using the maps after its check (a trainer) opens every map against the identities it checked
(:meth:`InstanceMapStore.expect`) and fails with a clear error when a map changed under it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from nnunet_blob.files import TEMPORARY_PREFIX, atomic_path, atomic_write_json, file_lock
from nnunet_blob.instances.components import CaseInstances
from nnunet_blob.instances.tables import (
    InstanceLocations,
    read_table,
    region_instance_locations,
    sample_instance_locations,
    write_table,
)
from nnunet_blob.nnunet_internals import blosc2_block_and_chunk
from nnunet_blob.preprocessing.errors import InstanceMapError

MANIFEST = "manifest.json"
#: the lock file of the folder (see :meth:`InstanceMapStore.lock`)
LOCK = ".lock"
#: 2: tables of region-based datasets also hold the region components; 3: records hold the files' sizes and hashes
#: and the files carry the case's identity; 4: maps come from connected components or from annotated instances, and
#: the identity holds the annotation file's sha1 (maps of older formats are recomputed)
FORMAT_VERSION = 4
#: settings a map depends on; dataset, plans and configuration are only recorded (a cascade configuration shares
#: the data folder, and so the maps, of its full-resolution configuration). ``instances``: "components" or
#: "annotated" (:mod:`.annotated`)
FRESHNESS_KEYS = ("format", "data_identifier", "connectivity", "ignore_label", "regions", "instances")
#: the blosc2 metadata entry of a map that holds its identity
IDENTITY_META = "nnunet_blob"
#: bytes read at a time when hashing a file
_HASH_BLOCK = 1 << 20


def case_identity(case: str, settings: dict, seg_sha1: str, ids_sha1: str, annotation_sha1: str | None = None) -> dict:
    """What a case's map and table are: the case, the settings they depend on (:data:`FRESHNESS_KEYS`), the sha1 of
    the segmentation's labels they were computed from, the sha1 of the map's ids and the sha1 of the annotation file
    they were made from (None for connected components)."""
    return {"case": case, **{k: settings[k] for k in FRESHNESS_KEYS}, "seg_sha1": seg_sha1, "ids_sha1": ids_sha1,
            "annotation_sha1": annotation_sha1}


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_stamp(path: Path) -> dict:
    """Size, mtime and sha1 of a file, as a record keeps them."""
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha1": file_sha1(path)}


def map_identity(path: Path) -> dict | None:
    """The identity stored in a map file's metadata; None when it has none or is not a readable blosc2 file."""
    try:
        array = _open_map(path)  # kept referenced while its metadata is read (blosc2 checks its owner is alive)
        return dict(array.schunk.vlmeta[IDENTITY_META])
    except Exception:  # missing, damaged or foreign files: blosc2 raises various errors
        return None


def _open_map(path: Path):
    import blosc2

    return blosc2.open(urlpath=str(path), mode="r", dparams={"nthreads": 1},
                       **({} if os.name == "nt" else {"mmap_mode": "r"}))


def _describe_identity(identity: dict | None, expected: dict) -> str:
    """What a file is, said against what its record expects."""
    if identity is None:
        return "carries no nnunet_blob identity (not a map written by this version, or damaged)"
    if identity.get("case") != expected.get("case"):
        return f"holds the map of case {identity.get('case')!r}"
    different = [k for k in FRESHNESS_KEYS if identity.get(k) != expected.get(k)]
    if different:
        return "was made with " + ", ".join(f"{k} {identity.get(k)!r}" for k in different)
    if identity.get("annotation_sha1") != expected.get("annotation_sha1"):
        return "was made from another annotation of this case"
    return "was made from other labels of this case"


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
        #: identities of the cases as checked (:meth:`expect`); opened maps and tables must carry them
        self.expected: dict[str, dict] = {}
        self._checked_max_instances: int | None = None

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
        """The (1, *spatial) instance map of ``case`` as a memory-mapped blosc2 array (crops decompress lazily).

        When the case's identity is expected (:meth:`expect`), the map must carry it (one small metadata read).
        """
        path = self.map_path(case)
        try:
            array = _open_map(path)
        except Exception as e:  # blosc2 raises various errors for missing or damaged files
            raise InstanceMapError(f"case {case}: cannot read its instance map {path} ({e}). "
                                   f"{self._changed_hint(case)}") from e
        expected = self.expected.get(case)
        if expected is not None:
            try:
                identity = dict(array.schunk.vlmeta[IDENTITY_META])
            except Exception:
                identity = None
            if identity != expected:
                raise InstanceMapError(f"case {case}: its instance map {path} {_describe_identity(identity, expected)}"
                                       f", not what was checked before. {self._changed_hint(case)}")
        return array

    def _changed_hint(self, case: str) -> str:
        if case in self.expected:
            return ("The maps changed after this process checked them (another `nnunet_blob preprocess` or trainer "
                    "rewrote them, e.g. with another --connectivity or --overwrite): batches would mix maps of both. "
                    "Restart the training (`nnUNetv2_train ... --c` continues from its last checkpoint) to use the "
                    "new maps.")
        return "Recompute it with `nnunet_blob preprocess ... --overwrite`."

    def expect(self, records: dict) -> None:
        """Remember the identities of these checked records: maps and tables opened later must carry them."""
        self.expected = {case: record["identity"] for case, record in records.items()}
        self._checked_max_instances = max((r["num_instances"] for r in records.values()), default=0)

    def table(self, case: str) -> InstanceLocations:
        """The instance table of ``case`` (:class:`~nnunet_blob.instances.tables.InstanceLocations`)."""
        return self._table(case, regions=False)

    def region_table(self, case: str) -> InstanceLocations:
        """The table of the components of each region mask of ``case`` (class = region position + 1)."""
        return self._table(case, regions=True)

    def _table(self, case: str, regions: bool) -> InstanceLocations:
        try:
            return read_table(self.table_path(case), regions, self.expected.get(case))
        except (OSError, ValueError) as e:
            raise InstanceMapError(f"case {case}: cannot read its instance table {self.table_path(case)} ({e}). "
                                   f"{self._changed_hint(case)}") from e

    def check_files(self, case: str, record: dict) -> tuple[str | None, dict | None]:
        """(what is wrong with the files of ``case`` against its record, or None; new file stamps when a file's
        mtime changed but its content is the one recorded, else None).

        Cheap for an unchanged case: two ``stat`` calls and the map's metadata; a file whose mtime changed is
        hashed.
        """
        stamps = record.get("files") or {}
        restamped = {}
        for kind, path in (("map", self.map_path(case)), ("table", self.table_path(case))):
            expected = stamps.get(kind)
            try:
                stat = path.stat()
            except OSError:
                return f"its {kind} file {path.name} is missing", None
            if not expected:
                return f"its record has no checksum of its {kind} file (older format)", None
            if stat.st_size != expected["size"]:
                return (f"its {kind} file {path.name} has {stat.st_size} bytes, its record says {expected['size']} "
                        f"(truncated or replaced)"), None
            if stat.st_mtime_ns != expected["mtime_ns"]:
                try:
                    same = file_sha1(path) == expected["sha1"]
                except OSError as e:
                    return f"its {kind} file {path.name} cannot be read ({e})", None
                if not same:
                    return f"its {kind} file {path.name} does not hold the recorded content (replaced or damaged)", None
                restamped[kind] = {**expected, "mtime_ns": stat.st_mtime_ns}
        identity = map_identity(self.map_path(case))
        if identity != record.get("identity"):
            return f"its map file {self.map_path(case).name} {_describe_identity(identity, record['identity'])}", None
        return None, ({**stamps, **restamped} if restamped else None)

    @property
    def connectivity(self) -> int | None:
        """The connectivity the maps were computed with (from the manifest); None before any were made."""
        return self.manifest.get("connectivity")

    @property
    def max_instances(self) -> int:
        """The largest number of instances of a case: of the checked cases (:meth:`expect`), else of the manifest;
        0 without maps."""
        if self._checked_max_instances is not None:
            return self._checked_max_instances
        return max((r.get("num_instances", 0) for r in self.manifest.get("cases", {}).values()), default=0)

    @property
    def manifest(self) -> dict:
        try:
            return json.loads((self.folder / MANIFEST).read_text())
        except (OSError, ValueError):  # missing or damaged: as if no maps were made
            return {}

    # ---- writing ----------------------------------------------------------------------------------------------
    def write_case(self, case: str, instances: CaseInstances, fingerprint: dict, settings: dict,
                   patch_size, region_ids: np.ndarray | None = None, annotation: dict | None = None) -> dict:
        """Write map and table atomically, then the record; returns the record. ``region_ids``: (R, *spatial)
        components of each region mask of a region-based dataset, tabled beside the instances. ``annotation``: for
        maps made from annotated instances, what the record keeps of them (``stamp``: the file's name, size, mtime
        and sha1; the sha1 joins the identity) and of their reconciliation.

        Raises:
            InstanceMapError: a file cannot be written (full disk, permissions), naming the case.
        """
        ids = np.ascontiguousarray(instances.instance_map)
        identity = case_identity(case, settings, fingerprint["sha1"], hashlib.sha1(ids.tobytes()).hexdigest(),
                                 None if annotation is None else annotation["stamp"]["sha1"])
        try:
            self.record_path(case).unlink(missing_ok=True)  # the old record must not vouch for the new files
            self._write_map(ids, identity, patch_size)
            table = sample_instance_locations(ids[0], _class_map(instances))
            region_table = None if region_ids is None else region_instance_locations(region_ids)
            write_table(self.table_path(case), table, region_table, identity)
            record = {
                **settings, "case": case, "seg_fingerprint": fingerprint, "dtype": str(ids.dtype),
                "num_instances": instances.num_instances, "instances_per_class": instances.counts_per_class(),
                "instance_classes": instances.classes.tolist(), "instance_sizes": instances.sizes.tolist(),
                "identity": identity, **({} if annotation is None else {"annotation": annotation}),
                "files": {"map": file_stamp(self.map_path(case)), "table": file_stamp(self.table_path(case))},
            }
            atomic_write_json(self.record_path(case), record)
        except Exception as e:  # OSError from Python, RuntimeError and others from blosc2's C library
            raise InstanceMapError(f"case {case}: cannot write its instance map files in {self.folder} "
                                   f"({type(e).__name__}: {e}). Free disk space or fix the folder's permissions "
                                   f"and run again (cases written before are kept).") from e
        return record

    def _write_map(self, ids: np.ndarray, identity: dict, patch_size) -> None:
        import blosc2

        blocks, chunks = blosc2_block_and_chunk(ids.shape, patch_size, ids.dtype.itemsize)
        with atomic_path(self.map_path(identity["case"])) as tmp:
            array = blosc2.asarray(ids, urlpath=str(tmp), chunks=chunks, blocks=blocks,
                                   cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "nthreads": 1})
            array.schunk.vlmeta[IDENTITY_META] = identity
            del array

    def restamp(self, case: str, record: dict, stamps: dict) -> dict:
        """The record with new file stamps (a file's mtime changed, its content did not), written back."""
        record = {**record, "files": stamps}
        atomic_write_json(self.record_path(case), record)
        return record

    def remove_case(self, case: str) -> None:
        for path in (self.record_path(case), self.map_path(case), self.table_path(case)):
            path.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """Remove the temporary files of writers that were killed (call only under the exclusive lock)."""
        for path in self.folder.glob(f"{TEMPORARY_PREFIX}*"):
            path.unlink(missing_ok=True)

    def lock(self, exclusive: bool, log=print) -> file_lock:
        """``with store.lock(exclusive) as locked:``: the folder's lock, exclusive for a writer (the folder must
        exist), shared for a checker; waiting is reported through ``log`` every minute."""
        def waiting(holder: str) -> None:
            log(f"nnunet_blob: waiting for {holder}, which is using the instance maps in {self.folder} "
                f"({'to write' if exclusive else 'to check'} them once it is done)")

        return file_lock(self.folder / LOCK, exclusive, on_wait=waiting)

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
