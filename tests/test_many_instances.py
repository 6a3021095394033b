"""More than 32767 instances in a patch (dense, cell-like data): ids travel in two int16 channels, without loss.

Ordinary datasets keep one channel. Checked on nnU-Net's own pipelines with many thousands of components, and end
to end on a dataset of isolated voxels (every one an instance, > 40,000 in a patch) planned and preprocessed by the
real nnU-Net, through its real loader and a real blob trainer step.
"""
from __future__ import annotations

import os
from pathlib import Path

import cc3d
import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from helpers import build_trainer, run_cli
from nnunet_blob.demo.plans import shrink_plans
from nnunet_blob.trainers.instance_data import SegWithInstances, id_channels_for, join_ids, split_ids
from nnunet_blob.trainers.instance_transforms import InstancePacking, make_instance_aware, unpack_instances
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice
from test_instance_pipeline import DS_SCALES, same_partition, training_pipeline


def lattice(shape, step=2, keep=1.0, seed=0) -> np.ndarray:
    """Label 1 at every ``step``-th voxel along each axis (isolated voxels: each one its own 26-connected
    component), a random ``keep`` fraction of them."""
    seg = np.zeros(shape, dtype=np.int16)
    points = np.zeros(tuple(len(range(0, s, step)) for s in shape), dtype=bool)
    points[np.random.default_rng(seed).random(points.shape) < keep] = True
    seg[tuple(slice(0, s, step) for s in shape)] = points
    return seg


def assert_ids_inside_one_class_fast(seg: torch.Tensor, ids: torch.Tensor) -> None:
    """Every id > 0 lies on voxels of one foreground class (vectorised for many ids)."""
    where = ids > 0
    pairs = torch.unique(torch.stack([ids[where].long(), seg[where].long()]), dim=1)
    assert (pairs[1] > 0).all() and pairs[0].unique().numel() == pairs.shape[1]


def test_id_channels_and_the_split_of_ids():
    assert id_channels_for(0) == id_channels_for(32767) == 1 and id_channels_for(32768) == 2
    ids = np.array([0, 1, 32767, 32768, 40000, 2 ** 30 - 1])
    low, high = split_ids(ids)
    assert low.max() <= 32767 and high.max() <= 32767
    assert np.array_equal(join_ids(low.astype(np.int16).astype(np.int32), high.astype(np.int16).astype(np.int32)),
                          ids)
    assert join_ids(np.int32(-1), np.int32(-1)) < 0  # the loader's padding stays "no instance"


def test_a_wide_map_is_cropped_into_two_channels():
    seg = lattice((40, 100, 100))[None]
    ids = cc3d.connected_components(seg[0] > 0, connectivity=26).astype(np.int32)[None]
    assert ids.max() > 32767
    view = SegWithInstances(seg, ids, "dense", id_channels=2)
    crop = view[:, 2:38, 0:100, 5:95]
    assert view.shape == (3, 40, 100, 100) and crop.dtype == np.int16
    assert np.array_equal(crop[0], seg[0, 2:38, 0:100, 5:95])
    assert np.array_equal(join_ids(crop[1].astype(np.int32), crop[2].astype(np.int32)), ids[0, 2:38, 0:100, 5:95])
    with pytest.raises(ValueError, match="wider than the one int16 channel"):
        SegWithInstances(seg, ids, "dense", id_channels=1)


def run_wide(pipeline, image, seg, ids):
    """The label-based pipeline with two id channels, as the loader feeds it; (image, targets, instances)."""
    low, high = split_ids(ids.to(torch.int32))
    stacked = torch.cat([seg.to(torch.int16), low.to(torch.int16), high.to(torch.int16)])
    out = make_instance_aware(pipeline, id_channels=2)(image=image.clone(), segmentation=stacked)
    packed = [s[None] for s in out["segmentation"]]
    assert all(p.shape[1] == 3 for p in packed)  # segmentation + two id channels
    target, instances = unpack_instances(packed, InstancePacking(1, 2))
    return out["image"], target, instances


def test_nnunets_validation_pipeline_carries_wide_ids_unchanged():
    seg = torch.from_numpy(lattice((32, 96, 96)))[None]
    ids = torch.from_numpy(cc3d.connected_components(seg[0].numpy() > 0, connectivity=26).astype(np.int32))[None]
    assert ids.max() > 32767
    image = torch.randn(1, 32, 96, 96)
    _, target, instances = run_wide(nnUNetTrainer.get_validation_transforms(DS_SCALES), image, seg, ids)
    assert instances[0].dtype == torch.int32 and torch.equal(instances[0][0], ids)
    assert torch.equal(target[0][0], seg)


