"""The Ljubljana 3D MR image database of multiple sclerosis patients with consensus white-matter lesion segmentations
(30 patients; Lesjak et al., Neuroinformatics, DOI 10.1007/s12021-017-9348-7; CC-BY) as a 3D nnU-Net raw dataset.

The folder is laid out as github.com/muschellij2/open_ms_data (its root, or its ``cross_sectional`` folder):

- ``coregistered/patientXX/``: ``FLAIR``, ``T1W``, ``T1WKS`` (T1 after contrast), ``T2W`` ``.nii.gz`` co-registered to
  the FLAIR image and ``consensus_gt.nii.gz`` (the database's own space);
- ``MNI/patientXX/``: ``{FLAIR,T1,T1POST,T2}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz`` and
  ``GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz`` (skull-stripped, in MNI space at 1 mm; the
  repository's own processing).

Rules: a patient becomes a case when it has the label and every chosen channel in the chosen space (the others are
listed with what they lack); channel k of case ``patientXX`` is ``imagesTr/patientXX_000k.nii.gz`` (the file as it
is), the label the consensus mask (values 0/1 only, the channels' geometry) as ``uint8``; lesions are the label's
26-connected components. All cases are training cases: the benchmark cross-validates over patients,
:func:`patient_folds`.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: as the database's README and LICENSE.txt give it
CITATION = ("Lesjak, Žiga, Franjo Pernuš, Boštjan Likar, and Žiga Špiclin. \"A Novel Public MR Image Dataset of "
            "Multiple Sclerosis Patients With Lesion Segmentations Based on Multi-rater Consensus\", Neuroinformatics "
            "(2017), DOI: 10.1007/s12021-017-9348-7")
SOURCE = "http://lit.fe.uni-lj.si/tools (mirrored in github.com/muschellij2/open_ms_data, cross_sectional)"
LICENCE = "CC-BY (Creative Commons Attribution); cite the reference"
#: channels of the dataset unless chosen otherwise (every patient of the database has all four)
DEFAULT_CHANNELS = ("FLAIR", "T1", "T2")
#: the geometry of a channel may differ from the label's by this much (NIfTI headers store float32)
GEOMETRY_TOLERANCE = 1e-4


class ConversionError(RuntimeError):
    """The folder cannot become the dataset; the message names the patient or file and what to do."""


@dataclass(frozen=True)
class Space:
    """Where one space's files are in a patient's folder."""

    folder: str
    channels: dict[str, str]
    label: str
    description: str


_MNI = "_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
SPACES = {
    "coregistered": Space("coregistered", {"FLAIR": "FLAIR.nii.gz", "T1": "T1W.nii.gz", "T1POST": "T1WKS.nii.gz",
                                           "T2": "T2W.nii.gz"}, "consensus_gt.nii.gz",
                          "co-registered to each patient's FLAIR image (the database's own space)"),
    "MNI": Space("MNI", {c: c + _MNI for c in ("FLAIR", "T1", "T1POST", "T2")},
                 "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz",
                 "skull-stripped and registered to MNI space at 1 mm (open_ms_data's processing)"),
}


@dataclass
class ConversionReport:
    space: str = ""
    channels: list[str] = field(default_factory=list)
    patients_found: int = 0
    cases: list[str] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # patient -> the files it lacks
    lesions: dict[str, int] = field(default_factory=dict)
    lesion_voxels: dict[str, int] = field(default_factory=dict)
    shape: dict[str, list[int]] = field(default_factory=dict)
    spacing: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.cases)} of {self.patients_found} patients converted ({self.space} space, channels "
                 f"{', '.join(self.channels)}): {sum(self.lesions.values())} lesions (26-connected components of the "
                 f"consensus masks)"]
        lines += [f"  {case}: {self.lesions[case]} lesions, {self.lesion_voxels[case]} lesion voxels, "
                  f"{'x'.join(map(str, self.shape[case]))} voxels of {'x'.join(f'{s:g}' for s in self.spacing[case])}"
                  f" mm" for case in self.cases]
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} patients lacking files: " + skipped_text(self.skipped))
        return "\n".join(lines)


def skipped_text(skipped: dict[str, list[str]]) -> str:
    """``{patient: lacking}`` grouped by what is lacking: ``FLAIR, T1 missing: patient01, patient02``."""
    groups: dict[tuple, list[str]] = {}
    for patient, lacking in skipped.items():
        groups.setdefault(tuple(lacking), []).append(patient)
    return "; ".join(f"{', '.join(lacking)} missing: {', '.join(patients)}" for lacking, patients in groups.items())


def cross_sectional_folder(folder: Path) -> Path:
    """The folder holding the spaces' folders: ``folder/cross_sectional`` when there is one, else ``folder``."""
    folder = Path(folder)
    return folder / "cross_sectional" if (folder / "cross_sectional").is_dir() else folder


def patients(folder: Path, space: str) -> list[str]:
    base = cross_sectional_folder(folder) / SPACES[space].folder
    return sorted(p.name for p in base.glob("patient*") if p.is_dir()) if base.is_dir() else []


def missing_files(folder: Path, space: str, patient: str, channels: list[str]) -> list[str]:
    """Which of ``channels`` and the label ("label") ``patient`` lacks in ``space``."""
    chosen = SPACES[space]
    base = cross_sectional_folder(folder) / chosen.folder / patient
    files = {**{c: chosen.channels[c] for c in channels}, "label": chosen.label}
    return [what for what, name in files.items() if not (base / name).is_file()]


