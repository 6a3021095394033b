"""Benchmark trainers: stock ``nnUNetTrainer`` and every nnunet_blob trainer, timed the way nnU-Net's
``nnUNetTrainerBenchmark_5epochs`` and ``nnUNetTrainerBenchmark_5epochs_noDataLoading`` time it.

For each trainer ``T`` of :func:`~nnunet_blob.trainers.variants.comparable_trainers` there are

* ``T_benchmark``: ``T`` with its own data loading and augmentation;
* ``T_benchmark_noDataLoading``: ``T`` on one training batch and one validation batch that ``T``'s own loaders
  produced at the start and that every step reuses (the training batch moved to the device once). nnU-Net's
  benchmark uses random tensors instead; our trainers need the instance maps their loaders pack into the target,
  and a real batch keeps the instance counts of the user's data, so both trainers of a comparison are fed this way.

nnU-Net's CLI finds them (``nnUNetv2_train 501 3d_fullres 0 -tr nnUNetTrainerBlobDice_benchmark``), as the folder of
our trainers lists them (``nnunet_ext/nnunet_blob_benchmark_trainers.py``). As in nnU-Net's benchmark, nothing is
checkpointed and there is no final validation; the epoch time is nnU-Net's own (``epoch_start_timestamps`` to
``epoch_end_timestamps``: the training iterations and the validation iterations of the epoch), and the fastest
epoch is the result (the first epoch carries ``torch.compile`` and cuDNN's autotuning). Peak memory is
``torch.cuda.max_memory_allocated`` from the start of the first epoch to the end of training (None off CUDA).

Length: :data:`BENCHMARK_VARIABLES` (defaults: nnU-Net's benchmark, 5 epochs of 250 training and 50 validation
iterations); ``nnunet_blob benchmark`` sets them. Every trainer starts from the same seed. The result goes to
``benchmark_result.json`` in the fold's output folder, nnU-Net's file, under nnU-Net's key (host, cuDNN, torch, GPU,
number of GPUs), with nnU-Net's fields and :func:`benchmark_record`'s; also to ``NNUNET_BLOB_BENCHMARK_RECORD``
when that names a file (the command's hand-over).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnunet_blob.files import atomic_write_json
from nnunet_blob.nnunet_internals import stop_loader
from nnunet_blob.trainers.variants import comparable_trainers

WITH_DATA_LOADING_SUFFIX = "_benchmark"
NO_DATA_LOADING_SUFFIX = "_benchmark_noDataLoading"
#: environment variables the benchmark trainers read, with their defaults (nnU-Net's benchmark)
BENCHMARK_VARIABLES = {"NNUNET_BLOB_BENCHMARK_EPOCHS": 5, "NNUNET_BLOB_BENCHMARK_ITERATIONS": 250,
                       "NNUNET_BLOB_BENCHMARK_VAL_ITERATIONS": 50, "NNUNET_BLOB_BENCHMARK_SEED": 0}
#: a file the trainer also writes its record to (set by ``nnunet_blob benchmark``)
RECORD_VARIABLE = "NNUNET_BLOB_BENCHMARK_RECORD"
RESULT_FILE = "benchmark_result.json"


def _setting(name: str) -> int:
    value = os.environ.get(name, str(BENCHMARK_VARIABLES[name]))
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None
    if number < (0 if name.endswith("SEED") else 1):
        raise ValueError(f"{name}={value!r} must be at least 1")
    return number


def to_device(batch, device: torch.device):
    """A loader's batch (dict of tensors, lists of tensors, anything else) with every tensor on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def software_versions(device: torch.device) -> dict:
    """torch, CUDA, cuDNN, nnU-Net and nnunet_blob versions, and the name of the GPU ``device`` (None off CUDA)."""
    from importlib.metadata import version

    from nnunet_blob import __version__

    cuda = device.type == "cuda"
    return {"torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if cuda else None,
            "gpu_name": torch.cuda.get_device_name(device) if cuda else None,
            "nnunet_version": version("nnunetv2"), "nnunet_blob_version": __version__,
            "hostname": platform.node()}