@pytest.mark.parametrize("seed", range(2))
def test_nnunets_training_pipeline_moves_wide_ids_with_the_segmentation(seed):
    torch.manual_seed(seed)
    seg = torch.from_numpy(lattice((40, 80, 80), seed=seed))[None]
    labels = cc3d.connected_components(seg[0].numpy() > 0, connectivity=26).astype(np.int32)
    ids = torch.from_numpy(labels + 10 ** 6 * (labels > 0))[None]  # large, sparse ids
    image = torch.randn(1, 40, 80, 80)
    pipeline = training_pipeline(patch=(32, 64, 64), force_spatial=True)
    _, target, instances = run_wide(pipeline, image, seg, ids)
    for t, i in zip(target, instances, strict=True):
        assert_ids_inside_one_class_fast(t[0, 0], i[0, 0])
    present = torch.unique(instances[0][instances[0] > 0])  # isolated voxels often vanish when resampled
    assert present.numel() > 1000 and set(present.tolist()) <= set(ids.unique().tolist())


def test_region_instances_beyond_int16():
    seg = torch.from_numpy(lattice((32, 96, 96)))[None]
    seg[0, 1::2, 1::2, 1::2] = 2  # label 2 between, so region (1, 2) joins them and region (2,) does not
    pipeline = nnUNetTrainer.get_validation_transforms(DS_SCALES, regions=[(1, 2), (2,)])
    out = make_instance_aware(pipeline, 2, 26, id_channels=2)(image=torch.randn(1, 32, 96, 96),
                                                               segmentation=seg.to(torch.int16))
    target, instances = unpack_instances([s[None] for s in out["segmentation"]], InstancePacking(2, 2),
                                         as_bool=True)
    expected = cc3d.connected_components(seg[0].numpy() == 2, connectivity=26)
    assert expected.max() > 32767
    assert torch.equal(instances[0][0, 1], torch.from_numpy(expected.astype(np.int32)))
    assert instances[0][0, 0].max() == cc3d.connected_components(seg[0].numpy() > 0, connectivity=26).max()


@pytest.fixture(scope="module")
def dense(nnunet_workspace):
    """Dataset640_Dense: 5 cases of 48 x 112 x 112 voxels with a lattice of 70,000-75,000 isolated voxels each,
    planned and preprocessed by nnU-Net (tiny network plans, as the other tests)."""
    import SimpleITK as sitk

    from nnunet_blob.synthetic import make_dataset

    folder = make_dataset(os.environ["nnUNet_raw"], 640, "Dense", num_train=5, shape=(48, 112, 112))
    for i in range(5):  # the same images, lattice labels
        seg = lattice((48, 112, 112), keep=0.95, seed=i)
        image = np.random.default_rng(i).normal(size=seg.shape).astype(np.float32) + 3 * seg
        for array, path in ((image, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz"),
                            (seg.astype(np.uint8), folder / "labelsTr" / f"case_{i:03d}.nii.gz")):
            sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    run_cli("nnUNetv2_plan_and_preprocess", "-d", 640, "-c", "3d_fullres", "-np", 2, "-npfp", 2)
    shrink_plans(Path(os.environ["nnUNet_preprocessed"]) / folder.name / "nnUNetPlans.json")
    return folder.name


def test_more_than_40000_instances_in_a_patch_through_nnunets_loader_and_a_blob_trainer_step(
        dense, single_process_loading):
    trainer = build_trainer(nnUNetTrainerBlobDice, dense)
    train_loader, val_loader = trainer.get_dataloaders()
    assert trainer.instance_packing == InstancePacking(1, 2, max_id=trainer.instance_maps().max_instances)
    assert "instance ids ride in two int16 channels" in open(trainer.log_file).read()

    np.random.seed(0)  # nnU-Net draws patches and augmentation with np.random
    torch.manual_seed(0)
    batch = next(val_loader)  # nnU-Net's crops, no spatial augmentation: the ids are the crop's components
    target, instances = unpack_instances(batch["target"], trainer.instance_packing)
    assert instances[0].dtype == torch.int32
    counts = []
    for j in range(instances[0].shape[0]):
        ids, labels = instances[0][j, 0].numpy(), target[0][j, 0].numpy()
        assert same_partition(ids, cc3d.connected_components(labels == 1, connectivity=26))
        counts.append(np.unique(ids[ids > 0]).size)
    assert max(counts) > 40000, counts  # the forced-foreground sample's box may reach beyond the image

    batch = next(train_loader)
    _, instances = unpack_instances(batch["target"], trainer.instance_packing)
    assert instances[0].dtype == torch.int32 and instances[0].max() > 32767  # the case's own ids, beyond int16
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(batch)["loss"]
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)  # test_loader_batches'


def test_ordinary_datasets_keep_one_id_channel(blobs, single_process_loading):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    train_loader, _ = trainer.get_dataloaders()
    assert trainer.instance_packing == InstancePacking(1, 1, max_id=trainer.instance_maps().max_instances)
    batch = next(train_loader)
    assert batch["target"][0].shape[1] == 2 and batch["target"][0].dtype == torch.int16
