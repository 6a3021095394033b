"""Compute, check and refresh the instance maps of one nnU-Net configuration.

:func:`ensure_instance_maps` is the one function the trainers call at initialization and the
``nnunet_blob preprocess`` command calls per configuration: it finds the maps, keeps the cases that are up to
date, computes missing and stale ones (in parallel, with a progress bar), drops cases that left the dataset,
and writes the manifest, all under the folder's exclusive lock (a check-only call holds a shared one). A case is
up to date when its record exists, is the record of this case made with the same settings, the segmentation it was
computed from is unchanged (same file size and mtime, or else the same shape and content hash), and its map and
table files are the ones the record vouches for (:meth:`~.store.InstanceMapStore.check_files`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from nnunet_blob.files import atomic_write_json, temporary_path
from nnunet_blob.instances.components import compute_instances, instances_per_region
from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.nnunet_internals import (
    dataset_class_for,
    identifiers_in_folder,
    load_case,
    preprocessed_seg_file,
    transpose_forward,
)
from nnunet_blob.preprocessing.annotated import (
    ANNOTATION_FOLDER,
    AnnotationSource,
    annotated_instances,
    annotation_stamp,
    annotation_unchanged,
    find_annotations,
)
from nnunet_blob.preprocessing.errors import InstanceMapError
from nnunet_blob.preprocessing.locate import ConfigurationLocation, locate
from nnunet_blob.preprocessing.store import (
    FORMAT_VERSION,
    FRESHNESS_KEYS,
    MANIFEST,
    InstanceMapStore,
    file_unchanged,
    seg_fingerprint,
)
from nnunet_blob.workers import default_num_processes

#: connectivity of new maps when none is asked for (the blob loss paper's)
DEFAULT_CONNECTIVITY = 26


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
            wrote); raises :class:`InstanceMapError` naming the missing or stale cases and the command to run. A
            folder this process cannot write to is checked the same way (maps shared read-only are used as they
            are when they are up to date).
        log: where the one-line status goes (the trainers pass their log file printer).

    The returned store expects the identities it checked: a map or table opened later that is not the one checked
    raises :class:`InstanceMapError` (see :meth:`~.store.InstanceMapStore.open`).
    """
    location = locate(dataset, plans_identifier, configuration)
    store = InstanceMapStore(location.instance_folder)
    unwritable = _unwritable(store) if write else None
    if overwrite and unwritable:
        raise InstanceMapError(f"cannot recompute the instance maps in {store.folder}: {unwritable}")
    writing = write and unwritable is None
    with store.lock(exclusive=writing, log=log):
        if writing:
            store.remove_temporaries()
        connectivity, why = _choose_connectivity(store, location, connectivity)
        source, instances, instances_why = _choose_instances(store, location)
        settings = _settings(location, connectivity, instances)
        cases = sorted(identifiers_in_folder(location.data_folder))
        records, todo, reasons = _fresh_and_stale(store, location, cases, settings, writing, source, overwrite)
        gone = sorted(set(store.cases_on_disk()) - set(cases))
        name = f"{location.dataset_name} {configuration}"
        chosen = f"connectivity {connectivity}: {why}; instances: {instances_why}"
        if not writing:
            _check_complete(store, location, settings, reasons, gone, cases, unwritable)
            log(f"nnunet_blob: instance maps of {name}: all {len(cases)} cases up to date ({chosen}; checked, not "
                f"written, in {store.folder}{'' if unwritable is None else ', which this process cannot write'})")
            store.expect(records)
            return store
        for case in gone:
            store.remove_case(case)
        if todo:
            _refuse_annotated_without_source(todo, instances, source, name, location, configuration)
            log(f"nnunet_blob: computing instance maps of {len(todo)} of {len(cases)} cases of {name} ({chosen}) "
                f"into {store.folder}{_why_recomputed(reasons)}")
            records.update(_compute(store, location, todo, settings, source, num_processes, progress))
            if instances == "annotated":
                log(_reconciled([records[case] for case, _ in todo]))
        else:
            log(f"nnunet_blob: instance maps of {name}: all {len(cases)} cases up to date ({chosen}; "
                f"{store.folder})")
        store.write_manifest(settings, {case: records[case] for case in cases})
        store.expect(records)
    return store


