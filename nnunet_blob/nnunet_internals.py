"""Every private or internal nnU-Net / batchgeneratorsv2 API nnunet_blob relies on, in one place.

nnU-Net 2.8 has no plugin interface for losses, instance data or validation: the plugin overrides private trainer
hooks, reads attributes of its loss, logger and transforms, and relies on details of its data loader. Each of those
is one entry below (a small function, class or constant with the reason it exists), the rest of the package uses
the entry, and ``tests/test_nnunet_internals.py`` pins the behaviour of each, so an nnU-Net upgrade that changes
one fails there, under the entry's name.

Public and private. nnU-Net's *public* API is what its documentation tells a user to subclass, register or set:
the trainer base class ``nnUNetTrainer`` (extending_nnunet.md: custom trainers inherit from it, ``-tr`` finds
them), the image readers/writers of ``nnunetv2.imageio`` and their registry (dataset_format.md, "supported file
formats": the i/o formats are an extension point, chosen by dataset.json's ``overwrite_image_reader_writer``, the
file ending or the plans' ``image_reader_writer``), and ``nnunetv2.configuration.default_num_processes`` (the
value of the documented ``nnUNet_def_n_proc``). The package imports those where it needs them. Everything else of
``nnunetv2`` is private here, however widely nnU-Net's own code uses it (``PlansManager``, ``LabelManager``,
losses, data loading, dataset-name lookup, model export, ...): it is reached only through an entry of this module.
``test_no_private_nnunet_import_outside_nnunet_internals`` greps the package for ``nnunetv2`` imports and holds the
allow-list of the public ones.

Trainer: :class:`BuildLossHook` (``_build_loss``), :func:`compile_enabled` (``_do_i_compile``),
:func:`inner_loss`/:func:`replace_inner_loss` (``DeepSupervisionWrapper.loss``), :func:`overlap_term`/
:func:`replace_overlap_term`/:func:`set_dice_smoothing`/:func:`drop_cross_entropy` (``DC_and_CE_loss.dc``, its
``smooth``, ``weight_ce``), :func:`overlap_term_probabilities` (``dc.apply_nonlin``),
:func:`uncompiled`/:func:`compiled_like` (``_orig_mod``), :func:`logged_values` (``my_fantastic_logging``),
:func:`validation_tp_fp_fn` and :func:`autocast_like_nnunet` (what ``validation_step`` computes inline),
:func:`deep_supervision_scales` (``_get_deep_supervision_scales``), :func:`stop_loader` (``_finish``),
:func:`trainer_plans` (``plans['continue_training']``), :func:`save_checkpoint_of_epoch` (``current_epoch`` in
``save_checkpoint``).
Model sharing: :data:`CHECKPOINT_TRAINER_KEY`, :func:`find_trainer_class`, :func:`builds_nnunets_network` (how
``nnUNetPredictor`` rebuilds a network from a checkpoint).
Augmentation: :func:`seg_grid_sample_options`, :func:`spatial_grid`, :func:`spatial_crop_center`
(``SpatialTransform`` internals), :func:`apply_to_segmentation` (``_apply_to_segmentation``).
Data loading: :data:`LOADER_SEG_DTYPE`, :func:`drawn_location` (``get_bbox``), :func:`load_case`,
:func:`dataset_identifiers`, :func:`dataset_class_for`, :func:`identifiers_in_folder`, :func:`blosc2_block_and_chunk`.
Preprocessing geometry (annotated instances): :func:`raw_reader_writer`, :func:`raw_label_file`,
:data:`CROP_BBOX_KEY`/:data:`SHAPE_BEFORE_CROPPING_KEY`/:data:`SHAPE_AFTER_CROPPING_KEY`, :func:`transpose_forward`,
:func:`nearest_resize_indices`.
Evaluation: :func:`tp_fp_fn_tn`, :func:`label_or_region_mask`, :func:`label_or_region_key`.
Writing label files: :func:`largest_writable_label` (the dtype ``write_seg`` of nnU-Net's readers/writers casts to).
Labels (the package's one label model): :class:`LabelLayout` (``LabelManager`` as plain data),
:func:`segmentation_like_nnunet` (``convert_probabilities_to_segmentation``).
Plans and datasets: :func:`plans_configuration`, :func:`previous_stage` (``PlansManager``/``ConfigurationManager``),
:func:`nnunet_dataset_name` (``maybe_convert_to_dataset_name``), :func:`preprocessed_seg_file` (the file names of
nnU-Net's dataset classes), :func:`export_pretrained_model` (``nnUNetv2_export_model_to_zip``'s function).
Losses: :func:`all_gather_grad` (``AllGatherGrad``), :func:`robust_cross_entropy` (``RobustCrossEntropyLoss``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch is imported where it is used: the worker processes of the instance maps and of the
    # postprocessing decisions start without it
    import torch
    from torch import nn

# ---- trainer ----------------------------------------------------------------------------------------------------


class BuildLossHook:
    """Routes nnU-Net's private ``_build_loss`` to :meth:`adapt_nnunet_loss`.

    ``nnUNetTrainer.initialize`` sets ``self.loss = self._build_loss()``; nnU-Net's ``_build_loss`` builds its
    compound loss (batch Dice, ignore label, regions, compile) and wraps it in ``DeepSupervisionWrapper``. Mix in
    before ``nnUNetTrainer``.
    """

    def _build_loss(self):
        return self.adapt_nnunet_loss(super()._build_loss())  # type: ignore[misc]

    def adapt_nnunet_loss(self, loss: nn.Module) -> nn.Module:
        """The loss to train with, given nnU-Net's (override)."""
        return loss


