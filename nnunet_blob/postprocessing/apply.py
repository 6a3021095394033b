"""``nnunet_blob apply-postprocessing``: a ``postprocessing_instances.json`` applied to a folder of predictions.

Input: what ``nnUNetv2_predict`` (or ``nnUNetv2_ensemble``) wrote: ``<case><file_ending>`` label files, and with
``--save_probabilities`` (``--save_npz``) ``<case>.npz`` and ``<case>.pkl``. A file with probability thresholds
needs the ``.npz`` and ``.pkl`` of every case; a file with minimum volumes only uses the label files (or the
probabilities, for cases that only have those). Output: one label file per case, written by nnU-Net's reader/writer
with the case's properties (spacing, origin, direction) and nnU-Net's dtype, as ``nnUNetv2_predict`` writes them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_blob.files import atomic_path_and_companions
from nnunet_blob.nnunet_internals import LabelLayout
from nnunet_blob.postprocessing.cases import reader_writer_class
from nnunet_blob.postprocessing.rules import postprocess
from nnunet_blob.postprocessing.settings import DecisionError, PostprocessingFile, read_postprocessing
from nnunet_blob.workers import run_cases


@dataclass(frozen=True)
class ApplyJob:
    case: str
    segmentation: str | None
    probabilities: str | None
    properties: str | None
    output: str
    postprocessing: PostprocessingFile
    reader_writer: type  # nnU-Net's class named by the file, found once (finding it imports every reader)


def apply_case(job: ApplyJob) -> str:
    """Postprocess one case and write it; DecisionError naming the case when its files do not fit the settings."""
    from batchgenerators.utilities.file_and_folder_operations import load_pickle

    pp = job.postprocessing
    rw = job.reader_writer()
    try:
        if pp.uses_probabilities or job.segmentation is None:
            assert job.probabilities is not None and job.properties is not None
            with np.load(job.probabilities) as f:
                probabilities = f["probabilities"]
            properties = load_pickle(job.properties)
            segmentation = None
        else:
            seg, properties = rw.read_seg(job.segmentation)
            segmentation, probabilities = seg[0], None
        result = postprocess(segmentation, probabilities, pp.settings, pp.layout, properties["spacing"],
                             pp.connectivity)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        raise DecisionError(f"case {job.case}: cannot apply the postprocessing ({type(e).__name__}: {e}); the "
                            f"prediction must come from the model the file was tuned for") from e
    with atomic_path_and_companions(job.output) as tmp:
        rw.write_seg(result, str(tmp), properties)
    return job.output


def _layout_of_dataset_json(path: Path) -> LabelLayout:
    return LabelLayout.of_dataset(json.loads(path.read_text()))


def apply_jobs(input_folder: str | Path, output_folder: str | Path, pp: PostprocessingFile,
               pp_file: str = "the postprocessing file") -> list[ApplyJob]:
    """One job per case of ``input_folder``; DecisionError naming a case that cannot be postprocessed, and the fix."""
    source, target = Path(input_folder), Path(output_folder)
    if not source.is_dir():
        raise DecisionError(f"input folder {source} does not exist")
    if source.resolve() == target.resolve():
        raise DecisionError(f"the output folder must differ from the input folder {source} (the predictions stay as "
                            f"they are)")
    if (source / "dataset.json").is_file():
        theirs = _layout_of_dataset_json(source / "dataset.json")
        if (theirs.labels_or_regions, theirs.regions_class_order) != \
                (pp.layout.labels_or_regions, pp.layout.regions_class_order):
            raise DecisionError(f"{source} holds predictions of {list(theirs.labels_or_regions)} but {pp_file} was "
                                f"tuned for {list(pp.layout.labels_or_regions)}; use the file of the model that made "
                                f"these predictions")
    ending = pp.file_ending
    labels = {p.name[: -len(ending)]: p for p in source.glob(f"*{ending}") if not p.name.startswith(".")}
    arrays = {p.stem: p for p in source.glob("*.npz")}
    if pp.uses_probabilities:
        without = sorted(set(labels) - set(arrays))
        if without:
            thresholds = ", ".join(s.describe() for s in pp.settings if s.threshold is not None)
            raise DecisionError(f"case {without[0]} ({len(without)} cases) has no probabilities ({without[0]}.npz) in "
                                f"{source}, but {pp_file} thresholds them ({thresholds}); predict with "
                                f"nnUNetv2_predict ... --save_probabilities (nnUNetv2_ensemble ... --save_npz), or "
                                f"tune without thresholds (nnunet_blob tune-postprocessing ... --no-thresholds)")
        cases = sorted(arrays)
    else:
        cases = sorted(set(labels) | set(arrays))
    if not cases:
        raise DecisionError(f"no predictions (*{ending} or *.npz) in {source}")
    reader_writer = reader_writer_class(pp.reader_writer)
    jobs = []
    for case in cases:
        segmentation = str(labels[case]) if case in labels else None
        probabilities = str(arrays[case]) if case in arrays else None
        properties = source / f"{case}.pkl"
        if (pp.uses_probabilities or segmentation is None) and not properties.is_file():
            raise DecisionError(f"case {case}: {case}.npz has no {case}.pkl (nnU-Net's properties) beside it in "
                                f"{source}; nnUNetv2_predict --save_probabilities writes both, keep them together")
        jobs.append(ApplyJob(case, segmentation, probabilities, str(properties) if properties.is_file() else None,
                             str(target / f"{case}{ending}"), pp, reader_writer))
    return jobs


def apply_to_folder(input_folder: str | Path, output_folder: str | Path, pp_file: str | Path,
                    num_processes: int = 1) -> list[str]:
    """Apply ``pp_file`` to every case of ``input_folder``, writing ``output_folder``; returns the written files."""
    pp = read_postprocessing(pp_file)
    jobs = apply_jobs(input_folder, output_folder, pp, str(pp_file))
    Path(output_folder).mkdir(parents=True, exist_ok=True)
    return run_cases(apply_case, jobs, (), num_processes, f"postprocessing {len(jobs)} cases",
                     describe=lambda job: f"case {job.case}", outputs=lambda job: [job.output])
