"""Carry instance maps through nnU-Net's own augmentation pipeline.

:func:`make_instance_aware` takes the ``ComposeTransforms`` that nnU-Net's trainer builds and returns one that
also moves ``data_dict['instances']`` exactly like the segmentation:

1. :class:`SplitInstances` (first) takes the instance channel (or the two channels of a dataset with more than
   32767 instances in a case, rejoined as int32 ids) that :class:`~.instance_data.SegWithInstances` put after the
   segmentation out of it;
2. every transform that moves voxels is wrapped in :class:`CarryInstances`, which applies the *same random
   parameters* to the instances: nearest-neighbour resampling for ``SpatialTransform`` (one ``grid_sample``
   whatever the number of ids; its label-wise segmentation resampling would cost one pass per id), which also
   reconciles the ids with the segmentation (nearest and label-wise resampling may disagree on boundary voxels:
   an id is kept only where the segmentation has the id's class), flips for ``MirrorTransform``, reshapes for the
   pseudo-2D transforms, ``nearest-exact`` downsampling for deep supervision;
3. for region-based training, :class:`RegionInstances` labels the connected components of each region channel
   of the patch (an instance per region, as the sigmoid blob loss expects);
4. :class:`PackInstances` (last) appends the instances to the segmentation (every deep-supervision scale) as
   extra int16 channels (one per instance map, or two with wide ids: :class:`InstancePacking`), because nnU-Net's
   data loader only collates ``image`` and ``segmentation``. The trainer's loss takes them off again
   (:func:`unpack_instances`; int16 ids, or int32 ids for wide ones).

Transforms that do not move voxels (intensity transforms, label removal, masking, cascade one-hot moves, region
conversion) are left as they are; an unknown transform that is not image-only raises an error instead of
silently desynchronising the maps.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.nnunet.random_binary_operator import ApplyRandomBinaryOperatorTransform
from batchgeneratorsv2.transforms.nnunet.remove_connected_components import (
    RemoveRandomConnectedComponentFromOneHotEncodingTransform,
)
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.cropping import crop_tensor
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform
from torch import nn
from torch.nn.functional import grid_sample

from nnunet_blob.instances.detection import label_components
from nnunet_blob.nnunet_internals import (
    apply_to_segmentation,
    seg_grid_sample_options,
    spatial_crop_center,
    spatial_grid,
)
from nnunet_blob.trainers.instance_data import INT16_IDS, join_ids, split_ids

INSTANCES = "instances"

Tensors = torch.Tensor | list[torch.Tensor]


@dataclass(frozen=True)
class InstancePacking:
    """How the instance maps ride in a packed target: ``maps`` maps (one, or one per region), each id in
    ``id_channels`` int16 channels (1, or 2 for datasets with more than 32767 instances in a case). Frozen: the
    loss, the pipelines and the validation step of a trainer hold the same value."""

    maps: int = 1
    id_channels: int = 1
    #: the largest id the maps can hold where it is known (label-based instance maps: the largest instance count
    #: of any case), else None: the loss sizes its tables from it, :class:`PackInstances` checks every patch
    max_id: int | None = None

    @property
    def channels(self) -> int:
        return self.maps * self.id_channels


class SplitInstances(BasicTransform):
    """Move segmentation channel ``channel`` (the instance map; ``id_channels`` channels from there, rejoined as
    int32 ids) to ``data_dict['instances']``.

    Views, no copies for one id channel (except for a cascade, whose previous-stage channel follows the instance
    channel). The loader's padding (-1; negative for rejoined ids) stays until :class:`PackInstances`, which sets it
    to 0 (no instance) on the final patch.
    """

    def __init__(self, channel: int = 1, id_channels: int = 1):
        super().__init__()
        self.channel, self.id_channels = channel, id_channels

    def apply(self, data_dict, **params):
        seg, c, k = data_dict["segmentation"], self.channel, self.id_channels
        data_dict[INSTANCES] = seg[c: c + 1] if k == 1 else \
            join_ids(seg[c: c + 1].to(torch.int32), seg[c + 1: c + 2].to(torch.int32))
        data_dict["segmentation"] = seg[:c] if c + k == seg.shape[0] else torch.cat((seg[:c], seg[c + k:]))
        return data_dict


_SCRATCH: dict = {}


def _scratch(shape: tuple) -> torch.Tensor:
    """A float32 buffer reused between samples (a fresh input-sized tensor per sample costs its page faults)."""
    if shape not in _SCRATCH:
        _SCRATCH.clear()
        _SCRATCH[shape] = torch.empty(shape)
    return _SCRATCH[shape]


def _resample_nearest(t: SpatialTransform, instances: torch.Tensor, params: dict, seg_before: torch.Tensor,
                      seg_after: torch.Tensor) -> torch.Tensor:
    """The ids at the points the spatial transform samples the segmentation at, nearest neighbour, 0 outside.

    Without rotation/scaling this is the segmentation's own crop. Otherwise ``grid_sample`` moves the ids and the
    segmentation together, at the patch's foreground voxels only (an id elsewhere would be dropped anyway), and an
    id is kept only where that nearest-neighbour segmentation equals the one the transform produced (its
    label-wise interpolation may disagree on boundary voxels): every id then lies in its own class, and
    foreground voxels left without an id are excluded from the blob terms by the loss.
    """
    grid = spatial_grid(params)
    if grid is None:
        return crop_tensor(instances, [math.floor(i) for i in spatial_crop_center(params)], t.patch_size,
                           pad_mode="constant", pad_kwargs={"value": 0})
    k = instances.shape[0]  # 1, or the number of slices in nnU-Net's pseudo-2D augmentation (channel-major)
    target = seg_after[:k].reshape(k, -1)
    out = torch.zeros_like(target, dtype=instances.dtype)
    where = (target > 0).any(0).nonzero()[:, 0]
    if where.numel():
        points = grid.reshape(-1, grid.shape[-1])[where].reshape(1, *[1] * (grid.ndim - 2), -1, grid.shape[-1])
        stacked = _scratch((2 * k, *instances.shape[1:]))
        stacked[:k], stacked[k:] = instances, seg_before[:k]
        sampled = grid_sample(stacked[None], points, mode="nearest", **seg_grid_sample_options(t)).reshape(2 * k, -1)
        ids, nearest_seg = sampled[:k], sampled[k:]
        keep = (ids > 0) & (nearest_seg == target[:, where])
        out[:, where] = torch.where(keep, ids, 0).to(out.dtype)
    return out.reshape(k, *seg_after.shape[1:])


def _like_segmentation(t: BasicTransform, instances: torch.Tensor, params: dict, *_) -> Tensors:
    """Flips (``MirrorTransform``) and deep-supervision downsampling move ids exactly like class labels."""
    return apply_to_segmentation(t, instances, params)


def _slices_to_channels(t, instances: torch.Tensor, *_) -> torch.Tensor:
    """nnU-Net's pseudo-2D augmentation folds the first spatial axis into the channels (channel-major)."""
    return instances.reshape(instances.shape[0] * instances.shape[1], *instances.shape[2:])


