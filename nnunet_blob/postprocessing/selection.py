"""``nnunet_blob find-best``: ``nnUNetv2_find_best_configuration`` ranked by an instance metric.

Like nnU-Net's: the candidates are the trained models (trainers x configurations x plans, those trained) and, unless
ensembling is off, every pair of them (the mean of their cross-validation probabilities, nnU-Net's ensembling). It
differs in what decides: every candidate's postprocessing is tuned on its cross-validation predictions first
(:func:`.tuning.tune`, written next to its nnU-Net ``postprocessing.pkl``, or in nnU-Net's ``ensembles/`` folder)
and the candidates are ranked by the foreground mean of the metric *after* their own postprocessing, because
that is what a submission is scored on. Ties go to the candidate listed first (single models before ensembles, as
nnU-Net). The inference commands of the winner (predict, ensemble, apply the postprocessing) are printed and
written to ``nnUNet_results/DatasetXXX/inference_instructions_instances.txt`` (and ``..._information_instances.json``),
beside nnU-Net's own files.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_blob.evaluation.compare import paired_wilcoxon
from nnunet_blob.files import atomic_write_bytes, atomic_write_json
from nnunet_blob.nnunet_internals import previous_stage
from nnunet_blob.postprocessing.cases import (
    Predictions,
    cross_validation_predictions,
    ensemble_predictions,
    model_folder,
    results_root,
)
from nnunet_blob.postprocessing.settings import FILE_NAME, DecisionError, PostprocessingFile
from nnunet_blob.postprocessing.tuning import Metric, TuningResult, tune
from nnunet_blob.preprocessing.locate import dataset_name, preprocessed_root

#: nnU-Net's default configurations of nnUNetv2_find_best_configuration
DEFAULT_CONFIGURATIONS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")
INSTRUCTIONS_FILE = "inference_instructions_instances.txt"
INFORMATION_FILE = "inference_information_instances.json"


@dataclass
class Candidate:
    predictions: Predictions
    tuning: TuningResult
    postprocessing_file: Path

    @property
    def before(self) -> float:
        return self.tuning.foreground_mean("before")

    @property
    def after(self) -> float:
        return self.tuning.foreground_mean("after")


def trained_models(dataset: str, configurations: Sequence[str], trainers: Sequence[str], plans: Sequence[str],
                   folds, log: Callable[[str], None] = print) -> list[Predictions]:
    """The cross-validation predictions of every trained (trainer, configuration, plans); a model that was never
    trained is skipped with a note, a model with a missing fold is an error."""
    name = dataset_name(dataset)
    models = []
    for trainer, configuration, plans_identifier in itertools.product(trainers, configurations, plans):
        plans_file = preprocessed_root() / name / f"{plans_identifier}.json"
        if not plans_file.is_file():
            raise DecisionError(f"{plans_file} does not exist; run nnUNetv2_plan_and_preprocess -d {dataset} (or "
                                f"give the plans with -p)")
        if configuration not in json.loads(plans_file.read_text())["configurations"]:
            log(f"note: configuration {configuration} is not in {plans_file.name}; skipped")
            continue
        if not model_folder(name, trainer, plans_identifier, configuration).is_dir():
            log(f"note: {trainer}__{plans_identifier}__{configuration} was not trained; skipped")
            continue
        models.append(cross_validation_predictions(name, trainer, plans_identifier, configuration, folds))
    if not models:
        raise DecisionError(f"no trained model of {name} among trainers {list(trainers)}, configurations "
                            f"{list(configurations)}, plans {list(plans)}; train them with nnUNetv2_train (and -c, "
                            f"-tr, -p here to name them)")
    cases = [c.name for c in models[0].cases]
    for model in models[1:]:
        if [c.name for c in model.cases] != cases:
            raise DecisionError(f"{models[0].identifier} and {model.identifier} predict different cases in folds "
                                f"{list(folds)}; train every model on the same folds")
    return models


def candidates_of(models: list[Predictions], allow_ensembling: bool,
                  log: Callable[[str], None] = print) -> list[Predictions]:
    """The models, then every pair of them whose probabilities were saved."""
    candidates = list(models)
    if allow_ensembling:
        for first, second in itertools.combinations(models, 2):
            try:
                candidates.append(ensemble_predictions(first, second))
            except DecisionError as e:
                log(f"note: ensemble skipped: {e}")
    return candidates


def predict_command(dataset: str, member: dict, folds, output: str, probabilities: bool) -> list[str]:
    """nnU-Net's inference command of one model (two for a cascade: the previous stage first)."""
    folder = model_folder(dataset, member["trainer"], member["plans"], member["configuration"])
    previous_configuration = previous_stage(json.loads((folder / "plans.json").read_text()), member["configuration"])
    fold_text = " ".join(str(f) for f in folds)
    commands, previous = [], ""
    if previous_configuration is not None:
        commands.append(f"nnUNetv2_predict -d {dataset} -i INPUT_FOLDER -o OUTPUT_FOLDER_PREV_STAGE -f {fold_text} "
                        f"-tr {member['trainer']} -c {previous_configuration} -p {member['plans']}")
        previous = " -prev_stage_predictions OUTPUT_FOLDER_PREV_STAGE"
    commands.append(f"nnUNetv2_predict -d {dataset} -i INPUT_FOLDER -o {output} -f {fold_text} -tr "
                    f"{member['trainer']} -c {member['configuration']} -p {member['plans']}{previous}"
                    + (" --save_probabilities" if probabilities else ""))
    return commands


