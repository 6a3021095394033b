"""The CC-DiceCE trainers: Voronoi cells made in nnU-Net's data pipeline, and the trainers through nnU-Net's CLIs."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from helpers import run_cli
from nnunet_blob.instances.detection import label_components
from nnunet_blob.trainers.cells import VoronoiCellsPerScale, make_cell_aware
from nnunet_blob.trainers.instance_transforms import unpack_instances
from test_trainers_e2e import results_folder, train
from test_voronoi import literal_nearest_components

SCALES = [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]


def _segmentation(shape, classes, seed):
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, dtype=np.int16)
    for _ in range(12):
        lo = [rng.integers(0, s - 2) for s in shape]
        seg[tuple(slice(a, a + rng.integers(1, 3)) for a in lo)] = rng.integers(1, classes + 1)
    return seg


def test_cells_of_every_scale_are_the_nearest_components_of_that_scale():
    """nnU-Net's validation pipeline with deep supervision, then the cells: at every scale, each voxel's cell in a
    class channel is a nearest component of that class in that scale's own target (exact Euclidean)."""
    pipeline = make_cell_aware(nnUNetTrainer.get_validation_transforms(SCALES, foreground_labels=[1, 2]),
                               VoronoiCellsPerScale(classes=[1, 2]))
    seg = _segmentation((16, 16, 16), 2, seed=0)
    out = pipeline(image=torch.zeros(1, 16, 16, 16), segmentation=torch.from_numpy(seg)[None])
    targets = out["segmentation"]
    assert len(targets) == len(SCALES)
    for packed in targets:
        target, cells = unpack_instances(packed[None], 2)
        target, cells = target[0, 0].numpy(), cells[0].numpy()
        for channel, label in enumerate((1, 2)):
            components, n = label_components(target == label, 26)
            if not n:
                assert not cells[channel].any()
                continue
            nearest = literal_nearest_components(components, None)
            assert all(int(c) in ids for c, ids in zip(cells[channel].ravel(), nearest, strict=True))


def test_region_cells_and_ignore_label():
    cells = VoronoiCellsPerScale(num_regions=2)
    regions = torch.zeros(3, 1, 10)  # two region masks and nnU-Net's ignore channel
    regions[0, 0, [1, 8]] = 1
    regions[1, 0, 8] = 1
    regions[2, 0, 0] = 1
    result = cells.cells(regions)
    assert result.shape == (2, 1, 10) and result[1].eq(1).all() and set(result[0].unique().tolist()) == {1, 2}
    labels = VoronoiCellsPerScale(classes=[1, 2], ignore_label=3).cells(torch.tensor([[[3, 0, 1, 0, 3, 3, 2]]]))
    assert labels[0].eq(1).all() and labels[1].eq(1).all()  # ignored voxels are no component of any class
    with pytest.raises(ValueError, match="foreground classes"):
        VoronoiCellsPerScale()


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


def test_online_reference_ids_are_the_components_of_each_class(blobs):
    """The online F1's reference instances, read from the cells: the components of each class."""
    from nnunet_blob.trainers.variants import nnUNetTrainerCCDiceCE

    plans = json.loads((Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans.json").read_text())
    plans = {**copy.deepcopy(plans), "continue_training": False}
    dataset_json = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1, "b": 2}, "numTraining": 6,
                    "file_ending": ".nii.gz"}
    trainer = nnUNetTrainerCCDiceCE(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    seg = np.stack([_segmentation((8, 8, 8), 2, seed) for seed in (1, 2)])[:, None]
    cells = np.stack([VoronoiCellsPerScale(classes=[1, 2]).cells(torch.from_numpy(s)).numpy() for s in seg])
    ids = trainer.online_reference_ids(seg, cells)
    for b in range(2):
        for label in (1, 2):
            components, _ = label_components(seg[b, 0] == label, 26)
            assert np.array_equal(np.where(seg[b, 0] == label, ids[b, 0], 0), components)


def test_cc_dice_ce_trains_validates_and_predicts(blobs, tmp_path):
    train(601, "nnUNetTrainerCCDiceCE_tiny")
    folder = results_folder(blobs, "nnUNetTrainerCCDiceCE_tiny")
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "Online instance F1 (validation patches)" in log and "lesion-wise validation metrics" in log
    assert not (Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_3d_fullres_instances").exists() or \
        "computing instance maps" not in log  # the cells come from each patch, not from stored maps
    for name in ("checkpoint_final.pth", "progress_instances.png", "validation/summary_instances.json"):
        assert (folder / name).is_file(), name
    train(601, "nnUNetTrainerCCDiceCE_tiny", "--val")
    raw = Path(os.environ["nnUNet_raw"]) / blobs
    run_cli("nnUNetv2_predict", "-i", raw / "imagesTs", "-o", tmp_path / "pred", "-d", 601, "-c", "3d_fullres",
            "-f", 0, "-tr", "nnUNetTrainerCCDiceCE_tiny", "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta")
    label = sorted((raw / "labelsTs").glob("*.nii.gz"))[0]
    prediction = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "pred" / label.name)))
    assert prediction.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(label))).shape


def test_cc_dice_ce_2d(blobs):
    train(601, "nnUNetTrainerCCDiceCE_noGlobal_tiny", configuration="2d")
    assert (results_folder(blobs, "nnUNetTrainerCCDiceCE_noGlobal_tiny", "2d") / "checkpoint_final.pth").is_file()


@pytest.mark.parametrize("dataset_id,kwargs,trainer", [
    (602, dict(num_train=5, num_classes=2, ignore_label=True, name="Ignore"), "nnUNetTrainerCCDiceCE_paper_tiny"),
    (603, dict(num_train=5, num_classes=2, regions=True, name="Regions"), "nnUNetTrainerCCDiceCE_tiny"),
], ids=["ignore label", "regions"])
def test_ignore_label_and_regions(preprocessed, dataset_id, kwargs, trainer):
    dataset = preprocessed(dataset_id, **kwargs)
    train(dataset_id, trainer)
    log = "".join(p.read_text() for p in results_folder(dataset, trainer).glob("training_log*"))
    assert "Online instance F1" in log
