"""Host synchronisations per training step: what an accelerator would wait for, counted on the CPU.

Every loss the trainers build runs on the accelerator's path (every voxel kept, masks instead of ``nonzero``; see
``nnunet_blob.losses._common.COMPACT_ON_HOST``) and is counted with :class:`host_syncs.HostSyncCounter`: reading a
value, data-dependent output sizes, boolean-mask indexing. Budget: at most 2 per training step, all
deep-supervision scales together, whatever the number of classes or instances. Today the losses need none.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from pathlib import Path

import cc3d
import numpy as np
import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

from host_syncs import HostSyncCounter
from nnunet_blob.losses import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss, TverskyLoss

#: host syncs our losses may add to one training step (all deep-supervision scales together)
BUDGET = 2


@pytest.fixture(autouse=True)
def accelerator_path(monkeypatch):
    import nnunet_blob.losses._common as common

    monkeypatch.setattr(common, "COMPACT_ON_HOST", False)


# ------------------------------------------------------------------------------------------- losses alone
def _scales(batch, classes, shape, regions, seed=0, num_scales=4, ids_per_scale=40, per_class=False):
    """Logits, targets and int16 instance maps per deep-supervision scale, as the trainers' loader packs them
    (``per_class``: one map per foreground class, like Voronoi cells)."""
    g = torch.Generator().manual_seed(seed)
    outputs, targets, instances = [], [], []
    for s in range(num_scales):
        spatial = tuple(max(1, n // 2 ** s) for n in shape)
        channels = classes if regions else 1
        outputs.append(torch.randn(batch, classes, *spatial, generator=g, requires_grad=True))
        seg = torch.randint(0, 2 if regions else classes, (batch, channels, *spatial), generator=g)
        targets.append(seg.to(torch.int16))
        if per_class and not regions:
            ids = torch.randint(0, ids_per_scale, (batch, classes - 1, *spatial), generator=g)
        else:
            ids = torch.randint(1, ids_per_scale, (batch, channels, *spatial), generator=g) * (seg > 0)
        instances.append(ids.to(torch.int16))
    return outputs, targets, instances


def _deep_supervision(loss, num_scales=4):
    weights = np.array([1 / 2 ** i for i in range(num_scales)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def _nnunet_global(regions: bool, ignore_label=None):
    dice = {"batch_dice": False, "smooth": 1e-5, "do_bg": regions, "ddp": False}
    if regions:
        return DC_and_BCE_loss({}, dice, use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)
    return DC_and_CE_loss(dice, {}, weight_ce=1, weight_dice=1, ignore_label=ignore_label,
                          dice_class=MemoryEfficientSoftDiceLoss)


def _with_tversky(loss):
    loss.dc = TverskyLoss(apply_nonlin=loss.dc.apply_nonlin, batch_dice=False, do_bg=loss.dc.do_bg, smooth=1e-5)
    return loss


LOSSES = {
    "stock DC_and_CE": lambda regions: _nnunet_global(regions),
    "blob dice": lambda regions: BlobCompoundLoss(_nnunet_global(regions), regions=regions),
    "blob dice squared": lambda regions: BlobCompoundLoss(_nnunet_global(regions), regions=regions, squared=True),
    "blob tversky": lambda regions: BlobCompoundLoss(_with_tversky(_nnunet_global(regions)), inner="tversky",
                                                     regions=regions),
    "blob bce": lambda regions: BlobCompoundLoss(_nnunet_global(regions), inner="bce", regions=regions),
    "blob dice, no masking": lambda regions: BlobCompoundLoss(_nnunet_global(regions), regions=regions, masking=False),
    "blob term alone": lambda regions: BlobCompoundLoss(None, alpha=0, regions=regions),
    "tversky (global)": lambda regions: _with_tversky(_nnunet_global(regions)),
    "cc dice ce": lambda regions: CCDiceCELoss(_nnunet_global(regions), regions=regions),
    # with an ignore label, nnU-Net's own DC_and_CE_loss reads the device once per scale (``num_fg > 0``), for stock
    # nnU-Net as for the trainers that reuse it as their global term: the instance terms alone are counted here
    "cc dice ce term, ignore label": lambda regions: CCDiceCELoss(None, 0, 1, regions=regions,
                                                                  ignore_label=True if regions else 0),
    "blob dice term, ignore label": lambda regions: BlobCompoundLoss(None, 0, 1, regions=regions,
                                                                     ignore_label=True if regions else 0),
    "topk dice + ce": lambda regions: TopKDiceAndCELoss(k=30),
    "topk dice + ce, batch dice": lambda regions: TopKDiceAndCELoss(k=30, batch_dice=True),
    "topk dice + ce, ignore label": lambda regions: TopKDiceAndCELoss(k=30, ignore_label=0),
}


@pytest.mark.parametrize("regions", [False, True], ids=["labels", "regions"])
@pytest.mark.parametrize("classes", [3, 15])
@pytest.mark.parametrize("name", list(LOSSES))
def test_losses_do_not_wait_for_the_device(name, classes, regions):
    if regions and name.startswith("topk"):
        pytest.skip("TopK-Dice is defined for softmax outputs")
    outputs, targets, instances = _scales(2, classes, (16, 16, 16), regions, per_class=name.startswith("cc"))
    if regions and "ignore" in name:  # nnU-Net's region targets end with a channel marking ignored voxels
        targets = [torch.cat((t, (torch.rand_like(t[:, :1], dtype=torch.float) < 0.1).to(t.dtype)), 1)
                   for t in targets]
    loss = _deep_supervision(LOSSES[name](regions))
    args = (outputs, targets, instances) if name.startswith(("blob", "cc")) else (outputs, targets)
    loss(*args).backward()  # first call (lazy set-up) is not counted
    with HostSyncCounter() as syncs:
        loss(*args).backward()
    assert syncs.total == 0, f"{name}: {dict(syncs.counts)}"


# ---------------------------------------------------------------------------------- a real training step
@pytest.fixture(scope="module")
def plans(preprocessed):
    """Real nnU-Net plans (nnUNetv2_plan_and_preprocess, reduced network) of a tiny synthetic dataset."""
    dataset = preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)
    return json.loads((Path(os.environ["nnUNet_preprocessed"]) / dataset / "nnUNetPlans.json").read_text())


def _dataset_json(classes: int, regions: bool) -> dict:
    if regions:  # BraTS-style nested regions over labels 1..3
        labels = {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}
        return {"channel_names": {"0": "MR"}, "labels": labels, "regions_class_order": [1, 2, 3],
                "numTraining": 6, "file_ending": ".nii.gz"}
    labels = {"background": 0, **{f"class_{c}": c for c in range(1, classes)}}
    return {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": 6, "file_ending": ".nii.gz"}


def _with_id_bound(trainer_class, max_id: int):
    """The trainer with its instance setup's id bound set to ``max_id`` (the tables of its loss sized for it)."""

    class Bounded(trainer_class):
        def prepare_instances(self):
            setup = super().prepare_instances()
            return dataclasses.replace(setup, packing=dataclasses.replace(setup.packing, max_id=max_id))

    return Bounded


