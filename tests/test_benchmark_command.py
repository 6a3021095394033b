"""``nnunet_blob benchmark`` end to end: real ``nnUNetv2_train`` runs of the benchmark trainers on a preprocessed
synthetic dataset (CPU, two epochs of one iteration), the JSON, the table and the errors."""
from __future__ import annotations

import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import nnunet_blob
from helpers import build_trainer, run_cli
from nnunet_blob.synthetic import make_dataset

TRAINERS = ["nnUNetTrainer", "nnUNetTrainerBlobDice"]
MODES = ("with_data_loading", "without_data_loading")


@pytest.fixture(scope="module")
def dataset(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)  # shared with others


def run_benchmark(dataset: str, results: Path, *extra, device: str = "cpu", epochs: int = 2, iterations: int = 1):
    env = {**os.environ, "nnUNet_results": str(results)}
    if device == "cpu":  # nnU-Net's loader in the process of each run, without starting workers (another test
        env["nnUNet_n_proc_DA"] = "0"  # stops real ones)
    output = results / "benchmark.json"
    done = run_cli("nnunet_blob", "benchmark", "-d", dataset, "-c", "3d_fullres", "-tr", "nnUNetTrainerBlobDice",
                   "--epochs", epochs, "--iterations", iterations, "-device", device, "-o", output, *extra, env=env,
                   timeout=600)
    return done, json.loads(output.read_text())


def expected_row(name: str, runs: dict, gib=lambda b: "-" if b is None else f"{b / 1024 ** 3:.2f}") -> str:
    cells = []
    for mode in MODES:
        run = runs[mode]
        ratio = run["peak_memory_ratio_to_stock"]
        cells += [f"{run['fastest_epoch']:.3f}", f"{run['ratio_to_stock']:.2f}", gib(run["peak_memory_bytes"]),
                  "-" if ratio is None else f"{ratio:.2f}"]
    return f"| {name} | " + " | ".join(cells) + " |"


def check_report(report: dict, dataset: str, epochs: int, iterations: int) -> None:
    assert {"dataset": dataset, "configuration": "3d_fullres", "plans": "nnUNetPlans", "fold": 0, "epochs": epochs,
            "iterations": iterations, "val_iterations": 1, "stock": "nnUNetTrainer"}.items() <= report.items()
    assert report["torch_version"] == torch.__version__ and report["cuda_version"] == torch.version.cuda
    assert report["nnunet_version"] == version("nnunetv2")
    assert report["nnunet_blob_version"] == nnunet_blob.__version__
    assert list(report["trainers"]) == TRAINERS
    for name in TRAINERS:
        for mode in MODES:
            run, stock = report["trainers"][name][mode], report["trainers"]["nnUNetTrainer"][mode]
            assert "error" not in run, run
            times = run["epoch_times"]
            assert len(times) == epochs and all(t > 0 for t in times), times
            assert run["fastest_epoch"] == min(times)
            assert run["ratio_to_stock"] == pytest.approx(run["fastest_epoch"] / stock["fastest_epoch"], rel=1e-12)
            assert Path(run["log"]).is_file() and run["benchmark_trainer"].startswith(name + "_benchmark")


def test_benchmark_on_the_cpu_times_stock_and_blob_dice_with_and_without_data_loading(dataset, tmp_path):
    done, report = run_benchmark(dataset, tmp_path)
    check_report(report, dataset, epochs=2, iterations=1)
    assert report["device"] == "cpu" and report["gpu_name"] is None and report["cudnn_version"] is None
    for name in TRAINERS:
        runs = report["trainers"][name]
        assert all(runs[m]["peak_memory_bytes"] is None and runs[m]["peak_memory_ratio_to_stock"] is None
                   for m in MODES)
        assert expected_row(name, runs) in done.stdout, done.stdout
    assert all(report["trainers"]["nnUNetTrainer"][m]["ratio_to_stock"] == 1.0 for m in MODES)
    # one line per run and per epoch while it runs
    for count, (name, mode) in enumerate([(n, m) for n in TRAINERS for m in MODES], 1):
        assert f"[{count}/4] {name}, {mode.replace('_', ' ')}: nnUNetv2_train" in done.stdout
    assert done.stdout.count("    epoch 2/2: ") == 4
    # nnU-Net's own result file in nnU-Net's results folder, no checkpoints, no final validation
    for name in TRAINERS:
        for suffix, mode in (("_benchmark", MODES[0]), ("_benchmark_noDataLoading", MODES[1])):
            fold = tmp_path / dataset / f"{name}{suffix}__nnUNetPlans__3d_fullres" / "fold_0"
            (entry,) = json.loads((fold / "benchmark_result.json").read_text()).values()
            assert entry["fastest_epoch"] == report["trainers"][name][mode]["fastest_epoch"]
            assert entry["data_loading"] == (mode == MODES[0]) and entry["trainer"] == name + suffix
            assert not list(fold.glob("*.pth")) and not (fold / "validation").exists()


