"""``nnunet_blob benchmark``: what a trainer costs next to stock nnU-Net, on the user's own dataset and device.

Stock ``nnUNetTrainer`` and each named trainer run as the benchmark trainers of
:mod:`nnunet_blob.trainers.benchmarking` (``<trainer>_benchmark`` with data loading,
``<trainer>_benchmark_noDataLoading`` on reused batches), each in its own ``nnUNetv2_train`` process (nothing one
run leaves in memory reaches the next), with the same plans, fold, budget and seed. From each run: the seconds of
every epoch, the fastest (the result, as in nnU-Net's benchmark) and the peak memory; every figure is also given as
its ratio to stock's (``trainer / stock``: 1.25 means 25 % more time or memory).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nnunet_blob.files import atomic_write_json
from nnunet_blob.registration import register_trainer_folders

STOCK = "nnUNetTrainer"
#: the two ways each trainer runs: JSON key, benchmark trainer suffix, name in the console
MODES = (("with_data_loading", "_benchmark", "with data loading"),
         ("without_data_loading", "_benchmark_noDataLoading", "without data loading"))
#: what each run's record gives to the whole benchmark (the same for every run of one command)
SHARED_FIELDS = ("gpu_name", "torch_version", "cuda_version", "cudnn_version", "nnunet_version",
                 "nnunet_blob_version", "hostname", "device", "batch_size", "patch_size")
GIB = 1024 ** 3

_TIME_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?: ")
_EPOCH_TIME = re.compile(r"^Epoch time: ([0-9.]+) s")


class BenchmarkError(RuntimeError):
    """Bad input or environment of the benchmark; the message says what to run or change."""


@dataclass(frozen=True)
class Budget:
    epochs: int
    iterations: int
    val_iterations: int

    def environment(self, seed: int = 0) -> dict:
        """The variables the benchmark trainers read (``BENCHMARK_VARIABLES`` of
        :mod:`nnunet_blob.trainers.benchmarking`)."""
        return {"NNUNET_BLOB_BENCHMARK_EPOCHS": str(self.epochs),
                "NNUNET_BLOB_BENCHMARK_ITERATIONS": str(self.iterations),
                "NNUNET_BLOB_BENCHMARK_VAL_ITERATIONS": str(self.val_iterations),
                "NNUNET_BLOB_BENCHMARK_SEED": str(seed)}


def trainers_to_run(names: list[str]) -> list[str]:
    """Stock first, then the named trainers in order, each once; an unknown name is an error that lists the known."""
    from nnunet_blob.trainers.variants import comparable_trainers

    known = comparable_trainers()
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = ""
        if any(n.endswith(suffix) for n in unknown for _, suffix, _ in MODES):
            hint = " Name the trainer itself; the benchmark runs its _benchmark classes."
        raise BenchmarkError(f"unknown trainer {', '.join(unknown)}. The benchmark runs stock nnUNetTrainer and "
                             f"the nnunet_blob trainers: {', '.join(sorted(known))} (see nnunet_blob trainers).{hint}")
    ordered = [STOCK]
    for name in names:
        if name not in ordered:
            ordered.append(name)
    return ordered


def locate_dataset(dataset: str, plans: str, configuration: str):
    """nnU-Net's preprocessed data of the run (:func:`nnunet_blob.preprocessing.locate.locate`), and the results
    folder nnUNetv2_train writes to; a clear error naming what to run when either is missing."""
    from nnunet_blob.preprocessing.errors import InstanceMapError
    from nnunet_blob.preprocessing.locate import locate

    try:
        location = locate(dataset, plans, configuration)
    except InstanceMapError as e:
        raise BenchmarkError(f"the dataset is not ready for training: {e}") from None
    results = os.environ.get("nnUNet_results")
    if not results:
        raise BenchmarkError("nnUNet_results is not set: nnUNetv2_train writes there. Set it as for nnU-Net (see "
                             "nnU-Net's documentation/setting_up_paths.md).")
    return location, Path(results) / location.dataset_name


def check_device(device: str) -> None:
    """The device the runs ask for exists here (else every ``nnUNetv2_train`` would fail the same way)."""
    import torch

    available = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available(), "cpu": True}
    if not available[device]:
        raise BenchmarkError(f"-device {device}: torch finds no {device} device on this machine (torch "
                             f"{torch.__version__}, built for CUDA {torch.version.cuda}); use -device cpu, or run "
                             f"on a machine with one")


def ratio(value, stock):
    """``value / stock``, or None where either is missing (or stock is 0)."""
    if value is None or not stock:
        return None
    return value / stock


def executable(name: str) -> str:
    """A command line tool of this Python environment (even when its bin folder is not on PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def run_benchmark(dataset: str, configuration: str, plans: str, trainers: list[str], fold: int, budget: Budget,
                  device: str, output: str | None, out=sys.stdout) -> tuple[dict, Path]:
    """Run every trainer in both modes, print the progress and the table, write the JSON; returns it and its path.

    A run that fails is reported (its log named, its last lines shown) and recorded as ``{"error": ..., "log":
    ...}``; the others go on.
    """
    names = trainers_to_run(trainers)
    check_device(device)
    location, results_folder = locate_dataset(dataset, plans, configuration)
    path = Path(output) if output else \
        results_folder / f"nnunet_blob_benchmark_{plans}_{configuration}_fold{fold}.json"
    logs = path.with_name(path.stem + "_logs")
    logs.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, file=out, flush=True)

    say(f"nnunet_blob benchmark: {location.dataset_name} {configuration} ({plans}), fold {fold}, -device {device}: "
        f"{budget.epochs} epochs of {budget.iterations} training + {budget.val_iterations} validation iterations "
        f"per run, each trainer with and without data loading")
    runs = [(name, mode) for name in names for mode in MODES]
    measured: dict[str, dict] = {name: {} for name in names}
    shared: dict = {}
    for count, (name, (key, suffix, described)) in enumerate(runs, 1):
        trainer = name + suffix
        log = logs / f"{trainer}.log"
        say(f"[{count}/{len(runs)}] {name}, {described}: nnUNetv2_train {location.dataset_name} {configuration} "
            f"{fold} -tr {trainer} -p {plans} -device {device} (log: {log})")
        result = _run_one(location.dataset_name, configuration, fold, plans, trainer, device, budget, log, say)
        measured[name][key] = result
        if "error" in result:
            continue
        for field in SHARED_FIELDS:
            shared.setdefault(field, result.pop(field, None))
        result["benchmark_trainer"] = result.pop("trainer")
        for field in (*SHARED_FIELDS, "data_loading", "epochs", "iterations", "val_iterations", "num_gpus"):
            result.pop(field, None)
        memory = result["peak_memory_bytes"]
        say(f"    fastest epoch {result['fastest_epoch']:.3f} s"
            + (f", peak memory {memory / GIB:.2f} GiB" if memory is not None else ""))

    for key, _, _ in MODES:
        stock = measured[STOCK][key]
        for name in names:
            run = measured[name][key]
            if "error" not in run:
                run["ratio_to_stock"] = ratio(run["fastest_epoch"], stock.get("fastest_epoch"))
                run["peak_memory_ratio_to_stock"] = ratio(run["peak_memory_bytes"], stock.get("peak_memory_bytes"))
    report = {"dataset": location.dataset_name, "configuration": configuration, "plans": plans, "fold": fold,
              "epochs": budget.epochs, "iterations": budget.iterations, "val_iterations": budget.val_iterations,
              **{field: shared.get(field) for field in SHARED_FIELDS},
              "device": device, "stock": STOCK, "trainers": measured}
    atomic_write_json(path, report)
    say("")
    say(table(report))
    say(f"\nwritten: {path} (each run's output in {logs})")
    return report, path


