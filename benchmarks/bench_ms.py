"""A 3D check on real lesions: the Ljubljana MS lesion database (Lesjak et al., Neuroinformatics, DOI
10.1007/s12021-017-9348-7; CC-BY).

From a folder in the github.com/muschellij2/open_ms_data layout (its root or its ``cross_sectional`` folder; nothing
is downloaded), in a workspace of its own, with the demo's resumable stages (:mod:`nnunet_blob.demo.stages`):

1. ``convert``: a 3D nnU-Net raw dataset of the patients that have every chosen channel (``--channels``, FLAIR T1 T2
   by default) and the consensus lesion mask, in ``--space`` (``coregistered``: the database's FLAIR space;
   ``MNI``: open_ms_data's skull-stripped MNI images; ``auto``: the space with the most such patients); rules in
   ``benchmarks/_ms_lesions.py``; lesions are the label's 26-connected components (no instance folder);
2. ``nnUNetv2_plan_and_preprocess -c 3d_fullres --verify_dataset_integrity``; ``splits_final.json``: cross-validation
   over patients, ``min(5, n)`` folds (leave-one-patient-out for n <= 5); on a CPU the plans reduced to
   ``--base-features`` features in the first stage as the demo does and trained on a ``--patch-size`` patch
   (by default on a CPU the planned patch cut to 64 per axis: 64x64x64 for the MNI images, a ninth of the planned
   voxels; stages, spacing and data unchanged);
3. ``nnunet_blob preprocess`` (instance maps);
4. per trainer (``<trainer>_demo``, seed ``--seed``, ``--epochs`` x ``--iterations``): every fold trained
   (``--npz``), nnU-Net's validation of each fold's held-out patients gathered into ``predictions/<trainer>``
   (one prediction per patient, by a model that did not see it), ``nnunet_blob evaluate`` against the consensus
   masks with the blob-loss paper's rule (a lesion is found when a predicted component touches it) and one-to-one
   matching at IoU >= 0.5;
5. ``results.md``: per trainer the mean over patients and each patient's values. With 3 patients this is a sanity
   check of the 3D pipeline on real lesions, not a benchmark: no test over 3 patients can reach p < 0.05.

Re-running the same command resumes; ``--stages convert`` (or ``--dry-run``) only builds the dataset and prints
its counts, ``--stages preprocess`` stops before training (and prints the plans), ``--list-commands`` prints every
stage's command (and whether it is done) without running or removing anything.

    python benchmarks/bench_ms.py --ms-folder PATH/open_ms_data [--workspace nnunet_blob_ms]
        [--space auto|coregistered|MNI] [--channels FLAIR T1 T2] [--trainers nnUNetTrainer nnUNetTrainerBlobDice]
        [--epochs 40 --iterations 20] [--patch-size 64 64 64] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from _ms_lesions import (
    DEFAULT_CHANNELS,
    SPACES,
    ConversionError,
    choose_space,
    complete_patients,
    convert,
    patient_folds,
)
from _real_data import (
    COMPONENT_EVALUATIONS,
    DESCRIPTIONS,
    METRICS,
    CommandListing,
    check_settings,
    foreground_mean,
    has_metric,
    per_case,
    row_name,
)
from _real_data import device as choose_device
from bench_detection import machine

from nnunet_blob.demo.budgets import budget_environment, demo_trainer_bases
from nnunet_blob.demo.plans import planned_patch_size, set_patch_size
from nnunet_blob.demo.run import Target, evaluate, model_folder, reduce_plans, train_fold
from nnunet_blob.demo.stages import StageError, Stages, demo_environment
from nnunet_blob.files import atomic_write_bytes
from nnunet_blob.registration import EXT_TRAINER_VARIABLE, ext_trainer_value

DATASET_ID, DATASET_NAME = 993, "LjubljanaMSLesions"
TARGET = Target(DATASET_ID, "3d_fullres")
STOCK = "nnUNetTrainer"
TRAINERS = [STOCK, "nnUNetTrainerBlobDice"]
MAX_FOLDS = 5
#: the training patch on a CPU: about a ninth of the voxels of the MNI images' planned 112x160x128, so that a fold
#: gets 800 iterations in about a quarter of an hour on 2 cores
CPU_PATCH = (64, 64, 64)
SETTINGS = "bench_ms.json"
#: fewer patients than this: a sanity check, no test against stock (Wilcoxon's smallest p with 5 pairs is 0.0625)
MIN_PATIENTS_FOR_TESTS = 6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms-folder", required=True, type=Path,
                        help="the open_ms_data folder (or its cross_sectional folder)")
    parser.add_argument("--workspace", default="nnunet_blob_ms", type=Path,
                        help="folder of the dataset, models and results (nnU-Net's folders are set inside it)")
    parser.add_argument("--space", default="auto", choices=["auto", *SPACES],
                        help="coregistered (the database's FLAIR space), MNI (open_ms_data's MNI images) or auto "
                             "(the space with the most patients having every file; default)")
    parser.add_argument("--channels", nargs="+", default=list(DEFAULT_CHANNELS),
                        help=f"image channels, of {', '.join(SPACES['coregistered'].channels)} (default: "
                             f"{' '.join(DEFAULT_CHANNELS)})")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS, help=f"stock first (default: {' '.join(TRAINERS)})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per fold (default 40)")
    parser.add_argument("--iterations", type=int, default=20, help="training iterations per epoch (default 20)")
    parser.add_argument("--val-iterations", type=int, default=2, help="validation iterations per epoch (default 2)")
    parser.add_argument("--base-features", type=int, default=None,
                        help="features of the first stage of the reduced network (default: 8 on a CPU, nnU-Net's "
                             "own plans on a GPU; 0: nnU-Net's own plans)")
    parser.add_argument("--patch-size", type=int, nargs="+", default=None, metavar="N",
                        help="the training patch, three sizes (multiples of the network's downsampling; default: "
                             f"on a CPU the planned patch cut to {'x'.join(map(str, CPU_PATCH))}, on a GPU nnU-Net's "
                             "planned patch; 0: nnU-Net's planned patch)")
    parser.add_argument("--stages", choices=["convert", "preprocess", "all"], default="all",
                        help="convert: only the raw dataset; preprocess: up to nnU-Net's preprocessing, the folds and "
                             "the instance maps; all (default): training, validation, evaluation too")
    parser.add_argument("--dry-run", action="store_true", help="the same as --stages convert")
    parser.add_argument("--list-commands", action="store_true",
                        help="print every stage's command and whether it is done; run and remove nothing")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing and augmentation (default 2)")
    args = parser.parse_args(argv)
    if args.patch_size is not None and args.patch_size != [0] and (len(args.patch_size) != 3
                                                                   or min(args.patch_size) <= 0):
        parser.error(f"--patch-size: three positive sizes (z y x) or 0 for nnU-Net's planned patch, got "
                     f"{' '.join(map(str, args.patch_size))}")
    if args.trainers[0] != STOCK:
        parser.error(f"--trainers: the first trainer is the baseline and must be {STOCK}")
    unknown = [t for t in args.trainers if t not in demo_trainer_bases()]
    if unknown:
        parser.error(f"--trainers: unknown {', '.join(unknown)}; choose from {', '.join(sorted(demo_trainer_bases()))}")
    try:
        run(args)
    except (ConversionError, StageError) as e:
        print(f"bench_ms: {e}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> None:
    start = time.time()
    root = args.workspace.expanduser().resolve()
    device = choose_device(args.device)
    base_features = (8 if device == "cpu" else None) if args.base_features is None else (args.base_features or None)
    only = "convert" if args.dry_run else args.stages
    listing = args.list_commands
    raw = root / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    preprocessed = root / "nnUNet_preprocessed" / raw.name
    environment = {**budget_environment(args.epochs, args.iterations, args.val_iterations, args.seed),
                   EXT_TRAINER_VARIABLE: ext_trainer_value(), "nnUNet_def_n_proc": str(args.np)}
    stages = (CommandListing if listing else Stages)(root, demo_environment(root, environment), 1)
    conversion = {"ms_folder": str(args.ms_folder.resolve()), "space": args.space, "channels": args.channels}
    stages.run("convert", lambda: _convert(args, raw, root), f"Ljubljana MS lesions -> {raw.name}",
               key=json.dumps(conversion, sort_keys=True))
    if only == "convert":
        return
    if (root / "conversion.json").is_file():
        counts = json.loads((root / "conversion.json").read_text())
    else:  # listing before the conversion: the patients it would take
        space = choose_space(args.ms_folder, args.space, args.channels)
        counts = {"cases": complete_patients(args.ms_folder, space, args.channels)}
    folds = patient_folds(counts["cases"], MAX_FOLDS)
    per_trainer = len(folds) + 1 + len(COMPONENT_EVALUATIONS)  # train each fold, gather, evaluate
    stages.total = 5 + (0 if only == "preprocess" else len(args.trainers) * per_trainer)
    stages.run("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", TARGET.configuration,
                                       "-np", args.np, "-npfp", args.np, "--verify_dataset_integrity"],
               f"nnUNetv2_plan_and_preprocess ({TARGET.configuration})", after=["convert"])
    if args.patch_size is None:
        patch_size = _cpu_patch(preprocessed / "nnUNetPlans.json") if device == "cpu" else None
    else:
        patch_size = None if args.patch_size == [0] else args.patch_size
    stages.run("splits", lambda: _write_splits(preprocessed, folds),
               f"{len(folds)} folds over the patients (splits_final.json)", after=["plan_and_preprocess"],
               key=json.dumps(folds))
    stages.run("reduce_plans", lambda: _reduce_plans(preprocessed / "nnUNetPlans.json", base_features, patch_size),
               "reduced network for CPU" if base_features or patch_size else "nnU-Net's own plans",
               after=["splits"], key=str(base_features) + ("" if patch_size is None else f" {patch_size}"))
    stages.run("instance_maps", ["nnunet_blob", "preprocess", "-d", DATASET_ID, "-c", TARGET.configuration, "-np",
                                 args.np], "nnunet_blob preprocess (instance maps)", after=["reduce_plans"])
    if not listing and (preprocessed / "nnUNetPlans.json").is_file():
        stages.say("    " + plans_summary(preprocessed / "nnUNetPlans.json"))
    if only == "preprocess":
        return
    if not listing:
        check_settings(root / SETTINGS, {"epochs": args.epochs, "iterations": args.iterations, "seed": args.seed,
                                         "val_iterations": args.val_iterations, "base_features": base_features,
                                         "device": device, **({} if patch_size is None
                                                              else {"patch_size": patch_size})})
    stages.say(f"{len(args.trainers)} trainers x {len(folds)} folds, {args.epochs} epochs of {args.iterations} "
               f"iterations, seed {args.seed}, device {device}, in {root}")
    summaries: dict[str, dict[str, Path]] = {name: {} for name in COMPONENT_EVALUATIONS}
    for trainer in args.trainers:
        trained = [train_fold(stages, trainer, raw, device, args.np, args.epochs, fold, True, TARGET)
                   for fold in range(len(folds))]
        predictions = root / "predictions" / trainer
        stages.run(f"gather_{trainer}", lambda t=trainer: _gather(root, raw, t, folds, root / "predictions" / t),
                   f"{trainer}: each patient's prediction by the fold that held it out", after=trained)
        for name, options in COMPONENT_EVALUATIONS.items():
            summaries[name][trainer] = evaluate(stages, row_name(trainer, name), raw, preprocessed, predictions,
                                                args.np, after=f"gather_{trainer}", pictures=False, options=options,
                                                labels="labelsTr")
    if listing:
        return
    text = results_markdown(counts, args, summaries, folds, base_features, device, patch_size)
    atomic_write_bytes(root / "results.md", text.encode())
    print("\n" + text)
    print(f"written: {root / 'results.md'}; {time.time() - start:.0f} s (stages done before not counted)")


def _convert(args: argparse.Namespace, raw: Path, root: Path) -> str:
    report = convert(args.ms_folder, raw, args.space, args.channels)
    (root / "conversion.json").write_text(json.dumps(asdict(report), indent=1))
    return report.summary() + f"\ncounts written to {root / 'conversion.json'}"


def _cpu_patch(plans_file: Path) -> list[int]:
    """nnU-Net's planned 3d_fullres patch (also after an earlier ``--patch-size``) cut to :data:`CPU_PATCH` per
    axis; before ``plan_and_preprocess`` has written the plans, :data:`CPU_PATCH`."""
    if not plans_file.is_file():
        return list(CPU_PATCH)
    planned = planned_patch_size(json.loads(plans_file.read_text()), TARGET.configuration)
    return [min(p, c) for p, c in zip(planned, CPU_PATCH, strict=True)]


def _reduce_plans(plans_file: Path, base_features: int | None, patch_size: list[int] | None) -> str:
    """nnU-Net's plans with the CPU reduction (``--base-features``) and the training patch ``--patch-size``."""
    text = reduce_plans(plans_file, base_features)
    return text if patch_size is None else text + "\n" + set_patch_size(plans_file, TARGET.configuration, patch_size)


