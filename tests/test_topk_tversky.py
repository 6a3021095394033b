"""TopK-Dice (Hosseini Eq. 1-7) and global Tversky against literal implementations; values and gradients."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnunet_blob.losses import topk_dice_loss, tversky_loss
from nnunet_blob.losses.topk_dice import largest_per_group, removed_counts
from nnunet_blob.losses.tversky import TverskyLoss
from reference_losses import literal_topk_dice_loss, literal_tversky_loss
from test_blob_loss import random_probs

pytestmark = pytest.mark.usefixtures("loss_path")


def random_labels(batch, classes, spatial, seed, background_share=0.6):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(1, classes, (batch, 1, *spatial), generator=g)
    background = torch.rand(batch, 1, *spatial, generator=g) < background_share
    return torch.where(background, 0, labels)


def assert_close_with_grad(value, reference, probs):
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)
    grad = torch.autograd.grad(value, probs)[0]
    reference_grad = torch.autograd.grad(reference, probs)[0]
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    return grad


TOPK_CASES = [
    # batch, classes, spatial, k, kwargs
    (2, 2, (8, 8, 8), 50, {}),
    (2, 3, (8, 8, 8), 30, {}),
    (3, 4, (12, 12), 10, {}),
    (2, 3, (6, 6, 6), 50, {"batch_dice": True}),
    (2, 3, (6, 6, 6), 50, {"squared": False}),
    (1, 3, (6, 6, 6), 33.3, {}),
    (2, 3, (6, 6, 6), 100, {}),
    (3, 3, (6, 6, 6), 30, {"batch_dice": True, "squared": False}),
    (2, 2, (1, 7, 5), 70, {"smooth": 0.0}),
]


@pytest.mark.parametrize("batch,classes,spatial,k,kwargs", TOPK_CASES)
@pytest.mark.parametrize("use_mask", [False, True])
def test_topk_dice_matches_literal(batch, classes, spatial, k, kwargs, use_mask):
    target = random_labels(batch, classes, spatial, seed=classes)
    probs = random_probs(batch, classes, spatial, seed=k.__hash__() % 100)
    mask = None
    if use_mask:
        mask = random_labels(batch, 2, spatial, seed=99, background_share=0.3).bool()
        target = torch.where(mask, target, classes)  # ignore label outside the channels, masked
    value = topk_dice_loss(probs, target, k, loss_mask=mask, **kwargs)
    reference = literal_topk_dice_loss(probs, target, k, loss_mask=mask, **kwargs)
    assert_close_with_grad(value, reference, probs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.uint8])
def test_topk_target_dtypes(dtype):
    """nnU-Net hands float targets to its losses; any label dtype gives the same value."""
    target = random_labels(2, 3, (6, 6, 6), seed=4)
    probs = random_probs(2, 3, (6, 6, 6), seed=5)
    torch.testing.assert_close(topk_dice_loss(probs, target.to(dtype), 30), topk_dice_loss(probs, target, 30))


def test_k100_is_plain_squared_soft_dice():
    target = random_labels(2, 3, (8, 8, 8), seed=1)
    probs = random_probs(2, 3, (8, 8, 8), seed=2)
    onehot = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).double()[:, 1:]
    p = probs[:, 1:]
    axes = (2, 3, 4)
    dice = (2 * (p * onehot).sum(axes) + 1e-5) / ((onehot ** 2).sum(axes) + (p ** 2).sum(axes) + 1e-5)
    torch.testing.assert_close(topk_dice_loss(probs, target, 100), 1 - dice.mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_largest_per_group_is_exact_with_ties(dtype):
    """Each group keeps exactly its count of largest values; equal values go to the lowest position first."""
    values = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.1, 0.9, 0.5, 0.0, 0.9, 0.5, -0.0, 0.0], dtype=dtype)
    group = torch.tensor([0, 1, 0, 0, 1, 0, 2, 1, 0, 1, 1, 2])  # group 2 is the "never chosen" group here
    members = {g: (group == g).nonzero()[:, 0] for g in (0, 1)}
    for count0 in range(0, len(members[0]) + 1):
        for count1 in range(0, len(members[1]) + 1):
            chosen = largest_per_group(values, group, torch.tensor([count0, count1]))
            assert not chosen[group == 2].any()
            for g, count in ((0, count0), (1, count1)):
                index = members[g]
                expected = index[torch.sort(-values[index], stable=True).indices[:count]]
                assert set(chosen.nonzero()[:, 0].tolist()) & set(index.tolist()) == set(expected.tolist())


@pytest.mark.parametrize("n,k,removed", [(10, 50, 5), (10, 30, 7), (7, 50, 3), (1, 50, 0), (3, 10, 2), (100, 100, 0),
                                         (10, 70, 3), (1000, 30, 700), (0, 50, 0)])
def test_number_removed_is_floor_of_eq3(n, k, removed):
    assert removed_counts(torch.tensor([n]), k).tolist() == [removed]


def test_tied_probabilities_remove_exactly_d_voxels_and_give_them_no_gradient():
    target = torch.zeros(1, 1, 4, 5, dtype=torch.long)
    target[0, 0, :2] = 1  # 10 foreground voxels
    probs = torch.full((1, 2, 4, 5), 0.5, dtype=torch.float64, requires_grad=True)  # all tied
    value = topk_dice_loss(probs, target, 30)
    (grad,) = torch.autograd.grad(value, probs)
    fg_grad = grad[0, 1, :2].reshape(-1)
    assert int((fg_grad == 0).sum()) == 7  # D = 7 removed, in memory order
    assert torch.all(fg_grad[:7] == 0) and torch.all(fg_grad[7:] != 0)
    # 3 kept foreground voxels at 0.5, 10 background voxels at 0.5: Dice = 2*1.5 / (3 + 13*0.25)
    assert value.item() == pytest.approx(1 - (3.0 + 1e-5) / (3 + 13 * 0.25 + 1e-5))
    torch.testing.assert_close(value, literal_topk_dice_loss(probs, target, 30))


def test_easiest_voxels_are_the_removed_ones():
    target = torch.ones(1, 1, 1, 4, dtype=torch.long)
    probs = torch.zeros(1, 2, 1, 4, dtype=torch.float64)
    probs[0, 1, 0] = torch.tensor([0.9, 0.2, 0.7, 0.4])
    probs[0, 0] = 1 - probs[0, 1]
    probs.requires_grad_(True)
    (grad,) = torch.autograd.grad(topk_dice_loss(probs, target, 50), probs)
    assert grad[0, 1, 0, 0] == 0 and grad[0, 1, 0, 2] == 0  # 0.9 and 0.7 are easy: ignored
    assert grad[0, 1, 0, 1] != 0 and grad[0, 1, 0, 3] != 0


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("use_mask", [False, True])
def test_all_classes_average_matches_literal(batch_dice, use_mask):
    """classes="all": absent classes and empty samples count, with Dice s / (sum p^2 + s)."""
    target = random_labels(3, 4, (6, 6, 6), seed=21)
    target[:, :, target[0, 0] == 3] = 0  # class 3 absent from every sample
    target[1] = 0  # an empty sample
    probs = random_probs(3, 4, (6, 6, 6), seed=22)
    mask = random_labels(3, 2, (6, 6, 6), seed=23, background_share=0.3).bool() if use_mask else None
    value = topk_dice_loss(probs, target, 30, batch_dice=batch_dice, loss_mask=mask, classes="all")
    reference = literal_topk_dice_loss(probs, target, 30, batch_dice=batch_dice, loss_mask=mask, classes="all")
    assert_close_with_grad(value, reference, probs)


def test_all_classes_average_penalises_an_absent_class_predicted():
    """A perfect class 1 and false positives of class 2, which is absent: "present" sees nothing wrong."""
    target = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    target[0, 0, :2] = 1
    probs = torch.nn.functional.one_hot(target[:, 0], 3).movedim(-1, 1).double()
    probs[0, :, 4:] = torch.tensor([0.7, 0.0, 0.3]).reshape(3, 1, 1)  # class 2 predicted where nothing is
    assert topk_dice_loss(probs, target, 50).item() == pytest.approx(0.0, abs=1e-9)
    assert topk_dice_loss(probs, target, 50, classes="all").item() == pytest.approx(0.5, abs=1e-5)


def test_absent_classes_are_not_averaged_in():
    target = random_labels(1, 2, (6, 6, 6), seed=4)  # only class 1 present
    probs = random_probs(1, 4, (6, 6, 6), seed=5)  # classes 2, 3 absent
    only_class1 = topk_dice_loss(torch.stack([probs[:, 0], probs[:, 1]], 1), target, 50)
    torch.testing.assert_close(topk_dice_loss(probs, target, 50), only_class1)


def test_topk_empty_batch_and_fp16():
    probs = random_probs(2, 3, (5, 5, 5), seed=6)
    value = topk_dice_loss(probs, torch.zeros(2, 1, 5, 5, 5, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and torch.all(probs.grad == 0)
    half = random_probs(2, 3, (5, 5, 5), seed=7, dtype=torch.float32).detach().half()
    target = random_labels(2, 3, (5, 5, 5), seed=8)
    out = topk_dice_loss(half, target, 30)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, topk_dice_loss(half.float(), target, 30))


def test_topk_bad_options():
    probs, target = torch.full((1, 2, 3, 3), 0.5), torch.zeros(1, 1, 3, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="must be in \\(0, 100\\]"):
        topk_dice_loss(probs, target, 0)
    with pytest.raises(ValueError, match="classes must be 'present' or 'all'"):
        topk_dice_loss(probs, target, 50, classes="some")
    with pytest.raises(ValueError, match="outside \\[0, 2\\)"):
        topk_dice_loss(probs, torch.full((1, 1, 3, 3), 2), 50)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 2),
    classes=st.integers(2, 4),
    spatial=st.sampled_from([(4, 5), (2, 3, 4)]),
    k=st.sampled_from([10, 30, 50, 75, 100]),
    quantized=st.booleans(),
    batch_dice=st.booleans(),
    data=st.data(),
)
def test_topk_property(batch, classes, spatial, k, quantized, batch_dice, data):
    n = batch * math.prod(spatial)
    target = torch.tensor(data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n)))
    target = target.reshape(batch, 1, *spatial)
    probs = random_probs(batch, classes, spatial, seed=data.draw(st.integers(0, 1000)))
    if quantized:  # many ties
        probs = (torch.round(probs.detach() * 4) / 4).requires_grad_(True)
    value = topk_dice_loss(probs, target, k, batch_dice=batch_dice)
    reference = literal_topk_dice_loss(probs, target, k, batch_dice=batch_dice)
    assert_close_with_grad(value, reference, probs)


@pytest.mark.parametrize("kwargs", [{}, {"batch_dice": True}, {"do_bg": True}, {"alpha": 0.5, "beta": 0.5},
                                    {"smooth": 1.0}])
@pytest.mark.parametrize("use_mask", [False, True])
def test_tversky_matches_literal(kwargs, use_mask):
    target = random_labels(2, 3, (7, 7, 7), seed=10)
    probs = random_probs(2, 3, (7, 7, 7), seed=11)
    mask = random_labels(2, 2, (7, 7, 7), seed=12, background_share=0.3).bool() if use_mask else None
    value = tversky_loss(probs, target, loss_mask=mask, **kwargs)
    assert_close_with_grad(value, literal_tversky_loss(probs, target, loss_mask=mask, **kwargs), probs)


def test_tversky_half_half_equals_nnunet_soft_dice():
    """alpha = beta = 0.5 is Dice: 1 - Tversky equals nnU-Net's MemoryEfficientSoftDiceLoss (which returns -Dice)."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    target = random_labels(2, 4, (9, 9, 9), seed=13)
    probs = random_probs(2, 4, (9, 9, 9), seed=14, dtype=torch.float32)
    for batch_dice in (False, True):
        nnunet = MemoryEfficientSoftDiceLoss(batch_dice=batch_dice, do_bg=False, smooth=1e-5, ddp=False)
        ours = tversky_loss(probs, target, alpha=0.5, beta=0.5, batch_dice=batch_dice)
        torch.testing.assert_close(ours, 1 + nnunet(probs, target))


