"""CC-DiceCE against the literal per-cell implementation: values and gradients, float64, both entry paths."""
from __future__ import annotations

import pytest
import torch

from nnunet_blob.instances.voronoi import voronoi_cells
from nnunet_blob.losses import cc_dice_ce_loss, cc_dice_ce_loss_regions
from reference_losses import literal_cc_dice_ce_loss
from test_blob_loss import random_probs
from test_topk_tversky import random_labels

pytestmark = pytest.mark.usefixtures("loss_path")


def assert_matches_literal(probs, target, cells, regions=False, **kwargs):
    function = cc_dice_ce_loss_regions if regions else cc_dice_ce_loss
    value = function(probs, target, cells, **kwargs)
    reference = literal_cc_dice_ce_loss(probs, target, cells, regions=regions, **kwargs)
    (grad,) = torch.autograd.grad(value, probs)
    (reference_grad,) = torch.autograd.grad(reference, probs, allow_unused=True)
    reference_grad = torch.zeros_like(probs) if reference_grad is None else reference_grad
    torch.testing.assert_close(value, reference, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=1e-9, atol=1e-12)
    return value


CASES = {
    # name: (batch, classes incl. background, spatial, background share)
    "binary 3d": (2, 2, (7, 7, 7), 0.9),
    "three classes 3d": (2, 3, (6, 6, 6), 0.85),
    "four classes 2d": (3, 4, (12, 12), 0.8),
    "dense foreground": (1, 3, (5, 5, 5), 0.3),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("smooth", [0.0, 1e-5])
def test_voronoi_cells_of_random_targets(case, smooth):
    batch, classes, spatial, background = CASES[case]
    target = random_labels(batch, classes, spatial, seed=len(case), background_share=background)
    probs = random_probs(batch, classes, spatial, seed=3)
    assert_matches_literal(probs, target, voronoi_cells(target, classes).to(torch.int16), smooth=smooth)


def test_arbitrary_cell_ids_and_dtypes():
    """The loss reads any partition, with gaps in the ids, in uint8, int16 and int64."""
    target = random_labels(2, 3, (6, 6, 6), seed=5)
    probs = random_probs(2, 3, (6, 6, 6), seed=6)
    g = torch.Generator().manual_seed(7)
    cells = torch.randint(0, 5, (2, 2, 6, 6, 6), generator=g) * 3
    for dtype in (torch.uint8, torch.int16, torch.int64):
        assert_matches_literal(probs, target, cells.to(dtype))


def test_ignore_mask_and_empty_samples():
    target = random_labels(3, 3, (6, 6, 6), seed=8)
    target[1] = 0  # a sample without components: no term
    mask = random_labels(3, 2, (6, 6, 6), seed=9, background_share=0.3).bool()
    cells = voronoi_cells(torch.where(mask, target, 0), 3)
    target = torch.where(mask, target, 3)  # the ignore label, outside the channels, masked
    probs = random_probs(3, 3, (6, 6, 6), seed=10)
    assert_matches_literal(probs, target, cells, loss_mask=mask)


@pytest.mark.parametrize("use_mask", [False, True])
def test_published_empty_sample_fallback(use_mask):
    """empty_samples="published": a sample without components scores 1 + its mean cross-entropy."""
    target = random_labels(3, 3, (6, 6, 6), seed=16)
    target[1] = 0
    mask = random_labels(3, 2, (6, 6, 6), seed=17, background_share=0.3).bool() if use_mask else None
    cells = voronoi_cells(target if mask is None else torch.where(mask, target, 0), 3)
    probs = random_probs(3, 3, (6, 6, 6), seed=18)
    assert_matches_literal(probs, target, cells, loss_mask=mask, empty_samples="published")
    g = torch.Generator().manual_seed(19)
    regions = torch.cat([target >= r for r in (1, 2)], 1).long()
    region_cells = torch.stack([torch.stack([voronoi_cells(regions[b:b + 1, r:r + 1], 2)[0, 0] for r in range(2)])
                                for b in range(3)])
    sigmoid = torch.sigmoid(torch.randn(3, 2, 6, 6, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert_matches_literal(sigmoid, regions, region_cells, regions=True, loss_mask=mask, empty_samples="published")


def test_no_component_anywhere_is_zero_with_a_graph():
    probs = random_probs(2, 3, (4, 4, 4), seed=11)
    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    value = cc_dice_ce_loss(probs, target, torch.zeros(2, 2, 4, 4, 4, dtype=torch.int16))
    value.backward()
    assert value.item() == 0.0 and torch.all(probs.grad == 0)


def test_far_false_positive_is_charged_to_the_nearest_lesion():
    """Two lesions; a false positive near lesion 2 changes lesion 2's cell term only."""
    target = torch.zeros(1, 1, 1, 20, dtype=torch.long)
    target[0, 0, 0, [2, 16]] = 1
    cells = voronoi_cells(target, 2)
    probs = torch.zeros(1, 2, 1, 20, dtype=torch.float64)
    probs[0, 1] = (target[0, 0] == 1).double() * 0.9 + 0.05
    probs[0, 1, 0, 19] = 0.9  # false positive in lesion 2's cell
    probs[0, 0] = 1 - probs[0, 1]
    probs.requires_grad_(True)
    value = assert_matches_literal(probs, target, cells)
    (grad,) = torch.autograd.grad(cc_dice_ce_loss(probs, target, cells), probs)
    assert grad[0, 1, 0, 19] > 0 and value > 0


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_regions_match_literal(smooth):
    g = torch.Generator().manual_seed(12)
    labels = random_labels(2, 4, (6, 6, 6), seed=13, background_share=0.7)
    target = torch.cat([labels >= r for r in (1, 2, 3)], 1).long()  # nested regions
    cells = torch.stack([torch.stack([voronoi_cells(target[b:b + 1, r:r + 1], 2)[0, 0] for r in range(3)])
                         for b in range(2)])
    probs = torch.sigmoid(torch.randn(2, 3, 6, 6, 6, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert_matches_literal(probs, target, cells, regions=True, smooth=smooth)


def test_fp16_and_autocast_compute_in_float32():
    target = random_labels(2, 3, (5, 5, 5), seed=14)
    cells = voronoi_cells(target, 3).to(torch.int16)
    half = random_probs(2, 3, (5, 5, 5), seed=15, dtype=torch.float32).detach().half()
    out = cc_dice_ce_loss(half, target, cells)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, cc_dice_ce_loss(half.float(), target, cells))


@pytest.mark.parametrize("kwargs,message", [
    ({"cells": torch.zeros(1, 1, 4, 4, 4, dtype=torch.int16)}, "cells must have shape"),
    ({"cells": -torch.ones(1, 2, 4, 4, 4, dtype=torch.int16)}, "cells must be >= 0"),
    ({"target": torch.full((1, 1, 4, 4, 4), 7)}, "outside \\[0, 3\\)"),
])
def test_bad_input_gets_a_clear_error(kwargs, message):
    args = {"probs": torch.full((1, 3, 4, 4, 4), 1 / 3), "target": torch.ones(1, 1, 4, 4, 4, dtype=torch.long),
            "cells": torch.ones(1, 2, 4, 4, 4, dtype=torch.int16)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        cc_dice_ce_loss(**args)