def _write_splits(preprocessed: Path, folds: list[dict]) -> str:
    file = preprocessed / "splits_final.json"
    file.write_text(json.dumps(folds, indent=1))
    return f"{file}: " + "; ".join(f"fold {k} holds out {', '.join(f['val'])}" for k, f in enumerate(folds))


def _gather(root: Path, raw: Path, trainer: str, folds: list[dict], predictions: Path) -> str:
    """Copy each fold's validation prediction of its held-out patients into ``predictions``."""
    shutil.rmtree(predictions, ignore_errors=True)
    predictions.mkdir(parents=True)
    model = model_folder(root, raw, trainer, TARGET)
    for k, fold in enumerate(folds):
        for case in fold["val"]:
            source = model / f"fold_{k}" / "validation" / f"{case}.nii.gz"
            if not source.is_file():
                raise StageError(f"{source} is missing: fold {k} of {trainer} did not validate {case}; delete "
                                 f"{model / f'fold_{k}'} and run again")
            shutil.copyfile(source, predictions / source.name)
    return f"{predictions}: {sum(len(f['val']) for f in folds)} patients"


def plans_summary(plans_file: Path) -> str:
    """Patch, batch, spacing and network width of the 3d_fullres plans (what one iteration costs)."""
    plans = json.loads(Path(plans_file).read_text())
    configuration = plans["configurations"][TARGET.configuration]
    features = configuration["architecture"]["arch_kwargs"]["features_per_stage"]
    return (f"{TARGET.configuration}: patch {'x'.join(map(str, configuration['patch_size']))}, batch "
            f"{configuration['batch_size']}, spacing {configuration['spacing']}, median image "
            f"{'x'.join(map(str, configuration['median_image_size_in_voxels']))}, features per stage {features}")