def compile_enabled(trainer) -> bool:
    """Whether nnU-Net compiles this trainer's network and Dice (private ``_do_i_compile``: device, OS and
    ``nnUNet_compile``)."""
    return bool(trainer._do_i_compile())


def inner_loss(loss: Any) -> Any:
    """The per-scale loss inside nnU-Net's ``DeepSupervisionWrapper`` (its ``loss`` attribute), else ``loss``."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    return loss.loss if isinstance(loss, DeepSupervisionWrapper) else loss


def replace_inner_loss(loss: nn.Module, build: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``loss`` with its per-scale loss replaced by ``build(per-scale loss)``; the deep-supervision weights stay."""
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    if isinstance(loss, DeepSupervisionWrapper):
        loss.loss = build(loss.loss)
        return loss
    return build(loss)


def overlap_term(compound: Any) -> Any:
    """The Dice term of ``DC_and_CE_loss``/``DC_and_BCE_loss`` (attribute ``dc``), uncompiled."""
    return uncompiled(compound.dc)


def replace_overlap_term(compound: Any, term: nn.Module) -> None:
    """Put ``term`` where nnU-Net's compound loss has its Dice (``dc``), compiled where nnU-Net compiled its Dice."""
    compound.dc = compiled_like(term, compound.dc)


@contextlib.contextmanager
def overlap_term_probabilities(compound: Any, logits: torch.Tensor, probs: torch.Tensor, sigmoid: bool):
    """Within the block, the Dice term of ``DC_and_CE_loss``/``DC_and_BCE_loss`` takes ``probs`` as its
    nonlinearity's result for ``logits`` instead of computing it again: ``dc.apply_nonlin`` (nnU-Net's
    ``softmax_helper_dim1``, or ``torch.sigmoid`` for regions; our Tversky term keeps the one it was given) is
    swapped for the block. Only where that nonlinearity is exactly the one ``probs`` came from (softmax over
    channels, or sigmoid) and the term is not compiled; otherwise nothing changes."""
    import torch
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    dc = getattr(compound, "dc", None)
    original = getattr(dc, "apply_nonlin", None)
    if original is not (torch.sigmoid if sigmoid else softmax_helper_dim1) or uncompiled(dc) is not dc:
        yield
        return
    dc.apply_nonlin = lambda x: probs if x is logits else original(x)
    try:
        yield
    finally:
        dc.apply_nonlin = original


def set_dice_smoothing(compound: Any, smooth: float) -> None:
    """Change the smoothing of the soft Dice inside nnU-Net's ``DC_and_CE_loss``/``DC_and_BCE_loss`` (attribute
    ``smooth`` of its ``MemoryEfficientSoftDiceLoss``, 1e-5 as ``_build_loss`` makes it)."""
    overlap_term(compound).smooth = smooth


def drop_cross_entropy(compound: Any) -> None:
    """Remove the CE/BCE term of ``DC_and_CE_loss``/``DC_and_BCE_loss`` (``weight_ce = 0`` skips it)."""
    compound.weight_ce = 0