def _trainer(trainer_class, plans, dataset_json):
    plans = copy.deepcopy(plans)
    plans["continue_training"] = False
    trainer = trainer_class(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def _batch(trainer, classes: int, regions: bool, instance_channel: bool, seed=0):
    """Two samples with many small objects, through the trainer's own validation pipeline (as its loader)."""

    rng = np.random.default_rng(seed)
    patch = tuple(trainer.configuration_manager.patch_size)
    lm = trainer.label_manager
    pipeline = trainer.get_validation_transforms(
        trainer._get_deep_supervision_scales(), is_cascaded=False, foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None, ignore_label=lm.ignore_label)
    samples = []
    for _ in range(2):
        seg = np.zeros(patch, dtype=np.int16)
        for _ in range(60):  # small boxes of random classes
            lo = [rng.integers(0, s - 3) for s in patch]
            seg[tuple(slice(a, a + rng.integers(1, 4)) for a in lo)] = rng.integers(1, 4 if regions else classes)
        image = torch.from_numpy(rng.normal(size=(1, *patch)).astype(np.float32) + seg)
        segmentation = torch.from_numpy(seg)[None]
        if instance_channel:  # what the instance-aware loader stacks after the segmentation
            ids = cc3d.connected_components(seg, connectivity=26).astype(np.int16)
            segmentation = torch.cat((segmentation, torch.from_numpy(ids)[None]))
        samples.append(pipeline(image=image, segmentation=segmentation))
    targets = [s["segmentation"] for s in samples]
    per_scale = isinstance(targets[0], list)
    target = [torch.stack(t) for t in zip(*targets, strict=True)] if per_scale else torch.stack(targets)
    return {"data": torch.stack([s["image"] for s in samples]), "target": target}


TRAINERS = ["nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerBlobDice_noCE",
            "nnUNetTrainerBlobDice_noMasking", "nnUNetTrainerTopKDice", "nnUNetTrainerTversky",
            "nnUNetTrainerCCDiceCE"]


def _step_syncs(trainer, batch) -> HostSyncCounter:
    trainer.train_step(batch)  # warm-up
    with HostSyncCounter() as syncs:
        trainer.train_step(batch)
    return syncs


@pytest.mark.parametrize("classes,regions", [(3, False), (15, False), (4, True)], ids=["3 classes", "15 classes",
                                                                                      "regions"])
def test_training_step_adds_at_most_two_host_syncs(plans, classes, regions):
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_blob.trainers import variants

    torch.manual_seed(0)
    dataset_json = _dataset_json(classes, regions)
    stock = _trainer(nnUNetTrainer, plans, dataset_json)
    assert len(stock._get_deep_supervision_scales()) >= 3  # deep supervision with several scales
    stock_syncs = _step_syncs(stock, _batch(stock, classes, regions, instance_channel=False))
    report = {"nnUNetTrainer": dict(stock_syncs.counts)}
    over = []
    for name in TRAINERS:
        trainer_class = getattr(variants, name)
        if regions and name.startswith("nnUNetTrainerTopK"):
            continue
        instance_aware = issubclass(trainer_class, variants.nnUNetTrainerBlobDice)
        if instance_aware and not regions:  # the synthetic patches hold more instances than the dataset's cases
            trainer_class = _with_id_bound(trainer_class, 1000)
        trainer = _trainer(trainer_class, plans, dataset_json)
        syncs = _step_syncs(trainer, _batch(trainer, classes, regions, instance_aware and not regions))
        report[name] = dict(syncs.counts)
        if syncs.total > stock_syncs.total + BUDGET:
            over.append(name)
    print(report)
    assert not over, f"over the budget of {BUDGET} host syncs per step beyond stock nnU-Net: {over}; {report}"
