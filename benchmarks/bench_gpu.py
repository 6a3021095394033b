"""Stock nnUNetTrainer vs the blob and TopK-Dice trainers on a GPU, with nnU-Net's defaults.

One command: a synthetic dataset (``nnunet_blob.synthetic.make_dataset``) with cases of about 1, 100 and 1000
instances each (each case is one patch large, so that is also the number per patch), nnU-Net's own default
3d_fullres plans (``nnUNetv2_plan_and_preprocess``, nothing reduced), the instance maps, and then, per instance
density, for ``nnUNetTrainer``, ``nnUNetTrainerBlobDice``, ``nnUNetTrainerBlobTversky`` and
``nnUNetTrainerTopKDice`` with nnU-Net's defaults (torch.compile, AMP, nnU-Net's augmentation worker processes):

* train step: median seconds of ``train_step`` on batches taken from the loader beforehand (CUDA-synchronised);
* iterations/s: ``train_step(next(loader))`` in a row, data loading included;
* validation epoch: ``on_validation_epoch_start``, ``validation_step`` per batch, ``on_validation_epoch_end`` (the
  blob trainers' online instance F1 included), per step;
* peak memory: ``torch.cuda.max_memory_allocated`` during the trainer's measurements, and the part of it above what
  was allocated when they began (the step's working memory: the resident weights of all four trainers are in the
  first number, the same for every trainer).

The trainers are measured interleaved (the order rotates every round) and every figure is printed with its ratio
to stock measured in the same run. Every stage prints a line as it starts, and each density's table is printed as
soon as it is measured, so a run cut short still reports what it measured. Needs only the installed package.

    python benchmarks/bench_gpu.py            # CUDA: 128^3 cases, about 6-8 minutes on an H100
    python benchmarks/bench_gpu.py --quick    # CUDA: fewer rounds and iterations, about 4-5 minutes
    python benchmarks/bench_gpu.py --smoke    # CPU: 32^3, reduced plans, a few iterations (the test suite runs it)

``--trainers`` and ``--densities`` choose subsets; ``nnUNet_compile=f`` turns compiling off as for nnU-Net itself,
``nnUNet_n_proc_DA`` sets nnU-Net's number of augmentation workers.

nnU-Net's trainers print a lot: their output goes to ``<workspace>/trainers.log`` (``--keep`` keeps the workspace).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

CANDIDATES = ("nnUNetTrainer", "nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerTopKDice")
DATASET_ID, DATASET_NAME = 987, "BenchGPU"


@dataclass(frozen=True)
class Mode:
    """Sizes and repetitions of one way to run the benchmark."""

    shape: tuple
    densities: tuple  # (label, small blobs per case as make_dataset's ``small_objects`` range)
    cases_per_density: int
    rounds: int
    steps: int  # timed train steps per trainer and round (batches taken beforehand)
    iterations: int  # train steps with data loading per trainer and round
    val_steps: int  # validation steps per epoch
    warmup: int  # untimed train steps per trainer and density (the first ones compile)
    reduced_plans: bool
    device: str


MODES = {
    "default": Mode((128, 128, 128), (("1", (0, 1)), ("100", (99, 100)), ("1000", (999, 1000))), 2, rounds=2,
                    steps=8, iterations=16, val_steps=8, warmup=3, reduced_plans=False, device="cuda"),
    "quick": Mode((128, 128, 128), (("1", (0, 1)), ("100", (99, 100)), ("1000", (999, 1000))), 2, rounds=1,
                  steps=5, iterations=10, val_steps=5, warmup=2, reduced_plans=False, device="cuda"),
    "smoke": Mode((32, 32, 32), (("1", (0, 1)), ("10", (9, 10)), ("40", (39, 40))), 2, rounds=1, steps=2,
                  iterations=2, val_steps=1, warmup=1, reduced_plans=True, device="cpu"),
}

_START = time.monotonic()
_CONSOLE = sys.stdout


def say(message: str) -> None:
    """A progress line on the console, with the time since start."""
    elapsed = time.monotonic() - _START
    print(f"[bench_gpu {int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", file=_CONSOLE, flush=True)


def make_workspace(keep: bool) -> Path:
    """nnU-Net's three folders in a new temporary folder (set before nnU-Net is imported: it reads them then)."""
    root = Path(tempfile.mkdtemp(prefix="nnunet_blob_bench_gpu_"))
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = str(root / name)
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root


