"""``nnunet_blob instances-from-border-core``: predicted border-core segmentations -> instance maps.

Input: a folder of segmentations as ``nnUNetv2_predict`` writes them (``<case><file_ending>``; its ``plans.json``,
``dataset.json``, ``.npz``/``.pkl`` and other ``.json`` files beside them are not cases). Each is decoded with
:func:`~.representation.instances_from_border_core` (physical distances from the file's spacing) and written under
the same name with nnU-Net's reader/writer and the file's own properties (spacing, origin, direction), as
``nnUNetv2_predict`` writes segmentations, ready for ``nnunet_blob evaluate --instance-inputs`` (each nucleus spans
core and border, so it is no object of one of these classes: evaluate the nuclei as one class).

The reader/writer is the one the model predicted with (``plans.json``'s ``image_reader_writer``), else the
dataset.json's choice for its ``file_ending``, else nnU-Net's choice for the files' ending.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from nnunet_blob.border_core.files import read_map, write_map
from nnunet_blob.border_core.representation import BorderCoreError, instances_from_border_core

#: files nnUNetv2_predict writes beside the segmentations
_NOT_CASES = (".json", ".npz", ".pkl", ".txt", ".log")


@dataclass(frozen=True)
class DecodeJob:
    case: str
    segmentation: str
    output: str
    reader_writer: type
    core_label: int
    border_label: int
    min_core_size: int
    connectivity: int


def _supported_endings() -> list[str]:
    from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES

    endings = {e.lower() for rw in LIST_OF_IO_CLASSES for e in rw.supported_file_endings}
    return sorted(endings, key=len, reverse=True)  # .nii.gz before .gz


def segmentation_files(folder: Path) -> tuple[str, dict[str, Path]]:
    """(the file ending, {case: file}) of the segmentations in ``folder``; BorderCoreError for an empty folder or
    mixed endings."""
    if not folder.is_dir():
        raise BorderCoreError(f"input folder {folder} does not exist")
    endings = _supported_endings()
    by_ending: dict[str, dict[str, Path]] = {}
    others = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.name.lower().endswith(_NOT_CASES):
            continue
        ending = next((e for e in endings if path.name.lower().endswith(e)), None)
        if ending is None:
            others.append(path.name)
            continue
        ending = path.name[-len(ending):]
        by_ending.setdefault(ending, {})[path.name[: -len(ending)]] = path
    if not by_ending:
        found = f"; it holds {', '.join(others[:5])}" if others else " (it is empty)"
        raise BorderCoreError(f"no segmentations ({', '.join(sorted(endings))}) in {folder}{found}")
    if len(by_ending) > 1:
        counts = ", ".join(f"{len(v)} {e}" for e, v in sorted(by_ending.items()))
        raise BorderCoreError(f"{folder} mixes file endings ({counts}); one folder holds the predictions of one "
                              f"dataset, in one file format: move the others out")
    ending, files = next(iter(by_ending.items()))
    return ending, files


def reader_writer_for(folder: Path, ending: str, example: Path) -> type:
    """The reader/writer of the predictions in ``folder`` (module docstring)."""
    from nnunetv2.imageio.reader_writer_registry import (
        determine_reader_writer_from_dataset_json,
        determine_reader_writer_from_file_ending,
        recursive_find_reader_writer_by_name,
    )

    def load(name: str) -> dict:
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError):
            return {}

    name = load("plans.json").get("image_reader_writer")
    try:
        if name:
            return recursive_find_reader_writer_by_name(name)
        dataset_json = load("dataset.json")
        if dataset_json.get("file_ending") == ending:
            return determine_reader_writer_from_dataset_json(dataset_json, str(example), verbose=False)
        return determine_reader_writer_from_file_ending(ending, str(example), verbose=False)
    except RuntimeError as e:
        raise BorderCoreError(f"{folder}: no nnU-Net reader/writer reads {example.name} ({e})") from e


def decode_case(job: DecodeJob) -> str:
    """Worker: one segmentation decoded and written; returns the written file."""
    rw = job.reader_writer()
    segmentation, properties = read_map(rw, job.segmentation)
    instances = instances_from_border_core(segmentation, [float(s) for s in properties["spacing"]], job.core_label,
                                           job.border_label, job.min_core_size, job.connectivity,
                                           what=job.segmentation)
    write_map(rw, instances, job.output, properties, f"case {job.case}")
    return job.output


def decode_folder(input_folder: str | Path, output_folder: str | Path, core_label: int = 1, border_label: int = 2,
                  min_core_size: int = 0, connectivity: int = 26, num_processes: int = 1,
                  progress: bool = True) -> list[str]:
    """Instance maps of every segmentation of ``input_folder`` in ``output_folder``; returns the written files."""
    from tqdm import tqdm

    from nnunet_blob.workers import run_jobs

    source, target = Path(input_folder), Path(output_folder)
    ending, files = segmentation_files(source)
    if target.exists() and target.resolve() == source.resolve():
        raise BorderCoreError(f"the output folder must differ from the input folder {source} (the segmentations "
                              f"stay as they are)")
    if core_label == border_label or core_label <= 0 or border_label <= 0:
        raise BorderCoreError(f"--core-label {core_label} and --border-label {border_label} must be two different "
                              f"foreground labels (> 0)")
    if min_core_size < 0:
        raise BorderCoreError(f"--min-core-size {min_core_size} must be >= 0")
    reader_writer = reader_writer_for(source, ending, next(iter(files.values())))
    target.mkdir(parents=True, exist_ok=True)
    jobs = [DecodeJob(case, str(path), str(target / f"{case}{ending}"), reader_writer, core_label, border_label,
                      min_core_size, connectivity) for case, path in files.items()]
    results = run_jobs(decode_case, jobs, num_processes, describe=lambda job: f"case {job.case}",
                       outputs=lambda job: [job.output])
    return list(tqdm(results, total=len(jobs), desc="instances", unit="case", disable=not progress or None))