def _channels_to_slices(t, instances: torch.Tensor, *_) -> torch.Tensor:
    """... and unfolds it again afterwards (one instance channel)."""
    return instances.reshape(1, instances.shape[0], *instances.shape[1:])


#: how each voxel-moving transform moves the instance map: ``move(transform, instances, params, seg_before,
#: seg_after)`` with the transform's random parameters and the segmentation before and after it (module-level
#: functions: the pipeline is pickled into nnU-Net's loader processes)
INSTANCE_MOVERS: dict = {
    SpatialTransform: _resample_nearest,
    MirrorTransform: _like_segmentation,
    Convert3DTo2DTransform: _slices_to_channels,
    Convert2DTo3DTransform: _channels_to_slices,
    DownsampleSegForDSTransform: _like_segmentation,
}

#: transforms known not to move voxels of the segmentation
VOXEL_PRESERVING = (ImageOnlyTransform, RemoveLabelTransform, MaskImageTransform, MoveSegAsOneHotToDataTransform,
                    ApplyRandomBinaryOperatorTransform, RemoveRandomConnectedComponentFromOneHotEncodingTransform,
                    ConvertSegmentationToRegionsTransform)


class CarryInstances(BasicTransform):
    """Apply ``transform`` and move ``data_dict['instances']`` with the same random parameters."""

    def __init__(self, transform: BasicTransform, move: Callable):
        super().__init__()
        self.transform, self.move = transform, move

    def __call__(self, **data_dict):
        params = self.transform.get_parameters(**data_dict)
        seg_before = data_dict.get("segmentation")
        data_dict = self.transform.apply(data_dict, **params)
        if data_dict.get(INSTANCES) is not None:
            data_dict[INSTANCES] = self.move(self.transform, data_dict[INSTANCES], params, seg_before,
                                             data_dict.get("segmentation"))
        return data_dict

    def __repr__(self):
        return f"CarryInstances({self.transform!r})"


