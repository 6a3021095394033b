"""The data of the CC-DiceCE trainers: Voronoi cells of the target's components, made in nnU-Net's data loading.

As published (L. Bouteille et al., "Learning to Look Closer: A New Instance-Wise Loss for Small Cerebral Lesion
Segmentation", ISBI 2026), the cells come from the target the loss receives: the components (26-connected by
default) of every augmented patch, and again of every deep-supervision scale's downsampled target, each with the
exact Euclidean feature transform in voxel units of that scale's grid (:mod:`nnunet_blob.instances.voronoi`).
:class:`VoronoiCellsPerScale` computes them at the end of nnU-Net's own pipeline, in its data-loading workers
(connected components and distance transforms run on the CPU there, beside the augmentation, not in the training
step); :class:`~.instance_transforms.PackInstances` appends them to the target, one channel per foreground class
(or region), and the loss unpacks them. No instance maps are read from disk.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms

from nnunet_blob.instances.detection import label_components
from nnunet_blob.instances.voronoi import class_cells, component_cells
from nnunet_blob.nnunet_internals import LOADER_SEG_DTYPE
from nnunet_blob.trainers.base import InstanceTermTrainer
from nnunet_blob.trainers.instance_setup import InstanceSetup, InstanceSetupTrainer
from nnunet_blob.trainers.instance_transforms import INSTANCES, InstancePacking, PackInstances

#: the cells of one class travel as int16, like the segmentation nnU-Net's loader collates
MAX_CELLS_PER_CLASS = np.iinfo(LOADER_SEG_DTYPE).max
#: cells per class and patch the CC-DiceCE trainers' loss tables hold by default (their ``max_cells_per_class``)
DEFAULT_MAX_CELLS = 1024


class VoronoiCellsPerScale(BasicTransform):
    """``data_dict['instances']``: the Voronoi cells of each class's (or region's) components in the final
    segmentation of every deep-supervision scale, (K, *spatial) int16 per scale.

    ``classes``: the foreground labels (label-based datasets), one cell channel each; ``num_regions``: region-based
    datasets, whose segmentation is then the region masks (plus nnU-Net's ignore channel, last). Voxels of
    ``ignore_label`` belong to no component. ``max_cells``: most components of one class a patch may have (the
    loss's tables hold that many cells); a patch with more is refused with an error naming the trainer's
    ``max_cells_per_class``.
    """

    def __init__(self, classes: Sequence[int] | None = None, num_regions: int | None = None,
                 connectivity: int = 26, ignore_label: int | None = None,
                 max_cells: int = MAX_CELLS_PER_CLASS):
        super().__init__()
        if (classes is None) == (num_regions is None):
            raise ValueError("give the foreground classes (label-based) or the number of regions (region-based)")
        self.classes = None if classes is None else tuple(int(c) for c in classes)
        self.num_regions, self.connectivity, self.ignore_label = num_regions, connectivity, ignore_label
        self.max_cells = min(max_cells, MAX_CELLS_PER_CLASS)

    def cells(self, segmentation: torch.Tensor) -> torch.Tensor:
        seg = segmentation.numpy()
        if self.num_regions is not None:
            cells = np.stack([component_cells(label_components(seg[r] > 0, self.connectivity)[0])
                              for r in range(self.num_regions)])
        else:
            assert self.classes is not None
            cells = class_cells(seg[0], self.classes, self.connectivity, ignore_label=self.ignore_label)
        if cells.size and cells.max() > self.max_cells:
            raise ValueError(f"a patch holds {int(cells.max())} components of one class, more than the "
                             f"{self.max_cells} cells per class the CC-DiceCE loss's tables hold; raise the trainer's "
                             f"max_cells_per_class (at most {MAX_CELLS_PER_CLASS}) or use a smaller patch size")
        return torch.from_numpy(cells.astype(LOADER_SEG_DTYPE))

    def apply(self, data_dict, **params):
        segmentation = data_dict["segmentation"]
        data_dict[INSTANCES] = [self.cells(s) for s in segmentation] if isinstance(segmentation, (list, tuple)) \
            else self.cells(segmentation)
        return data_dict


def make_cell_aware(pipeline: ComposeTransforms, cells: VoronoiCellsPerScale) -> ComposeTransforms:
    """nnU-Net's training or validation pipeline, then the cells of every scale packed into its targets."""
    return ComposeTransforms(list(pipeline.transforms) + [cells, PackInstances()])


class CellsTrainer(InstanceSetupTrainer):
    """Loaders and augmentation that bring the Voronoi cells of every scale's target to the loss (packed into the
    target's last channels, one per foreground class or region): the data source of :class:`CellAwareTrainer`,
    which runs :meth:`prepare_instances` once in ``initialize()`` and holds its result as ``instance_setup``."""

    #: connectivity of the components whose cells the loss reads (26 as published), and of the instances of the
    #: online F1 and the final validation
    cell_connectivity = 26
    #: most components of one class in a patch: sizes the loss's tables (small tables are cheap on an accelerator);
    #: the loader refuses a patch with more, naming this attribute (at most 32767)
    max_cells_per_class = DEFAULT_MAX_CELLS

    @property
    def num_instance_channels(self) -> int:
        """Cell channels after the segmentation in each target: one per foreground class, or per region."""
        lm = self.label_manager
        return len(lm.foreground_regions) if lm.has_regions else len(lm.foreground_labels)

    def prepare_instances(self) -> InstanceSetup:
        """The start-up step: nothing to read (the cells are made in the loaders); one int16 channel per class or
        region (at most :data:`MAX_CELLS_PER_CLASS` cells per class and patch), components of ``cell_connectivity``."""
        return InstanceSetup(InstancePacking(self.num_instance_channels), self.cell_connectivity)

    def _cell_pipeline(self, pipeline: ComposeTransforms) -> ComposeTransforms:
        lm, connectivity = self.label_manager, self.instance_setup.connectivity
        if lm.has_regions:
            cells = VoronoiCellsPerScale(num_regions=len(lm.foreground_regions), connectivity=connectivity,
                                         max_cells=self.max_cells_per_class)
        else:
            cells = VoronoiCellsPerScale(classes=lm.foreground_labels, connectivity=connectivity,
                                         ignore_label=lm.ignore_label, max_cells=self.max_cells_per_class)
        return make_cell_aware(pipeline, cells)

    def get_training_transforms(self, *args, **kwargs):
        return self._cell_pipeline(super().get_training_transforms(*args, **kwargs))

    def get_validation_transforms(self, *args, **kwargs):
        return self._cell_pipeline(super().get_validation_transforms(*args, **kwargs))


class CellAwareTrainer(CellsTrainer, InstanceTermTrainer):
    """Trains with the cells (:class:`CellsTrainer`) and scores the online instance F1 on the validation patches
    (reference instances: the components, i.e. the cells on their own class's voxels). Subclasses build
    ``(output, target, cells) -> scalar`` in :meth:`build_instance_loss`."""

    def online_reference_ids(self, reference: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """Regions: the cells of region r on its voxels are its component ids. Labels: each voxel takes the cell id
        of its own class's channel (a component's voxels carry its id), so ids are distinct within a class."""
        if self.label_manager.has_regions:
            return maps
        labels = reference[:, :1].astype(np.int64)
        lookup = np.zeros(int(max(self.label_manager.foreground_labels)) + 2, dtype=np.int64)  # label -> channel
        for index, label in enumerate(self.label_manager.foreground_labels):
            lookup[label] = index + 1
        channel = lookup[np.clip(labels, 0, len(lookup) - 1)]
        ids = np.take_along_axis(maps.astype(np.int64), np.clip(channel - 1, 0, None), axis=1)
        return np.where(channel > 0, ids, 0)
