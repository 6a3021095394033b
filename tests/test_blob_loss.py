"""Blob loss against the literal per-instance implementation of Eq. (1)-(2)/(4): values and gradients, float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nnunet_blob.losses import blob_loss, blob_loss_regions
from reference_losses import literal_blob_loss

pytestmark = pytest.mark.usefixtures("loss_path")

INNERS = [
    ("dice", {}),
    ("dice", {"squared": True}),
    ("tversky", {}),
    ("tversky", {"tversky_alpha": 0.5, "tversky_beta": 0.5, "smooth": 1.0}),
    ("bce", {}),
]


def random_instance_batch(shape, num_classes, instances_per_sample, seed, max_size=3, id_offset=0):
    """Random non-overlapping-ish boxes; each instance id gets one class; target = class of the id.

    Later boxes overwrite earlier ones, so some ids may shrink or vanish: the reference reads the maps as given.
    """
    rng = np.random.default_rng(seed)
    batch = shape[0]
    spatial = shape[1:]
    target = np.zeros((batch, 1, *spatial), dtype=np.int64)
    instances = np.zeros_like(target)
    for b in range(batch):
        for n in range(1, instances_per_sample[b] + 1):
            lo = [rng.integers(0, s) for s in spatial]
            size = [rng.integers(1, max_size + 1) for _ in spatial]
            box = tuple(slice(a, min(a + w, s)) for a, w, s in zip(lo, size, spatial, strict=True))
            instances[(b, 0) + box] = n + id_offset
            target[(b, 0) + box] = rng.integers(1, num_classes)
    return torch.from_numpy(target), torch.from_numpy(instances)


def random_probs(batch, num_classes, spatial, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_classes, *spatial, generator=g, dtype=dtype) * 2
    return torch.softmax(logits, 1).detach().requires_grad_(True)


def assert_matches_literal(probs, target, instances, inner, **kwargs):
    value = blob_loss(probs, target, instances, inner, **kwargs)
    (grad,) = torch.autograd.grad(value, probs)
    reference = literal_blob_loss(probs, target, instances, inner, **kwargs)
    (reference_grad,) = torch.autograd.grad(reference, probs, allow_unused=True)
    reference_grad = torch.zeros_like(probs) if reference_grad is None else reference_grad
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    return value


CASES = {
    # name: (batch, classes, spatial, instances per sample)
    "no instances": (2, 2, (6, 6, 6), [0, 0]),
    "one instance": (1, 2, (6, 6, 6), [1]),
    "fifty instances 3d": (2, 3, (12, 12, 12), [50, 30]),
    "five hundred instances": (1, 2, (24, 24, 24), [500]),
    "empty and non-empty samples": (3, 3, (8, 8, 8), [0, 7, 0]),
    "several classes 2d": (2, 4, (20, 20), [12, 5]),
}


@pytest.mark.parametrize("inner,kwargs", INNERS, ids=lambda x: str(x))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("masking", [True, False])
def test_matches_literal(case, inner, kwargs, masking):
    batch, classes, spatial, counts = CASES[case]
    target, instances = random_instance_batch((batch, *spatial), classes, counts, seed=len(case))
    probs = random_probs(batch, classes, spatial, seed=1)
    value = assert_matches_literal(probs, target, instances, inner, masking=masking, **kwargs)
    if sum(counts) == 0:
        assert value.item() == 0.0


def test_two_touching_instances_are_separate_terms():
    target = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    instances = torch.zeros_like(target)
    target[0, 0, 1:3, 1:3, 0:2] = 1
    instances[0, 0, 1:3, 1:3, 0] = 1
    instances[0, 0, 1:3, 1:3, 1] = 2  # face-adjacent to instance 1: same class, different object
    probs = random_probs(1, 2, (4, 4, 4), seed=3)
    for masking in (True, False):
        value = assert_matches_literal(probs, target, instances, "dice", masking=masking)
        one_object = blob_loss(probs, target, (instances > 0).long(), "dice", masking=masking)
        assert not torch.isclose(value, one_object)


def test_masking_removes_other_instances_from_the_domain():
    """Hand-computed: two one-voxel instances, p = 1 on both -> masked Dice is perfect, unmasked is not."""
    probs = torch.zeros(1, 2, 1, 5, dtype=torch.float64)
    probs[0, 1] = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0])
    probs[0, 0] = 1 - probs[0, 1]
    target = torch.tensor([[[[1, 0, 0, 0, 1]]]])
    instances = torch.tensor([[[[1, 0, 0, 0, 2]]]])
    assert blob_loss(probs, target, instances, smooth=0.0).item() == pytest.approx(0.0)
    # without masking each instance sees the other as a false positive: Dice = 2 / (1 + 2)
    assert blob_loss(probs, target, instances, smooth=0.0, masking=False).item() == pytest.approx(1 / 3)


def test_foreground_without_instance_is_excluded_not_background():
    target = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    instances = torch.zeros_like(target)
    target[0, 0, 0:2, 0:2] = 1
    instances[0, 0, 0:2, 0:2] = 1
    target[0, 0, 4:6, 4:6] = 1  # class-1 voxels with no instance (e.g. lost at a patch border)
    probs = random_probs(1, 2, (6, 6), seed=5)
    assert_matches_literal(probs, target, instances, "dice")
    (grad,) = torch.autograd.grad(blob_loss(probs, target, instances), probs)
    assert torch.all(grad[0, :, 4:6, 4:6] == 0)


@pytest.mark.parametrize("inner,kwargs", INNERS, ids=lambda x: str(x))
def test_ignore_mask(inner, kwargs):
    target, instances = random_instance_batch((2, 10, 10, 10), 3, [20, 10], seed=7)
    probs = random_probs(2, 3, (10, 10, 10), seed=8)
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[:, :, :5] = False
    target = torch.where(mask, target, 3)  # ignore label 3 is outside the channels: allowed under the mask
    value = assert_matches_literal(probs, target, instances, inner, loss_mask=mask, **kwargs)
    (grad,) = torch.autograd.grad(blob_loss(probs, target, instances, inner, loss_mask=mask, **kwargs), probs)
    assert torch.all(grad[:, :, :5] == 0)
    assert torch.isfinite(value)


def test_instance_entirely_masked_has_no_term():
    target = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    instances = torch.zeros_like(target)
    target[0, 0, 0:2, 0:2], instances[0, 0, 0:2, 0:2] = 1, 1
    target[0, 0, 5:7, 5:7], instances[0, 0, 5:7, 5:7] = 1, 2
    mask = torch.ones_like(target, dtype=torch.bool)
    mask[0, 0, 5:7, 5:7] = False
    probs = random_probs(1, 2, (8, 8), seed=9)
    with_mask = blob_loss(probs, target, instances, loss_mask=mask)
    only_first = blob_loss(probs, torch.where(mask, target, 0), torch.where(mask, instances, 0), loss_mask=mask)
    torch.testing.assert_close(with_mask, only_first)
    assert_matches_literal(probs, target, instances, "dice", loss_mask=mask)


def test_sparse_large_ids_take_the_unique_path_with_same_result():
    target, instances = random_instance_batch((2, 10, 10, 10), 3, [15, 8], seed=11)
    probs = random_probs(2, 3, (10, 10, 10), seed=12)
    big = torch.where(instances > 0, instances * 1_000_003, 0)
    torch.testing.assert_close(blob_loss(probs, target, big), blob_loss(probs, target, instances))
    assert_matches_literal(probs, target, big, "tversky")


def test_instance_id_spanning_two_classes_counts_once_per_class():
    target = torch.tensor([[[[1, 1, 2, 2, 0, 0]]]])
    instances = torch.tensor([[[[4, 4, 4, 4, 0, 0]]]])
    probs = random_probs(1, 3, (1, 6), seed=13)
    assert_matches_literal(probs, target, instances, "dice")


def test_all_background_batch_is_zero_with_a_graph():
    probs = random_probs(2, 3, (5, 5, 5), seed=14)
    target = torch.zeros(2, 1, 5, 5, 5, dtype=torch.long)
    value = blob_loss(probs, target, torch.ones_like(target))  # ids on background are no instances
    value.backward()
    assert value.item() == 0.0 and torch.all(probs.grad == 0)


@pytest.mark.parametrize("inner", ["dice", "tversky", "bce"])
def test_one_voxel_instance_and_saturated_probabilities(inner):
    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    instances = torch.zeros_like(target)
    target[0, 0, 1, 1, 1], instances[0, 0, 1, 1, 1] = 1, 1
    target[1, 0, 0:2, 0:2, 0:2], instances[1, 0, 0:2, 0:2, 0:2] = 1, 1
    probs = torch.zeros(2, 2, 4, 4, 4, dtype=torch.float64)
    probs[:, 1] = (torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).double()
    probs[:, 0] = 1 - probs[:, 1]
    probs.requires_grad_(True)
    if inner == "bce":
        # values as torch's BCE (log clamped at -100); at p in {0, 1} torch's BCE gradient (p - g) / max(p(1 - p),
        # 1e-12) is 0 where the prediction is right, ours is the derivative of the clamped log: both finite
        value = blob_loss(probs, target, instances, inner)
        torch.testing.assert_close(value, literal_blob_loss(probs, target, instances, inner))
    else:
        value = assert_matches_literal(probs, target, instances, inner)
    (grad,) = torch.autograd.grad(blob_loss(probs, target, instances, inner), probs)
    assert torch.isfinite(value) and torch.all(torch.isfinite(grad))


def test_fp16_input_computes_in_float32():
    target, instances = random_instance_batch((2, 8, 8, 8), 3, [10, 4], seed=15)
    probs32 = random_probs(2, 3, (8, 8, 8), seed=16, dtype=torch.float32)
    probs16 = probs32.detach().half().requires_grad_(True)
    value = blob_loss(probs16, target, instances)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, blob_loss(probs16.float(), target, instances))
    value.backward()
    assert probs16.grad.dtype == torch.float16 and torch.all(torch.isfinite(probs16.grad))


def test_under_autocast_the_loss_is_float32():
    target, instances = random_instance_batch((1, 8, 8, 8), 2, [5], seed=17)
    probs = random_probs(1, 2, (8, 8, 8), seed=18, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = blob_loss(probs.bfloat16(), target, instances)
    assert value.dtype == torch.float32


@pytest.mark.parametrize("inner,kwargs", INNERS, ids=lambda x: str(x))
@pytest.mark.parametrize("masking", [True, False])
def test_regions_match_literal(inner, kwargs, masking):
    """BraTS-style nested regions: region r = labels >= r; instances are ids per region."""
    import cc3d

    labels, _ = random_instance_batch((2, 10, 10, 10), 4, [12, 6], seed=19)
    region_masks = torch.cat([(labels >= r) for r in (1, 2, 3)], 1).long()
    instances = torch.from_numpy(np.stack([
        np.stack([cc3d.connected_components(region_masks[b, r].numpy().astype(np.uint8)) for r in range(3)])
        for b in range(2)
    ]).astype(np.int64))
    g = torch.Generator().manual_seed(20)
    probs = torch.sigmoid(torch.randn(2, 3, 10, 10, 10, generator=g, dtype=torch.float64)).requires_grad_(True)
    value = blob_loss_regions(probs, region_masks, instances, inner, masking=masking, **kwargs)
    reference = literal_blob_loss(probs, region_masks, instances, inner, masking=masking, regions=True, **kwargs)
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(value, probs)[0], torch.autograd.grad(reference, probs)[0])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    classes=st.integers(2, 4),
    spatial=st.sampled_from([(5, 7), (3, 4, 5), (1, 9)]),
    data=st.data(),
    inner=st.sampled_from(["dice", "tversky", "bce"]),
    masking=st.booleans(),
    squared=st.booleans(),
    use_mask=st.booleans(),
)
def test_property_random_small_maps(batch, classes, spatial, data, inner, masking, squared, use_mask):
    """Arbitrary label and id maps (ids need not be connected nor inside one class)."""
    n = batch * math.prod(spatial)
    labels = data.draw(st.lists(st.integers(0, classes - 1), min_size=n, max_size=n))
    ids = data.draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    target = torch.tensor(labels).reshape(batch, 1, *spatial)
    instances = torch.tensor(ids).reshape(batch, 1, *spatial)
    mask = None
    if use_mask:
        mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(batch, 1, *spatial)
    probs = random_probs(batch, classes, spatial, seed=data.draw(st.integers(0, 1000)))
    kwargs = {"squared": squared} if inner == "dice" else {}
    assert_matches_literal(probs, target, instances, inner, masking=masking, loss_mask=mask, **kwargs)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"inner": "focal"}, "inner must be one of"),
        ({"target": torch.zeros(1, 1, 4, 4, dtype=torch.long)}, "target must have shape"),
        ({"target": torch.full((1, 1, 4, 4, 4), 5)}, "outside \\[0, 2\\)"),
        ({"instances": torch.full((1, 1, 4, 4, 4), 1.5)}, "integer values"),
        ({"instances": -torch.ones(1, 1, 4, 4, 4, dtype=torch.long)}, "instances must be >= 0"),
    ],
)
def test_bad_input_gets_a_clear_error(kwargs, message):
    args = {
        "probs": torch.full((1, 2, 4, 4, 4), 0.5),
        "target": torch.ones(1, 1, 4, 4, 4, dtype=torch.long),
        "instances": torch.ones(1, 1, 4, 4, 4, dtype=torch.long),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        blob_loss(**args)