def inference_commands(predictions: Predictions, postprocessing: PostprocessingFile, postprocessing_path: Path,
                       num_processes: int) -> list[str]:
    """Predict (each member), ensemble, apply the postprocessing: the commands for new images (``INPUT_FOLDER``)."""
    p = predictions
    uses_probabilities = postprocessing.uses_probabilities
    commands = []
    if p.is_ensemble:
        outputs = [f"OUTPUT_FOLDER_MODEL_{i + 1}" for i in range(len(p.members))]
        for member, output in zip(p.members, outputs, strict=True):
            commands += predict_command(p.dataset, member, p.folds, output, probabilities=True)
        commands.append(f"nnUNetv2_ensemble -i {' '.join(outputs)} -o OUTPUT_FOLDER -np {num_processes}"
                        + (" --save_npz" if uses_probabilities else ""))
    else:
        commands += predict_command(p.dataset, p.members[0], p.folds, "OUTPUT_FOLDER", uses_probabilities)
    if postprocessing.changes_nothing:
        commands.append("# the tuned postprocessing changes nothing: OUTPUT_FOLDER holds the result")
    else:
        commands.append(f"nnunet_blob apply-postprocessing -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP -pp "
                        f"{postprocessing_path} -np {num_processes}")
    return commands


def find_best(dataset: str, metric: Metric, configurations: Sequence[str] = DEFAULT_CONFIGURATIONS,
              trainers: Sequence[str] = ("nnUNetTrainer",), plans: Sequence[str] = ("nnUNetPlans",),
              folds=(0, 1, 2, 3, 4), allow_ensembling: bool = True, num_processes: int = 1,
              log: Callable[[str], None] = print, **tune_options) -> dict:
    """Rank the candidates (module docstring); returns what ``inference_information_instances.json`` holds."""
    name = dataset_name(dataset)
    models = trained_models(name, configurations, trainers, plans, folds, log)
    candidates = []
    for predictions in candidates_of(models, allow_ensembling, log):
        log(f"\n*** {predictions.identifier}")
        result = tune(predictions, metric, num_processes=num_processes, **tune_options)
        path = result.postprocessing_file().write(predictions.output_folder / FILE_NAME)
        log(result.report())
        log(f"written: {path}")
        candidates.append(Candidate(predictions, result, path))
    sign = 1.0 if metric.higher_is_better else -1.0
    order = sorted(range(len(candidates)),
                   key=lambda i: (-(sign * candidates[i].after) if np.isfinite(candidates[i].after) else np.inf, i))
    best = candidates[order[0]]
    log(f"\n*** {metric.name} ({metric.direction}), foreground mean over {len(best.predictions.cases)} "
        f"cross-validation cases, before and after each candidate's own postprocessing:")
    for rank, i in enumerate(order, 1):
        c = candidates[i]
        p = 1.0 if c is best else paired_wilcoxon(c.tuning.case_means("after"), best.tuning.case_means("after"))
        settings = "; ".join(s.describe() for s in c.tuning.settings)
        log(f"{rank:2d}. {c.predictions.identifier}: {c.before:.4f} -> {c.after:.4f} ({settings})"
            + ("" if c is best else f"; Wilcoxon p vs the best = {p:.3g}"))
    commands = inference_commands(best.predictions, best.tuning.postprocessing_file(), best.postprocessing_file,
                                  num_processes)
    information = {
        "dataset": name, "folds": list(best.predictions.folds), "metric": metric.name,
        "higher_is_better": metric.higher_is_better, "ensembling_allowed": allow_ensembling,
        "results": {c.predictions.identifier: {"before_postprocessing": c.before, "after_postprocessing": c.after,
                                               "postprocessing_file": str(c.postprocessing_file)}
                    for c in candidates},
        "best": {"identifier": best.predictions.identifier, "members": best.predictions.members,
                 "before_postprocessing": best.before, "after_postprocessing": best.after,
                 "postprocessing_file": str(best.postprocessing_file)},
        "commands": commands,
    }
    folder = results_root() / name
    atomic_write_json(folder / INFORMATION_FILE, information)
    text = (f"Best by {metric.name} after postprocessing: {best.predictions.identifier} "
            f"({best.before:.4f} -> {best.after:.4f})\n\nRun inference like this:\n\n" + "\n".join(commands) + "\n")
    atomic_write_bytes(folder / INSTRUCTIONS_FILE, text.encode())
    log(f"\n*** Best: {best.predictions.identifier}\n\n{text}")
    return information