def test_without_data_loading_every_step_reuses_one_batch_of_the_trainers_own_loaders(dataset):
    from nnunet_blob.trainers.benchmarking import nnUNetTrainerBlobDice_benchmark_noDataLoading

    trainer = build_trainer(nnUNetTrainerBlobDice_benchmark_noDataLoading, dataset)
    made = []
    get_dataloaders = trainer.get_dataloaders
    trainer.get_dataloaders = lambda: made.extend(get_dataloaders()) or tuple(made)
    trainer.on_train_start()
    assert len(made) == 2 and all(loader.initialized is False for loader in made)  # drawn from, then stopped
    batch, val_batch = next(trainer.dataloader_train), next(trainer.dataloader_val)
    assert next(trainer.dataloader_train) is batch and next(trainer.dataloader_val) is val_batch
    assert val_batch is not batch
    target = batch["target"][0]
    assert target.shape[1] == 2 and target[:, 1].max() > 0  # the segmentation and the instance map it packed
    assert torch.isfinite(torch.as_tensor(trainer.train_step(batch)["loss"]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_benchmark_on_cuda_reports_the_gpu_and_peak_memory(dataset, tmp_path):
    done, report = run_benchmark(dataset, tmp_path, device="cuda", epochs=2, iterations=2)
    check_report(report, dataset, epochs=2, iterations=2)
    assert report["gpu_name"] == torch.cuda.get_device_name() and report["cudnn_version"] is not None
    for name in TRAINERS:
        runs = report["trainers"][name]
        stock = report["trainers"]["nnUNetTrainer"]
        for mode in MODES:
            assert runs[mode]["peak_memory_bytes"] > 0
            assert runs[mode]["peak_memory_ratio_to_stock"] == pytest.approx(
                runs[mode]["peak_memory_bytes"] / stock[mode]["peak_memory_bytes"], rel=1e-12)
        assert expected_row(name, runs) in done.stdout, done.stdout


def test_benchmark_refuses_an_unknown_trainer_and_names_the_known_ones():
    done = run_cli("nnunet_blob", "benchmark", "-d", "601", "-c", "3d_fullres", "-tr",
                   "nnUNetTrainerBlobDice_benchmark", "-device", "cpu", check=False)
    assert done.returncode == 1 and not done.stdout
    assert done.stderr.startswith("nnunet_blob benchmark: error: unknown trainer nnUNetTrainerBlobDice_benchmark.")
    assert "nnUNetTrainerBlobDice, " in done.stderr and "Name the trainer itself" in done.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA GPU")
def test_benchmark_on_cuda_without_a_gpu_says_so_before_running_anything(tmp_path):
    env = {**os.environ, "nnUNet_results": str(tmp_path)}
    done = run_cli("nnunet_blob", "benchmark", "-d", "601", "-c", "3d_fullres", "-tr", "nnUNetTrainerBlobDice",
                   env=env, check=False)  # the device is checked before the dataset
    assert done.returncode == 1 and not done.stdout and not list(tmp_path.iterdir())
    assert done.stderr.startswith("nnunet_blob benchmark: error: -device cuda: torch finds no cuda device")
    assert "use -device cpu" in done.stderr


def test_benchmark_of_a_dataset_not_preprocessed_says_what_to_run(tmp_path):
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "results")}
    make_dataset(tmp_path / "raw", 697, "RawOnly", num_train=2, shape=(8, 8, 8), small_objects=(1, 2))
    done = run_cli("nnunet_blob", "benchmark", "-d", "697", "-c", "3d_fullres", "-tr", "nnUNetTrainerBlobDice",
                   "-device", "cpu", env=env, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith("nnunet_blob benchmark: error: the dataset is not ready for training: ")
    assert "Run nnUNetv2_plan_and_preprocess -d 697" in done.stderr
    assert not (tmp_path / "results").exists()
