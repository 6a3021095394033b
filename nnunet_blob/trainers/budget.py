"""Trainer variants with a short, environment-controlled budget (for the demo, benchmarks and tests).

nnU-Net fixes ``num_epochs`` (1000) and the iterations per epoch (250 / 50) in ``nnUNetTrainer.__init__``.
:func:`with_budget` derives a class that reads them from environment variables at construction, so the real
``nnUNetv2_train`` CLI (and ``--c`` with a larger budget) runs it like any trainer, and seeds torch/numpy so that
every trainer of a comparison starts from the same random state.
"""
from __future__ import annotations

import os
import random

import numpy as np
import torch

#: environment variables read by budget trainers, with their defaults
BUDGET_VARIABLES = {"NNUNET_BLOB_EPOCHS": 1, "NNUNET_BLOB_ITERATIONS": 3, "NNUNET_BLOB_VAL_ITERATIONS": 2,
                    "NNUNET_BLOB_SEED": 0}


def with_budget(base: type, suffix: str, epochs_variable: str = "NNUNET_BLOB_EPOCHS") -> type:
    """``base`` with epochs/iterations from the environment, named ``base.__name__ + suffix``."""

    def setting(name: str) -> int:
        variable = epochs_variable if name == "NNUNET_BLOB_EPOCHS" else name
        return int(os.environ.get(variable, BUDGET_VARIABLES[name]))

    class Budget(base):
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

    Budget.__name__ = Budget.__qualname__ = base.__name__ + suffix
    return Budget
