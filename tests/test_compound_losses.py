"""The nn.Module losses the trainers use: Eq. (3) assembly, nnU-Net's deep supervision, ignore label, regions."""
from __future__ import annotations

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.training.loss.robust_ce_loss import RobustCrossEntropyLoss

from nnunet_blob.instances.voronoi import voronoi_cells
from nnunet_blob.losses import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss, TverskyLoss
from reference_losses import literal_blob_loss, literal_cc_dice_ce_loss, literal_topk_dice_loss
from test_blob_loss import random_instance_batch

pytestmark = pytest.mark.usefixtures("loss_path")


def nnunet_dc_ce(ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss):
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          weight_ce=1, weight_dice=1, ignore_label=ignore_label, dice_class=dice_class)


def logits_like(batch, classes, spatial, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, classes, *spatial, generator=g, dtype=torch.float64, requires_grad=True)


@pytest.mark.parametrize("alpha,beta,inner", [(2, 1, "dice"), (1, 2, "tversky"), (0, 1, "dice"), (3, 1, "bce")])
def test_total_is_alpha_global_plus_beta_blob(alpha, beta, inner):
    target, instances = random_instance_batch((2, 10, 10, 10), 3, [12, 4], seed=1)
    logits = logits_like(2, 3, (10, 10, 10), seed=2)
    global_loss = nnunet_dc_ce()
    loss = BlobCompoundLoss(global_loss if alpha else None, alpha, beta, inner)
    value = loss(logits, target, instances)
    expected = beta * literal_blob_loss(torch.softmax(logits, 1), target, instances, inner)
    if alpha:
        expected = expected + alpha * global_loss(logits, target)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(torch.autograd.grad(value, logits)[0], torch.autograd.grad(expected, logits)[0])


def test_deep_supervision_wrapper_sums_scales_with_nnunet_weights():
    scales = [(16, 16, 16), (8, 8, 8), (4, 4, 4)]
    weights = [1.0, 0.5, 0.25]
    targets, instance_maps, outputs = [], [], []
    for i, s in enumerate(scales):
        t, n = random_instance_batch((2, *s), 2, [6, 0], seed=10 + i)
        targets.append(t), instance_maps.append(n), outputs.append(logits_like(2, 2, s, seed=20 + i))
    inner_loss = BlobCompoundLoss(nnunet_dc_ce(), 2, 1)
    value = DeepSupervisionWrapper(inner_loss, weights)(outputs, targets, instance_maps)
    expected = sum(w * inner_loss(o, t, n) for w, o, t, n in zip(weights, outputs, targets, instance_maps, strict=True))
    torch.testing.assert_close(value, expected)


def test_ignore_label_is_masked_in_the_blob_term():
    ignore = 3
    target, instances = random_instance_batch((2, 10, 10, 10), 3, [10, 10], seed=3)
    target[:, :, :3] = ignore
    logits = logits_like(2, 3, (10, 10, 10), seed=4)
    loss = BlobCompoundLoss(nnunet_dc_ce(ignore_label=ignore), 2, 1, ignore_label=ignore)
    value = loss(logits, target, instances)
    mask = target != ignore
    expected = 2 * nnunet_dc_ce(ignore_label=ignore)(logits, target) + literal_blob_loss(
        torch.softmax(logits, 1), target, instances, loss_mask=mask)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(loss.blob_term(logits, target, instances), logits)
    assert torch.all(grad[:, :, :3] == 0)


def test_regions_with_nnunet_ignore_channel():
    labels, instances1 = random_instance_batch((2, 10, 10, 10), 3, [10, 6], seed=5)
    regions = torch.cat([(labels >= 1), (labels == 2)], 1).long()
    instances = torch.cat([instances1, torch.where(labels == 2, instances1, 0)], 1)
    ignore = torch.zeros_like(labels)
    ignore[:, :, -2:] = 1
    target = torch.cat([regions, ignore], 1)  # nnU-Net: last channel marks ignored voxels
    logits = logits_like(2, 2, (10, 10, 10), seed=6)
    global_loss = DC_and_BCE_loss({}, {"batch_dice": False, "do_bg": True, "smooth": 1e-5, "ddp": False},
                                  use_ignore_label=True, dice_class=MemoryEfficientSoftDiceLoss)
    loss = BlobCompoundLoss(global_loss, 2, 1, regions=True, ignore_label=True)
    value = loss(logits, target, instances)
    expected = 2 * global_loss(logits, target) + literal_blob_loss(
        torch.sigmoid(logits), regions, instances, loss_mask=ignore == 0, regions=True)
    torch.testing.assert_close(value, expected)