def uncompiled(module: Any) -> Any:
    """The module ``torch.compile`` wrapped (``OptimizedModule._orig_mod``), or ``module`` itself."""
    return getattr(module, "_orig_mod", module)


def compiled_like(module: nn.Module, reference: Any) -> Any:
    """``module`` compiled with ``torch.compile``'s defaults when ``reference`` is a compiled module (as nnU-Net
    compiles its Dice in ``_build_loss``), else ``module``."""
    import torch

    return torch.compile(module) if uncompiled(reference) is not reference else module


def logged_values(logger) -> dict:
    """The per-epoch value lists of nnU-Net's ``MetaLogger`` (``local_logger.my_fantastic_logging``): ``log`` only
    accepts keys present there, and checkpoints save and restore this dict."""
    return logger.local_logger.my_fantastic_logging


def autocast_like_nnunet(device: torch.device):
    """The autocast context of nnU-Net's ``train_step``/``validation_step``: CUDA autocast on CUDA, none elsewhere."""
    import torch
    from nnunetv2.utilities.helpers import dummy_context

    return torch.autocast(device.type, enabled=True) if device.type == "cuda" else dummy_context()


def validation_tp_fp_fn(output: torch.Tensor, target: torch.Tensor, label_manager,
                        predicted: torch.Tensor | None = None) -> dict:
    """nnU-Net's pseudo-Dice counts of one validation step (``tp_hard``, ``fp_hard``, ``fn_hard``; numpy).

    ``nnUNetTrainer.validation_step`` computes them inline from the highest-resolution output and target; this is
    the same computation without zeroing the ignore label in ``target`` in place. ``predicted``: the argmax
    labels (B, 1, ...) for softmax outputs or the boolean region prediction ``sigmoid(output) > 0.5`` when the
    caller has them already.
    """
    import torch
    from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

    axes = [0] + list(range(2, output.ndim))
    if label_manager.has_regions:
        onehot = (predicted if predicted is not None else torch.sigmoid(output) > 0.5).long()
    else:
        labels = predicted if predicted is not None else output.argmax(1)[:, None]
        onehot = torch.zeros(output.shape, device=output.device, dtype=torch.float16)
        onehot.scatter_(1, labels.long(), 1)
    mask = None
    if label_manager.has_ignore_label:
        if not label_manager.has_regions:
            mask = (target != label_manager.ignore_label).float()
            target = torch.where(target == label_manager.ignore_label, 0, target)
        else:
            mask = ~target[:, -1:] if target.dtype == torch.bool else 1 - target[:, -1:]
            target = target[:, :-1]
    tp, fp, fn, _ = get_tp_fp_fn_tn(onehot, target, axes=axes, mask=mask)
    tp, fp, fn = (x.detach().cpu().numpy() for x in (tp, fp, fn))
    if not label_manager.has_regions:  # nnU-Net drops the background of softmax outputs
        tp, fp, fn = tp[1:], fp[1:], fn[1:]
    return {"tp_hard": tp, "fp_hard": fp, "fn_hard": fn}


def deep_supervision_scales(trainer) -> list:
    """The relative size of each deep-supervision output, highest resolution first (private
    ``_get_deep_supervision_scales``; nnU-Net's pipelines downsample the targets to them)."""
    return trainer._get_deep_supervision_scales()


def stop_loader(loader) -> None:
    """Stop the worker processes of a loader ``get_dataloaders`` made (private ``_finish`` of batchgenerators'
    multi-process augmenters, as ``on_train_end`` does); a single-process loader has none."""
    finish = getattr(loader, "_finish", None)
    if finish is not None:
        finish()


#: the key nnU-Net's ``nnUNetTrainer.__init__`` pops from the plans (``nnUNetv2_train --c`` sets it)
CONTINUE_TRAINING_KEY = "continue_training"


def trainer_plans(plans: dict, continue_training: bool = False) -> dict:
    """A copy of ``plans`` a trainer can be constructed from directly (nnU-Net's ``run_training`` adds
    ``continue_training``, which the trainer's ``__init__`` pops)."""
    import copy

    return {**copy.deepcopy(plans), CONTINUE_TRAINING_KEY: continue_training}


