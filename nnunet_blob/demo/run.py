"""The demo: synthetic data -> nnU-Net planning/preprocessing -> instance maps -> training of stock nnU-Net and
blob-loss trainers with the same seed and budget -> prediction on a held-out test split -> evaluation and comparison.

Every step is the real command-line tool a user would type, in a workspace of its own (see :mod:`.stages`).
"""
from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nnunet_blob.demo.budgets import BUDGETS, DEMO_SUFFIX, Budget
from nnunet_blob.demo.plans import shrink_plans
from nnunet_blob.demo.report import TUNED_SUFFIX, results_table, row_key
from nnunet_blob.demo.stages import EpochProgress, StageError, Stages, demo_environment
from nnunet_blob.files import atomic_write_bytes, atomic_write_json
from nnunet_blob.registration import EXT_TRAINER_VARIABLE, ext_trainer_value, is_registered

DATASET_ID, DATASET_NAME = 991, "BlobDemo"
CONFIGURATION = "3d_fullres"
SETTINGS = "demo.json"
#: stages before the trainers' (dataset, plan_and_preprocess, reduce_plans, instance_maps); each trainer has three
#: (train, predict, evaluate), and a comparison of several trainers one more
SHARED_STAGES, STAGES_PER_TRAINER = 4, 3
#: with ``tune``: nnU-Net's five folds, then tune-postprocessing, apply-postprocessing and an evaluation of the
#: tuned predictions per trainer
CROSS_VALIDATION_FOLDS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class Target:
    """The nnU-Net dataset (id) and configuration that the stages train, predict and evaluate."""

    dataset_id: int = DATASET_ID
    configuration: str = CONFIGURATION


#: nnU-Net's lookup line before it finds a ``-tr`` name outside its own package (``find_objects.py``)
LOOKUP_NOTE = ("nnU-Net's line \"Trainer '{name}' not found in nnunetv2.training.nnUNetTrainer\" below is expected: "
               "it then searches nnUNet_extTrainer and finds it there")


class DemoError(RuntimeError):
    """The demo cannot start (bad workspace or arguments); the message says what to do."""


