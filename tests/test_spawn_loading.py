"""The trainers' loaders work with the spawn start method (macOS, Windows, Python 3.14's default): nnU-Net's loader
processes receive the dataset and the pipeline pickled."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import build_trainer
from nnunet_blob.nnunet_internals import deep_supervision_scales
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice, nnUNetTrainerBlobDice_instSampling


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


def test_instance_datasets_and_pipelines_survive_pickling(blobs):
    trainer = build_trainer(nnUNetTrainerBlobDice_instSampling, blobs)
    dataset, _ = trainer.get_tr_and_val_datasets()
    clone = pickle.loads(pickle.dumps(dataset))
    assert clone.identifiers == dataset.identifiers and len(clone) == len(dataset)
    key = dataset.identifiers[0]
    (data, seg, _, properties), (data2, seg2, _, properties2) = dataset.load_case(key), clone.load_case(key)
    crop = (slice(None), slice(2, 20), slice(0, 16), slice(4, 30))
    assert np.array_equal(np.asarray(data[crop]), np.asarray(data2[crop]))
    assert np.array_equal(seg[crop], seg2[crop])
    assert np.array_equal(properties["class_locations"][1][123], properties2["class_locations"][1][123])

    scales = deep_supervision_scales(trainer)
    rotation, dummy_2d, patch, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    pipeline = trainer.get_training_transforms(trainer.configuration_manager.patch_size, rotation, scales,
                                               mirror_axes, dummy_2d, foreground_labels=[1])
    copy = pickle.loads(pickle.dumps(pipeline))
    sample = {"image": torch.from_numpy(np.asarray(data[crop])).float(),
              "segmentation": torch.from_numpy(seg[crop])}
    outputs = []
    for transforms in (pipeline, copy):
        torch.manual_seed(0)
        np.random.seed(0)
        outputs.append(transforms(**{k: v.clone() for k, v in sample.items()}))
    assert torch.equal(outputs[0]["image"], outputs[1]["image"])
    assert all(torch.equal(a, b) for a, b in zip(outputs[0]["segmentation"], outputs[1]["segmentation"], strict=True))


TRAIN_WITH_SPAWN = """
import multiprocessing
import sys

if __name__ == "__main__":
    multiprocessing.set_start_method("spawn")
    from nnunetv2.run.run_training import run_training_entry

    sys.argv = ["nnUNetv2_train", "601", "3d_fullres", "1", "-tr", "nnUNetTrainerBlobDice_tiny", "-device", "cpu"]
    run_training_entry()
"""


def test_blob_trainer_trains_with_spawned_loader_processes(blobs, tmp_path):
    script = tmp_path / "train_with_spawn.py"
    script.write_text(textwrap.dedent(TRAIN_WITH_SPAWN))
    env = {**os.environ, "nnUNet_n_proc_DA": "2"}  # nnU-Net's background loader processes
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = (Path(os.environ["nnUNet_results"]) / blobs / "nnUNetTrainerBlobDice_tiny__nnUNetPlans__3d_fullres"
              / "fold_1")
    assert (folder / "checkpoint_final.pth").is_file()
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "Online instance F1 (validation patches)" in log


def test_the_plain_blob_trainer_datasets_pickle_too(blobs):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    for dataset in trainer.get_tr_and_val_datasets():
        clone = pickle.loads(pickle.dumps(dataset))
        key = dataset.identifiers[0]
        assert np.array_equal(dataset.load_case(key)[1][:, :8, :8, :8], clone.load_case(key)[1][:, :8, :8, :8])