def test_tversky_plugs_into_nnunet_dc_and_ce():
    target, _ = random_instance_batch((2, 8, 8, 8), 3, [10, 10], seed=7)
    logits = logits_like(2, 3, (8, 8, 8), seed=8)
    loss = nnunet_dc_ce(dice_class=TverskyLoss)
    from nnunet_blob.losses import tversky_loss

    expected = RobustCrossEntropyLoss()(logits, target[:, 0]) + tversky_loss(torch.softmax(logits, 1), target)
    torch.testing.assert_close(loss(logits, target), expected)


@pytest.mark.parametrize("ignore_label", [None, 3])
def test_topk_dice_and_ce(ignore_label):
    target, _ = random_instance_batch((2, 8, 8, 8), 3, [15, 15], seed=9)
    if ignore_label is not None:
        target[:, :, :2] = ignore_label
    logits = logits_like(2, 3, (8, 8, 8), seed=10)
    value = TopKDiceAndCELoss(k=30, ignore_label=ignore_label)(logits, target)
    mask = None if ignore_label is None else target != ignore_label
    ce = RobustCrossEntropyLoss(ignore_index=-100 if ignore_label is None else ignore_label)(logits, target[:, 0])
    expected = ce + literal_topk_dice_loss(torch.softmax(logits, 1), target, 30, loss_mask=mask)
    torch.testing.assert_close(value, expected)


def test_topk_dice_and_ce_with_every_voxel_ignored_is_zero():
    """As nnU-Net's DC_and_CE_loss: no annotated voxel, no loss and no gradient (not NaN)."""
    target = torch.full((2, 1, 4, 4, 4), 3)
    logits = logits_like(2, 3, (4, 4, 4), seed=12)
    value = TopKDiceAndCELoss(k=30, ignore_label=3)(logits, target)
    (grad,) = torch.autograd.grad(value, logits)
    assert value.item() == 0.0 and torch.all(grad == 0)


@pytest.mark.parametrize("ignore_label", [None, 3])
def test_cc_dice_ce_compound_is_global_plus_cc_term(ignore_label):
    """nnU-Net's DiceCE (Dice smoothing 0, as published) + the CC term, 1:1; ignored voxels in neither."""
    target, _ = random_instance_batch((2, 8, 8, 8), 3, [12, 9], seed=13)
    if ignore_label is not None:
        target[:, :, :2] = ignore_label
    mask = None if ignore_label is None else target != ignore_label
    cells = voronoi_cells(torch.where(target == 3, 0, target), 3).to(torch.int16)
    logits = logits_like(2, 3, (8, 8, 8), seed=14)
    global_loss = DC_and_CE_loss({"batch_dice": False, "smooth": 0.0, "do_bg": False, "ddp": False}, {},
                                 weight_ce=1, weight_dice=1, ignore_label=ignore_label,
                                 dice_class=MemoryEfficientSoftDiceLoss)
    value = CCDiceCELoss(global_loss, ignore_label=ignore_label)(logits, target, cells)
    expected = global_loss(logits, target) + literal_cc_dice_ce_loss(torch.softmax(logits, 1), target, cells,
                                                                     loss_mask=mask)
    torch.testing.assert_close(value, expected)


def test_fp16_logits_under_autocast_give_float32_loss():
    target, instances = random_instance_batch((1, 8, 8, 8), 2, [5], seed=11)
    logits = torch.randn(1, 2, 8, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = BlobCompoundLoss(None, 0, 1).blob_term(logits, target, instances)
        topk = TopKDiceAndCELoss()(logits, target)
    assert value.dtype == torch.float32 and torch.isfinite(value) and torch.isfinite(topk)


@pytest.mark.parametrize("kwargs,message", [
    ({"global_loss": None, "alpha": 2, "beta": 1}, "alpha > 0 needs a global_loss"),
    ({"global_loss": None, "alpha": 0, "beta": 0}, "not both 0"),
    ({"global_loss": None, "alpha": 0, "beta": 1, "inner": "x"}, "inner must be one of"),
])
def test_compound_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BlobCompoundLoss(**kwargs)
