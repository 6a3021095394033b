"""checkpoint_best_instances.pth: the moving average of the online instance F1, the epochs that write the
checkpoint, and what a resumed run remembers (through nnUNetv2_train in tests/test_postprocessing_e2e.py)."""
from __future__ import annotations

import math

import pytest
import torch

from helpers import build_trainer
from nnunet_blob.nnunet_internals import logged_values
from nnunet_blob.trainers.lesion_validation import (
    BEST_INSTANCES_CHECKPOINT,
    INSTANCE_F1_EMA_KEY,
    INSTANCE_F1_KEY,
    moving_average,
    moving_averages,
)
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice

NAN = float("nan")


def test_moving_average_is_nnunets_and_skips_undefined_epochs():
    assert math.isnan(moving_average(NAN, NAN))
    assert moving_average(NAN, 0.4) == 0.4  # the first value as it is
    assert moving_average(0.4, 1.0) == pytest.approx(0.9 * 0.4 + 0.1 * 1.0)
    assert moving_average(0.4, NAN) == 0.4  # no instance in any validation patch: the average stays
    assert moving_averages([NAN, 0.5, NAN, 1.0]) == pytest.approx([NAN, 0.5, 0.5, 0.55], nan_ok=True)


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


def test_best_instances_checkpoint_is_written_when_the_average_improves(blobs, tmp_path):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    trainer.output_folder = str(tmp_path)
    logged_values(trainer.logger)[INSTANCE_F1_EMA_KEY] = [NAN, 0.5, 0.4, 0.5, 0.6]
    path = tmp_path / BEST_INSTANCES_CHECKPOINT
    epochs_saved = []
    for epoch in range(5):
        trainer.current_epoch = epoch + 1  # after nnU-Net's on_epoch_end
        trainer._keep_best_instances_checkpoint(epoch)
        if path.is_file():
            epochs_saved.append(torch.load(path, map_location="cpu", weights_only=False)["current_epoch"])
    # epoch 0 undefined, 1 best so far, 2 and 3 not better (a tie is no improvement), 4 best
    assert epochs_saved == [2, 2, 2, 5]
    assert trainer._best_instance_ema == 0.6


def test_resumed_run_remembers_the_best_average_and_fills_it_for_old_checkpoints(blobs, tmp_path):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    trainer.output_folder = str(tmp_path)
    trainer.save_checkpoint(str(tmp_path / "c.pth"))
    checkpoint = torch.load(tmp_path / "c.pth", map_location="cpu", weights_only=False)
    logs = checkpoint["logging"]
    for key in logs:
        logs[key] = [logs[key][0] if logs[key] else 0.0] * 3
    logs[INSTANCE_F1_KEY] = [0.2, NAN, 0.6]
    del logs[INSTANCE_F1_EMA_KEY]  # a run of a version that did not keep the average
    torch.save(checkpoint, tmp_path / "old.pth")
    resumed = build_trainer(nnUNetTrainerBlobDice, blobs)
    resumed.load_checkpoint(str(tmp_path / "old.pth"))
    averages = logged_values(resumed.logger)[INSTANCE_F1_EMA_KEY]
    assert averages == pytest.approx([0.2, 0.2, 0.9 * 0.2 + 0.1 * 0.6])
    assert resumed._best_instance_ema == pytest.approx(max(averages))