def _run_one(dataset_name: str, configuration: str, fold: int, plans: str, trainer: str, device: str,
             budget: Budget, log: Path, say) -> dict:
    """One ``nnUNetv2_train`` of a benchmark trainer; its record, or ``{"error", "log"}``."""
    command = [executable("nnUNetv2_train"), dataset_name, configuration, str(fold), "-tr", trainer, "-p", plans,
               "-device", device]
    with tempfile.TemporaryDirectory(prefix="nnunet_blob_benchmark_") as scratch:
        record_file = Path(scratch) / "record.json"
        env = {**os.environ, **budget.environment(), "PYTHONUNBUFFERED": "1",
               "NNUNET_BLOB_BENCHMARK_RECORD": str(record_file)}
        register_trainer_folders(env)  # where the start-up hook did not run (editable install)
        epoch = 0
        with open(log, "w") as log_file:
            log_file.write("$ " + " ".join(command) + "\n")
            log_file.flush()
            try:
                process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, errors="replace")
            except FileNotFoundError:
                raise BenchmarkError(f"{command[0]} not found: is nnU-Net installed in this environment "
                                     f"({sys.executable})?") from None
            assert process.stdout is not None
            try:
                for line in process.stdout:
                    log_file.write(line)
                    text = _TIME_STAMP.sub("", line.strip())
                    match = _EPOCH_TIME.match(text)
                    if match:
                        epoch += 1
                        say(f"    epoch {epoch}/{budget.epochs}: {float(match.group(1)):.2f} s")
                    elif text.startswith("nnunet_blob:") and "computing instance maps" in text:  # before the epochs
                        say("    " + text)
                code = process.wait()
            except KeyboardInterrupt:
                process.kill()
                process.wait()
                raise
        if code == 0 and record_file.is_file():
            return {**json.loads(record_file.read_text()), "log": str(log)}
    tail = log.read_text(errors="replace").splitlines()[-12:]
    reason = f"nnUNetv2_train exited with code {code}" if code else "nnUNetv2_train wrote no benchmark record"
    say(f"    FAILED: {reason}; last lines of {log}:\n" + "\n".join(f"      | {line}" for line in tail))
    return {"error": reason, "log": str(log)}


