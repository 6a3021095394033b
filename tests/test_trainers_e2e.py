"""The trainers through nnU-Net's own command-line tools, as a user types them (tiny budgets, CPU)."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import run_cli


def results_folder(dataset: str, trainer: str, configuration: str = "3d_fullres") -> Path:
    return Path(os.environ["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__{configuration}" / "fold_0"


def train(dataset_id, trainer, *extra, configuration="3d_fullres", fold=0, epochs=1, check=True):
    env = {**os.environ, "NNUNET_BLOB_TEST_EPOCHS": str(epochs)}
    return run_cli("nnUNetv2_train", dataset_id, configuration, fold, "-tr", trainer, "-device", "cpu", *extra,
                   env=env, check=check)


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


def test_blob_dice_train_resume_validate_predict(blobs, tmp_path):
    # the user never ran `nnunet_blob preprocess` (other tests may have): the trainer computes the maps and says so
    shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_3d_fullres_instances",
                  ignore_errors=True)
    result = train(601, "nnUNetTrainerBlobDice_tiny")
    folder = results_folder(blobs, "nnUNetTrainerBlobDice_tiny")
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "computing instance maps of 6 of 6 cases" in log, result.stdout[-2000:]
    assert "Online instance F1 (validation patches)" in log
    for name in ("checkpoint_final.pth", "progress.png", "progress_instances.png", "validation/summary.json",
                 "validation/summary_instances.json"):
        assert (folder / name).is_file(), name
    assert "lesion-wise validation metrics" in log

    # --c continues from the final checkpoint with a larger budget: one more epoch, logs continued
    train(601, "nnUNetTrainerBlobDice_tiny", "--c", epochs=2)
    checkpoint = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2
    assert len(checkpoint["logging"]["instance_f1"]) == 2 == len(checkpoint["logging"]["mean_fg_dice"])

    train(601, "nnUNetTrainerBlobDice_tiny", "--val")  # validation only

    raw = Path(os.environ["nnUNet_raw"]) / blobs
    run_cli("nnUNetv2_predict", "-i", raw / "imagesTs", "-o", tmp_path / "pred", "-d", 601, "-c", "3d_fullres",
            "-f", 0, "-tr", "nnUNetTrainerBlobDice_tiny", "-device", "cpu", "-npp", 1, "-nps", 1,
            "--disable_tta")
    for label in sorted((raw / "labelsTs").glob("*.nii.gz")):
        prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / label.name)))
        assert prediction.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(label))).shape
        assert set(np.unique(prediction)) <= {0, 1}

    # nnU-Net's model selection and model export work on our trainer's results like on a stock trainer's
    run_cli("nnUNetv2_find_best_configuration", 601, "-c", "3d_fullres", "-tr", "nnUNetTrainerBlobDice_tiny",
            "-f", 0, "-np", 1, "--disable_ensembling")
    instructions = (Path(os.environ["nnUNet_results"]) / blobs / "inference_instructions.txt").read_text()
    assert "nnUNetTrainerBlobDice_tiny" in instructions
    run_cli("nnUNetv2_export_model_to_zip", "-d", 601, "-o", tmp_path / "model.zip", "-c", "3d_fullres",
            "-tr", "nnUNetTrainerBlobDice_tiny", "-f", 0)
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert any(name.endswith("fold_0/checkpoint_final.pth") for name in archive.namelist())


@pytest.mark.parametrize("trainer", ["nnUNetTrainerBlobTversky_tiny", "nnUNetTrainerTopKDice_tiny"])
def test_other_trainers_train(blobs, trainer):
    train(601, trainer)
    for name in ("checkpoint_final.pth", "validation/summary_instances.json"):
        assert (results_folder(blobs, trainer) / name).is_file()


def test_2d_configuration(blobs):
    train(601, "nnUNetTrainerBlobDice_tiny", configuration="2d")
    folder = results_folder(blobs, "nnUNetTrainerBlobDice_tiny", "2d")
    assert (folder / "checkpoint_final.pth").is_file()
    assert (Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_2d_instances" / "manifest.json").is_file()


def test_ignore_label_dataset(preprocessed):
    dataset = preprocessed(602, num_train=5, num_classes=2, ignore_label=True, name="Ignore")
    train(602, "nnUNetTrainerBlobDice_tiny")
    assert (results_folder(dataset, "nnUNetTrainerBlobDice_tiny") / "checkpoint_final.pth").is_file()


def test_region_based_dataset(preprocessed):
    dataset = preprocessed(603, num_train=5, num_classes=2, regions=True, name="Regions")
    train(603, "nnUNetTrainerBlobDice_tiny")
    log = "".join(p.read_text() for p in results_folder(dataset, "nnUNetTrainerBlobDice_tiny").glob("training_log*"))
    assert "Online instance F1" in log
    train(603, "nnUNetTrainerBlobDice_instSampling_tiny")
    log = "".join(p.read_text() for p in
                  results_folder(dataset, "nnUNetTrainerBlobDice_instSampling_tiny").glob("training_log*"))
    assert "instance-balanced foreground sampling, weight ~ size ** 0.0 (components of each region)" in log
    refused = train(603, "nnUNetTrainerTopKDice_tiny", check=False)
    assert refused.returncode != 0 and "TopK-Dice is defined for softmax outputs" in refused.stderr + refused.stdout


def add_cascade(plans_file: Path) -> None:
    """Give tiny-volume plans the 3d_lowres / 3d_cascade_fullres pair nnU-Net plans for large images."""
    plans = json.loads(plans_file.read_text())
    configurations = plans["configurations"]
    lowres = json.loads(json.dumps(configurations["3d_fullres"]))
    lowres.update(data_identifier="nnUNetPlans_3d_lowres", next_stage="3d_cascade_fullres",
                  spacing=[2 * s for s in lowres["spacing"]],
                  median_image_size_in_voxels=[s // 2 for s in lowres["median_image_size_in_voxels"]])
    configurations["3d_lowres"] = lowres
    configurations["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    plans_file.write_text(json.dumps(plans, indent=1))


def test_cascade(preprocessed):
    """3d_lowres, then 3d_cascade_fullres on its predictions (nnU-Net moves them into the network input)."""
    dataset = preprocessed(604, num_train=5, name="Cascade")
    add_cascade(Path(os.environ["nnUNet_preprocessed"]) / dataset / "nnUNetPlans.json")
    run_cli("nnUNetv2_preprocess", "-d", 604, "-c", "3d_lowres", "-np", 1)
    # fold "all" validates on every case, so every case gets a previous-stage segmentation for the cascade
    train(604, "nnUNetTrainerBlobDice_tiny", configuration="3d_lowres", fold="all")
    train(604, "nnUNetTrainerBlobDice_tiny", configuration="3d_cascade_fullres")
    folder = results_folder(dataset, "nnUNetTrainerBlobDice_tiny", "3d_cascade_fullres")
    for name in ("checkpoint_final.pth", "validation/summary_instances.json"):
        assert (folder / name).is_file(), name
    preprocessed_folder = Path(os.environ["nnUNet_preprocessed"]) / dataset
    assert (preprocessed_folder / "nnUNetPlans_3d_lowres_instances" / "manifest.json").is_file()
    weights = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    first_conv = next(w for w in weights.values() if w.ndim == 5)
    assert first_conv.shape[1] == 2  # the image plus the previous stage's foreground label, not the instances
