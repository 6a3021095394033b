"""Trainers on nnU-Net-style plans of a placeholder dataset, and batches packed by the trainers' own pipelines.

Import after :func:`_workspace.workspace` (nnU-Net reads its folders at import time). :func:`placeholder_dataset`
makes the preprocessed data folder trainers need to exist (nnU-Net infers the dataset format from its files).
"""
from __future__ import annotations

import copy
import os

import cc3d
import numpy as np
import torch

from nnunet_blob.nnunet_internals import deep_supervision_scales, trainer_plans
from nnunet_blob.trainers.cells import CellsTrainer, VoronoiCellsPerScale, make_cell_aware
from nnunet_blob.trainers.instance_transforms import make_instance_aware

DATASET = "Dataset999_Bench"


def add_shape_arguments(parser) -> None:
    """Command-line options of the network and batch shape (:func:`make_plans`, :func:`make_batch`)."""
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--instances", type=int, default=100)


def placeholder_dataset() -> None:
    """The data folder a trainer of :data:`DATASET` looks into (one placeholder blosc2 file)."""
    folder = os.path.join(os.environ["nnUNet_preprocessed"], DATASET, "nnUNetPlans_3d_fullres")
    os.makedirs(folder, exist_ok=True)
    open(os.path.join(folder, "placeholder.b2nd"), "w").close()


def make_plans(patch: int, stages: int, batch: int, features: int) -> dict:
    """nnU-Net ExperimentPlanner-style plans with one 3d_fullres configuration (PlainConvUNet)."""
    feats = [min(features * 2 ** i, 320) for i in range(stages)]
    arch = {
        "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {
            "n_stages": stages, "features_per_stage": feats, "conv_op": "torch.nn.modules.conv.Conv3d",
            "kernel_sizes": [[3, 3, 3]] * stages, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
            "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1), "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch, "patch_size": [patch] * 3, "median_image_size_in_voxels": [patch * 2] * 3,
        "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": arch, "batch_dice": False,
    }
    return {
        "dataset_name": DATASET, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
        "original_median_shape_after_transp": [patch * 2] * 3, "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager", "configurations": {"3d_fullres": config},
        "foreground_intensity_properties_per_channel": {"0": {"max": 5.0, "mean": 1.0, "median": 1.0, "min": -3.0,
                                                              "percentile_00_5": -2.0, "percentile_99_5": 4.0,
                                                              "std": 1.0}},
    }


DATASET_JSON = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": 1,
                "file_ending": ".nii.gz"}


def make_batch(trainer, batch: int, patch: int, instances: int, seed: int = 0):
    """(data, stock target list, packed target list, packed cells list) through nnU-Net's validation pipeline: the
    packed targets carry the instance maps (blob trainers), the packed cells the Voronoi cells of every scale
    (CC-DiceCE trainers)."""
    rng = np.random.default_rng(seed)
    scales = deep_supervision_scales(trainer)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    stock_pipeline = nnUNetTrainer.get_validation_transforms(scales)
    ours_pipeline = make_instance_aware(nnUNetTrainer.get_validation_transforms(scales))
    cells_pipeline = make_cell_aware(nnUNetTrainer.get_validation_transforms(scales), VoronoiCellsPerScale(classes=[1]))
    data, stock, ours, cells = [], [], [], []
    for _ in range(batch):
        seg = np.zeros((patch,) * 3, dtype=np.int16)
        seg[: patch // 4, : patch // 4, : patch // 4] = 1
        for _ in range(instances - 1):
            lo = rng.integers(patch // 4 + 1, patch - 4, size=3)
            seg[tuple(slice(a, a + w) for a, w in zip(lo, rng.integers(1, 4, size=3), strict=True))] = 1
        ids = cc3d.connected_components(seg, connectivity=26).astype(np.int16)
        image = torch.from_numpy(rng.normal(size=(1, *seg.shape)).astype(np.float32) + seg)
        seg_t = torch.from_numpy(seg)[None]
        data.append(image)
        stock.append(stock_pipeline(image=image.clone(), segmentation=seg_t.clone())["segmentation"])
        ours.append(ours_pipeline(image=image.clone(),
                                  segmentation=torch.cat([seg_t, torch.from_numpy(ids)[None]]))["segmentation"])
        cells.append(cells_pipeline(image=image.clone(), segmentation=seg_t.clone())["segmentation"])
    collate = lambda samples: [torch.stack([s[i] for s in samples]) for i in range(len(samples[0]))]  # noqa: E731
    return torch.stack(data), collate(stock), collate(ours), collate(cells)


def target_for(trainer, stock: list, packed: list, cells: list) -> list:
    """The target list ``trainer``'s own loader would give it (:func:`make_batch`)."""
    if isinstance(trainer, CellsTrainer):
        return cells
    return packed if hasattr(trainer, "instance_packing") else stock


def build(trainer_class, plans, device):
    trainer = trainer_class(trainer_plans(copy.deepcopy(plans)), "3d_fullres", 0, DATASET_JSON, device)
    trainer.initialize()
    return trainer