class RegionInstances(BasicTransform):
    """Instances per region: connected components of each of the first ``num_regions`` region channels (int16 ids,
    or int32 for ``id_channels`` 2)."""

    def __init__(self, num_regions: int, connectivity: int = 26, id_channels: int = 1):
        super().__init__()
        self.num_regions, self.connectivity, self.id_channels = num_regions, connectivity, id_channels

    def apply(self, data_dict, **params):
        regions = data_dict["segmentation"][: self.num_regions].cpu().numpy()
        components = [label_components(r, self.connectivity) for r in regions]
        most = max((n for _, n in components), default=0)
        if self.id_channels == 1 and most > INT16_IDS:
            raise ValueError(f"a region of this patch has {most} connected components, more than the {INT16_IDS} "
                             f"one int16 channel carries; the instance maps' manifest promised fewer (maps of "
                             f"another dataset version?): recompute them with `nnunet_blob preprocess --overwrite`")
        dtype = np.int16 if self.id_channels == 1 else np.int32
        data_dict[INSTANCES] = torch.from_numpy(np.stack([labels.astype(dtype) for labels, _ in components]))
        return data_dict


class PackInstances(BasicTransform):
    """Append ``instances`` to ``segmentation`` (per deep-supervision scale) as trailing int16 channels: the ids
    themselves, or with ``id_channels`` 2 their low halves, then their high halves (:func:`split_ids`).

    The loader's padding value (-1) becomes 0, no instance. ``max_id``: the largest id the loss's tables hold; a
    patch with a larger id is refused here (on the CPU, in the loader's workers) rather than corrupting a table.
    """

    def __init__(self, id_channels: int = 1, max_id: int | None = None):
        super().__init__()
        self.id_channels, self.max_id = id_channels, max_id

    def apply(self, data_dict, **params):
        seg, instances = data_dict["segmentation"], data_dict.pop(INSTANCES)
        if self.max_id is not None:
            check_id_bound(instances, self.max_id, "instance id", "the largest instance count of any case in the "
                           "instance maps' manifest; recompute the maps (nnunet_blob preprocess)")
        pack = _pack_one_channel if self.id_channels == 1 else _pack_two_channels
        if isinstance(seg, (list, tuple)):
            data_dict["segmentation"] = [pack(s, i) for s, i in zip(seg, instances, strict=True)]
        else:
            data_dict["segmentation"] = pack(seg, instances)
        return data_dict


def check_id_bound(maps: Tensors, max_id: int, what: str, fix: str) -> None:
    """Raise a ValueError naming ``fix`` if a map (of any scale) holds an id above ``max_id``."""
    for m in maps if isinstance(maps, (list, tuple)) else [maps]:
        largest = int(m.max()) if m.numel() else 0
        if largest > max_id:
            raise ValueError(f"a patch holds {what} {largest}, above {max_id}, the largest the loss's tables hold "
                             f"({fix})")


