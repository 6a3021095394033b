"""The contract of the instance-aware trainers: one frozen setup made at start-up, one loss hook, one connectivity
for the online F1 and the final validation."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from torch import nn

from helpers import build_trainer
from nnunet_blob.instances.detection import instance_scores
from nnunet_blob.nnunet_internals import inner_loss
from nnunet_blob.trainers.base import InstanceAwareTrainer, InstanceTermTrainer
from nnunet_blob.trainers.instance_setup import InstanceSetup
from nnunet_blob.trainers.instance_transforms import InstancePacking, unpack_instances
from nnunet_blob.trainers.variants import (
    GlobalTerm,
    nnUNetTrainerBlobDice,
    nnUNetTrainerCCDiceCE,
    nnUNetTrainerTopKDice,
)


class CCDiceCE18(nnUNetTrainerCCDiceCE):
    """A trainer whose instances are 18-connected (not the evaluation's default 26)."""

    cell_connectivity = 18


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)  # test_loader_batches'


def corner_touching_cubes(shape=(8, 8, 8)):
    """Reference: two 2-voxel cubes meeting at one corner (one 26-connected lesion, two 18-connected ones);
    prediction: the first cube only."""
    reference = np.zeros(shape, np.uint8)
    reference[1:3, 1:3, 1:3] = 1
    reference[3:5, 3:5, 3:5] = 1
    prediction = np.zeros(shape, np.uint8)
    prediction[1:3, 1:3, 1:3] = 1
    return reference, prediction


def online_f1(trainer, reference: np.ndarray, prediction: np.ndarray) -> float:
    """The online F1 of one validation patch: the trainer's own validation pipeline packs the target, its scorer
    counts as in its validation step."""
    pipeline = trainer.get_validation_transforms(None, foreground_labels=trainer.label_manager.foreground_labels)
    packed = pipeline(image=torch.zeros(1, *reference.shape),
                      segmentation=torch.from_numpy(reference.astype(np.int16))[None])["segmentation"]
    target, maps = unpack_instances(packed[None], trainer.instance_setup.packing)
    ids = trainer.online_reference_ids(target.numpy(), maps.numpy())
    counts = trainer._online_scorer().submit(prediction[None, None], target.numpy(), ids).result()
    return instance_scores(counts)["F1"]


def test_online_and_final_scores_count_instances_with_the_trainers_connectivity(blobs, tmp_path):
    """A trainer with 18-connected instances: the online F1 and the final validation's lesion-wise F1 of the same
    case are the same number, the 18-connected one (two reference lesions, one found: IS 1/2, IP 1, F1 2/3; at 26
    there would be one lesion, found: F1 1)."""
    trainer = build_trainer(CCDiceCE18, blobs)
    assert trainer.instance_setup == InstanceSetup(InstancePacking(1, 1), 18)
    assert inner_loss(trainer.loss).packing is trainer.instance_setup.packing  # fixed before the loss was built
    reference, prediction = corner_touching_cubes()

    trainer.output_folder = str(tmp_path / "fold_0")
    trainer.preprocessed_dataset_folder_base = str(tmp_path)
    for array, folder in ((reference, tmp_path / "gt_segmentations"), (prediction, tmp_path / "fold_0" / "validation")):
        folder.mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / "case_000.nii.gz"))
    summary = json.loads(Path(trainer.write_lesion_wise_metrics()).read_text())

    assert summary["settings"]["connectivity"] == 18
    final = summary["pooled_instances"]["1"]
    assert (final["n_ref_instances"], final["TP_ref_instances"], final["FN_instances"]) == (2, 1, 1)
    assert final["F1"] == pytest.approx(2 / 3) == online_f1(trainer, reference, prediction)
    assert "18-connectivity" in Path(trainer.log_file).read_text()


def test_the_setup_is_frozen_and_checked():
    setup = InstanceSetup(InstancePacking(2, 1), 26)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.connectivity = 18  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        setup.packing.id_channels = 2  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"one of \(6, 18, 26\).*got 8"):
        InstanceSetup(InstancePacking(), 8)
    with pytest.raises(TypeError, match="InstancePacking"):
        InstanceSetup(1, 26)  # type: ignore[arg-type]


def test_reading_the_setup_before_the_start_up_step_computes_nothing(blobs):
    """The shorthands read the setup; before ``initialize()`` they say so instead of preparing instance maps."""
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs, initialize=False)
    for name in ("instance_setup", "instance_packing", "online_connectivity"):
        with pytest.raises(RuntimeError, match=r"made by initialize\(\)"):
            getattr(trainer, name)
    assert getattr(trainer, "_instance_store", None) is None


def test_the_loss_does_not_depend_on_the_order_of_the_bases():
    class GlobalFirst(GlobalTerm, InstanceAwareTrainer):
        def build_instance_loss(self, nnunet_loss: nn.Module) -> nn.Module:
            return nnunet_loss

    assert GlobalFirst.build_inner_loss is InstanceTermTrainer.build_inner_loss
    with pytest.raises(TypeError, match=r"TopKFirst: its build_inner_loss is nnUNetTrainerTopKDice's"):
        type("TopKFirst", (nnUNetTrainerTopKDice, nnUNetTrainerBlobDice), {})
    with pytest.raises(TypeError, match=r"its build_inner_loss is Overriding's"):
        type("Overriding", (nnUNetTrainerBlobDice,), {"build_inner_loss": lambda self, loss: loss})
    with pytest.raises(TypeError, match=r"its lesion_connectivity is Scoring's"):
        type("Scoring", (nnUNetTrainerCCDiceCE,), {"lesion_connectivity": lambda self: 26})