def _fresh_and_stale(store: InstanceMapStore, location: ConfigurationLocation, cases: list[str], settings: dict,
                     writing: bool, source: AnnotationSource | None, overwrite: bool
                     ) -> tuple[dict, list[tuple[str, dict | None]], dict[str, str]]:
    """(records of the fresh cases, (case, old record) of the cases to compute, why each is to be computed)."""
    records, todo, reasons = {}, [], {}
    for case in cases:
        problem, record = ("--overwrite", None) if overwrite else \
            _staleness(store, location, case, store.record(case), settings, writing, source)
        if problem is None:
            records[case] = record
        else:
            todo.append((case, record))
            reasons[case] = problem
    return records, todo, reasons


def _refuse_annotated_without_source(todo: list, instances: str, source: AnnotationSource | None, name: str,
                                     location: ConfigurationLocation, configuration: str) -> None:
    if instances == "annotated" and source is None:
        raise InstanceMapError(f"{len(todo)} cases of {name} need instance maps from annotated instances "
                               f"({', '.join(case for case, _ in todo[:5])}), but this machine has no raw "
                               f"dataset {location.dataset_name} (nnUNet_raw) with its {ANNOTATION_FOLDER}/. Set "
                               f"nnUNet_raw to the raw data, or run `nnunet_blob preprocess -d "
                               f"{location.dataset_name} -c {configuration}` where it is.")


def _compute(store: InstanceMapStore, location: ConfigurationLocation, todo: list, settings: dict,
             source: AnnotationSource | None, num_processes: int | None, progress: bool) -> dict[str, dict]:
    """The new records of the cases ``todo``, computed by the worker pool."""
    dataset_class = dataset_class_for(location.data_folder)
    patch_size = tuple(location.configuration_dict.get("patch_size", (128, 128, 128)))
    transpose = transpose_forward(location.plans)
    jobs = [(str(location.data_folder), dataset_class, case, str(store.folder), settings, record, patch_size,
             source, transpose) for case, record in todo]
    return {record["case"]: record for record in _run(jobs, num_processes or default_num_processes(), progress)}


def _choose_instances(store: InstanceMapStore, location: ConfigurationLocation
                      ) -> tuple[AnnotationSource | None, str, str]:
    """(where the annotated instances are, or None; "annotated" or "components"; why): annotated instances when the
    raw dataset has ``instancesTr/``; where this machine has no raw dataset (a training machine), what the existing
    maps were made from (annotated maps are then kept as they are, unchecked against their annotation files)."""
    source, raw = find_annotations(location.dataset_name, location.plans)
    if source is not None:
        return source, "annotated", f"annotated, from {source.folder}"
    if raw is not None:
        return None, "components", f"connected components ({raw.name} has no {ANNOTATION_FOLDER}/)"
    if store.manifest.get("instances") == "annotated":
        return None, "annotated", (f"annotated, as the existing maps (no raw dataset {location.dataset_name} in "
                                   f"nnUNet_raw here, so their annotation files are not checked)")
    return None, "components", "connected components (no raw dataset here to look for annotated instances in)"


def _reconciled(records: list[dict | None]) -> str:
    """The log line saying how many voxels reconciliation changed in these newly computed cases."""
    changes = [r["annotation"]["reconciled_voxels"] for r in records if r is not None and "annotation" in r]
    relabelled, cleared, new = (sum(c[k] for c in changes) for k in ("relabelled", "cleared", "new_instances"))
    touched = sum(1 for c in changes if c["relabelled"] or c["cleared"])
    return (f"nnunet_blob: annotated instances reconciled with nnU-Net's segmentation in {touched} of "
            f"{len(changes)} cases: {relabelled} voxels of a class given the nearest instance of their class"
            f"{f' ({new} new instances for regions without one)' if new else ''}, {cleared} instance voxels outside "
            f"the foreground cleared")


def _why_recomputed(reasons: dict) -> str:
    """The reasons of up to three stale cases, for the log line (a fresh folder gives none)."""
    told = [f"{case}: {why}" for case, why in reasons.items() if why not in ("no record", "--overwrite")][:3]
    return f" (e.g. {'; '.join(told)})" if told else ""


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


