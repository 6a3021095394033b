"""What the demo trains on and for how long, and the budget trainers that train that long.

nnU-Net fixes ``num_epochs`` (1000) and the iterations per epoch (250 / 50) in ``nnUNetTrainer.__init__``.
:func:`with_budget` derives a class that reads them from environment variables at construction, so the real
``nnUNetv2_train`` CLI (and ``--c`` with a larger budget) runs it like any trainer, and seeds torch/numpy so that
every trainer of a comparison starts from the same random state. The demo's ``<trainer>_demo`` classes
(:mod:`nnunet_blob.demo.budget_trainers`) and the test suite's ``<trainer>_tiny`` classes are made with it.
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass

DEMO_SUFFIX = "_demo"
DEFAULT_TRAINERS = ("nnUNetTrainer", "nnUNetTrainerBlobDice")

#: environment variables read by budget trainers, with their defaults
BUDGET_VARIABLES = {"NNUNET_BLOB_EPOCHS": 1, "NNUNET_BLOB_ITERATIONS": 3, "NNUNET_BLOB_VAL_ITERATIONS": 2,
                    "NNUNET_BLOB_SEED": 0}


def budget_environment(epochs: int, iterations: int, val_iterations: int, seed: int) -> dict:
    """The environment variables (:data:`BUDGET_VARIABLES`) that make :func:`with_budget` trainers train ``epochs``
    epochs of ``iterations`` training and ``val_iterations`` validation iterations from ``seed``."""
    return {"NNUNET_BLOB_EPOCHS": str(epochs), "NNUNET_BLOB_ITERATIONS": str(iterations),
            "NNUNET_BLOB_VAL_ITERATIONS": str(val_iterations), "NNUNET_BLOB_SEED": str(seed)}


@dataclass(frozen=True)
class Budget:
    """Dataset size and training length of one demo run."""

    num_train: int
    num_test: int
    shape: tuple
    small_objects: tuple
    epochs: int
    iterations: int
    val_iterations: int
    base_features: int | None  # reduced network (features of the first stage); None: nnU-Net's own plans
    caveat: str = ""  # said before the run and above its results table

    def environment(self, seed: int) -> dict:
        """The variables :func:`with_budget` trainers read."""
        return budget_environment(self.epochs, self.iterations, self.val_iterations, seed)

    def describe(self) -> dict:
        return asdict(self)


BUDGETS = {
    # CI: checks the whole pipeline, numbers are meaningless
    "smoke": Budget(num_train=5, num_test=3, shape=(32, 32, 32), small_objects=(6, 10), epochs=1, iterations=2,
                    val_iterations=1, base_features=4,
                    caveat="smoke budget: a check that the pipeline runs (1 epoch of 2 iterations); its numbers are "
                           "meaningless, they compare nothing. Use the default budget to compare trainers."),
    # two trainers on a 2-core CPU: see the README for the measured time
    "default": Budget(num_train=16, num_test=10, shape=(48, 48, 48), small_objects=(10, 20), epochs=12,
                      iterations=25, val_iterations=5, base_features=8),
    # benchmarks/bench_detection.py: more test cases for the paired comparison, longer training
    "detection": Budget(num_train=20, num_test=24, shape=(48, 48, 48), small_objects=(10, 20), epochs=25,
                        iterations=25, val_iterations=5, base_features=8),
    # a GPU, or a long afternoon on a CPU
    "long": Budget(num_train=40, num_test=20, shape=(64, 64, 64), small_objects=(15, 30), epochs=100,
                   iterations=100, val_iterations=20, base_features=None),
}

#: CPU-seconds (user + system, the demo and its child processes) of a whole demo run of two trainers with the default
#: ``-np 2``, as measured for the README's budget table
MEASURED_CPU_SECONDS = {"smoke": 149, "default": 891}


def idle_minutes(cpu_seconds: float, cores: int = 2) -> float:
    """The least wall time, in minutes, of ``cpu_seconds`` of work on an idle machine of ``cores`` cores."""
    return cpu_seconds / cores / 60


def demo_trainer_bases() -> dict:
    """Trainers the demo can run, by name: stock ``nnUNetTrainer`` and every trainer of nnunet_blob."""
    from nnunet_blob.trainers.variants import comparable_trainers

    return comparable_trainers()


def with_budget(base: type, suffix: str, epochs_variable: str = "NNUNET_BLOB_EPOCHS") -> type:
    """``base`` with epochs/iterations from the environment (:data:`BUDGET_VARIABLES`), named ``base.__name__ +
    suffix``; ``epochs_variable`` replaces ``NNUNET_BLOB_EPOCHS`` (the tests resume runs with a larger budget)."""
    import numpy as np
    import torch

    def setting(name: str) -> int:
        variable = epochs_variable if name == "NNUNET_BLOB_EPOCHS" else name
        return int(os.environ.get(variable, BUDGET_VARIABLES[name]))

    class BudgetTrainer(base):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            seed = setting("NNUNET_BLOB_SEED")
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = setting("NNUNET_BLOB_EPOCHS")
            self.num_iterations_per_epoch = setting("NNUNET_BLOB_ITERATIONS")
            self.num_val_iterations_per_epoch = setting("NNUNET_BLOB_VAL_ITERATIONS")
            self.save_every = 1

    BudgetTrainer.__name__ = BudgetTrainer.__qualname__ = base.__name__ + suffix
    return BudgetTrainer