# ---- stage 1: the dataset -----------------------------------------------------------------------------------------


def _one_case(job) -> Path:
    """One case made by ``make_dataset`` in its own folder (cases are made in parallel)."""
    from nnunet_blob.synthetic import make_dataset

    folder, seed, shape, small_objects = job
    return make_dataset(folder, 1, "Part", num_train=1, shape=shape, small_objects=small_objects, seed=seed)


def make_benchmark_dataset(root: Path, mode: Mode, processes: int) -> dict:
    """One raw dataset with ``cases_per_density`` cases per density; {density label: case identifiers}."""
    import json

    jobs, names = [], []
    for d, (label, small_objects) in enumerate(mode.densities):
        for k in range(mode.cases_per_density):
            jobs.append((root / "parts" / f"{d}_{k}", 1000 * d + k, mode.shape, small_objects))
            names.append((label, f"n{label}_{k}"))
    with ProcessPoolExecutor(max_workers=max(1, min(processes, len(jobs)))) as pool:
        parts = list(pool.map(_one_case, jobs))
    target = root / "raw" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    for sub in ("imagesTr", "labelsTr"):
        (target / sub).mkdir(parents=True, exist_ok=True)
    cases: dict = {}
    for part, (label, name) in zip(parts, names, strict=True):
        shutil.move(str(part / "imagesTr" / "case_000_0000.nii.gz"), target / "imagesTr" / f"{name}_0000.nii.gz")
        shutil.move(str(part / "labelsTr" / "case_000.nii.gz"), target / "labelsTr" / f"{name}.nii.gz")
        cases.setdefault(label, []).append(name)
    dataset_json = json.loads((parts[0] / "dataset.json").read_text())
    dataset_json.update(numTraining=len(parts), name=DATASET_NAME)
    (target / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    shutil.rmtree(root / "parts", ignore_errors=True)
    return cases


def plan_and_preprocess(processes: int, log: Path) -> None:
    """nnU-Net's own command line tool, as a user runs it."""
    tool = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
    command = [str(tool)] if tool.exists() else [
        sys.executable, "-c", "from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
                              "plan_and_preprocess_entry; plan_and_preprocess_entry()"]
    command += ["-d", str(DATASET_ID), "-c", "3d_fullres", "-np", str(processes), "-npfp", str(processes)]
    with open(log, "a") as out:
        result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"nnUNetv2_plan_and_preprocess failed ({result.returncode}); its output is in {log}")


# ---- stage 3: the trainers ----------------------------------------------------------------------------------------


def bench_trainer_class(base: type) -> type:
    """``base`` training and validating on the cases in ``bench_cases`` (all of them: nnU-Net's fold 'all')."""

    class Bench(base):  # type: ignore[valid-type,misc]
        bench_cases: list = []

        def do_split(self):
            return list(self.bench_cases), list(self.bench_cases)

    Bench.__name__ = Bench.__qualname__ = base.__name__
    return Bench


def build_trainers(plans: dict, dataset_json: dict, device, candidates) -> dict:
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_blob.nnunet_internals import trainer_plans
    from nnunet_blob.trainers import variants

    trainers = {}
    for name in candidates:
        base = nnUNetTrainer if name == "nnUNetTrainer" else getattr(variants, name)
        trainer = bench_trainer_class(base)(trainer_plans(plans), "3d_fullres", 0, dataset_json, device)
        trainer.initialize()
        trainers[name] = trainer
    return trainers