def _cell(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(report: dict) -> str:
    """Markdown table: per trainer and mode, the fastest epoch and the peak memory with their ratios to stock."""
    header = "| trainer |"
    rule = "|---|"
    for _, _, described in MODES:
        header += f" fastest epoch, {described} (s) | x stock | peak memory (GiB) | x stock |"
        rule += "---|---|---|---|"
    rows = [header, rule]
    for name, runs in report["trainers"].items():
        row = f"| {name} |"
        for key, _, _ in MODES:
            run = runs[key]
            if "error" in run:
                row += " failed | | | |"
                continue
            memory = run["peak_memory_bytes"]
            row += (f" {_cell(run['fastest_epoch'], 3)} | {_cell(run['ratio_to_stock'], 2)} |"
                    f" {_cell(None if memory is None else memory / GIB, 2)} |"
                    f" {_cell(run['peak_memory_ratio_to_stock'], 2)} |")
        rows.append(row)
    where = report.get("gpu_name") or report["device"]
    rows.append(f"\n{report['dataset']} {report['configuration']} ({report['plans']}) on {where}: torch "
                f"{report.get('torch_version')}, CUDA {report.get('cuda_version')}, cuDNN "
                f"{report.get('cudnn_version')}, nnU-Net {report.get('nnunet_version')}, nnunet_blob "
                f"{report.get('nnunet_blob_version')}; fastest of {report['epochs']} epochs of "
                f"{report['iterations']} + {report['val_iterations']} iterations; x stock = trainer / "
                f"{report['stock']}; peak memory: torch.cuda.max_memory_allocated ('-' off CUDA)")
    return "\n".join(rows)
