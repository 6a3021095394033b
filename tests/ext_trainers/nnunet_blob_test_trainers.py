"""Test-only trainers with a tiny budget, found through nnUNet_extTrainer like any user's own trainers.

Epochs come from NNUNET_BLOB_TEST_EPOCHS (default 1) so a test can resume a run with --c and a larger budget;
3 training and 2 validation iterations per epoch unless NNUNET_BLOB_ITERATIONS / NNUNET_BLOB_VAL_ITERATIONS say
otherwise (see :func:`nnunet_blob.demo.budgets.with_budget`).
"""
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_blob.demo.budgets import with_budget
from nnunet_blob.trainers.variants import (
    nnUNetTrainerBlobDice,
    nnUNetTrainerBlobDice_instSampling,
    nnUNetTrainerBlobTversky,
    nnUNetTrainerCCDiceCE,
    nnUNetTrainerCCDiceCE_noGlobal,
    nnUNetTrainerCCDiceCE_paper,
    nnUNetTrainerTopKDice,
)


class nnUNetTrainerBlobTversky_compile(nnUNetTrainerBlobTversky):
    """nnU-Net's compile path forced on (nnU-Net itself never compiles on the CPU)."""

    def _do_i_compile(self):
        return True


for _base in (nnUNetTrainer, nnUNetTrainerBlobDice, nnUNetTrainerBlobTversky, nnUNetTrainerTopKDice,
              nnUNetTrainerBlobDice_instSampling, nnUNetTrainerBlobTversky_compile, nnUNetTrainerCCDiceCE,
              nnUNetTrainerCCDiceCE_noGlobal, nnUNetTrainerCCDiceCE_paper):
    globals()[_base.__name__ + "_tiny"] = with_budget(_base, "_tiny", epochs_variable="NNUNET_BLOB_TEST_EPOCHS")