def benchmark_trainer(base: type, data_loading: bool) -> type:
    """``base`` as a benchmark trainer named ``base.__name__`` + :data:`WITH_DATA_LOADING_SUFFIX` or
    :data:`NO_DATA_LOADING_SUFFIX`."""

    class BenchmarkTrainer(base):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            seed = _setting("NNUNET_BLOB_BENCHMARK_SEED")
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = _setting("NNUNET_BLOB_BENCHMARK_EPOCHS")
            self.num_iterations_per_epoch = _setting("NNUNET_BLOB_BENCHMARK_ITERATIONS")
            self.num_val_iterations_per_epoch = _setting("NNUNET_BLOB_BENCHMARK_VAL_ITERATIONS")
            self.disable_checkpointing = True

        def perform_actual_validation(self, save_probabilities: bool = False):
            pass  # a benchmark trains a few epochs: nothing worth validating

        def save_checkpoint(self, filename: str) -> None:
            pass  # nnU-Net's benchmark trainers write none either

        def on_train_start(self):
            super().on_train_start()
            if not data_loading:
                reuse_first_batches(self)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                torch.cuda.reset_peak_memory_stats(self.device)

        def on_train_end(self):
            super().on_train_end()
            if self.local_rank == 0:
                write_benchmark_record(self, data_loading)

    suffix = WITH_DATA_LOADING_SUFFIX if data_loading else NO_DATA_LOADING_SUFFIX
    BenchmarkTrainer.__name__ = BenchmarkTrainer.__qualname__ = base.__name__ + suffix
    BenchmarkTrainer.__doc__ = (f"{base.__name__} timed like nnU-Net's nnUNetTrainerBenchmark_5epochs"
                                f"{'' if data_loading else '_noDataLoading'} (see nnunet_blob.trainers.benchmarking)")
    return BenchmarkTrainer


def reuse_first_batches(trainer: Any) -> None:
    """Replace a trainer's loaders by one batch each, taken from them: the training batch moved to the device, the
    validation batch left where the loader delivers it (the validation steps move it, and the online instance F1
    reads its host copy, as with the loader); stop the loaders' workers (they would compete for the CPU while the
    steps are timed)."""
    loaders = (trainer.dataloader_train, trainer.dataloader_val)
    train, val = to_device(next(loaders[0]), trainer.device), next(loaders[1])
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # as nnU-Net's on_train_end
        for loader in loaders:
            stop_loader(loader)
    trainer.dataloader_train, trainer.dataloader_val = itertools.repeat(train), itertools.repeat(val)


def write_benchmark_record(trainer, data_loading: bool) -> None:
    """Add the trainer's :func:`benchmark_record` to :data:`RESULT_FILE` in its output folder, keyed by machine and
    software like nnU-Net's benchmark results (other machines' records stay), and to the file named by
    :data:`RECORD_VARIABLE` when that is set."""
    record = benchmark_record(trainer, data_loading)
    world = torch.distributed.get_world_size() if trainer.is_ddp else 1
    key = (f"{record['hostname']}__{record['cudnn_version']}__{record['torch_version'].replace(' ', '')}__"
           f"{str(record['gpu_name']).replace(' ', '')}__num_gpus_{world}")
    path = Path(trainer.output_folder, RESULT_FILE)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[key] = {**record, "num_gpus": world}
    atomic_write_json(path, results)
    handover = os.environ.get(RECORD_VARIABLE)
    if handover:
        atomic_write_json(handover, {**record, "num_gpus": world})
    trainer.print_to_log_file(f"nnunet_blob: fastest epoch {record['fastest_epoch']} s; written to {path}")


def benchmark_record(trainer, data_loading: bool) -> dict:
    """What a benchmark trainer measured: the seconds of each epoch (nnU-Net's logged time stamps), the fastest,
    peak memory (bytes; None off CUDA), the budget and the software."""
    starts = trainer.logger.get_value("epoch_start_timestamps", step=None)
    ends = trainer.logger.get_value("epoch_end_timestamps", step=None)
    epoch_times = [float(end - start) for start, end in zip(starts, ends, strict=True)]
    cuda = trainer.device.type == "cuda"
    return {**software_versions(trainer.device),
            "trainer": type(trainer).__name__, "data_loading": data_loading, "device": str(trainer.device),
            "epochs": trainer.num_epochs, "iterations": trainer.num_iterations_per_epoch,
            "val_iterations": trainer.num_val_iterations_per_epoch, "batch_size": trainer.batch_size,
            "patch_size": [int(s) for s in trainer.configuration_manager.patch_size],
            "epoch_times": epoch_times, "fastest_epoch": min(epoch_times) if epoch_times else None,
            "peak_memory_bytes": int(torch.cuda.max_memory_allocated(trainer.device)) if cuda else None}


__all__: list[str] = []
for _base in comparable_trainers().values():
    for _data_loading in (True, False):
        _trainer = benchmark_trainer(_base, _data_loading)
        _trainer.__module__ = __name__
        globals()[_trainer.__name__] = _trainer
        __all__.append(_trainer.__name__)