def save_checkpoint_of_epoch(trainer, filename: str, epoch: int) -> None:
    """``trainer.save_checkpoint(filename)`` as it would be written at the end of ``epoch``.

    nnU-Net's ``on_epoch_end`` saves ``checkpoint_best.pth`` before it counts the epoch (``current_epoch += 1``),
    and ``save_checkpoint`` records ``current_epoch + 1``: the epoch to continue from. A checkpoint written after
    ``on_epoch_end`` must therefore be saved with ``current_epoch`` set back to ``epoch``.
    """
    current = trainer.current_epoch
    trainer.current_epoch = epoch
    try:
        trainer.save_checkpoint(filename)
    finally:
        trainer.current_epoch = current


# ---- model sharing -----------------------------------------------------------------------------------------------

#: the key of an nnU-Net checkpoint naming the trainer class: ``nnUNetPredictor.initialize_from_trained_model_folder``
#: finds that class by name and builds the network with its ``build_network_architecture``
CHECKPOINT_TRAINER_KEY = "trainer_name"


def find_trainer_class(name: str) -> Any:
    """The trainer class nnU-Net's ``-tr`` and its predictor find for ``name``
    (``recursive_find_trainer_class_by_name``: nnU-Net's own trainers and the folders of ``nnUNet_extTrainer``); None
    when nnU-Net cannot find it."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        return recursive_find_trainer_class_by_name(name)
    except RuntimeError:
        return None


def builds_nnunets_network(trainer_class) -> bool:
    """Whether a trainer class builds its network with ``nnUNetTrainer``'s own ``build_network_architecture`` (a
    static method), so that a checkpoint naming ``nnUNetTrainer`` rebuilds the same network."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    return trainer_class.build_network_architecture is nnUNetTrainer.build_network_architecture


# ---- augmentation (batchgeneratorsv2) ----------------------------------------------------------------------------


def spatial_grid(params: dict) -> torch.Tensor | None:
    """The sampling grid ``SpatialTransform.get_parameters`` drew (``grid_sample`` coordinates), None when the
    transform only crops (no rotation, scaling or deformation this time)."""
    return params["grid"]


def spatial_crop_center(params: dict) -> list:
    """The patch centre (voxels) of ``SpatialTransform`` parameters; without a grid the transform crops around
    ``floor`` of it."""
    return params["center_location_in_pixels"]


def seg_grid_sample_options(transform) -> dict:
    """``grid_sample`` options ``SpatialTransform`` uses for segmentations (private padding-mode mapping of
    ``border_mode_seg``, and ``align_corners``)."""
    return {"padding_mode": transform._get_grid_sample_padding_mode(transform.border_mode_seg),
            "align_corners": transform.align_corners}


def apply_to_segmentation(transform, segmentation: torch.Tensor, params: dict):
    """What ``transform`` does to a segmentation with the random ``params`` it drew (private
    ``_apply_to_segmentation``; ``MirrorTransform`` flips, ``DownsampleSegForDSTransform`` returns one tensor per
    deep-supervision scale)."""
    return transform._apply_to_segmentation(segmentation, **params)


# ---- data loading ------------------------------------------------------------------------------------------------

#: ``nnUNetDataLoader`` casts segmentation crops (``crop_and_pad_nd(..., cast_cropped_to=np.int16)``) to this type:
#: every channel we stack onto the segmentation (instance ids) must fit it
LOADER_SEG_DTYPE = np.dtype(np.int16)


def drawn_location(class_locations: dict, key) -> Any:
    """The forced-foreground voxel ``nnUNetDataLoader.get_bbox`` centres a patch on once it chose ``key``:
    ``locations[np.random.choice(len(locations))]`` -- one draw, any object with ``len`` and integer indexing
    (instance-balanced sampling stands in for ``locations`` and relies on this)."""
    locations = class_locations[key]
    return locations[np.random.choice(len(locations))]


def load_case(dataset, identifier: str) -> tuple:
    """``(data, seg, seg_prev, properties)`` of an nnU-Net dataset (``nnUNetDatasetBlosc2``/``Numpy``)."""
    data, seg, seg_prev, properties = dataset.load_case(identifier)
    return data, seg, seg_prev, properties


def dataset_identifiers(dataset) -> list:
    """The cases of an nnU-Net dataset object (attribute ``identifiers``)."""
    return dataset.identifiers


