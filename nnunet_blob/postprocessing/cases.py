"""The cross-validation predictions of a trained model, or of an ensemble of two, case by case.

nnU-Net leaves each fold's predictions of its validation cases in
``nnUNet_results/DatasetXXX/<trainer>__<plans>__<configuration>/fold_<f>/validation/``: ``<case><file_ending>``,
and with ``nnUNetv2_train --npz`` also ``<case>.npz`` (the probabilities) and ``<case>.pkl`` (nnU-Net's
properties). Together the folds predict every training case once; a case's fold is the fold whose ``validation/``
holds it (the ``val`` list of that fold in the ``splits_final.json`` the fold was trained with), an ensemble's case
takes its first member's fold (any split of the cases into groups serves cross-validated selection, whose choices
never see the cases they are applied to; nnU-Net's models of a dataset share one split). The reference is nnU-Net's
copy of the labels, ``nnUNet_preprocessed/DatasetXXX/gt_segmentations/``. An ensemble's prediction of a case is
nnU-Net's: the mean of its members' probabilities, then nnU-Net's argmax (``nnunetv2.ensembling.ensemble``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_blob.nnunet_internals import LabelLayout
from nnunet_blob.postprocessing.settings import DecisionError
from nnunet_blob.preprocessing.locate import dataset_name, preprocessed_root


@dataclass(frozen=True)
class CaseFiles:
    """One case: its reference, and the prediction's label file and/or probabilities (one .npz per member); the fold
    whose validation cases it is (None: not known), which cross-validated selection groups the cases by."""

    name: str
    reference: str
    segmentation: str | None
    probabilities: tuple[str, ...] = ()
    fold: int | str | None = None


@dataclass
class Predictions:
    """The cross-validation predictions of one model or ensemble: what tuning and ranking read."""

    dataset: str
    identifier: str  # nnU-Net's folder name of the model, or of the ensemble
    folds: tuple
    cases: list[CaseFiles]
    output_folder: Path  # where postprocessing_instances.json goes (next to nnU-Net's postprocessing.pkl)
    layout: LabelLayout
    file_ending: str
    reader_writer: str  # nnU-Net's image_reader_writer class name (plans)
    members: list[dict] = field(default_factory=list)  # trainer, plans, configuration of each model
    no_probabilities: str | None = None  # why the probabilities cannot be used (None: every case has them)

    @property
    def has_probabilities(self) -> bool:
        return self.no_probabilities is None

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1


def results_root() -> Path:
    root = os.environ.get("nnUNet_results")
    if not root:
        raise DecisionError("nnUNet_results is not set. Set it as for nnU-Net (nnU-Net's documentation/"
                            "setting_up_paths.md): it is where nnUNetv2_train wrote the trained models.")
    return Path(root)


def folds_string(folds) -> str:
    """nnU-Net's ``folds_tuple_to_string``: ``(0, 1, 2)`` -> ``0_1_2``."""
    return "_".join(str(f) for f in folds)


def parse_folds(values) -> tuple:
    """Command-line folds: integers, or ``all``."""
    return tuple(v if v == "all" else int(v) for v in values)


def model_folder(dataset: str, trainer: str, plans: str, configuration: str) -> Path:
    return results_root() / dataset_name(dataset) / f"{trainer}__{plans}__{configuration}"


def crossval_folder(model: Path, folds) -> Path:
    """nnU-Net's ``crossval_results_folds_<folds>`` of a model, where its ``postprocessing.pkl`` goes."""
    return model / f"crossval_results_folds_{folds_string(folds)}"


def layout_of(plans: dict, dataset_json: dict) -> tuple[LabelLayout, str, str]:
    """(label layout, file ending, reader/writer class name) of a trained model's plans and dataset.json."""
    return LabelLayout.of_dataset(dataset_json, plans), dataset_json["file_ending"], plans["image_reader_writer"]


def _train_command(dataset: str, configuration: str, fold, trainer: str, plans: str) -> str:
    return f"nnUNetv2_train {dataset} {configuration} {fold} -tr {trainer} -p {plans}"


def cross_validation_predictions(dataset: str, trainer: str, plans: str, configuration: str,
                                 folds) -> Predictions:
    """The validation predictions of ``folds`` of one trained model; DecisionError naming the missing fold, case or
    file and the nnU-Net command that makes it."""
    name = dataset_name(dataset)
    folder = model_folder(name, trainer, plans, configuration)

    def train(fold) -> str:
        return _train_command(dataset, configuration, fold, trainer, plans)

    plans_dict, dataset_json = _trained_model_json(folder, name, folds, train)
    layout, ending, reader_writer = layout_of(plans_dict, dataset_json)
    reference_folder = preprocessed_root() / name / "gt_segmentations"
    cases: dict[str, CaseFiles] = {}
    for fold in folds:
        for case in _fold_cases(folder, fold, ending, reference_folder, train):
            if case.name in cases:
                raise DecisionError(f"case {case.name} is predicted by two folds of {folder.name} (fold {fold} and "
                                    f"another); use folds of one cross-validation split")
            cases[case.name] = case
    without = [c for c in cases.values() if not c.probabilities]
    no_probabilities = None
    if without:
        no_probabilities = (f"{folder.name}: {len(without)} of {len(cases)} cases have no probabilities (.npz), "
                            f"e.g. fold {without[0].fold} case {without[0].name}; to use them run "
                            + "; ".join(train(f) + " --val --npz" for f in sorted({str(c.fold) for c in without})))
        cases = {k: CaseFiles(c.name, c.reference, c.segmentation, (), c.fold) for k, c in cases.items()}
    return Predictions(name, folder.name, tuple(folds), [cases[k] for k in sorted(cases)],
                       crossval_folder(folder, folds), layout, ending, reader_writer,
                       [{"trainer": trainer, "plans": plans, "configuration": configuration}], no_probabilities)