def _pack_one_channel(seg: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    return torch.cat((seg.to(torch.int16), instances.clamp_min(0).to(torch.int16)))


def _pack_two_channels(seg: torch.Tensor, instances: torch.Tensor) -> torch.Tensor:
    low, high = split_ids(instances.clamp_min(0).to(torch.int32))
    return torch.cat((seg.to(torch.int16), low.to(torch.int16), high.to(torch.int16)))


def unpack_instances(target: Tensors, packing: int | InstancePacking, as_bool: bool = False):
    """Inverse of :class:`PackInstances` on a batch: (segmentation, instances), per scale if lists.

    ``packing``: an :class:`InstancePacking`, or the number of maps carried in one id channel each. The ids come
    out as int16 (one id channel) or int32 (two).
    """
    if not isinstance(packing, InstancePacking):
        packing = InstancePacking(packing)
    if isinstance(target, (list, tuple)):
        pairs = [unpack_instances(t, packing, as_bool) for t in target]
        return [p[0] for p in pairs], [p[1] for p in pairs]
    seg, instances = target[:, :-packing.channels], target[:, -packing.channels:]
    if packing.id_channels == 2:
        maps = packing.maps
        instances = join_ids(instances[:, :maps].to(torch.int32), instances[:, maps:].to(torch.int32))
    return (seg.bool() if as_bool else seg), instances


class PackedInstancesLoss(nn.Module):
    """Adapter for nnU-Net's ``loss(output, target)`` calls: the instance maps ride in the last target channels
    (:class:`PackInstances`, laid out as ``packing`` says); ``loss(output, target, instances)`` gets them
    separately. ``packing`` is the trainer's, fixed before the loss is built
    (:class:`~.instance_setup.InstanceSetup`)."""

    def __init__(self, loss: nn.Module, packing: InstancePacking, regions: bool):
        super().__init__()
        self.loss, self.packing, self.regions = loss, packing, regions

    @property
    def num_instance_channels(self) -> int:
        """Instance maps per target (one, or one per region)."""
        return self.packing.maps

    def forward(self, output: torch.Tensor, packed_target: torch.Tensor) -> torch.Tensor:
        target, instances = unpack_instances(packed_target, self.packing, as_bool=self.regions)
        if self.packing.max_id is None:
            return self.loss(output, target, instances)
        return self.loss(output, target, instances, max_id=self.packing.max_id)


def _carry(transform: BasicTransform) -> BasicTransform:
    """``transform`` made instance-aware (recursing into compositions and random wrappers)."""
    if isinstance(transform, ComposeTransforms):
        return ComposeTransforms([_carry(t) for t in transform.transforms])
    if isinstance(transform, RandomTransform):
        return RandomTransform(_carry(transform.transform), transform.apply_probability)
    for kind, move in INSTANCE_MOVERS.items():
        if type(transform) is kind:
            return CarryInstances(transform, move)
    if isinstance(transform, VOXEL_PRESERVING):
        return transform
    raise TypeError(
        f"nnunet_blob does not know how to carry instance maps through {type(transform).__name__}: it may move "
        f"voxels of the segmentation. Add it to nnunet_blob.trainers.instance_transforms.INSTANCE_MOVERS (how it "
        f"moves a (1, *spatial) id map) or VOXEL_PRESERVING.")


def make_instance_aware(pipeline: ComposeTransforms, num_regions: int | None = None,
                        connectivity: int = 26, id_channels: int = 1, max_id: int | None = None) -> ComposeTransforms:
    """nnU-Net's training or validation pipeline, carrying the instance map (see the module docstring).

    ``num_regions``: number of foreground regions for region-based training (None for label-based). Then the
    loader brings no instance channel: instances are the connected components of each region of the augmented
    patch (:class:`RegionInstances`). ``id_channels``: int16 channels per id in the loader's crops and in the packed
    target (2 for datasets with more than 32767 instances in a case).
    """
    if num_regions is not None:  # region instances are labelled after the region conversion, nothing to carry
        stages = [_carry(t) for t in pipeline.transforms]
        cut = next((i for i, t in enumerate(pipeline.transforms)
                    if isinstance(t, ConvertSegmentationToRegionsTransform)), None)
        if cut is None:
            raise ValueError(
                f"region-based training ({num_regions} regions) expects nnU-Net's "
                f"ConvertSegmentationToRegionsTransform at the top level of the pipeline (nnU-Net's "
                f"get_training_transforms/get_validation_transforms add it when given regions); this pipeline has "
                f"{[type(t).__name__ for t in pipeline.transforms]}. A trainer that builds its own pipeline must "
                f"keep that transform, or instance maps cannot be labelled per region.")
        stages.insert(cut + 1, RegionInstances(num_regions, connectivity, id_channels))
        return ComposeTransforms(stages + [PackInstances(id_channels)])
    stages = [SplitInstances(1, id_channels)] + [_carry(t) for t in pipeline.transforms]
    return ComposeTransforms(stages + [PackInstances(id_channels, max_id)])