def _unwritable(store: InstanceMapStore) -> str | None:
    """None when this process can write the instance folder (created if missing), else why not. The probe has a
    name of this process's own (parallel callers, e.g. DDP ranks, never remove each other's)."""
    try:
        store.folder.mkdir(parents=True, exist_ok=True)
        probe = temporary_path(store.folder / "write-test")
        probe.touch()
        probe.unlink()
    except OSError as e:
        return str(e)
    return None


def _check_complete(store: InstanceMapStore, location: ConfigurationLocation, settings: dict, stale: dict,
                    gone: list[str], cases: list[str], unwritable: str | None) -> None:
    """Raise :class:`InstanceMapError` unless the maps and the manifest are up to date (checking only: ``write=False``
    or a folder that cannot be written)."""
    manifest = store.manifest
    problems = []
    if stale:
        named = [f"{case} ({why})" for case, why in list(stale.items())[:5]]
        problems.append(f"{len(stale)} of {len(cases)} cases are missing or stale: {', '.join(named)}"
                        f"{', ...' if len(stale) > 5 else ''}")
    if gone:
        problems.append(f"cases no longer in the dataset are still there ({', '.join(gone[:5])})")
    if not stale and (any(manifest.get(k) != settings[k] for k in FRESHNESS_KEYS)
                      or sorted(manifest.get("cases", {})) != cases):
        problems.append(f"{store.folder / MANIFEST} is missing or out of date")
    if not problems:
        return
    command = (f"`nnunet_blob preprocess -d {location.dataset_name} -p {location.plans_identifier} -c "
               f"{location.configuration} --connectivity {settings['connectivity']}`")
    if unwritable is not None:
        fix = (f"This process cannot write instance maps to that folder ({unwritable}): run {command} as a user "
               f"who can, or copy "
               f"{location.data_folder.parent} somewhere writable and point nnUNet_preprocessed there.")
    else:
        fix = f"Compute them with {command} (or from a process that may write them)."
    raise InstanceMapError(f"the instance maps of {location.dataset_name} {location.configuration} (connectivity "
                           f"{settings['connectivity']}) in {store.folder} are not up to date: {'; '.join(problems)}. "
                           f"{fix}")


def _settings(location: ConfigurationLocation, connectivity: int, instances: str = "components") -> dict:
    """What the maps are built from. ``labels``: the classes whose components are instances (also for
    region-based datasets, whose preprocessed segmentation holds labels; ``regions`` lists their regions for
    :func:`~nnunet_blob.instances.components.instances_per_region`)."""
    labels = location.labels
    return {"dataset": location.dataset_name, "plans": location.plans_identifier,
            "configuration": location.configuration, "data_identifier": location.data_identifier,
            "connectivity": connectivity, "ignore_label": labels.ignore_label,
            "labels": list(labels.foreground_labels), "regions": labels.region_label_lists, "format": FORMAT_VERSION,
            "instances": instances}


def _staleness(store: InstanceMapStore, location: ConfigurationLocation, case: str, record: dict | None,
               settings: dict, writing: bool, source: AnnotationSource | None = None
               ) -> tuple[str | None, dict | None]:
    """(None when the case is up to date, else why it is not; its record). A file whose mtime changed but whose
    content is the recorded one gets its new mtime recorded (``writing`` only). Maps from annotated instances are
    also stale when the annotation file changed (``source``: None where the raw dataset is not here)."""
    if record is None:
        return "no record", None
    if record.get("case") != case:
        return f"its record is that of case {record.get('case')!r}", record
    different = [k for k in FRESHNESS_KEYS if record.get(k) != settings[k]]
    if different:
        return "made with " + ", ".join(f"{k} {record.get(k)!r}" for k in different), record
    if source is not None:
        annotation = record.get("annotation") or {}
        same, stamp = annotation_unchanged(annotation.get("stamp"), source.instance_file(case))
        if not same:
            return "its annotated instances changed", record
        if stamp is not None and writing:
            record = {**record, "annotation": {**annotation, "stamp": stamp}}
            atomic_write_json(store.record_path(case), record)
    if not file_unchanged(record.get("seg_fingerprint", {}), preprocessed_seg_file(location.data_folder, case)):
        return "its segmentation file changed", record
    problem, stamps = store.check_files(case, record)
    if problem is None and stamps is not None and writing:
        record = store.restamp(case, record, stamps)
    return problem, record