def complete_patients(folder: Path, space: str, channels: list[str]) -> list[str]:
    return [p for p in patients(folder, space) if not missing_files(folder, space, p, channels)]


def choose_space(folder: Path, space: str, channels: list[str]) -> str:
    """``space``, or for "auto" the space with the most complete patients (the database's own space on a tie)."""
    if space != "auto":
        return space
    return max(SPACES, key=lambda s: (len(complete_patients(folder, s, channels)), s == "coregistered"))


def check_channels(channels: list[str]) -> list[str]:
    unknown = [c for c in channels if c not in SPACES["coregistered"].channels]
    if unknown or len(set(channels)) != len(channels) or not channels:
        raise ConversionError(f"channels {channels}: choose distinct ones of "
                              f"{', '.join(SPACES['coregistered'].channels)}")
    return list(channels)


def _geometry(image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _same_geometry(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and all(np.allclose(x, y, atol=GEOMETRY_TOLERANCE) for x, y in zip(a[1:], b[1:], strict=True))


def _header(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    return reader


def lesion_count(label: np.ndarray) -> int:
    """26-connected components of the foreground."""
    import cc3d

    return int(cc3d.connected_components(label > 0, connectivity=26).max())


def convert(folder: Path, raw_folder: Path, space: str = "auto",
            channels: list[str] | tuple[str, ...] = DEFAULT_CHANNELS) -> ConversionReport:
    """Write the nnU-Net raw dataset ``raw_folder`` (replaced if it exists) from the patients that have every file."""
    import SimpleITK as sitk

    channels = check_channels(list(channels))
    folder = Path(folder)
    space = choose_space(folder, space, channels)
    chosen = SPACES[space]
    report = ConversionReport(space=space, channels=channels)
    found = patients(folder, space)
    report.patients_found = len(found)
    for patient in found:
        lacking = missing_files(folder, space, patient, channels)
        if lacking:
            report.skipped[patient] = lacking
        else:
            report.cases.append(patient)
    if len(report.cases) < 2:
        where = cross_sectional_folder(folder) / chosen.folder
        raise ConversionError(
            f"{where}: {len(report.cases)} of {len(found)} patients have every file of channels "
            f"{', '.join(channels)} and the label ({', '.join(chosen.channels[c] for c in channels)}, {chosen.label}); "
            f"cross-validation over patients needs at least 2. Give the open_ms_data folder (or its cross_sectional "
            f"folder) with the images present, choose --space, or fewer --channels"
            + (f". {skipped_text(report.skipped)}" if report.skipped else ""))
    raw_folder = Path(raw_folder)
    shutil.rmtree(raw_folder, ignore_errors=True)  # a half-written dataset of an interrupted run
    (raw_folder / "imagesTr").mkdir(parents=True)
    (raw_folder / "labelsTr").mkdir()
    for case in report.cases:
        base = cross_sectional_folder(folder) / chosen.folder / case
        label_image = sitk.ReadImage(str(base / chosen.label))
        label = sitk.GetArrayFromImage(label_image)
        values = np.unique(label)
        if not np.isin(values, (0, 1)).all():
            raise ConversionError(f"{base / chosen.label}: label values {values.tolist()[:10]}, a consensus mask "
                                  f"holds 0 and 1 only; is it the lesion mask of {case}?")
        geometry = _geometry(label_image)
        for k, channel in enumerate(channels):
            source = base / chosen.channels[channel]
            if not _same_geometry(_geometry(_header(source)), geometry):
                raise ConversionError(f"{case}: {source.name} has size/spacing/origin/direction "
                                      f"{_geometry(_header(source))}, the label {geometry}: channels and label must "
                                      f"be co-registered on one grid (use the coregistered or MNI files)")
            shutil.copyfile(source, raw_folder / "imagesTr" / f"{case}_{k:04d}.nii.gz")
        written = sitk.GetImageFromArray(label.astype(np.uint8))
        written.CopyInformation(label_image)
        sitk.WriteImage(written, str(raw_folder / "labelsTr" / f"{case}.nii.gz"), True)
        report.lesions[case] = lesion_count(label)
        report.lesion_voxels[case] = int((label > 0).sum())
        report.shape[case] = list(label_image.GetSize())
        report.spacing[case] = [round(float(s), 6) for s in label_image.GetSpacing()]
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(str(raw_folder), dict(enumerate(channels)), {"background": 0, "lesion": 1},
                          len(report.cases), ".nii.gz", dataset_name=raw_folder.name, license=LICENCE,
                          reference=SOURCE, citation=CITATION, converted_by="nnunet_blob benchmarks/bench_ms.py",
                          description=f"Ljubljana 3D MS lesion database, cross-sectional part, {chosen.description}; "
                                      f"label = consensus white-matter lesion mask; patients {', '.join(report.cases)}")
    # nnU-Net's generate_dataset_json stores its `release` argument under "citation"
    dataset_json = raw_folder / "dataset.json"
    dataset_json.write_text(json.dumps({**json.loads(dataset_json.read_text()), "citation": CITATION}, indent=4))
    return report


def patient_folds(cases: list[str], max_folds: int = 5) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` over patients: ``k = min(max_folds, n)`` folds (leave-one-patient-out when
    ``n <= max_folds``); the sorted patient ``i`` is validated in fold ``i % k`` and trained on in the others."""
    ordered = sorted(cases)
    k = min(max_folds, len(ordered))
    held_out = [[c for i, c in enumerate(ordered) if i % k == fold] for fold in range(k)]
    return [{"train": [c for c in ordered if c not in val], "val": val} for val in held_out]
