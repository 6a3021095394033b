"""Batches of the trainers' real nnU-Net data loaders carry instance maps that match their segmentations."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd

from helpers import build_trainer, run_cli
from nnunet_blob.nnunet_internals import deep_supervision_scales
from nnunet_blob.preprocessing import ensure_instance_maps
from nnunet_blob.trainers.instance_data import renumber_instances
from nnunet_blob.trainers.instance_sampling import InstanceBalancedLocations
from nnunet_blob.trainers.instance_transforms import unpack_instances
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice, nnUNetTrainerBlobDice_instSampling
from test_instance_pipeline import assert_ids_inside_one_class, same_partition


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


@pytest.mark.parametrize("configuration", ["3d_fullres", "2d"])
def test_training_batches(blobs, single_process_loading, configuration):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs, configuration)
    train_loader, _ = trainer.get_dataloaders()
    for _ in range(3):
        batch = next(train_loader)
        assert batch["data"].shape[1] == 1  # the instance channel does not reach the network input
        target, instances = unpack_instances(batch["target"], 1)
        assert len(target) == len(deep_supervision_scales(trainer))
        for t, i in zip(target, instances, strict=True):
            assert t.shape == i.shape
            for b in range(t.shape[0]):
                assert_ids_inside_one_class(t[b, 0], i[b, 0])
        assert any(i.max() > 0 for i in instances)


def test_validation_batches_equal_the_cropped_maps_up_to_renumbering(blobs, single_process_loading):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    _, val_loader = trainer.get_dataloaders()
    loader = val_loader.data_loader
    boxes, get_bbox = [], loader.get_bbox
    loader.get_bbox = lambda *a, **k: boxes.append(get_bbox(*a, **k)) or boxes[-1]
    batch = next(val_loader)
    store = ensure_instance_maps(601, configuration="3d_fullres", log=lambda *_: None)
    _, instances = unpack_instances(batch["target"], 1)
    for j, key in enumerate(batch["keys"]):
        lbs, ubs = boxes[j]
        crop = crop_and_pad_nd(store.open(key), [[lo, hi] for lo, hi in zip(lbs, ubs, strict=True)], 0)
        assert same_partition(instances[0][j, 0].numpy(), renumber_instances(np.asarray(crop)[0]))


def test_instance_sampling_trainer_uses_balanced_locations(blobs, single_process_loading):
    trainer = build_trainer(nnUNetTrainerBlobDice_instSampling, blobs)
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    key = dataset_tr.identifiers[0]
    locations = dataset_tr.load_case(key)[3]["class_locations"]
    assert isinstance(locations[1], InstanceBalancedLocations)
    train_loader, _ = trainer.get_dataloaders()
    batch = next(train_loader)
    _, instances = unpack_instances(batch["target"], 1)
    assert instances[0][-1].max() > 0  # the forced-foreground sample (last of the batch) holds an instance


def test_trainer_keeps_the_connectivity_the_maps_were_made_with(blobs):
    """Maps made with ``nnunet_blob preprocess --connectivity 18`` are used as they are, also by the online score and
    the final validation."""
    run_cli("nnunet_blob", "preprocess", "-d", 601, "-c", "3d_fullres", "--connectivity", 18, "-np", 1)
    try:
        trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
        trainer.get_tr_and_val_datasets()
        log = Path(trainer.log_file).read_text()
        assert "computing instance maps" not in log and "connectivity 18" in log, log
        assert trainer.instance_maps().connectivity == 18 == trainer.online_connectivity
        assert trainer._online_scorer().options["connectivity"] == 18 == trainer.lesion_connectivity()
    finally:
        run_cli("nnunet_blob", "preprocess", "-d", 601, "-c", "3d_fullres", "--connectivity", 26, "-np", 1)