def run_demo(workspace: str | Path = "nnunet_blob_demo", budget: str = "default",
             trainers: Sequence[str] = ("nnUNetTrainer", "nnUNetTrainerBlobDice"), device: str = "auto",
             clean: bool = False, seed: int = 0, num_processes: int = 2, out=sys.stdout,
             verbose: bool = False, tune: bool = False) -> dict:
    """Run (or resume) the demo in ``workspace``; returns the results table as {trainer: {metric: value}}.

    The console gets one line per stage and per training epoch (``verbose``: every tool's full output too); each
    stage's full output is in ``<workspace>/logs/<stage>.log``.

    ``tune``: train nnU-Net's five cross-validation folds of each trainer (``--npz``), choose its postprocessing
    on their validation predictions (``nnunet_blob tune-postprocessing``), predict the test split with the
    five-fold ensemble and report it raw and with the tuned postprocessing applied (rows ``<trainer> tuned``).
    """
    from nnunet_blob.demo.budgets import demo_trainer_bases

    start = time.time()
    root = Path(workspace).expanduser().resolve()
    trainers = list(dict.fromkeys(trainers))
    unknown = [t for t in trainers if t not in demo_trainer_bases()]
    if unknown:
        raise DemoError(f"unknown trainer(s) {', '.join(unknown)}; choose from: "
                        f"{', '.join(sorted(demo_trainer_bases()))}")
    if budget not in BUDGETS:
        raise DemoError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    removed = _prepare_workspace(root, clean)
    if clean:
        print(f"--clean: {removed}", file=out, flush=True)
    device = _device(device)
    plan = BUDGETS[budget]
    reduce = plan.base_features if device == "cpu" else None
    settings = _settings(root, budget, seed, reduce, tune)
    trainers_listed = ext_trainer_value()  # the user's folders, ours and the demo's
    folds = CROSS_VALIDATION_FOLDS if tune else (0,)
    per_trainer = STAGES_PER_TRAINER + (len(folds) - 1 + 3 if tune else 0)
    total = SHARED_STAGES + per_trainer * len(trainers) + int(len(trainers) > 1 or tune)
    stages = Stages(root, demo_environment(root, {**plan.environment(seed), EXT_TRAINER_VARIABLE: trainers_listed,
                                                  "nnUNet_def_n_proc": str(num_processes)}), total, out, verbose)
    stages.say(f"nnunet_blob demo in {root} (budget {budget}: {plan.num_train} training and {plan.num_test} test "
               f"cases of {'x'.join(map(str, plan.shape))} voxels, {plan.epochs} epochs of {plan.iterations} "
               f"iterations, seed {seed}, device {device}"
               + (", five folds each, postprocessing tuned on them)" if tune else ")"))
    if plan.caveat:
        stages.say(f"    {plan.caveat}")
    if reduce:
        stages.say(f"    CPU run: nnU-Net's plans are reduced to {reduce} features in the first stage "
                   f"(same patch size and stages) so that training fits the budget; results are not nnU-Net's "
                   f"full-size numbers. On a GPU the demo keeps nnU-Net's own network.")
    if not verbose:
        stages.say("    one line per stage and per epoch here; every tool's full output in the stage's log "
                   "(--verbose streams it)")
    raw = root / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    preprocessed = root / "nnUNet_preprocessed" / raw.name

    stages.run("dataset", lambda: _make_dataset(raw, plan, seed), "synthetic dataset")
    stages.run("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", CONFIGURATION,
                                       "-np", num_processes, "-npfp", num_processes, "--verify_dataset_integrity"],
               "nnUNetv2_plan_and_preprocess", after=["dataset"])
    stages.run("reduce_plans", lambda: reduce_plans(preprocessed / "nnUNetPlans.json", reduce),
               "reduced network for CPU" if reduce else "nnU-Net's own plans", after=["plan_and_preprocess"])
    stages.run("instance_maps", ["nnunet_blob", "preprocess", "-d", DATASET_ID, "-c", CONFIGURATION, "-np",
                                 num_processes], "nnunet_blob preprocess (instance maps)", after=["reduce_plans"])
    summaries = {}
    for trainer in trainers:
        summaries[trainer] = train_predict_evaluate(stages, trainer, raw, preprocessed, device, num_processes,
                                                    plan.epochs, folds)
        if tune:
            summaries[trainer + TUNED_SUFFIX] = tune_apply_evaluate(stages, trainer, raw, preprocessed,
                                                                    num_processes, folds)
    if len(summaries) > 1:
        names = [row_key(name) for name in summaries]
        stages.run("compare", ["nnunet_blob", "compare", *summaries.values(), "--names", *names],
                   "nnunet_blob compare (Wilcoxon signed-rank per metric)",
                   after=[_evaluate_stage(name) for name in summaries], key=" ".join(names))
    table, text = results_table(summaries, root / "evaluation", plan.caveat)
    atomic_write_bytes(root / "results.md", text.encode())
    stages.say("\n" + text)
    comparison = f"; Wilcoxon tests in {stages.log_file('compare')}" if len(summaries) > 1 else ""
    stages.say(f"written: {root / 'results.md'}{comparison}; every stage's log in {stages.logs}")
    stages.say(reuse_instructions(root, trainers[-1], device, raw / "imagesTs", folds))
    stages.say(f"nnunet_blob demo: finished in {time.time() - start:.0f} s (stages done before not counted)")
    atomic_write_json(root / SETTINGS, {**settings, "completed": True})
    return table


def reuse_instructions(root: Path, trainer: str, device: str, example_images: Path,
                       folds: Sequence[int] = (0,)) -> str:
    """How to predict your own images with a model the demo trained, from any shell."""
    command = (f"nnUNet_results={shlex.quote(str(root / 'nnUNet_results'))} nnUNetv2_predict -i YOUR_IMAGES "
               f"-o YOUR_OUTPUT -d {DATASET_ID} -c {CONFIGURATION} -f {' '.join(map(str, folds))} "
               f"-tr {trainer}{DEMO_SUFFIX} -device {device}")
    hook = ("" if is_registered() else
            '\n(the start-up hook did not run in this environment: first run eval "$(nnunet_blob trainers --export)")')
    return (f"Predict your own images with a trained model (from any shell; nnU-Net finds the <trainer>{DEMO_SUFFIX} "
            f"classes; images named CASE_0000.nii.gz with one channel, like {example_images}):\n  {command}{hook}")


def _evaluate_stage(name: str) -> str:
    """Stage name of the evaluation of a results row (a trainer, or ``<trainer> tuned``)."""
    return f"evaluate_{row_key(name)}"


def _train_stage(trainer: str, fold: int) -> str:
    """Stage name of one fold's training (fold 0 keeps the name of the single-fold demo)."""
    return f"train_{trainer}" if fold == 0 else f"train_{trainer}_fold{fold}"


def model_folder(root: Path, raw: Path, trainer: str, target: Target = Target()) -> Path:
    return root / "nnUNet_results" / raw.name / f"{trainer}{DEMO_SUFFIX}__nnUNetPlans__{target.configuration}"


