"""One test per entry of nnunet_blob.nnunet_internals: the nnU-Net / batchgeneratorsv2 behaviour each relies on.

An nnU-Net upgrade that changes one of these fails here, under the entry's name, before it fails somewhere deep in
a training run.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.cropping import crop_tensor
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.logging.nnunet_logger import MetaLogger
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from torch import nn
from torch.nn.functional import grid_sample

from helpers import build_trainer
from nnunet_blob import nnunet_internals as internals


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


class Constant(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, *args, **kwargs):
        return torch.tensor(self.value)


# ---- trainer ------------------------------------------------------------------------------------------------------


def test_build_loss_hook_receives_nnunets_loss_and_sets_self_loss(blobs):
    received = []

    class Hooked(internals.BuildLossHook, nnUNetTrainer):
        def adapt_nnunet_loss(self, loss):
            received.append(loss)
            return Constant(7.0)

    trainer = build_trainer(Hooked, blobs)
    assert isinstance(received[0], DeepSupervisionWrapper) and isinstance(received[0].loss, DC_and_CE_loss)
    assert isinstance(trainer.loss, Constant)


def test_compile_enabled_is_what_makes_nnunet_compile_its_dice(blobs):
    class Compiling(nnUNetTrainer):
        def _do_i_compile(self):
            return True

    plain, compiling = (build_trainer(cls, blobs, initialize=False) for cls in (nnUNetTrainer, Compiling))
    assert not internals.compile_enabled(plain)  # the CPU: nnU-Net never compiles there
    assert internals.compile_enabled(compiling)
    dice = internals.inner_loss(compiling._build_loss()).dc
    assert internals.uncompiled(dice) is not dice and isinstance(internals.uncompiled(dice),
                                                                 MemoryEfficientSoftDiceLoss)


def test_inner_loss_is_what_deep_supervision_applies_per_scale():
    wrapper = DeepSupervisionWrapper(Constant(1.0), [0.5, 0.25, 0.0])
    assert isinstance(internals.inner_loss(wrapper), Constant)
    wrapper = internals.replace_inner_loss(wrapper, lambda inner: Constant(inner.value + 3.0))
    assert float(wrapper([0, 0, 0], [0, 0, 0])) == 0.5 * 4 + 0.25 * 4
    bare = internals.replace_inner_loss(Constant(1.0), lambda inner: Constant(2.0))
    assert float(bare()) == 2.0


@pytest.mark.parametrize("regions", [False, True])
def test_overlap_term_and_cross_entropy_of_nnunets_compound_losses(regions):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 6, 6)
    if regions:
        target = torch.rand(2, 3, 6, 6, 6) > 0.5
        loss = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                               dice_class=MemoryEfficientSoftDiceLoss)
        ce = nn.BCEWithLogitsLoss()(logits, target.float())
    else:
        target = torch.randint(0, 3, (2, 1, 6, 6, 6))
        loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                              weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
        ce = nn.CrossEntropyLoss()(logits, target[:, 0])
    assert isinstance(internals.overlap_term(loss), MemoryEfficientSoftDiceLoss)
    internals.replace_overlap_term(loss, Constant(0.25))
    torch.testing.assert_close(loss(logits, target), ce + 0.25)
    internals.drop_cross_entropy(loss)
    torch.testing.assert_close(loss(logits, target), torch.tensor(0.25))


def test_set_dice_smoothing_of_nnunets_compound_loss():
    """The Dice term of DC_and_CE_loss reads its smoothing from ``dc.smooth`` at every call."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, 5)
    target = torch.randint(0, 3, (2, 1, 5, 5, 5))
    target[1] = 0  # a sample without foreground: its Dice is smooth / (sum p + smooth)
    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=0, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    internals.set_dice_smoothing(loss, 1.0)
    probs = torch.softmax(logits, 1)[:, 1:]
    onehot = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1)[:, 1:].float()
    axes = (2, 3, 4)
    dice = (2 * (probs * onehot).sum(axes) + 1.0) / (probs.sum(axes) + onehot.sum(axes) + 1.0)
    torch.testing.assert_close(loss(logits, target), -dice.mean())


def test_uncompiled_and_compiled_like():
    module = nn.Linear(2, 2)
    compiled = torch.compile(module)
    assert internals.uncompiled(compiled) is module and internals.uncompiled(module) is module
    other = nn.Linear(2, 2)
    assert internals.compiled_like(other, module) is other
    recompiled = internals.compiled_like(other, compiled)
    assert recompiled is not other and internals.uncompiled(recompiled) is other