def _trained_model_json(folder: Path, name: str, folds, train: Callable[..., str]) -> tuple[dict, dict]:
    """The plans and dataset.json of a trained model's folder; DecisionError with the training command when the
    model or either file is missing."""
    if not folder.is_dir():
        raise DecisionError(f"no trained model {folder.name} of {name} in {folder.parent}; train it: "
                            f"{train(folds[0])} (every fold of {list(folds)}), or check -tr, -p and -c")
    for required in ("plans.json", "dataset.json"):
        if not (folder / required).is_file():
            raise DecisionError(f"{folder / required} is missing; nnUNetv2_train writes it: run {train(folds[0])}")
    return json.loads((folder / "plans.json").read_text()), json.loads((folder / "dataset.json").read_text())


def _fold_cases(folder: Path, fold, ending: str, reference_folder: Path,
                train: Callable[..., str]) -> list[CaseFiles]:
    """The validation cases of one fold (with their probabilities where nnU-Net kept them); DecisionError when the
    fold has no predictions or a case has no reference."""
    validation = folder / f"fold_{fold}" / "validation"
    files = sorted(p.name for p in validation.glob(f"*{ending}")) if validation.is_dir() else []
    if not files:
        raise DecisionError(f"fold {fold} of {folder.name} has no validation predictions ({validation}); run "
                            f"{train(fold)} (add --val --npz if it was trained, --npz to keep the probabilities)")
    cases = []
    for file in files:
        case = file[: -len(ending)]
        reference = reference_folder / file
        if not reference.is_file():
            raise DecisionError(f"case {case}: no reference {reference}; the folds must be of this dataset's "
                                f"training cases (nnUNetv2_plan_and_preprocess writes gt_segmentations)")
        npz = validation / f"{case}.npz"
        cases.append(CaseFiles(case, str(reference), str(validation / file), (str(npz),) if npz.is_file() else (),
                               fold))
    return cases


def ensemble_predictions(first: Predictions, second: Predictions) -> Predictions:
    """The ensemble of two models' cross-validation predictions (nnU-Net's ``ensemble_crossvalidations``: the
    mean of the probabilities); DecisionError when a member has no probabilities or the members differ."""
    for member in (first, second):
        if not member.has_probabilities:
            raise DecisionError(f"the ensemble of {first.identifier} and {second.identifier} needs the "
                                f"probabilities of both: {member.no_probabilities}")
    if first.layout != second.layout or first.file_ending != second.file_ending:
        raise DecisionError(f"{first.identifier} and {second.identifier} have different labels or file endings; "
                            f"they cannot be ensembled")
    names = [c.name for c in first.cases]
    if names != [c.name for c in second.cases]:
        raise DecisionError(f"{first.identifier} and {second.identifier} predict different cases "
                            f"({sorted(set(names) ^ {c.name for c in second.cases})[:5]}); train the same folds")
    identifier = f"ensemble___{first.identifier}___{second.identifier}___{folds_string(first.folds)}"
    cases = [CaseFiles(a.name, a.reference, None, a.probabilities + b.probabilities, a.fold)
             for a, b in zip(first.cases, second.cases, strict=True)]
    return Predictions(first.dataset, identifier, first.folds, cases,
                       results_root() / first.dataset / "ensembles" / identifier, first.layout, first.file_ending,
                       first.reader_writer, first.members + second.members)


def reader_writer_class(name: str):
    """nnU-Net's reader/writer class of that name (``image_reader_writer`` of the plans)."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    return recursive_find_reader_writer_by_name(name)


def mean_probabilities(files) -> np.ndarray:
    """nnU-Net's ``average_probabilities``: the mean of the ``probabilities`` of the .npz files, float32."""
    total = None
    for file in files:
        with np.load(file) as f:
            p = f["probabilities"]
        total = p.astype(np.float32) if total is None else total + p
    assert total is not None
    total /= len(files)
    return total


@dataclass
class LoadedCase:
    """A case in memory: arrays as nnU-Net's reader gives them without the channel axis."""

    reference: np.ndarray
    segmentation: np.ndarray | None
    probabilities: np.ndarray | None
    spacing: tuple


def load_case(case: CaseFiles, reader_writer, use_probabilities: bool = True) -> LoadedCase:
    ref, properties = reader_writer.read_seg(case.reference)
    seg = reader_writer.read_seg(case.segmentation)[0][0] if case.segmentation else None
    probabilities = mean_probabilities(case.probabilities) if case.probabilities and (use_probabilities or
                                                                                      seg is None) else None
    for what, array in (("prediction", seg), ("probabilities", probabilities)):
        if array is not None and array.shape[-ref[0].ndim:] != ref[0].shape:
            raise DecisionError(f"case {case.name}: the {what} ({array.shape}) do not match the reference "
                                f"{case.reference} ({ref[0].shape}); predictions must be in the reference's space")
    return LoadedCase(ref[0], seg, probabilities, tuple(properties["spacing"]))