def results_markdown(counts: dict, args: argparse.Namespace, summaries: dict, folds: list[dict],
                     base_features: int | None, device: str, patch_size: list[int] | None = None) -> str:
    """Per evaluation: each trainer's mean over the patients and every patient's value (each patient predicted by
    the fold that held it out)."""
    cases = counts["cases"]
    n = len(cases)
    network = (f"nnU-Net's 3d_fullres plans reduced to {base_features} features in the first stage" if base_features
               else "nnU-Net's own 3d_fullres plans")
    if patch_size:
        network += f", training patch {'x'.join(map(str, patch_size))}"
    lines = [f"# Ljubljana MS lesions: a sanity check on real 3D lesions (n = {n} patients), not a benchmark", "",
             f"Patients {', '.join(cases)} ({counts['space']} space, channels {', '.join(counts['channels'])}; "
             f"{sum(counts['lesions'].values())} lesions: "
             + ", ".join(f"{c} {counts['lesions'][c]}" for c in cases) + "). "
             + ("Leave-one-patient-out" if len(folds) == n else f"{len(folds)}-fold") + " cross-validation over "
             f"patients: every patient is predicted by the model of the fold that held it out; {args.epochs} epochs x "
             f"{args.iterations} iterations per fold, {network}, device {device}, seed {args.seed}.",
             f"Machine: {machine()}", ""]
    if n < MIN_PATIENTS_FOR_TESTS:
        lines += [f"With {n} patients no paired test can reach p < 0.05; the numbers show that the pipeline runs on "
                  f"real lesions and roughly where each trainer lands, nothing more.", ""]
    for name, rows in summaries.items():
        columns = {c: m for c, m in METRICS[name].items() if has_metric(rows[STOCK], m)}
        lines += [f"## {name}: {DESCRIPTIONS[name]}", "", "Mean over the patients:", "",
                  "| trainer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for trainer, summary in rows.items():
            lines.append(f"| {trainer} | " + " | ".join(f"{foreground_mean(summary, m):.3f}" for m in columns.values())
                         + " |")
        lines += ["", "Per patient (" + " / ".join(cases) + "):", "",
                  "| trainer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for trainer, summary in rows.items():
            values = {m: per_case(summary, m) for m in columns.values()}
            lines.append(f"| {trainer} | " + " | ".join(" / ".join(f"{values[m][f'{c}.nii.gz']:.3f}" for c in cases)
                                                        for m in columns.values()) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
