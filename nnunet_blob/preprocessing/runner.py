"""Compute, check and refresh the instance maps of one nnU-Net configuration.

:func:`ensure_instance_maps` is the one function the trainers call at initialization and the
``nnunet_blob preprocess`` command calls per configuration: it finds the maps, keeps the cases that are up to
date, computes missing and stale ones (in parallel, with a progress bar), drops cases that left the dataset,
and writes the manifest. A case is up to date when its record exists, was made with the same settings, its
files exist, and the segmentation it was computed from is unchanged (same file size and mtime, or else the same
shape and content hash).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nnunet_blob.instances.components import compute_instances, instances_per_region
from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.io import atomic_write_json, temporary_path
from nnunet_blob.nnunet_internals import dataset_class_for, identifiers_in_folder, load_case
from nnunet_blob.preprocessing.errors import InstanceMapError
from nnunet_blob.preprocessing.locate import ConfigurationLocation, locate
from nnunet_blob.preprocessing.store import FORMAT_VERSION, MANIFEST, InstanceMapStore, file_unchanged, seg_fingerprint

#: connectivity of new maps when none is asked for (the blob loss paper's)
DEFAULT_CONNECTIVITY = 26


def default_num_processes() -> int:
    from nnunetv2.configuration import default_num_processes as nnunet_default

    return nnunet_default


def ensure_instance_maps(dataset: str | int, plans_identifier: str = "nnUNetPlans", configuration: str = "3d_fullres",
                         *, connectivity: int | None = None, num_processes: int | None = None,
                         overwrite: bool = False, write: bool = True, log: Callable[[str], None] = print,
                         progress: bool = True) -> InstanceMapStore:
    """Make the instance maps of a configuration present and fresh; returns their store.

    Args:
        dataset: id or name, as nnU-Net's ``-d``.
        plans_identifier: e.g. ``nnUNetPlans`` or ``nnUNetResEncUNetMPlans``.
        configuration: e.g. ``3d_fullres``, ``2d``, ``3d_lowres``.
        connectivity: 26, 18 or 6 (recorded; maps of another connectivity are recomputed). None: the connectivity
            of the existing maps (their manifest), else 26. The log line says which one and why;
            ``store.connectivity`` gives it.
        num_processes: worker processes (default: nnU-Net's ``nnUNet_def_n_proc``).
        overwrite: recompute every case.
        write: False only checks: nothing is written (for DDP workers other than rank 0, which read what rank 0
            wrote); raises :class:`InstanceMapError` naming the missing or stale cases and the command to run.
        log: where the one-line status goes (the trainers pass their log file printer).
    """
    location = locate(dataset, plans_identifier, configuration)
    store = InstanceMapStore(location.instance_folder)
    connectivity, why = _choose_connectivity(store, location, connectivity)
    if write:
        _check_writable(store, location)

    dataset_class = dataset_class_for(location.data_folder)
    cases = sorted(identifiers_in_folder(location.data_folder))
    settings = _settings(location, connectivity)
    records, todo = {}, []
    for case in cases:
        record = store.record(case)
        if not overwrite and _up_to_date(store, location, case, record, settings):
            records[case] = record
        else:
            todo.append((case, None if overwrite else record))
    gone = sorted(set(store.cases_on_disk()) - set(cases))
    name = f"{location.dataset_name} {configuration}"
    chosen = f"connectivity {connectivity}: {why}"
    if not write:
        _check_complete(store, location, settings, [case for case, _ in todo], gone, cases)
        log(f"nnunet_blob: instance maps of {name}: all {len(cases)} cases up to date ({chosen}; checked, not "
            f"written, in {store.folder})")
        return store
    for case in gone:
        store.remove_case(case)

    if todo:
        log(f"nnunet_blob: computing instance maps of {len(todo)} of {len(cases)} cases of {name} ({chosen}) into "
            f"{store.folder}")
        jobs = [(str(location.data_folder), dataset_class, case, str(store.folder), settings, record,
                 tuple(location.configuration_dict.get("patch_size", (128, 128, 128))))
                for case, record in todo]
        for record in _run(jobs, num_processes or default_num_processes(), progress):
            records[record["case"]] = record
    else:
        log(f"nnunet_blob: instance maps of {name}: all {len(cases)} cases up to date ({chosen}; {store.folder})")
    store.write_manifest(settings, {case: records[case] for case in cases})
    return store


def _choose_connectivity(store: InstanceMapStore, location: ConfigurationLocation,
                         connectivity: int | None) -> tuple[int, str]:
    """(the connectivity to use, why): the one asked for, else that of the existing maps (also when they are stale
    for another reason: the connectivity was the user's choice), else 26."""
    existing = store.connectivity
    if connectivity is None:
        if existing in CONNECTIVITIES:
            return existing, f"that of the existing maps, {store.folder / MANIFEST}"
        return DEFAULT_CONNECTIVITY, "the default, no existing maps"
    if connectivity not in CONNECTIVITIES:
        raise InstanceMapError(f"connectivity must be one of {CONNECTIVITIES}, got {connectivity!r}")
    if existing is not None and existing != connectivity:
        return connectivity, f"as asked; the existing maps have connectivity {existing} and are recomputed"
    return connectivity, "as asked"


def _check_writable(store: InstanceMapStore, location: ConfigurationLocation) -> None:
    """Create the folder and write and remove a probe of this process's own (parallel callers, e.g. DDP ranks, never
    remove each other's)."""
    try:
        store.folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_path(store.folder / "write-test")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise InstanceMapError(f"cannot write instance maps to {store.folder} ({e}). Make it writable, or copy "
                               f"{location.data_folder.parent} somewhere writable and point nnUNet_preprocessed "
                               f"there.") from e


def _check_complete(store: InstanceMapStore, location: ConfigurationLocation, settings: dict, stale: list[str],
                    gone: list[str], cases: list[str]) -> None:
    """Raise :class:`InstanceMapError` unless the maps and the manifest are up to date (``write=False``)."""
    manifest = store.manifest
    problems = []
    if stale:
        problems.append(f"{len(stale)} of {len(cases)} cases are missing or stale ({', '.join(stale[:5])}"
                        f"{', ...' if len(stale) > 5 else ''})")
    if gone:
        problems.append(f"cases no longer in the dataset are still there ({', '.join(gone[:5])})")
    if not stale and (any(manifest.get(k) != settings[k] for k in FRESHNESS_KEYS)
                      or sorted(manifest.get("cases", {})) != cases):
        problems.append(f"{store.folder / MANIFEST} is missing or out of date")
    if problems:
        raise InstanceMapError(
            f"the instance maps of {location.dataset_name} {location.configuration} (connectivity "
            f"{settings['connectivity']}) in {store.folder} are not up to date: {'; '.join(problems)}. Compute them "
            f"with `nnunet_blob preprocess -d {location.dataset_name} -p {location.plans_identifier} -c "
            f"{location.configuration} --connectivity {settings['connectivity']}` (or from a process that may "
            f"write them).")


#: settings a map depends on; dataset, plans and configuration are only recorded (a cascade configuration shares
#: the data folder, and so the maps, of its full-resolution configuration)
FRESHNESS_KEYS = ("format", "data_identifier", "connectivity", "ignore_label", "regions")


def _settings(location: ConfigurationLocation, connectivity: int) -> dict:
    """What the maps are built from. ``labels``: the classes whose components are instances (also for
    region-based datasets, whose preprocessed segmentation holds labels; ``regions`` lists their regions for
    :func:`~nnunet_blob.instances.components.instances_per_region`)."""
    regions = location.regions
    return {"dataset": location.dataset_name, "plans": location.plans_identifier,
            "configuration": location.configuration, "data_identifier": location.data_identifier,
            "connectivity": connectivity, "ignore_label": location.ignore_label,
            "labels": location.foreground_labels,
            "regions": None if regions is None else [list(r) for r in regions], "format": FORMAT_VERSION}


def _seg_file(data_folder: Path, case: str) -> Path:
    """The file nnU-Net's dataset classes read the segmentation of ``case`` from."""
    for name in (f"{case}_seg.b2nd", f"{case}_seg.npy", f"{case}.npz"):
        if (data_folder / name).is_file():
            return data_folder / name
    return data_folder / f"{case}_seg.b2nd"


def _up_to_date(store: InstanceMapStore, location: ConfigurationLocation, case: str, record: dict | None,
                settings: dict) -> bool:
    if record is None or any(record.get(k) != settings[k] for k in FRESHNESS_KEYS):
        return False
    if not (store.map_path(case).is_file() and store.table_path(case).is_file()):
        return False
    return file_unchanged(record["seg_fingerprint"], _seg_file(location.data_folder, case))


def _run(jobs: list, num_processes: int, progress: bool):
    from tqdm import tqdm

    from nnunet_blob.preprocessing.workers import run_jobs

    bar = dict(total=len(jobs), desc="instance maps", unit="case", disable=not progress)
    yield from tqdm(run_jobs(_process_case, jobs, num_processes, describe=lambda job: f"case {job[2]}"), **bar)


def _process_case(job) -> dict:
    """Worker: read the segmentation, reuse the map when only the file's stat changed, else compute it."""
    data_folder, dataset_class, case, instance_folder, settings, record, patch_size = job
    data_folder = Path(data_folder)
    store = InstanceMapStore(Path(instance_folder))
    try:
        _, seg, _, _ = load_case(dataset_class(str(data_folder), [case]), case)
        seg = np.asarray(seg[:])
    except Exception as e:
        raise InstanceMapError(f"case {case}: cannot read its preprocessed segmentation in {data_folder} ({e}). "
                               f"Re-run nnUNetv2_preprocess -d {settings['dataset']} -c {settings['configuration']} "
                               f"for it.") from e
    fingerprint = seg_fingerprint(seg, _seg_file(data_folder, case))
    if record is not None and _same_content(record, fingerprint, store, case, settings):
        record = {**record, "seg_fingerprint": fingerprint}  # same labels, new file: only refresh the record
        atomic_write_json(store.record_path(case), record)
        return record
    try:
        instances = compute_instances(seg, settings["ignore_label"], settings["connectivity"], case)
        region_ids = None if settings["regions"] is None else instances_per_region(
            seg, settings["regions"], settings["connectivity"], case)
    except ValueError as e:
        raise InstanceMapError(str(e)) from e
    return store.write_case(case, instances, fingerprint, settings, patch_size, region_ids)


def _same_content(record: dict, fingerprint: dict, store: InstanceMapStore, case: str, settings: dict) -> bool:
    old = record.get("seg_fingerprint", {})
    return (all(record.get(k) == settings[k] for k in FRESHNESS_KEYS) and old.get("sha1") == fingerprint["sha1"]
            and old.get("shape") == fingerprint["shape"] and store.map_path(case).is_file()
            and store.table_path(case).is_file())

