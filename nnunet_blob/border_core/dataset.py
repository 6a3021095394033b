"""``nnunet_blob border-core-dataset``: an instance-labelled nnU-Net raw dataset -> a border-core raw dataset.

**Input**: a raw dataset (folder, or id/name in ``$nnUNet_raw``) whose nuclei are given as instance ids, either in
``instancesTr/<case><file_ending>`` beside ``labelsTr/`` (the plugin's convention for annotated instances: same
names, geometry and reader/writer as the labels; ``labelsTr`` must then hold one foreground class covering exactly
the instances), or, without ``instancesTr/``, in ``labelsTr/`` itself (values 1..N, one per nucleus).

**Output**: a new raw dataset in ``$nnUNet_raw``:

* ``imagesTr/`` (and ``imagesTs/``): the source's files, hard-linked where the file system allows, else copied;
* ``labelsTr/<case>``: 0 background, 1 core, 2 border (:func:`~.representation.border_core_labels`);
* ``instancesTr/<case>``: each nucleus' original id **on its core voxels only**, 0 on border and background. The
  plugin's instance maps hold each id inside one foreground class; a whole nucleus would span core and border, its
  core alone lies in the core class. Blob loss then sees each nucleus as one instance of the core class (the
  class that separates touching nuclei); the border carries no id, so the plugin's preprocessing gives each
  connected region of border one instance, as for a dataset without ``instancesTr``;
* ``dataset.json``: the source's, with labels ``background``/``core``/``border`` and a ``border_core`` record (source,
  border thickness, what ``instancesTr`` holds), which nnU-Net ignores.

A source with ``labelsTs/`` (and ``instancesTs/``) gets the same for its test cases: ``labelsTs/`` and
``instancesTs/``, the reference of ``nnunet_blob evaluate`` (the whole nuclei stay in the source's folders).

Every case is decoded again (:func:`~.representation.instances_from_border_core`) and compared with its nuclei, so
the summary says how many nuclei the chosen thickness keeps apart exactly, before any training.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_blob.border_core.files import read_map, write_map
from nnunet_blob.border_core.representation import (
    BorderCoreError,
    border_core_labels,
    compare_instances,
    default_border_thickness,
    instances_from_border_core,
)
from nnunet_blob.files import atomic_write_bytes

#: labels of the converted dataset
LABELS = {"background": 0, "core": 1, "border": 2}
#: the folder of annotated instances beside labelsTr
INSTANCES_FOLDER = "instancesTr"
#: dataset.json key of the conversion record
RECORD_KEY = "border_core"


@dataclass(frozen=True)
class CaseJob:
    case: str
    instances: str  # the file holding the nucleus ids
    labels: str | None  # label file to check against (None: the ids are the label file's own)
    foreground_labels: tuple[int, ...]  # labels of dataset.json the label file may hold besides 0
    out_labels: str
    out_instances: str
    reader_writer: type
    border_thickness: float | None
    connectivity: int


@dataclass
class CaseResult:
    case: str
    nuclei: int
    without_core: int
    exact: int
    decoded: int
    voxels_off: int
    foreground_voxels: int
    border_voxels: int
    border_thickness: float
    below_diagonal: bool  # the thickness is below the voxel diagonal: cores of touching nuclei may touch


@dataclass
class Summary:
    source: Path
    target: Path
    instances_from: str
    cases: list[CaseResult] = field(default_factory=list)

    def lines(self) -> list[str]:
        n = sum(c.nuclei for c in self.cases)
        without = sum(c.without_core for c in self.cases)
        exact = sum(c.exact for c in self.cases)
        off = sum(c.voxels_off for c in self.cases)
        foreground = sum(c.foreground_voxels for c in self.cases)
        border = sum(c.border_voxels for c in self.cases)
        thicknesses = sorted({round(c.border_thickness, 6) for c in self.cases})
        shown = ", ".join(f"{t:g}" for t in thicknesses[:5]) + (" ..." if len(thicknesses) > 5 else "")
        lines = [f"{len(self.cases)} cases, {n} nuclei ({self.instances_from}); border thickness {shown} (spacing "
                 f"units); border {100 * border / max(foreground, 1):.1f}% of the foreground",
                 f"round trip (instances-from-border-core on the new labels): {exact} of {n} nuclei exactly"
                 + (f", {off} voxels elsewhere" if off else "")
                 + (f"; {without} nuclei have no core (thinner than twice the border): they merge into a touching "
                    f"nucleus or come back alone" if without else "")]
        below = [c.case for c in self.cases if c.below_diagonal]
        if below:
            lines.append(f"warning: the border is thinner than a voxel's diagonal in {len(below)} cases (e.g. "
                         f"{below[0]}): cores of touching nuclei can touch diagonally and then merge")
        lines.append(f"written: {self.target}")
        return lines


def raw_root() -> Path:
    root = os.environ.get("nnUNet_raw")
    if not root:
        raise BorderCoreError("nnUNet_raw is not set; set it as for nnU-Net (documentation/setting_up_paths.md)")
    return Path(root)


def source_folder(source: str) -> Path:
    """The raw dataset folder of ``source``: a folder, or a dataset id or name in ``$nnUNet_raw``."""
    path = Path(source)
    if path.is_dir():
        return path
    if source.isdigit():
        matches = sorted(raw_root().glob(f"Dataset{int(source):03d}_*"))
        if len(matches) != 1:
            raise BorderCoreError(f"dataset id {source}: {len(matches)} datasets Dataset{int(source):03d}_* in "
                                  f"{raw_root()}; give the dataset's folder or name")
        return matches[0]
    if (raw_root() / source).is_dir():
        return raw_root() / source
    raise BorderCoreError(f"{source} is neither a folder nor a dataset id or name in nnUNet_raw={raw_root()}")


def target_folder(target: str, source: Path) -> Path:
    """``$nnUNet_raw/DatasetXXX_Name`` for ``-o``: an id (the name is the source's + ``BorderCore``) or a name."""
    if target.isdigit():
        task = source.name.split("_", 1)[1] if re.fullmatch(r"Dataset\d{3}_.+", source.name) else source.name
        name = f"Dataset{int(target):03d}_{task}BorderCore"
    elif re.fullmatch(r"Dataset\d{3}_[^/\\]+", target):
        name = target
    else:
        raise BorderCoreError(f"-o {target}: give the new dataset's id (e.g. 502) or name (e.g. "
                              f"Dataset502_NucleiBorderCore); it is written to nnUNet_raw")
    folder = raw_root() / name
    same_id = [p.name for p in raw_root().glob(f"{name[:10]}_*") if p.name != name]
    if same_id:
        raise BorderCoreError(f"-o {target}: nnUNet_raw already has {same_id[0]} with id {name[7:10]}; nnU-Net needs "
                              f"one dataset per id, choose another id")
    if folder.resolve() == source.resolve():
        raise BorderCoreError(f"-o {target} is the source dataset; choose a new id")
    return folder


def _prepare_target(folder: Path, overwrite: bool) -> None:
    if folder.exists() and any(folder.iterdir()):
        record: dict = {}
        try:
            record = json.loads((folder / "dataset.json").read_text()).get(RECORD_KEY) or {}
        except (OSError, ValueError):
            pass
        if not overwrite:
            raise BorderCoreError(f"{folder} exists and is not empty; pass --overwrite to replace it"
                                  + ("" if record else " (only folders this command wrote are replaced)"))
        if not record:
            raise BorderCoreError(f"{folder} exists and was not written by border-core-dataset (its dataset.json has "
                                  f"no '{RECORD_KEY}' record); it is left as it is: remove it yourself or choose "
                                  f"another id")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _link_or_copy(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def read_dataset_json(folder: Path) -> dict:
    path = folder / "dataset.json"
    try:
        dataset_json = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BorderCoreError(f"{folder} has no dataset.json; is it an nnU-Net raw dataset?") from e
    except ValueError as e:
        raise BorderCoreError(f"{path}: not valid JSON ({e})") from e
    for key in ("file_ending", "labels"):
        if key not in dataset_json:
            raise BorderCoreError(f"{path} has no '{key}'")
    if "dataset" in dataset_json:
        raise BorderCoreError(f"{path} lists its files explicitly ('dataset'); only datasets in nnU-Net's folder "
                              f"layout (imagesTr, labelsTr) can be converted")
    return dataset_json


def _foreground_labels(dataset_json: dict, path: Path) -> tuple[int, ...]:
    labels = dataset_json["labels"]
    if "ignore" in labels or any(isinstance(v, (list, tuple)) for v in labels.values()):
        raise BorderCoreError(f"{path}: an ignore label or regions cannot be converted to border-core labels; give "
                              f"labelsTr with one foreground class")
    return tuple(sorted(int(v) for k, v in labels.items() if int(v) != 0))


def _split_jobs(source: Path, target: Path, split: str, ending: str, foreground: tuple[int, ...], reader_writer,
                border_thickness: float | None, connectivity: int) -> tuple[list[CaseJob], str]:
    """(one job per case of ``source/labels<split>``, where the ids come from) of one split (Tr, Ts)."""
    labels_folder, instances_folder = source / f"labels{split}", source / f"instances{split}"
    cases = sorted(p.name[: -len(ending)] for p in labels_folder.iterdir()
                   if p.name.endswith(ending) and not p.name.startswith("."))
    if not cases:
        raise BorderCoreError(f"no label files *{ending} (dataset.json's file_ending) in {labels_folder}")
    with_instances = instances_folder.is_dir()
    if with_instances:
        missing = [c for c in cases if not (instances_folder / f"{c}{ending}").is_file()]
        if missing:
            raise BorderCoreError(f"case {missing[0]} ({len(missing)} cases) has no {instances_folder.name}/"
                                  f"{missing[0]}{ending}; every case of {labels_folder.name} needs its instance map "
                                  f"there")
        if len(foreground) != 1:
            raise BorderCoreError(f"{source / 'dataset.json'} declares {len(foreground)} foreground labels; the "
                                  f"border-core representation is for one class of touching objects")
    jobs = [CaseJob(case,
                    str((instances_folder if with_instances else labels_folder) / f"{case}{ending}"),
                    str(labels_folder / f"{case}{ending}") if with_instances else None, foreground,
                    str(target / labels_folder.name / f"{case}{ending}"),
                    str(target / instances_folder.name / f"{case}{ending}"),
                    reader_writer, border_thickness, connectivity)
            for case in cases]
    origin = (f"ids from {instances_folder.name}/" if with_instances
              else f"ids from {labels_folder.name}/, each value one nucleus")
    return jobs, origin


def conversion_jobs(source: Path, target: Path, dataset_json: dict, border_thickness: float | None,
                    connectivity: int) -> tuple[list[CaseJob], str]:
    """(one job per case of ``labelsTr`` and, if the source has it, ``labelsTs``; where the ids come from)."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json

    ending = dataset_json["file_ending"]
    if not (source / "labelsTr").is_dir():
        raise BorderCoreError(f"{source} has no labelsTr folder")
    example = next((p for p in sorted((source / "labelsTr").iterdir()) if p.name.endswith(ending)), None)
    if example is None:
        raise BorderCoreError(f"no label files *{ending} (dataset.json's file_ending) in {source / 'labelsTr'}")
    try:
        reader_writer = determine_reader_writer_from_dataset_json(dataset_json, str(example), verbose=False)
    except RuntimeError as e:
        raise BorderCoreError(f"{source}: no nnU-Net reader/writer reads {example.name} ({e})") from e
    foreground = _foreground_labels(dataset_json, source / "dataset.json")
    jobs, origins = [], []
    for split in ("Tr", "Ts"):
        if split == "Tr" or (source / f"labels{split}").is_dir():
            split_jobs, origin = _split_jobs(source, target, split, ending, foreground, reader_writer,
                                             border_thickness, connectivity)
            jobs += split_jobs
            origins.append(origin)
    return jobs, "; ".join(origins)


def convert_case(job: CaseJob) -> CaseResult:
    """Worker: one case's labels and core instances, written; the round trip compared."""
    rw = job.reader_writer()
    what = f"case {job.case}"
    ids, properties = read_map(rw, job.instances)
    if job.labels is not None:
        labels, _ = read_map(rw, job.labels)
        if labels.shape != ids.shape:
            raise BorderCoreError(f"{what}: {job.instances} has shape {ids.shape}, {job.labels} {labels.shape}; "
                                  f"the instance map must lie on the label's grid")
        unknown = sorted(set(np.unique(labels).tolist()) - {0, *job.foreground_labels})
        if unknown:
            raise BorderCoreError(f"{job.labels}: labels {unknown[:10]} are not declared in dataset.json")
        differs = int(np.count_nonzero((labels != 0) != (ids != 0)))
        if differs:
            raise BorderCoreError(f"{what}: {differs} voxels are foreground in one of {job.labels} and {job.instances} "
                                  f"but not in the other; every foreground voxel must belong to one nucleus")
    spacing = [float(s) for s in properties["spacing"]]
    thickness = (default_border_thickness(spacing, ids.shape) if job.border_thickness is None
                 else job.border_thickness)
    labels_bc, cores = border_core_labels(ids, spacing, thickness, what=what)
    decoded = instances_from_border_core(labels_bc, spacing, connectivity=job.connectivity, what=what)
    comparison = compare_instances(ids, decoded)
    nuclei = np.unique(ids)
    with_core = np.unique(cores)
    Path(job.out_labels).parent.mkdir(parents=True, exist_ok=True)
    Path(job.out_instances).parent.mkdir(parents=True, exist_ok=True)
    write_map(rw, labels_bc, job.out_labels, properties, what)
    write_map(rw, cores, job.out_instances, properties, what)
    return CaseResult(job.case, comparison.nuclei, int(np.setdiff1d(nuclei[nuclei > 0], with_core).size),
                      comparison.exact, comparison.decoded, comparison.voxels_off,
                      int(np.count_nonzero(labels_bc)), int(np.count_nonzero(labels_bc == 2)), float(thickness),
                      thickness < default_border_thickness(spacing, ids.shape) * (1 - 1e-9))


def convert_dataset(source: str, target: str, border_thickness: float | None = None, num_processes: int = 1,
                    overwrite: bool = False, connectivity: int = 26, progress: bool = True) -> Summary:
    """Write the border-core dataset of ``source`` (module docstring) as ``target``; returns the summary."""
    from tqdm import tqdm

    from nnunet_blob.workers import run_jobs

    source_path = source_folder(source)
    dataset_json = read_dataset_json(source_path)
    target_path = target_folder(target, source_path)
    if border_thickness is not None and not border_thickness >= 0:
        raise BorderCoreError(f"--border-thickness {border_thickness} must be >= 0")
    jobs, origin = conversion_jobs(source_path, target_path, dataset_json, border_thickness, connectivity)
    _prepare_target(target_path, overwrite)
    summary = Summary(source_path, target_path, origin)
    try:
        for folder in ("imagesTr", "imagesTs"):
            if (source_path / folder).is_dir():
                _link_or_copy(source_path / folder, target_path / folder)
        results = run_jobs(convert_case, jobs, num_processes, describe=lambda job: f"case {job.case}")
        summary.cases = sorted(tqdm(results, total=len(jobs), desc="border-core labels", unit="case",
                                    disable=not progress or None), key=lambda r: r.case)
        thickness = "the voxel diagonal of each case" if border_thickness is None else border_thickness
        written = {**dataset_json, "labels": dict(LABELS)}
        written.pop("regions_class_order", None)
        written[RECORD_KEY] = {
            "source": source_path.name, "border_thickness": thickness, "connectivity": connectivity,
            "instancesTr": "each nucleus' id of the source on its core voxels, 0 on border and background",
        }
        atomic_write_bytes(target_path / "dataset.json", json.dumps(written, indent=4).encode())
    except BaseException:
        shutil.rmtree(target_path, ignore_errors=True)  # never leave half a dataset that nnU-Net would take
        raise
    return summary