class Clock:
    """Wall time of a block; on CUDA the device is synchronised at both ends."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()


@dataclass
class Figures:
    step_s: list
    iterations_per_s: list
    val_step_s: list
    peak_bytes: int = 0
    working_bytes: int = 0


def validation_epoch(trainer, steps: int) -> None:
    import torch

    with torch.no_grad():
        trainer.on_validation_epoch_start()
        outputs = [trainer.validation_step(next(trainer.dataloader_val)) for _ in range(steps)]
        trainer.on_validation_epoch_end(outputs)
    trainer.current_epoch += 1  # one logged value per epoch, as in training


def measure(trainer, mode: Mode, clock: Clock, figures: Figures) -> None:
    """One round of one trainer: timed steps, iterations with loading, a validation epoch, peak memory."""
    import torch

    cuda = clock.cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    trainer.network.train()
    batches = [next(trainer.dataloader_train) for _ in range(mode.steps)]
    for batch in batches:
        start = clock.now()
        trainer.train_step(batch)
        figures.step_s.append(clock.now() - start)
    del batches
    start = clock.now()
    for _ in range(mode.iterations):
        trainer.train_step(next(trainer.dataloader_train))
    figures.iterations_per_s.append(mode.iterations / (clock.now() - start))
    start = clock.now()
    validation_epoch(trainer, mode.val_steps)
    figures.val_step_s.append((clock.now() - start) / mode.val_steps)
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        figures.peak_bytes = max(figures.peak_bytes, peak)
        figures.working_bytes = max(figures.working_bytes, peak - resident)


def report(density: str, instances: str, figures: dict, cuda: bool) -> None:
    stock = figures.get("nnUNetTrainer")

    def cell(name: str, value: float, reference: float | None, unit: str = "") -> str:
        ratio = f" ({value / reference:.2f}x)" if reference and name != "nnUNetTrainer" else ""
        return f"{value:.4g}{unit}{ratio}"

    print(f"\n### about {density} instances per patch (measured per case: {instances})", file=_CONSOLE)
    header = "| trainer | train step s | iterations/s (with loading) | validation s per step |"
    header += " peak GPU memory GiB | working memory GiB |" if cuda else ""
    print(header, file=_CONSOLE)
    print("|---" * (header.count("|") - 1) + "|", file=_CONSOLE)
    for name, f in figures.items():
        if isinstance(f, str):
            print(f"| {name} | {f} |", file=_CONSOLE)
            continue
        step, its, val = (statistics.median(x) for x in (f.step_s, f.iterations_per_s, f.val_step_s))
        ref = stock if isinstance(stock, Figures) else None
        row = [cell(name, step, ref and statistics.median(ref.step_s)),
               cell(name, its, ref and statistics.median(ref.iterations_per_s)),
               cell(name, val, ref and statistics.median(ref.val_step_s))]
        if cuda:
            row += [cell(name, f.peak_bytes / 2 ** 30, ref and ref.peak_bytes / 2 ** 30),
                    cell(name, f.working_bytes / 2 ** 30, ref and ref.working_bytes / 2 ** 30)]
        print(f"| {name} | " + " | ".join(row) + " |", file=_CONSOLE)
    print(file=_CONSOLE, flush=True)


def machine(device) -> str:
    from importlib.metadata import PackageNotFoundError, version

    import torch
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

    def v(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "?"

    gpu = "no GPU"
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        gpu = (f"{properties.name} ({properties.total_memory / 2 ** 30:.0f} GiB, compute capability "
               f"{properties.major}.{properties.minor}), CUDA {torch.version.cuda}")
    return (f"{gpu}; {os.cpu_count()} CPUs; torch {torch.__version__}, nnunetv2 {v('nnunetv2')}, nnunet_blob "
            f"{v('nnunet-blob')}, Python {platform.python_version()}; nnU-Net augmentation workers "
            f"{get_allowed_n_proc_DA()}")


def parse_arguments() -> tuple[argparse.Namespace, Mode]:
    """The command line and the mode it chooses (restricted to the densities asked for)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--quick", action="store_true", help="fewer rounds and iterations")
    chosen.add_argument("--smoke", action="store_true", help="a tiny CPU version (32^3, reduced plans)")
    parser.add_argument("--processes", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes for making and preprocessing the dataset")
    parser.add_argument("--budget-minutes", type=float, default=9.0,
                        help="stop starting new rounds after this many minutes (tables of what was measured)")
    parser.add_argument("--trainers", nargs="+", choices=CANDIDATES, default=list(CANDIDATES),
                        help="a subset of the trainers (nnUNetTrainer, the reference, is always measured)")
    parser.add_argument("--densities", nargs="+", help="a subset of the instance densities, e.g. 1 1000")
    parser.add_argument("--keep", action="store_true", help="keep the workspace")
    args = parser.parse_args()
    mode = MODES[mode_name(args)]
    if args.densities:
        unknown = set(args.densities) - {label for label, _ in mode.densities}
        if unknown:
            parser.error(f"unknown densities {sorted(unknown)}; this mode has {[d for d, _ in mode.densities]}")
        mode = replace(mode, densities=tuple(d for d in mode.densities if d[0] in args.densities))
    return args, mode


def mode_name(args: argparse.Namespace) -> str:
    return "smoke" if args.smoke else "quick" if args.quick else "default"


def load_plans(root: Path, mode: Mode) -> tuple[dict, dict]:
    """nnU-Net's plans (reduced for the CPU in the smoke mode) and dataset.json of the preprocessed dataset."""
    import json

    base = root / "preprocessed" / f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    if mode.reduced_plans:
        from nnunet_blob.demo.plans import shrink_plans

        say("  reduced plans for the CPU: " + shrink_plans(base / "nnUNetPlans.json").replace("\n", "; "))
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    configuration = plans["configurations"]["3d_fullres"]
    say(f"  plans: patch {configuration['patch_size']}, batch {configuration['batch_size']}, "
        f"{configuration['architecture']['arch_kwargs']['n_stages']} stages, features "
        f"{configuration['architecture']['arch_kwargs']['features_per_stage']}")
    return plans, json.loads((base / "dataset.json").read_text())


def stop_loaders(trainer) -> None:
    """Stop the trainer's data loader processes (those it has)."""
    from nnunet_blob.nnunet_internals import stop_loader

    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if loader is not None:
            stop_loader(loader)


def failure(name: str, e: Exception, trainer_log: Path) -> str:
    """Report a trainer's failure (traceback to the log) and return the table's entry for it."""
    traceback.print_exc()
    say(f"  {name} failed ({type(e).__name__}: {e}); see {trainer_log}")
    return f"failed: {type(e).__name__}: {e}"


def warm_up(trainer, name: str, label: str, cases: list, mode: Mode, clock: Clock, first: bool) -> None:
    """Point the trainer's loaders at this density's cases and run its warm-up steps and one validation epoch."""
    from nnunet_blob.nnunet_internals import compile_enabled

    stop_loaders(trainer)
    trainer.bench_cases = cases
    trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
    start = clock.now()
    trainer.network.train()
    for _ in range(mode.warmup):
        trainer.train_step(next(trainer.dataloader_train))
    validation_epoch(trainer, 1)
    compiled = compile_enabled(trainer) and first
    say(f"  ~{label} instances: {name} warmed up in {clock.now() - start:.1f} s"
        + (" (includes compiling)" if compiled else ""))


def measure_rounds(trainers: dict, results: dict, label: str, mode: Mode, clock: Clock, budget_minutes: float,
                   trainer_log: Path) -> None:
    """The interleaved rounds of one density: each round measures every trainer that has not failed, starting at
    another one each round; no new round after ``budget_minutes`` of the run."""
    names_in_order = [n for n in trainers if isinstance(results[n], Figures)]
    for r in range(mode.rounds):
        if time.monotonic() - _START > 60 * budget_minutes and r:
            say(f"  time budget of {budget_minutes} minutes reached: {r} rounds")
            break
        shift = r % max(1, len(names_in_order))
        for name in names_in_order[shift:] + names_in_order[:shift]:
            if not isinstance(results[name], Figures):
                continue
            try:
                measure(trainers[name], mode, clock, results[name])
            except Exception as e:  # noqa: BLE001 - the other trainers still run
                results[name] = failure(name, e, trainer_log)
        say(f"  ~{label} instances: round {r + 1}/{mode.rounds} done")


def bench_density(trainers: dict, label: str, names: list, first: bool, mode: Mode, clock: Clock,
                  budget_minutes: float, trainer_log: Path) -> dict:
    """Every trainer's figures on one density (or why it failed)."""
    results: dict = {}
    for name, trainer in trainers.items():
        try:
            warm_up(trainer, name, label, names, mode, clock, first)
            results[name] = Figures([], [], [])
        except Exception as e:  # noqa: BLE001 - the other trainers still run
            results[name] = failure(name, e, trainer_log)
    measure_rounds(trainers, results, label, mode, clock, budget_minutes, trainer_log)
    return results


def main() -> int:
    args, mode = parse_arguments()
    candidates = ["nnUNetTrainer"] + [t for t in args.trainers if t != "nnUNetTrainer"]
    root = make_workspace(args.keep)
    if args.smoke:
        os.environ.setdefault("nnUNet_n_proc_DA", "2")
    trainer_log = root / "trainers.log"
    say(f"workspace {root} ({'kept' if args.keep else 'removed at exit'}); mode {mode_name(args)}")

    import torch

    if mode.device == "cuda" and not torch.cuda.is_available():
        say("no CUDA device: run with --smoke on a CPU")
        return 2
    device = torch.device(mode.device)
    say(f"machine: {machine(device)}")

    say(f"stage 1/4: synthetic dataset, {mode.cases_per_density} cases of {mode.shape} per density "
        f"{[label for label, _ in mode.densities]} (make_dataset, {args.processes} processes)")
    cases = make_benchmark_dataset(root, mode, args.processes)

    say("stage 2/4: nnUNetv2_plan_and_preprocess -c 3d_fullres (nnU-Net's default plans)")
    plan_and_preprocess(args.processes, trainer_log)
    plans, dataset_json = load_plans(root, mode)

    say("stage 3/4: instance maps (ensure_instance_maps)")
    from nnunet_blob.preprocessing import ensure_instance_maps

    store = ensure_instance_maps(DATASET_ID, configuration="3d_fullres", num_processes=args.processes,
                                 log=lambda line: say("  " + line), progress=False)
    per_case = {case: record["num_instances"] for case, record in store.manifest["cases"].items()}
    instances = {label: "/".join(str(per_case[c]) for c in names) for label, names in cases.items()}

    say(f"stage 4/4: trainers {candidates} on {device} (log: {trainer_log})")
    from nnunet_blob.nnunet_internals import compile_enabled

    clock = Clock(device)
    with open(trainer_log, "a") as log, contextlib.redirect_stdout(log):
        trainers = build_trainers(plans, dataset_json, device, candidates)
        say(f"  torch.compile: {compile_enabled(trainers['nnUNetTrainer'])}; AMP: {device.type == 'cuda'}")
        for i, (label, names) in enumerate(cases.items()):
            results = bench_density(trainers, label, names, i == 0, mode, clock, args.budget_minutes, trainer_log)
            report(label, instances[label], results, device.type == "cuda")
        for trainer in trainers.values():
            stop_loaders(trainer)
    say("done")
    return 0

if __name__ == "__main__":
    sys.exit(main())