def train_predict_evaluate(stages: Stages, trainer: str, raw: Path, preprocessed: Path, device: str,
                           num_processes: int, epochs: int, folds: Sequence[int] = (0,),
                           target: Target = Target()) -> Path:
    """Train ``trainer`` (``<trainer>_demo``) on ``folds``, predict ``raw/imagesTs`` with them and evaluate the
    predictions against ``raw/labelsTs`` (stages ``train_<trainer>``, ``predict_<trainer>``,
    ``evaluate_<trainer>``); returns the evaluation summary."""
    name = trainer + DEMO_SUFFIX
    cross_validation = len(folds) > 1
    trained = [train_fold(stages, trainer, raw, device, num_processes, epochs, fold, cross_validation, target)
               for fold in folds]
    predictions = stages.root / "predictions" / trainer
    ensemble = f"the {len(folds)}-fold ensemble of " if cross_validation else ""
    stages.run(f"predict_{trainer}", ["nnUNetv2_predict", "-i", raw / "imagesTs", "-o", predictions, "-d",
                                      target.dataset_id, "-c", target.configuration, "-f", *folds, "-tr", name,
                                      "-device", device, "-npp", 1, "-nps", 1, "--disable_tta",
                                      *(["--save_probabilities"] if cross_validation else [])],
               f"nnUNetv2_predict {ensemble}{trainer} on the test split (no test-time mirroring)", after=trained,
               verbose_note=LOOKUP_NOTE.format(name=name))
    return evaluate(stages, trainer, raw, preprocessed, predictions, num_processes, after=f"predict_{trainer}",
                    pictures=True)


def train_fold(stages: Stages, trainer: str, raw: Path, device: str, num_processes: int, epochs: int, fold: int,
               keep_probabilities: bool, target: Target = Target()) -> str:
    """Train one fold (resuming an interrupted run with ``--c``); returns the stage name."""
    name = trainer + DEMO_SUFFIX
    train = _train_stage(trainer, fold)
    dependencies = ["instance_maps"]
    results = model_folder(stages.root, raw, trainer, target) / f"fold_{fold}"
    finished = stages.done(train, dependencies)
    resume = (not finished and stages.started(train, dependencies)
              and any((results / f).is_file() for f in ("checkpoint_latest.pth", "checkpoint_final.pth")))
    if not finished and not resume:  # a stale or never-checkpointed run: start afresh
        stages.remove_stale(results)
    which = f" fold {fold}" if keep_probabilities else ""
    stages.run(train, ["nnUNetv2_train", target.dataset_id, target.configuration, fold, "-tr", name, "-device", device,
                       *(["--npz"] if keep_probabilities else []), *(["--c"] if resume else [])],
               f"nnUNetv2_train {trainer}{which}" + (" (resuming)" if resume else ""), after=dependencies,
               environment={"nnUNet_n_proc_DA": str(num_processes)},  # nnU-Net's default is 12 workers
               progress=EpochProgress(epochs), verbose_note=LOOKUP_NOTE.format(name=name))
    return train


def tuned_postprocessing_file(root: Path, raw: Path, trainer: str, folds: Sequence[int],
                              target: Target = Target()) -> Path:
    """Where ``nnunet_blob tune-postprocessing`` writes the postprocessing it chose for ``trainer``'s ``folds``."""
    from nnunet_blob.postprocessing.settings import FILE_NAME

    return (model_folder(root, raw, trainer, target) / f"crossval_results_folds_{'_'.join(map(str, folds))}"
            / FILE_NAME)


def tune_apply_evaluate(stages: Stages, trainer: str, raw: Path, preprocessed: Path, num_processes: int,
                        folds: Sequence[int], target: Target = Target(), tune_options: Sequence = (),
                        evaluate_options: Sequence = ()) -> Path:
    """Postprocessing tuned on the folds' validation predictions (``tune_options``: more options of
    ``tune-postprocessing``), applied to the test predictions (``predictions/<trainer>``), evaluated (stages
    ``tune_<trainer>``, ``apply_<trainer>``, ``evaluate_<trainer> tuned``); returns the evaluation summary."""
    trained = [_train_stage(trainer, fold) for fold in folds]
    stages.run(f"tune_{trainer}", ["nnunet_blob", "tune-postprocessing", "-d", target.dataset_id, "-c",
                                   target.configuration, "-tr", trainer + DEMO_SUFFIX, "-f", *folds, "-np",
                                   num_processes, *tune_options],
               f"nnunet_blob tune-postprocessing {trainer} (on the {len(folds)} folds' validation predictions)",
               after=trained)
    postprocessing = tuned_postprocessing_file(stages.root, raw, trainer, folds, target)
    tuned = stages.root / "predictions_tuned" / trainer
    stages.run(f"apply_{trainer}", ["nnunet_blob", "apply-postprocessing", "-i", stages.root / "predictions" / trainer,
                                    "-o", tuned, "-pp", postprocessing, "-np", num_processes],
               f"nnunet_blob apply-postprocessing {trainer} (the tuned postprocessing on the test predictions)",
               after=[f"tune_{trainer}", f"predict_{trainer}"])
    return evaluate(stages, trainer + TUNED_SUFFIX, raw, preprocessed, tuned, num_processes,
                    after=f"apply_{trainer}", pictures=False, options=evaluate_options)