@pytest.mark.parametrize("alpha, beta, smooth, message", [
    (-0.1, 0.7, 1e-5, "alpha must be a finite number >= 0"),
    (0.3, float("nan"), 1e-5, "beta must be a finite number >= 0"),
    (0.3, 0.7, -1.0, "smooth must be a finite number >= 0"),
    (0.0, 0.0, 1e-5, "both 0"),
])
def test_tversky_weights_are_checked(alpha, beta, smooth, message):
    with pytest.raises(ValueError, match=message):
        TverskyLoss(alpha=alpha, beta=beta, smooth=smooth)
    with pytest.raises(ValueError, match=message):
        tversky_loss(torch.full((1, 2, 2, 2), 0.5), torch.zeros(1, 1, 2, 2, dtype=torch.long), alpha=alpha,
                     beta=beta, smooth=smooth)


@pytest.mark.parametrize("alpha, beta", [(0.0, 1.0), (1.0, 0.0), (0.5, 0.5)])
def test_tversky_weights_at_the_edges_are_accepted(alpha, beta):
    assert torch.isfinite(TverskyLoss(alpha=alpha, beta=beta, ddp=False)(
        torch.full((1, 2, 2, 2), 0.5), torch.ones(1, 1, 2, 2, dtype=torch.long)))
