"""nnU-Net's compile path: where nnU-Net compiles its Dice, the Tversky trainers compile their Tversky term and every
trainer its blob, CC-DiceCE or TopK-Dice term (unless ``nnUNet_blob_compile=f``), and a trainer trains through
``nnUNetv2_train`` with compile forced on (on the CPU, with torch's default inductor backend and the system's C++
compiler)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import build_trainer, run_cli
from nnunet_blob.losses import TverskyLoss
from nnunet_blob.losses.compiled import COMPILE_ENV, compiled_terms
from nnunet_blob.nnunet_internals import inner_loss, uncompiled
from nnunet_blob.trainers.variants import (
    nnUNetTrainerBlobDice,
    nnUNetTrainerBlobTversky,
    nnUNetTrainerCCDiceCE,
    nnUNetTrainerTopKDice,
    nnUNetTrainerTversky,
)


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


def compiling(base: type) -> type:
    return type(base.__name__ + "_compile", (base,), {"_do_i_compile": lambda self: True})


@pytest.mark.parametrize("base", [nnUNetTrainerTversky, nnUNetTrainerBlobTversky])
def test_tversky_term_is_compiled_where_nnunet_compiles_its_dice(blobs, base):
    def global_term(trainer):
        loss = inner_loss(trainer.loss)
        return loss.loss.global_loss if hasattr(loss, "num_instance_channels") else loss

    for trainer_class, compiled in ((base, False), (compiling(base), True)):
        dc = global_term(build_trainer(trainer_class, blobs)).dc
        assert isinstance(uncompiled(dc), TverskyLoss)
        assert (uncompiled(dc) is not dc) == compiled, trainer_class.__name__


@pytest.mark.parametrize("base, term", [(nnUNetTrainerBlobDice, "blob term"), (nnUNetTrainerCCDiceCE, "CC-DiceCE term"),
                                        (nnUNetTrainerTopKDice, "TopK-Dice + CE")])
def test_loss_terms_are_compiled_where_nnunet_compiles(blobs, base, term, monkeypatch):
    """nnU-Net's setting decides (forced on here, on the CPU), ``nnUNet_blob_compile=f`` keeps the terms eager."""
    def compiled(trainer_class) -> list[str]:
        return [t.name for t in compiled_terms(build_trainer(trainer_class, blobs).loss)]

    monkeypatch.delenv(COMPILE_ENV, raising=False)
    assert compiled(base) == []
    assert compiled(compiling(base)) == [term]
    monkeypatch.setenv(COMPILE_ENV, "f")
    assert compiled(compiling(base)) == []


def test_blob_tversky_trains_with_nnunets_compile_path(blobs):
    env = {**os.environ, "NNUNET_BLOB_ITERATIONS": "2", "NNUNET_BLOB_VAL_ITERATIONS": "1"}
    run_cli("nnUNetv2_train", 601, "3d_fullres", 2, "-tr", "nnUNetTrainerBlobTversky_compile_tiny", "-device", "cpu",
            env=env, timeout=1500)
    folder = (Path(os.environ["nnUNet_results"]) / blobs / "nnUNetTrainerBlobTversky_compile_tiny__nnUNetPlans__"
              "3d_fullres" / "fold_2")
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "Using torch.compile" in log and "the Tversky term is compiled" in log
    assert "nnunet_blob: compiling the blob term" in log
    assert (folder / "checkpoint_final.pth").is_file()