def dataset_class_for(folder) -> Any:
    """nnU-Net's dataset class for a preprocessed data folder (``infer_dataset_class``: by file ending)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    return infer_dataset_class(str(folder))


def identifiers_in_folder(folder) -> list:
    """The cases of a preprocessed data folder, as nnU-Net lists them (``get_identifiers`` of its class)."""
    return dataset_class_for(folder).get_identifiers(str(folder))


def blosc2_block_and_chunk(shape, patch_size, bytes_per_voxel: int) -> tuple:
    """Blosc2 ``(blocks, chunks)`` nnU-Net chooses for a (C, *spatial) array of this patch size
    (``comp_blosc2_params``): crops of a patch decompress few chunks."""
    from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params

    return comp_blosc2_params(shape, patch_size, bytes_per_voxel)


# ---- preprocessing geometry ------------------------------------------------------------------------------------


def raw_reader_writer(plans: dict):
    """An instance of the reader/writer nnU-Net's preprocessor read this dataset's labels with
    (``PlansManager.image_reader_writer_class``: the plans' ``image_reader_writer``, which the planner chose with
    ``determine_reader_writer_from_dataset_json``: dataset.json's ``overwrite_image_reader_writer`` or the file
    ending). ``read_seg(file)`` gives ``((1, *spatial) array, properties with 'spacing')``."""
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    return recursive_find_reader_writer_by_name(plans["image_reader_writer"])()


def raw_label_file(raw_folder, dataset_json: dict, case: str):
    """The label file of a training case of a raw dataset, as ``get_filenames_of_train_images_and_targets`` finds
    it: dataset.json's ``dataset`` entry when it has one, else ``labelsTr/<case><file_ending>``."""
    import os

    entry = dataset_json.get("dataset", {}).get(case)
    if entry is None:
        return Path(raw_folder) / "labelsTr" / f"{case}{dataset_json['file_ending']}"
    label = Path(os.path.expandvars(entry["label"]))
    return label if label.is_absolute() else Path(raw_folder) / label


#: ``DefaultPreprocessor.run_case_npy`` transposes (``transpose_forward``), then crops to the nonzero region of the
#: images (``crop_to_nonzero``), then resamples; the case's properties (``<case>.pkl``) keep the crop box (half-open
#: ``[start, end)`` per axis, transposed axes) and the shapes before and after cropping
CROP_BBOX_KEY = "bbox_used_for_cropping"
SHAPE_BEFORE_CROPPING_KEY = "shape_before_cropping"
SHAPE_AFTER_CROPPING_KEY = "shape_after_cropping_and_before_resampling"


def transpose_forward(plans: dict) -> list[int]:
    """The axis order nnU-Net's preprocessing applies to every case before cropping (``transpose_forward``)."""
    return [int(a) for a in plans["transpose_forward"]]


def nearest_resize_indices(old_size: int, new_size: int) -> np.ndarray:
    """Source index of every output index along one axis under nnU-Net's order-0 resampling of segmentations
    (``resize_segmentation(..., order=0)``: skimage ``resize`` with ``order=0, mode='edge', anti_aliasing=False``).
    Order 0 is separable, so ``ids[np.ix_(*indices)]`` is that resampling of a volume without converting it to
    float (exact for any id)."""
    from skimage.transform import resize

    if old_size == new_size:
        return np.arange(new_size)
    source = resize(np.arange(old_size, dtype=np.float64), (new_size,), order=0, mode="edge", clip=True,
                    anti_aliasing=False)
    return np.rint(source).astype(np.int64)


# ---- evaluation --------------------------------------------------------------------------------------------------