def _run(jobs: list, num_processes: int, progress: bool):
    from tqdm import tqdm

    from nnunet_blob.workers import WorkerDied, run_jobs

    bar = dict(total=len(jobs), desc="instance maps", unit="case", disable=not progress)
    try:
        yield from tqdm(run_jobs(_process_case, jobs, num_processes, describe=lambda job: f"case {job[2]}"), **bar)
    except WorkerDied as e:
        raise InstanceMapError(str(e)) from e


def _process_case(job) -> dict:
    """Worker: read the segmentation, reuse the map when only the file's stat changed, else compute it."""
    data_folder, dataset_class, case, instance_folder, settings, record, patch_size, source, transpose = job
    data_folder = Path(data_folder)
    store = InstanceMapStore(Path(instance_folder))
    try:
        _, seg, _, properties = load_case(dataset_class(str(data_folder), [case]), case)
        seg = np.asarray(seg[:])
    except Exception as e:
        raise InstanceMapError(f"case {case}: cannot read its preprocessed segmentation in {data_folder} ({e}). "
                               f"Re-run nnUNetv2_preprocess -d {settings['dataset']} -c {settings['configuration']} "
                               f"for it.") from e
    fingerprint = seg_fingerprint(seg, preprocessed_seg_file(data_folder, case))
    stamp = None
    if source is not None:
        path = source.instance_file(case)
        stamp = annotation_stamp(path) if path.is_file() else None  # a missing file is reported when read
    stamps = _same_content(record, fingerprint, store, case, settings, stamp) if record is not None else None
    if record is not None and stamps is not None:  # same labels, new file: only refresh the record
        record = {**record, "seg_fingerprint": fingerprint, "files": stamps}
        atomic_write_json(store.record_path(case), record)
        return record
    if source is not None:
        return _write_annotated(store, source, case, seg, properties, fingerprint, settings, patch_size, transpose)
    try:
        instances = compute_instances(seg, settings["ignore_label"], settings["connectivity"], case)
        region_ids = None if settings["regions"] is None else instances_per_region(
            seg, settings["regions"], settings["connectivity"], case)
    except ValueError as e:
        raise InstanceMapError(str(e)) from e
    return store.write_case(case, instances, fingerprint, settings, patch_size, region_ids)


def _write_annotated(store: InstanceMapStore, source: AnnotationSource, case: str, seg: np.ndarray, properties: dict,
                     fingerprint: dict, settings: dict, patch_size, transpose: list[int]) -> dict:
    """Worker: the map of a case from its annotated instances (:mod:`.annotated`); a region-based dataset's region
    table holds, per region, the instances of the region's labels."""
    instances, annotation_ids, changes = annotated_instances(source, case, seg, properties, transpose,
                                                             settings["ignore_label"], settings["connectivity"])
    stamp = annotation_stamp(source.instance_file(case))  # the file exists: annotated_instances read it
    region_ids = None
    if settings["regions"] is not None:
        labels, ids = np.asarray(seg)[0], instances.instance_map[0]
        region_ids = np.stack([np.where(np.isin(labels, region), ids, 0) for region in settings["regions"]])
    annotation = {"stamp": stamp, "reconciled_voxels": changes.as_dict(), "instance_annotation_ids": annotation_ids}
    return store.write_case(case, instances, fingerprint, settings, patch_size, region_ids, annotation)


def _same_content(record: dict, fingerprint: dict, store: InstanceMapStore, case: str,
                  settings: dict, annotation: dict | None = None) -> dict | None:
    """The record's file stamps (renewed where only a file's mtime changed) when its map and table are still right
    for a segmentation with this fingerprint (and, for annotated instances, this annotation stamp), else None."""
    old = record.get("seg_fingerprint", {})
    if (record.get("case") != case or any(record.get(k) != settings[k] for k in FRESHNESS_KEYS)
            or old.get("sha1") != fingerprint["sha1"] or old.get("shape") != fingerprint["shape"]):
        return None
    if settings["instances"] == "annotated" and (
            annotation is None or (record.get("annotation") or {}).get("stamp", {}).get("sha1") != annotation["sha1"]):
        return None
    problem, stamps = store.check_files(case, record)
    return None if problem is not None else (stamps or record["files"])