def test_logged_values_are_what_the_logger_logs_and_checkpoints(tmp_path):
    logger = MetaLogger(str(tmp_path), False)
    values = internals.logged_values(logger)
    values["instance_f1"] = []
    logger.log("instance_f1", 0.5, 0)
    logger.log("val_losses", 1.0, 0)
    assert logger.get_value("instance_f1", step=None) == [0.5]
    restored = MetaLogger(str(tmp_path), False)
    restored.load_checkpoint(logger.get_checkpoint())
    assert internals.logged_values(restored)["instance_f1"] == [0.5]
    with pytest.raises(AssertionError):  # keys must be added to the dict before logging
        MetaLogger(str(tmp_path), False).log("not_a_key", 1.0, 0)


def test_autocast_like_nnunet_on_the_cpu_is_no_autocast():
    with internals.autocast_like_nnunet(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        assert not torch.is_autocast_enabled("cpu")


def _stock_validation_step(output, target, label_manager):
    """nnU-Net's own validation_step on a network that returns ``output`` (no deep supervision)."""
    fake_self = SimpleNamespace(device=torch.device("cpu"), network=lambda data: output,
                                loss=lambda o, t: torch.tensor(0.0), enable_deep_supervision=False,
                                label_manager=label_manager)
    return nnUNetTrainer.validation_step(fake_self, {"data": torch.zeros(1), "target": target.clone()})


@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("ignore", [False, True])
def test_validation_tp_fp_fn_equals_nnunets_validation_step(regions, ignore):
    torch.manual_seed(1)
    labels = {"background": 0, "a": [1, 2], "b": 2} if regions else {"background": 0, "a": 1, "b": 2}
    if ignore:
        labels["ignore"] = 3
    manager = LabelManager(labels, [1, 2] if regions else None)
    output = torch.randn(2, manager.num_segmentation_heads, 8, 8, 8)
    if regions:
        target = torch.rand(2, 2 + ignore, 8, 8, 8) > 0.5
    else:
        target = torch.randint(0, 3 + ignore, (2, 1, 8, 8, 8)).to(torch.int16)
    before = target.clone()
    ours = internals.validation_tp_fp_fn(output, target, manager)
    assert torch.equal(target, before)  # unlike nnU-Net's step, the target is left as it is
    stock = _stock_validation_step(output, target, manager)
    for key in ("tp_hard", "fp_hard", "fn_hard"):
        assert np.array_equal(ours[key], stock[key]), key
    predicted = torch.sigmoid(output) > 0.5 if regions else output.argmax(1, keepdim=True)
    again = internals.validation_tp_fp_fn(output, target, manager, predicted=predicted)
    assert all(np.array_equal(again[k], ours[k]) for k in ours)


def test_trainer_plans_carry_the_key_nnunets_trainer_pops(blobs):
    import json

    plans = json.loads((Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans.json").read_text())
    with pytest.raises(KeyError, match=internals.CONTINUE_TRAINING_KEY):
        nnUNetTrainer(dict(plans), "3d_fullres", 0, {}, torch.device("cpu"))
    prepared = internals.trainer_plans(plans)
    assert prepared[internals.CONTINUE_TRAINING_KEY] is False and internals.CONTINUE_TRAINING_KEY not in plans
    assert build_trainer(nnUNetTrainer, blobs, initialize=False).plans_manager.plans.keys() == plans.keys()


# ---- augmentation -------------------------------------------------------------------------------------------------


def test_spatial_grid_and_crop_center_of_spatial_transform_parameters():
    image = torch.randn(1, 20, 20, 20)
    crop_only = SpatialTransform((12, 12, 12), 0, True, p_rotation=0, p_scaling=0, p_elastic_deform=0)
    params = crop_only.get_parameters(image=image)
    assert internals.spatial_grid(params) is None
    center = internals.spatial_crop_center(params)
    expected = crop_tensor(image, [int(np.floor(c)) for c in center], (12, 12, 12), pad_mode="constant",
                           pad_kwargs={"value": 0})
    assert torch.equal(crop_only._apply_to_image(image, **params), expected)
    rotating = SpatialTransform((12, 12, 12), 0, True, p_rotation=1, rotation=(0.3, 0.5), p_scaling=0)
    grid = internals.spatial_grid(rotating.get_parameters(image=image))
    assert grid.shape == (12, 12, 12, 3)


@pytest.mark.parametrize("border_mode_seg", ["zeros", "border"])
def test_seg_grid_sample_options_reproduce_the_transforms_nearest_segmentation(border_mode_seg):
    torch.manual_seed(2)
    seg = torch.randint(0, 4, (1, 20, 20, 20)).float()
    t = SpatialTransform((12, 12, 12), 0, True, p_rotation=1, rotation=(0.3, 0.5), p_scaling=1, scaling=(0.8, 1.2),
                         mode_seg="nearest", border_mode_seg=border_mode_seg)
    params = t.get_parameters(image=seg, segmentation=seg)
    ours = grid_sample(seg[None], internals.spatial_grid(params)[None], mode="nearest",
                       **internals.seg_grid_sample_options(t))[0]
    assert torch.equal(ours, t._apply_to_segmentation(seg, **params))


def test_apply_to_segmentation_mirrors_and_downsamples_like_the_transforms():
    torch.manual_seed(3)
    seg = torch.randint(0, 3, (1, 8, 8, 8)).to(torch.int16)
    mirror = MirrorTransform((0, 1, 2))
    params = {"axes": [0, 2]}
    assert torch.equal(internals.apply_to_segmentation(mirror, seg, params), torch.flip(seg, [1, 3]))
    downsample = DownsampleSegForDSTransform([[1, 1, 1], [0.5, 0.5, 0.5]])
    out = internals.apply_to_segmentation(downsample, seg, downsample.get_parameters(segmentation=seg))
    reference = downsample(segmentation=seg.clone())["segmentation"]
    assert len(out) == 2 and all(torch.equal(a, b) for a, b in zip(out, reference, strict=True))
    assert out[1].shape == (1, 4, 4, 4)


# ---- data loading -------------------------------------------------------------------------------------------------


def _loader(dataset, label_manager, patch=(16, 16, 16)):
    return nnUNetDataLoader(dataset, 1, patch, patch, label_manager, oversample_foreground_percent=1.0)


def test_loader_casts_segmentation_crops_to_loader_seg_dtype(blobs):
    folder = Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_3d_fullres"
    dataset = nnUNetDatasetBlosc2(str(folder))
    batch = _loader(dataset, LabelManager({"background": 0, "a": 1}, None)).generate_train_batch()
    assert batch["target"].dtype == getattr(torch, internals.LOADER_SEG_DTYPE.name)


class RecordingLocations:
    """Stands in for one class's ``class_locations``: any index, the voxel (0, i % 8, 3, 5)."""

    def __init__(self):
        self.indices = []

    def __len__(self):
        return 1000

    def __getitem__(self, index):
        self.indices.append(index)
        return np.array([0, int(index) % 8, 3, 5])


def test_get_bbox_draws_the_location_like_drawn_location():
    loader = _loader(SimpleNamespace(identifiers=["a"]), LabelManager({"background": 0, "a": 1}, None), (4, 4, 4))
    for seed in range(5):
        locations = RecordingLocations()
        np.random.seed(seed)
        lbs, _ = loader.get_bbox(np.array([8, 8, 8]), True, {1: locations})
        np.random.seed(seed)
        np.random.choice(1)  # nnU-Net first draws the class among the eligible ones (here one)
        voxel = internals.drawn_location({1: locations}, 1)
        assert len(locations.indices) == 2 and locations.indices[0] == locations.indices[1]
        assert lbs == [max(0, v - 2) for v in voxel[1:]]  # centred on the voxel


def test_dataset_classes_cases_and_load_case(blobs):
    folder = Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_3d_fullres"
    assert internals.dataset_class_for(folder) is nnUNetDatasetBlosc2
    cases = sorted(internals.identifiers_in_folder(folder))
    assert cases == [f"case_{i:03d}" for i in range(6)]
    dataset = nnUNetDatasetBlosc2(str(folder), cases[:2])
    assert internals.dataset_identifiers(dataset) == cases[:2]
    data, seg, seg_prev, properties = internals.load_case(dataset, cases[0])
    assert data.shape[0] == 1 and seg.shape == (1, *data.shape[1:]) and seg_prev is None
    assert 1 in properties["class_locations"]


def test_blosc2_block_and_chunk_are_nnunets_4d_shapes():
    blocks, chunks = internals.blosc2_block_and_chunk((1, 64, 64, 64), (32, 32, 32), 2)
    assert len(blocks) == len(chunks) == 4
    assert all(b <= c <= s for b, c, s in zip(blocks, chunks, (1, 64, 64, 64), strict=True))


# ---- preprocessing geometry -----------------------------------------------------------------------------------


def test_preprocessing_geometry_is_run_case_npys_transpose_then_crop(blobs):
    """What DefaultPreprocessor does to a segmentation without resampling (spacing = target spacing), under a
    non-trivial transpose, equals :func:`to_preprocessed_geometry` from the properties it records."""
    import json

    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_blob.preprocessing.annotated import to_preprocessed_geometry

    base = Path(os.environ["nnUNet_preprocessed"]) / blobs
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    plans["transpose_forward"], plans["transpose_backward"] = [2, 0, 1], [1, 2, 0]
    manager = PlansManager(plans)
    configuration = manager.get_configuration("3d_fullres")
    assert list(configuration.spacing) == [1.0, 1.0, 1.0]
    rng = np.random.default_rng(0)
    data = np.zeros((1, 20, 24, 28), np.float32)
    data[0, 2:-3, 4:-1, 1:-5] = 1 + rng.random((15, 19, 22))
    seg = np.zeros((1, 20, 24, 28), np.int16)
    seg[0, 5:9, 6:20, 3:10] = 1
    seg[0, 10:14, 6:9, 12:20] = 1
    properties = {"spacing": [1.0, 1.0, 1.0]}
    _, stored, properties = DefaultPreprocessor(verbose=False).run_case_npy(
        data, seg, properties, manager, configuration, json.loads((base / "dataset.json").read_text()))
    assert internals.transpose_forward(plans) == [2, 0, 1]
    assert [list(b) for b in properties[internals.CROP_BBOX_KEY]] == [[1, 23], [2, 17], [4, 23]]
    assert list(properties[internals.SHAPE_BEFORE_CROPPING_KEY]) == [28, 20, 24]
    assert list(properties[internals.SHAPE_AFTER_CROPPING_KEY]) == [22, 15, 19] == list(stored.shape[1:])
    ours = to_preprocessed_geometry(seg[0], properties, internals.transpose_forward(plans), stored.shape[1:])
    assert np.array_equal(ours, np.maximum(stored[0], 0))


def test_nearest_resize_indices_are_nnunets_order_0_segmentation_resampling():
    from batchgenerators.augmentations.utils import resize_segmentation

    ids = np.random.default_rng(0).integers(0, 5000, (7, 10, 13))
    for shape in [(14, 5, 13), (3, 20, 26), (7, 10, 13), (8, 9, 6), (4, 5, 7)]:
        ours = ids[np.ix_(*(internals.nearest_resize_indices(o, n) for o, n in zip(ids.shape, shape, strict=True)))]
        assert np.array_equal(ours, resize_segmentation(ids, shape, order=0)), shape


def test_raw_reader_writer_and_label_file_are_the_preprocessors(blobs):
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    base = Path(os.environ["nnUNet_preprocessed"]) / blobs
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    assert type(internals.raw_reader_writer(plans)) is PlansManager(plans).image_reader_writer_class
    raw = Path(os.environ["nnUNet_raw"]) / blobs
    dataset_json = json.loads((raw / "dataset.json").read_text())
    for case, files in get_filenames_of_train_images_and_targets(str(raw), dataset_json).items():
        assert Path(internals.raw_label_file(raw, dataset_json, case)).resolve() == Path(files["label"]).resolve()
    listed = {**dataset_json, "dataset": {"a": {"label": "elsewhere/a.nii.gz", "images": []}}}
    assert internals.raw_label_file(raw, listed, "a") == raw / "elsewhere" / "a.nii.gz"


def test_save_checkpoint_of_epoch_is_what_on_epoch_end_saves(blobs, tmp_path):
    trainer = build_trainer(nnUNetTrainer, blobs)
    trainer.output_folder = str(tmp_path)
    # nnU-Net's on_epoch_end of epoch 0: checkpoint_best records epoch 1 (the one to continue from), then counts
    for key, value in (("train_losses", 1.0), ("val_losses", 1.0), ("dice_per_class_or_region", [0.5]),
                       ("mean_fg_dice", 0.5), ("lrs", 0.01), ("epoch_start_timestamps", 0.0)):
        trainer.logger.log(key, value, 0)
    trainer.on_epoch_end()
    assert trainer.current_epoch == 1
    nnunets = torch.load(tmp_path / "checkpoint_best.pth", map_location="cpu", weights_only=False)
    internals.save_checkpoint_of_epoch(trainer, str(tmp_path / "ours.pth"), 0)
    ours = torch.load(tmp_path / "ours.pth", map_location="cpu", weights_only=False)
    assert trainer.current_epoch == 1
    assert ours["current_epoch"] == nnunets["current_epoch"] == 1
    assert ours["logging"] == nnunets["logging"]


# ---- model sharing ------------------------------------------------------------------------------------------------


def test_checkpoint_trainer_key_is_written_by_the_trainer_and_read_by_the_predictor(blobs, tmp_path):
    import inspect

    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    trainer = build_trainer(nnUNetTrainer, blobs)
    trainer.save_checkpoint(str(tmp_path / "c.pth"))
    checkpoint = torch.load(tmp_path / "c.pth", map_location="cpu", weights_only=False)
    assert checkpoint[internals.CHECKPOINT_TRAINER_KEY] == "nnUNetTrainer"
    source = inspect.getsource(nnUNetPredictor.initialize_from_trained_model_folder)
    assert f"trainer_name = checkpoint['{internals.CHECKPOINT_TRAINER_KEY}']" in source
    assert "recursive_find_trainer_class_by_name(trainer_name)" in source
    assert "trainer_class.build_network_architecture(" in source


def test_find_trainer_class_and_builds_nnunets_network():
    from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice

    assert internals.find_trainer_class("nnUNetTrainer") is nnUNetTrainer
    assert internals.find_trainer_class("nnUNetTrainerThatDoesNotExist") is None
    found = internals.find_trainer_class("nnUNetTrainerBlobDice")  # through nnUNet_extTrainer
    assert found is not None and found.__name__ == "nnUNetTrainerBlobDice"
    assert internals.builds_nnunets_network(nnUNetTrainer) and internals.builds_nnunets_network(nnUNetTrainerBlobDice)

    class OwnNetwork(nnUNetTrainer):
        @staticmethod
        def build_network_architecture(*args, **kwargs):
            return nn.Identity()

    assert not internals.builds_nnunets_network(OwnNetwork)


# ---- evaluation ---------------------------------------------------------------------------------------------------


def test_evaluation_helpers():
    ref = np.array([[1, 1, 0, 2], [0, 2, 2, 0]])
    pred = np.array([[1, 0, 0, 2], [1, 2, 0, 0]])
    ref_mask, pred_mask = (internals.label_or_region_mask(x, 1) for x in (ref, pred))
    assert ref_mask.tolist() == [[True, True, False, False], [False, False, False, False]]
    assert [int(v) for v in internals.tp_fp_fn_tn(ref_mask, pred_mask)] == [1, 1, 1, 5]
    region_mask = internals.label_or_region_mask(ref, (1, 2))
    assert region_mask.sum() == 5
    assert [int(v) for v in internals.tp_fp_fn_tn(ref_mask, pred_mask, ignore_mask=ref == 2)] == [1, 1, 1, 2]
    assert internals.label_or_region_key(1) == "1" and internals.label_or_region_key((1, 2)) == "(1, 2)"


def test_deep_supervision_scales_are_the_pipelines_target_sizes(blobs):
    trainer = build_trainer(nnUNetTrainer, blobs, initialize=False)
    scales = internals.deep_supervision_scales(trainer)
    pooling = trainer.configuration_manager.pool_op_kernel_sizes
    assert len(scales) == len(pooling) - 1 and list(scales[0]) == [1.0, 1.0, 1.0]
    pipeline = nnUNetTrainer.get_validation_transforms(scales)
    seg = torch.zeros(1, *trainer.configuration_manager.patch_size, dtype=torch.int16)
    targets = pipeline(image=torch.zeros(seg.shape), segmentation=seg)["segmentation"]
    assert [tuple(t.shape[1:]) for t in targets] == [
        tuple(round(p * s) for p, s in zip(trainer.configuration_manager.patch_size, scale, strict=True))
        for scale in scales]


def test_stop_loader_ends_nnunets_loader_processes(blobs):
    trainer = build_trainer(nnUNetTrainer, blobs)  # nnUNet_n_proc_DA=2: background processes
    train_loader, val_loader = trainer.get_dataloaders()
    workers = [p for loader in (train_loader, val_loader) for p in loader._processes]
    assert workers and all(p.is_alive() for p in workers)
    for loader in (train_loader, val_loader):
        internals.stop_loader(loader)
    assert not any(p.is_alive() for p in workers)


@pytest.mark.parametrize("name, ending", [("SimpleITKIO", ".nii.gz"), ("SimpleITKIOWithReorient", ".nii.gz"),
                                          ("NaturalImage2DIO", ".png"), ("Tiff3DIO", ".tif")])
def test_largest_writable_label_is_what_the_writer_keeps(tmp_path, name, ending):
    import SimpleITK as sitk
    from nnunetv2.imageio.reader_writer_registry import recursive_find_reader_writer_by_name

    rw = recursive_find_reader_writer_by_name(name)()
    limit = internals.largest_writable_label(rw)
    shape = (1, 2, 3) if ending == ".png" else (2, 2, 3)
    properties = {"spacing": [1.0] * 3}
    if "SimpleITK" in name:
        image = sitk.GetImageFromArray(np.zeros(shape, np.uint8))
        properties["sitk_stuff"] = {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                                    "direction": image.GetDirection(), "original_orientation": "LPS"}
    for value, kept in ((limit, True), (limit + 1, False)):
        seg = np.zeros(shape, np.int64)
        seg.flat[1] = value
        path = str(tmp_path / f"x{value}{ending}")
        rw.write_seg(seg, path, properties)
        back = rw.read_seg(path)[0][0]
        assert (int(back.max()) == value) == kept, (name, value, int(back.max()))


# ---- labels ---------------------------------------------------------------------------------------------------------

LABEL_DICTS = {
    "labels": ({"background": 0, "a": 1, "b": 2, "c": 3}, None),
    "ignore": ({"background": 0, "a": 1, "b": 2, "ignore": 3}, None),
    "regions": ({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": 3}, [1, 2, 3]),
    "regions and ignore": ({"background": 0, "ab": [1, 2], "b": [2], "ignore": 3}, [1, 2]),
}


@pytest.mark.parametrize("name", LABEL_DICTS)
def test_label_layout_is_label_managers_view_of_dataset_json(name):
    labels, order = LABEL_DICTS[name]
    manager = LabelManager(labels, order)
    layout = internals.LabelLayout.of_dataset({"labels": labels, "regions_class_order": order})
    assert layout == internals.LabelLayout.from_label_manager(manager)
    assert layout.has_regions == manager.has_regions and layout.ignore_label == manager.ignore_label
    assert list(layout.foreground_labels) == manager.foreground_labels
    assert list(layout.all_labels) == manager.all_labels
    if manager.has_regions:
        assert list(layout.labels_or_regions) == manager.foreground_regions
        assert list(layout.regions_class_order) == order
        assert layout.region_label_lists == [list(r) if isinstance(r, tuple) else [r] for r in
                                             manager.foreground_regions]
    else:
        assert list(layout.labels_or_regions) == manager.foreground_labels and layout.region_label_lists is None


def test_label_layout_of_a_dataset_with_plans_is_the_plans_label_manager(blobs):
    import json

    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    base = Path(os.environ["nnUNet_preprocessed"]) / blobs
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    dataset_json = json.loads((base / "dataset.json").read_text())
    expected = internals.LabelLayout.from_label_manager(PlansManager(plans).get_label_manager(dataset_json))
    assert internals.LabelLayout.of_dataset(dataset_json, plans) == expected
    assert internals.LabelLayout.of_dataset(dataset_json, str(base / "nnUNetPlans.json")) == expected


@pytest.mark.parametrize("name", LABEL_DICTS)
def test_segmentation_like_nnunet_is_convert_probabilities_to_segmentation(name):
    labels, order = LABEL_DICTS[name]
    manager = LabelManager(labels, order)
    rng = np.random.default_rng(0)
    probabilities = rng.random((manager.num_segmentation_heads, 6, 7, 5)).astype(np.float32)
    probabilities[:, 0, 0, :2] = 0.5  # ties (argmax: the first) and the region threshold itself (not above it)
    ours = internals.segmentation_like_nnunet(probabilities, internals.LabelLayout.from_label_manager(manager))
    np.testing.assert_array_equal(ours, manager.convert_probabilities_to_segmentation(probabilities))
    assert len(np.unique(ours)) > 2


@pytest.mark.parametrize("num_labels", [3, 254, 255])
def test_label_layout_seg_dtype_is_the_dtype_of_nnunets_export(blobs, num_labels):
    import json

    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans = PlansManager(json.loads((Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans.json").read_text()))
    configuration = plans.get_configuration("3d_fullres")
    manager = LabelManager({"background": 0, **{f"l{i}": i for i in range(1, num_labels + 1)}}, None)
    shape = (2, 3, 2)
    properties = {"spacing": [configuration.spacing[i] for i in plans.transpose_backward],
                  "shape_after_cropping_and_before_resampling": shape, "shape_before_cropping": shape,
                  "bbox_used_for_cropping": [[0, s] for s in shape]}
    logits = torch.randn((num_labels + 1, *shape))
    seg = convert_predicted_logits_to_segmentation_with_correct_shape(logits, plans, configuration, manager,
                                                                      properties, num_threads_torch=1)
    assert seg.dtype == internals.LabelLayout.from_label_manager(manager).seg_dtype
    assert seg.dtype == (np.uint8 if num_labels < 255 else np.uint16)


# ---- plans and datasets ---------------------------------------------------------------------------------------------


def test_plans_configuration_resolves_inheritance_and_previous_stage(blobs):
    import json

    plans = json.loads((Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans.json").read_text())
    plans["configurations"]["cascade"] = {"inherits_from": "3d_fullres", "previous_stage": "2d",
                                          "data_identifier": "elsewhere"}
    fullres = internals.plans_configuration(plans, "3d_fullres")
    cascade = internals.plans_configuration(plans, "cascade")
    assert cascade["patch_size"] == fullres["patch_size"] and cascade["spacing"] == fullres["spacing"]
    assert cascade["data_identifier"] == "elsewhere" and fullres["data_identifier"] == "nnUNetPlans_3d_fullres"
    assert internals.previous_stage(plans, "cascade") == "2d" and internals.previous_stage(plans, "3d_fullres") is None
    plans["configurations"]["3d_fullres"]["inherits_from"] = "cascade"
    with pytest.raises(RuntimeError, match="Circular"):
        internals.plans_configuration(plans, "cascade")


def test_nnunet_dataset_name_is_nnunets_dash_d(blobs):
    number = int(blobs[len("Dataset"):len("Dataset") + 3])
    assert internals.nnunet_dataset_name(number) == internals.nnunet_dataset_name(str(number)) == blobs
    assert internals.nnunet_dataset_name(blobs) == blobs
    with pytest.raises(RuntimeError):
        internals.nnunet_dataset_name(998)


def test_preprocessed_seg_file_is_the_file_nnunets_dataset_classes_keep_the_segmentation_in(blobs, tmp_path):
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetNumpy

    folder = Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_3d_fullres"
    _, seg, _, _ = internals.load_case(nnUNetDatasetBlosc2(str(folder), ["case_000"]), "case_000")
    path = internals.preprocessed_seg_file(folder, "case_000")
    assert path == folder / "case_000_seg.b2nd"
    np.testing.assert_array_equal(blosc2.open(urlpath=str(path), mode="r")[:], seg[:])
    data = np.zeros((1, 3, 4, 5), dtype=np.float32)
    labels = np.arange(60, dtype=np.int8).reshape(1, 3, 4, 5) % 3
    nnUNetDatasetNumpy.save_case(data, labels, {}, str(tmp_path / "c"))
    assert internals.preprocessed_seg_file(tmp_path, "c") == tmp_path / "c.npz"
    np.testing.assert_array_equal(nnUNetDatasetNumpy(str(tmp_path), ["c"]).load_case("c")[1], labels)
    np.save(tmp_path / "c_seg.npy", labels + 1)  # unpacked: what nnUNetDatasetNumpy reads first
    assert internals.preprocessed_seg_file(tmp_path, "c") == tmp_path / "c_seg.npy"
    np.testing.assert_array_equal(nnUNetDatasetNumpy(str(tmp_path), ["c"]).load_case("c")[1], labels + 1)


def test_export_pretrained_model_takes_the_arguments_we_pass():
    import inspect

    from nnunetv2.model_sharing.model_export import export_pretrained_model

    parameters = list(inspect.signature(export_pretrained_model).parameters)
    assert parameters[:6] == ["dataset_name_or_id", "output_file", "configurations", "trainer", "plans_identifier",
                              "folds"]
    assert {"strict", "save_checkpoints"} <= set(parameters)


# ---- losses ---------------------------------------------------------------------------------------------------------


def test_all_gather_grad_stacks_the_workers_tensors_and_sums_their_gradients(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
        gathered = internals.all_gather_grad().apply(x)
        assert gathered.shape == (1, 3) and torch.equal(gathered[0], x.detach())
        (gathered.sum(0) * torch.tensor([1.0, 10.0, 100.0])).sum().backward()
        assert torch.equal(x.grad, torch.tensor([1.0, 10.0, 100.0]))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("ignore_index, reduction", [(-100, "mean"), (2, "sum")])
def test_robust_cross_entropy_is_cross_entropy_on_label_targets(ignore_index, reduction):
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, 4, 5)).float()
    expected = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), ignore_index=ignore_index,
                                                 reduction=reduction)
    loss = internals.robust_cross_entropy()(ignore_index=ignore_index, reduction=reduction)
    torch.testing.assert_close(loss(logits, target), expected)  # with the channel axis
    torch.testing.assert_close(loss(logits, target[:, 0]), expected)  # without it


# ---- where nnU-Net is imported -----------------------------------------------------------------------------------

#: nnU-Net's public API (see nnunet_blob.nnunet_internals): what its documentation tells a user to subclass, register
#: or set. Any other ``nnunetv2`` import belongs in nnunet_internals.
PUBLIC_NNUNET = {
    # extending_nnunet.md: custom trainers inherit from nnUNetTrainer (``-tr`` finds them by name)
    "nnunetv2.training.nnUNetTrainer.nnUNetTrainer": {"nnUNetTrainer"},
    # dataset_format.md, supported file formats: the readers/writers and the registry that chooses them
    "nnunetv2.imageio.reader_writer_registry": {"determine_reader_writer_from_dataset_json",
                                                "determine_reader_writer_from_file_ending",
                                                "recursive_find_reader_writer_by_name", "LIST_OF_IO_CLASSES"},
    # set_environment_variables.md: nnUNet_def_n_proc
    "nnunetv2.configuration": {"default_num_processes"},
}
PACKAGE = Path(internals.__file__).parent


def private_nnunet_imports(package: Path) -> list[str]:
    """``file:line imports module.name`` of every ``nnunetv2`` import outside nnunet_internals.py that is not in
    :data:`PUBLIC_NNUNET` (lazy imports in functions included)."""
    import ast

    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name == "nnunet_internals.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [(alias.name, "") for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [(node.module, alias.name) for alias in node.names]
            else:
                continue
            for module, name in names:
                if (module == "nnunetv2" or module.startswith("nnunetv2.")) and name not in PUBLIC_NNUNET.get(module,
                                                                                                             ()):
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} imports "
                                 f"{module}{'.' + name if name else ''}")
    return found


def test_no_private_nnunet_import_outside_nnunet_internals():
    found = private_nnunet_imports(PACKAGE)
    assert not found, ("private nnU-Net API imported outside nnunet_blob/nnunet_internals.py (add an entry there, "
                       "with its reason and a test here, and use it):\n" + "\n".join(found))


@pytest.mark.parametrize("source, offence", [
    ("from nnunetv2.utilities.plans_handling.plans_handler import PlansManager\n",
     "nnunetv2.utilities.plans_handling.plans_handler.PlansManager"),
    ("def f():\n    import nnunetv2.paths\n", "nnunetv2.paths"),
    ("from nnunetv2.imageio.reader_writer_registry import LIST_OF_IO_CLASSES, nope\n",
     "nnunetv2.imageio.reader_writer_registry.nope"),
])
def test_private_nnunet_import_check_names_the_import(tmp_path, source, offence):
    package = tmp_path / "nnunet_blob"
    (package / "part").mkdir(parents=True)
    (package / "part" / "module.py").write_text(source)
    (package / "nnunet_internals.py").write_text("from nnunetv2.training.loss.dice import get_tp_fp_fn_tn\n")
    assert private_nnunet_imports(package) == [f"nnunet_blob/part/module.py:{source.count(chr(10))} imports {offence}"]


def test_overlap_term_probabilities_feeds_nnunets_dice_the_given_probabilities():
    """nnU-Net's Dice term applies ``dc.apply_nonlin`` (softmax over channels) to the logits it is given: inside the
    block it takes the given probabilities instead (same value and gradient), and gets its own back after."""
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_blob.nnunet_internals import overlap_term_probabilities

    loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          dice_class=MemoryEfficientSoftDiceLoss)
    own = loss.dc.apply_nonlin
    logits = torch.randn(2, 3, 6, 6, 6, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 1, 6, 6, 6))
    expected = loss(logits, target)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    probs = torch.softmax(logits, 1)
    with overlap_term_probabilities(loss, logits, probs, sigmoid=False):
        shared = loss.dc.apply_nonlin
        assert shared(logits) is probs
        value = loss(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert loss.dc.apply_nonlin is own
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)
    with overlap_term_probabilities(loss, logits, probs, sigmoid=True):  # not nnU-Net's sigmoid: left alone
        assert loss.dc.apply_nonlin is own