def tp_fp_fn_tn(mask_ref: np.ndarray, mask_pred: np.ndarray, ignore_mask: np.ndarray | None = None) -> tuple:
    """nnU-Net's voxel counts of one label or region (``evaluate_predictions.compute_tp_fp_fn_tn``)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn

    return compute_tp_fp_fn_tn(mask_ref, mask_pred, ignore_mask)


def label_or_region_mask(segmentation: np.ndarray, label_or_region) -> np.ndarray:
    """The boolean mask of a label or region (``evaluate_predictions.region_or_label_to_mask``)."""
    from nnunetv2.evaluation.evaluate_predictions import region_or_label_to_mask

    return region_or_label_to_mask(segmentation, label_or_region)


def label_or_region_key(label_or_region) -> str:
    """The key nnU-Net's ``summary.json`` uses for a label or region
    (``evaluate_predictions.label_or_region_to_key``)."""
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key

    return label_or_region_to_key(label_or_region)


# ---- writing label files -----------------------------------------------------------------------------------------


def largest_writable_label(reader_writer) -> int:
    """The largest label value nnU-Net's ``write_seg`` of this reader/writer (class or instance) stores unchanged.

    The writers cast without a check: ``uint8`` if the largest value is below 255, else ``uint16`` (NaturalImage2DIO,
    SimpleITKIO, Tiff3DIO, NibabelIO, NibabelIOWithReorient), and SimpleITKIOWithReorient always ``uint8``; a larger
    value (an instance id of a map with many instances) wraps around silently.
    """
    name = reader_writer.__name__ if isinstance(reader_writer, type) else type(reader_writer).__name__
    return 255 if name == "SimpleITKIOWithReorient" else 65535


# ---- labels: the package's one label model -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabelLayout:
    """A dataset's labels as nnU-Net's ``LabelManager`` reads them from dataset.json, as plain data.

    The one label model of nnunet_blob: instance maps, evaluation and the postprocessing decisions read a dataset's
    labels only through it (the trainers use their own ``label_manager``). It is made from nnU-Net's ``LabelManager``
    (:meth:`of_dataset`, :meth:`from_label_manager`), or read back from a file written from one; unlike
    ``LabelManager`` it needs no torch and pickles into worker processes that start without torch.

    ``labels_or_regions``: the foreground labels of a label-based dataset (``foreground_labels``), or the regions of a
    region-based one in dataset.json's order (``foreground_regions``: a tuple of labels, an int for a one-label
    region); ``regions_class_order``: the label each region is written as (None: label-based); ``ignore_label``.
    """

    labels_or_regions: tuple
    regions_class_order: tuple[int, ...] | None = None
    ignore_label: int | None = None

    @property
    def has_regions(self) -> bool:
        return self.regions_class_order is not None

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        """Every label but the background and the ignore label (``LabelManager.foreground_labels``)."""
        labels: set[int] = set()
        for entry in self.labels_or_regions:
            labels.update(entry if isinstance(entry, tuple) else (entry,))
        return tuple(sorted(labels - {0}))

    @property
    def all_labels(self) -> tuple[int, ...]:
        """The background and every foreground label (``LabelManager.all_labels``; without the ignore label)."""
        return (0, *self.foreground_labels)

    @property
    def region_label_lists(self) -> list[list[int]] | None:
        """The labels of each region (a one-label region as a list of one), None for a label-based dataset."""
        if not self.has_regions:
            return None
        return [list(r) if isinstance(r, tuple) else [r] for r in self.labels_or_regions]

    @property
    def seg_dtype(self) -> np.dtype:
        """The dtype nnU-Net's export gives segmentations (``convert_predicted_logits_to_segmentation_with_correct_
        shape``): uint8 below 255 foreground labels, else uint16."""
        return np.dtype(np.uint8 if len(self.foreground_labels) < 255 else np.uint16)

    @classmethod
    def from_label_manager(cls, label_manager) -> LabelLayout:
        """The layout of an nnU-Net ``LabelManager`` (e.g. a trainer's ``label_manager``)."""
        ignore = label_manager.ignore_label
        ignore = None if ignore is None else int(ignore)
        if label_manager.has_regions:
            regions = tuple(tuple(int(x) for x in r) if isinstance(r, (list, tuple)) else int(r)
                            for r in label_manager.foreground_regions)
            return cls(regions, tuple(int(c) for c in label_manager.regions_class_order), ignore)
        return cls(tuple(int(c) for c in label_manager.foreground_labels), None, ignore)

    @classmethod
    def of_dataset(cls, dataset_json: dict, plans: dict | str | None = None) -> LabelLayout:
        """The labels of a dataset.json, read by nnU-Net: ``PlansManager(plans).get_label_manager`` (the plans'
        ``label_manager`` class) when the plans (dict or file) are given, else ``LabelManager`` itself.
        Imports torch (nnU-Net's label handling does)."""
        if plans is not None:
            from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

            return cls.from_label_manager(PlansManager(plans).get_label_manager(dataset_json))
        from nnunetv2.utilities.label_handling.label_handling import LabelManager

        return cls.from_label_manager(LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order")))


def segmentation_like_nnunet(probabilities: np.ndarray, layout: LabelLayout) -> np.ndarray:
    """``LabelManager.convert_probabilities_to_segmentation`` of ``(C, *shape)`` probabilities, in ``layout.seg_dtype``:
    the argmax over all channels (softmax outputs); for regions, each region's label written where its probability is
    above 0.5, in the order of ``regions_class_order`` (later regions overwrite earlier ones).

    The same computation in numpy: nnU-Net's method needs a ``LabelManager``, whose module imports torch, and the
    postprocessing workers start without it.
    """
    if not layout.has_regions:
        return probabilities.argmax(0).astype(layout.seg_dtype)
    assert layout.regions_class_order is not None
    seg = np.zeros(probabilities.shape[1:], dtype=layout.seg_dtype)
    for channel, label in enumerate(layout.regions_class_order):
        seg[probabilities[channel] > 0.5] = label
    return seg


# ---- plans and datasets ------------------------------------------------------------------------------------------


def plans_configuration(plans: dict, name: str) -> dict:
    """One configuration of a plans dict with ``inherits_from`` resolved, as nnU-Net reads it
    (``PlansManager.get_configuration``; patch_size, spacing, data_identifier, ...). Imports torch."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return dict(PlansManager(plans).get_configuration(name).configuration)


def previous_stage(plans: dict, name: str) -> str | None:
    """The configuration whose predictions a cascade stage takes (``ConfigurationManager.previous_stage_name``),
    None for a configuration that is not a cascade stage."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    return PlansManager(plans).get_configuration(name).previous_stage_name


def nnunet_dataset_name(dataset: str | int) -> str:
    """``DatasetXXX_Name`` of a dataset id or name, as nnU-Net's ``-d`` finds it (``maybe_convert_to_dataset_name``:
    searched in nnUNet_preprocessed, nnUNet_raw and nnUNet_results); RuntimeError when no dataset has that id."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    return maybe_convert_to_dataset_name(dataset)


#: the segmentation file of a preprocessed case, per dataset class: ``nnUNetDatasetBlosc2`` writes and reads
#: ``<case>_seg.b2nd``; ``nnUNetDatasetNumpy`` writes ``<case>.npz`` (key ``seg``) and reads ``<case>_seg.npy`` first
#: where one was unpacked
PREPROCESSED_SEG_FILES = ("{case}_seg.b2nd", "{case}_seg.npy", "{case}.npz")


def preprocessed_seg_file(data_folder, case: str) -> Path:
    """The file nnU-Net's dataset classes read the segmentation of ``case`` from (``<case>_seg.b2nd`` when none of
    :data:`PREPROCESSED_SEG_FILES` exists)."""
    folder = Path(data_folder)
    for pattern in PREPROCESSED_SEG_FILES:
        path = folder / pattern.format(case=case)
        if path.is_file():
            return path
    return folder / PREPROCESSED_SEG_FILES[0].format(case=case)


def export_pretrained_model(dataset_name: str, output_file: str, configurations: tuple, trainer: str, plans: str,
                            folds: tuple, checkpoints: tuple) -> None:
    """Write nnU-Net's model zip (the function behind ``nnUNetv2_export_model_to_zip``: dataset.json, plans.json,
    the checkpoints, ``strict``: a missing one is an error)."""
    from nnunetv2.model_sharing.model_export import export_pretrained_model as export

    export(dataset_name, output_file, configurations, trainer, plans, folds, strict=True,
           save_checkpoints=checkpoints)


# ---- losses ------------------------------------------------------------------------------------------------------


def all_gather_grad() -> Any:
    """nnU-Net's ``AllGatherGrad`` (``nnunetv2.utilities.ddp_allgather``), the autograd all-gather its Dice sums
    batch Dice over DDP workers with: ``AllGatherGrad.apply(x)`` stacks every worker's ``x`` on a new first axis, and
    the backward pass gives each worker the sum over the workers of the gradient of its own part."""
    from nnunetv2.utilities.ddp_allgather import AllGatherGrad

    return AllGatherGrad


def robust_cross_entropy() -> Any:
    """nnU-Net's ``RobustCrossEntropyLoss`` class, the cross-entropy of ``DC_and_CE_loss``: ``nn.CrossEntropyLoss``
    on a target of labels, (B, 1, ...) or (B, ...), cast to long."""
    from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

    return RobustCrossEntropyLoss
