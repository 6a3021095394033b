"""Instance maps through nnU-Net's own training/validation pipelines (real batchgeneratorsv2 transforms)."""
from __future__ import annotations

import cc3d
import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.spatial.transpose import TransposeAxesTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_blob.trainers.instance_data import SegWithInstances
from nnunet_blob.trainers.instance_transforms import make_instance_aware, unpack_instances

DS_SCALES = [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]


def blobs_case(shape=(40, 40, 40), num_classes=2, seed=0, n=25):
    """(image, seg, instances): one big box of class 1 and many small cubes of random classes, ids by cc3d."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, dtype=np.int16)
    seg[tuple(slice(s // 10, s // 2) for s in shape)] = 1
    for _ in range(n):
        lo = [rng.integers(s // 2 + 1, s - 3) for s in shape]
        size = rng.integers(1, 4, size=len(shape))
        seg[tuple(slice(a, a + w) for a, w in zip(lo, size, strict=True))] = rng.integers(1, num_classes + 1)
    instances = np.zeros(shape, dtype=np.int32)
    offset = 0
    for c in range(1, num_classes + 1):
        labels = cc3d.connected_components(seg == c, connectivity=26)
        instances[labels > 0] = labels[labels > 0] + offset
        offset += int(labels.max())
    image = rng.normal(size=(1, *shape)).astype(np.float32) + seg
    return torch.from_numpy(image), torch.from_numpy(seg[None]), torch.from_numpy(instances[None])


def training_pipeline(patch=(32, 32, 32), force_spatial=False, dummy_2d=False, cascade=False, regions=None,
                      ignore_label=None, foreground_labels=(1, 2)):
    pipeline = nnUNetTrainer.get_training_transforms(
        patch, (-np.pi / 6, np.pi / 6), DS_SCALES, (0, 1, 2), dummy_2d, is_cascaded=cascade,
        foreground_labels=list(foreground_labels), regions=regions, ignore_label=ignore_label)
    if force_spatial:
        for t in pipeline.transforms:
            if isinstance(t, SpatialTransform):
                t.p_rotation, t.p_scaling = 1.0, 1.0
    return pipeline


def run(pipeline, image, seg, instances, num_regions=None, seg_prev=None):
    # label-based: the loader stacks the instance map after the segmentation; region-based: it brings none
    stacked = seg.to(torch.int16) if num_regions else torch.cat([seg.to(torch.int16), instances.to(torch.int16)])
    if seg_prev is not None:
        stacked = torch.cat([stacked, seg_prev.to(torch.int16)])
    out = make_instance_aware(pipeline, num_regions)(image=image.clone(), segmentation=stacked)
    k = num_regions or 1
    packed = out["segmentation"]
    packed = [s[None] for s in packed] if isinstance(packed, list) else packed[None]
    target, inst = unpack_instances(packed, k, as_bool=num_regions is not None)
    return out["image"], target, inst


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """a and b label the same voxel sets (equal up to renumbering), 0 in one exactly where 0 in the other."""
    pairs = set(zip(a.ravel().tolist(), b.ravel().tolist(), strict=True))
    return (np.array_equal(a == 0, b == 0) and len(pairs) == len(np.unique(a)) == len(np.unique(b)))


def assert_ids_inside_one_class(seg, instances):
    for i in torch.unique(instances):
        if i == 0:
            continue
        classes = torch.unique(seg[instances == i])
        assert classes.numel() == 1 and classes.item() > 0, f"id {int(i)} spans classes {classes.tolist()}"


def assert_ids_cover_the_foreground(seg, instances):
    """Nearest vs label-wise resampling differ only on boundary voxels: ids cover almost all foreground."""
    fg, with_id = seg > 0, instances > 0
    assert not (with_id & ~fg).any()
    assert with_id.sum() >= 0.9 * fg.sum()


def test_validation_pipeline_keeps_ids_and_downsamples_like_the_segmentation():
    image, seg, instances = blobs_case()
    pipeline = nnUNetTrainer.get_validation_transforms(DS_SCALES)
    out_image, target, inst = run(pipeline, image, seg, instances)
    assert torch.equal(inst[0][0], instances.to(torch.int16))  # no spatial transform: ids unchanged
    assert torch.equal(target[0][0], seg)
    assert out_image.shape == image.shape  # the instance channel does not reach the network input
    for t, i in zip(target, inst, strict=True):
        assert t.shape == i.shape
        assert_ids_inside_one_class(t[0, 0], i[0, 0])


@pytest.mark.parametrize("seed", range(6))
def test_spatial_augmentation_moves_ids_with_the_segmentation(seed):
    torch.manual_seed(seed)
    image, seg, instances = blobs_case(seed=seed)
    out_image, target, inst = run(training_pipeline(force_spatial=True), image, seg, instances)
    assert out_image.shape == (1, 32, 32, 32)
    for t, i in zip(target, inst, strict=True):
        assert t.shape == i.shape
        assert_ids_inside_one_class(t[0, 0], i[0, 0])
    assert_ids_cover_the_foreground(target[0][0, 0], inst[0][0, 0])


def test_crop_only_patches_keep_ids_up_to_renumbering():
    """With no rotation/scaling nnU-Net's SpatialTransform only crops: the ids equal the cropped map's."""
    torch.manual_seed(0)
    image, seg, instances = blobs_case()
    pipeline = training_pipeline()
    for t in pipeline.transforms:
        if isinstance(t, SpatialTransform):
            t.p_rotation = t.p_scaling = 0.0
    pipeline.transforms = [t for t in pipeline.transforms if not isinstance(t, MirrorTransform)]
    _, target, inst = run(pipeline, image, seg, instances)
    crop = (slice(4, 36),) * 3  # centre crop of 40 -> 32
    assert same_partition(inst[0][0, 0].numpy(), instances[0][crop].numpy())
    assert torch.equal(target[0][0, 0].long(), seg[0][crop].long())


def test_mirroring_flips_ids_like_the_segmentation():
    image, seg, instances = blobs_case()
    pipeline = ComposeTransforms([MirrorTransform((0, 1, 2))])
    flips = set()
    for seed in range(6):
        torch.manual_seed(seed)
        axes = [a for a in (0, 1, 2) if torch.rand(1) < 0.5]  # what MirrorTransform draws with this seed
        torch.manual_seed(seed)
        _, target, inst = run(pipeline, image, seg, instances)
        spatial = [a + 1 for a in axes]  # the channel axis comes first
        assert torch.equal(target[0].long(), torch.flip(seg, spatial).long())
        assert torch.equal(inst[0].long(), torch.flip(instances, spatial).long())
        flips.add(tuple(axes))
    assert len(flips) > 1


@pytest.mark.parametrize("cascade", [False, True])
def test_dummy_2d_augmentation(cascade):
    torch.manual_seed(1)
    image, seg, instances = blobs_case(shape=(12, 40, 40))
    out_image, target, inst = run(training_pipeline(patch=(12, 32, 32), force_spatial=True, dummy_2d=True,
                                                    cascade=cascade),
                                  image, seg, instances, seg_prev=seg.clone() if cascade else None)
    assert out_image.shape == (1 + 2 * cascade, 12, 32, 32)
    assert inst[0].shape == target[0].shape == (1, 1, 12, 32, 32)
    assert_ids_inside_one_class(target[0][0, 0], inst[0][0, 0])
    assert_ids_cover_the_foreground(target[0][0, 0], inst[0][0, 0])


def test_2d_patches():
    torch.manual_seed(2)
    image, seg, instances = blobs_case(shape=(40, 40))
    pipeline = nnUNetTrainer.get_training_transforms((32, 32), (-np.pi, np.pi), [[1, 1], [0.5, 0.5]], (0, 1), False,
                                                     foreground_labels=[1, 2])
    out_image, target, inst = run(pipeline, image, seg, instances)
    assert out_image.shape == (1, 32, 32) and inst[1].shape == (1, 1, 16, 16)
    assert_ids_inside_one_class(target[0][0, 0], inst[0][0, 0])


def test_cascade_previous_stage_goes_to_the_image_not_the_instances():
    torch.manual_seed(3)
    image, seg, instances = blobs_case()
    seg_prev = seg.clone()
    out_image, target, inst = run(training_pipeline(force_spatial=True, cascade=True), image, seg, instances,
                                  seg_prev=seg_prev)
    assert out_image.shape[0] == 1 + 2  # image + one-hot of the two foreground labels of the previous stage
    assert target[0].shape[1] == 1
    assert_ids_inside_one_class(target[0][0, 0], inst[0][0, 0])
    assert_ids_cover_the_foreground(target[0][0, 0], inst[0][0, 0])


def test_ignore_label_voxels_carry_no_id():
    torch.manual_seed(4)
    image, seg, instances = blobs_case()
    seg[:, :, :, :6] = 3  # ignore label of a 2-class dataset: never an instance
    instances[seg == 3] = 0
    _, target, inst = run(training_pipeline(force_spatial=True, ignore_label=3, foreground_labels=(1, 2)),
                          image, seg, instances)
    assert not torch.any(inst[0][target[0] == 3] > 0)
    assert_ids_inside_one_class(torch.where(target[0][0, 0] == 3, 0, target[0][0, 0]), inst[0][0, 0])


def test_regions_get_connected_components_per_region():
    torch.manual_seed(5)
    image, seg, instances = blobs_case()
    regions = [(1, 2), (2,)]
    _, target, inst = run(training_pipeline(force_spatial=True, regions=regions), image, seg, instances,
                          num_regions=2)
    assert target[0].dtype == torch.bool and target[0].shape[1] == 2 and inst[0].shape[1] == 2
    for r in range(2):
        expected = cc3d.connected_components(target[0][0, r].numpy().astype(np.uint8), connectivity=26)
        assert np.array_equal(inst[0][0, r].numpy(), expected)
    for t, i in zip(target, inst, strict=True):
        assert t.shape == i.shape


def test_unknown_voxel_moving_transform_is_refused():
    with pytest.raises(TypeError, match="TransposeAxesTransform"):
        make_instance_aware(ComposeTransforms([TransposeAxesTransform((0, 1, 2))]))


def test_seg_with_instances_crops_lazily():
    """One int16 channel for ids that fit it (ids beyond int16: tests/test_many_instances.py)."""
    _, seg, instances = blobs_case()
    view = SegWithInstances(seg.numpy(), instances.numpy().astype(np.int16), "case_0")
    crop = view[(slice(None), slice(20, 40), slice(20, 40), slice(20, 40))]
    assert crop.shape == (2, 20, 20, 20) and crop.dtype == np.int16
    assert np.array_equal(crop[0], seg[0, 20:, 20:, 20:].numpy())
    assert np.array_equal(crop[1], instances[0, 20:, 20:, 20:].numpy())
    with pytest.raises(ValueError, match="does not match the segmentation"):
        SegWithInstances(seg.numpy(), instances.numpy()[:, :10], "case_1")
    with pytest.raises(ValueError, match="wider than the one int16 channel"):
        SegWithInstances(seg.numpy(), instances.numpy() + 40000, "case_2")


@pytest.mark.parametrize("seed", range(4))
def test_instance_resampling_equals_batchgenerators_nearest_path(seed):
    """Our nearest resampling of the ids samples exactly where batchgeneratorsv2's own nearest mode does."""
    from nnunet_blob.trainers.instance_transforms import INSTANCE_MOVERS, CarryInstances

    image, seg, instances = blobs_case(seed=seed)
    spatial = SpatialTransform((32, 32, 32), 0, False, p_rotation=1, rotation=(-np.pi / 4, np.pi / 4), p_scaling=1,
                               scaling=(0.7, 1.4), mode_seg="nearest", border_mode_seg="constant",
                               padding_value_seg=-1)
    torch.manual_seed(seed)
    out = CarryInstances(spatial, INSTANCE_MOVERS[SpatialTransform])(
        image=image, segmentation=seg, instances=instances.to(torch.int16))
    nearest_seg, moved = out["segmentation"][0], out["instances"][0]
    assert torch.equal(moved > 0, nearest_seg > 0)
    assert_ids_inside_one_class(nearest_seg, moved)


def test_region_pipeline_without_nnunets_region_conversion_is_refused_clearly():
    pipeline = ComposeTransforms([MirrorTransform((0, 1, 2))])  # a custom pipeline that lost the conversion
    with pytest.raises(ValueError, match="ConvertSegmentationToRegionsTransform.*MirrorTransform"):
        make_instance_aware(pipeline, num_regions=2)