def evaluate(stages: Stages, row: str, raw: Path, preprocessed: Path, predictions: Path, num_processes: int,
             after: str, pictures: bool, options: Sequence = (), labels: str = "labelsTs") -> Path:
    """``nnunet_blob evaluate`` of ``predictions`` against ``raw/<labels>`` with ``options`` (more of its command-line
    options) into ``evaluation/<row>/summary_instances.json`` (stage ``evaluate_<row>``); returns that summary."""
    summary = stages.root / "evaluation" / row_key(row) / "summary_instances.json"
    stages.run(_evaluate_stage(row), ["nnunet_blob", "evaluate", raw / labels, predictions, "-djfile",
                                      raw / "dataset.json", "-pfile", preprocessed / "nnUNetPlans.json", "-o",
                                      summary, "-np", num_processes, *options,
                                      *(["--png", summary.parent / "pictures", "--images", raw / "imagesTs"]
                                        if pictures else [])],
               f"nnunet_blob evaluate {row}", after=[after])
    return summary


def reduce_plans(plans_file: Path, base_features: int | None) -> str:
    if not base_features:
        return f"{plans_file} kept as nnU-Net planned it"
    return f"{plans_file} reduced for the CPU:\n" + shrink_plans(plans_file, base_features)


def _make_dataset(folder: Path, plan: Budget, seed: int) -> str:
    from nnunet_blob.synthetic import make_dataset

    shutil.rmtree(folder, ignore_errors=True)  # a half-written dataset from an interrupted run
    make_dataset(folder.parent, DATASET_ID, DATASET_NAME, num_train=plan.num_train, num_test=plan.num_test,
                 shape=plan.shape, small_objects=plan.small_objects, seed=seed)
    low, high = plan.small_objects
    return (f"{folder}: {plan.num_train} training cases (imagesTr, labelsTr) and {plan.num_test} test cases "
            f"(imagesTs, labelsTs), one or two large structures and {low}-{high - 1} small blobs per case")


def _prepare_workspace(root: Path, clean: bool) -> str:
    """Refuse folders the demo did not make (``--clean`` deletes only a demo workspace); returns what ``--clean``
    removed."""
    if root.exists() and not root.is_dir():
        raise DemoError(f"--workspace {root} is a file; choose a folder")
    if not root.is_dir():
        return f"{root} did not exist, nothing to remove"
    if (root / SETTINGS).is_file() or not any(root.iterdir()):
        if not clean:
            return ""
        files = [f for f in root.rglob("*") if f.is_file()]
        size = sum(f.stat().st_size for f in files)
        settings = _read_settings(root / SETTINGS)
        held = f" (budget {settings.get('budget')}, seed {settings.get('seed')})" if settings else ""
        shutil.rmtree(root)
        return f"removed the demo workspace {root}{held}: {len(files)} files, {size / 2 ** 20:.1f} MiB"
    raise DemoError(f"{root} is not empty and holds no demo run ({SETTINGS} is missing); nothing was changed. "
                    f"Choose a new or empty folder with --workspace")


def _settings(root: Path, budget: str, seed: int, reduced_features: int | None, tune: bool = False) -> dict:
    """The workspace's settings; a workspace made with other settings is refused, not mixed."""
    wanted = {"budget": budget, "seed": seed, "reduced_network": reduced_features, "tune": tune}
    file = root / SETTINGS
    if file.is_file():
        try:
            previous = json.loads(file.read_text())
        except ValueError:
            raise DemoError(f"{file} is unreadable; add --clean to start over") from None
        differing = {k: previous.get(k, False if k == "tune" else None) for k in wanted
                     if previous.get(k, False if k == "tune" else None) != wanted[k]}
        if differing:
            raise DemoError(f"{root} holds a demo run with {differing}; add --clean to start over with the new "
                            f"settings, or choose another --workspace")
        return previous
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(file, wanted)
    return wanted


def _read_settings(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, ValueError):
        return {}


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["DemoError", "StageError", "run_demo"]
