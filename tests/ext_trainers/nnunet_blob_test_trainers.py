"""Test-only trainers with a tiny budget, found through nnUNet_extTrainer like any user's own trainers.

Epochs come from NNUNET_BLOB_TEST_EPOCHS (default 1) so a test can resume a run with --c and a larger budget.
"""
import os

import torch

from nnunet_blob.trainers.variants import (nnUNetTrainerBlobDice, nnUNetTrainerBlobTversky,
                                           nnUNetTrainerTopKDice)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


def _tiny(base):
    class Tiny(base):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device("cuda")):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = int(os.environ.get("NNUNET_BLOB_TEST_EPOCHS", "1"))
            self.num_iterations_per_epoch = 3
            self.num_val_iterations_per_epoch = 2
            self.save_every = 1

    Tiny.__name__ = Tiny.__qualname__ = base.__name__ + "_tiny"
    return Tiny


nnUNetTrainer_tiny = _tiny(nnUNetTrainer)
nnUNetTrainerBlobDice_tiny = _tiny(nnUNetTrainerBlobDice)
nnUNetTrainerBlobTversky_tiny = _tiny(nnUNetTrainerBlobTversky)
nnUNetTrainerTopKDice_tiny = _tiny(nnUNetTrainerTopKDice)
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice_instSampling  # noqa: E402

nnUNetTrainerBlobDice_instSampling_tiny = _tiny(nnUNetTrainerBlobDice_instSampling)
