"""The postprocessing rules against literal implementations of their definitions, and the component tables
against ``nnunet_blob evaluate``'s own per-case metrics on the postprocessed masks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage

from nnunet_blob.evaluation.metrics import label_metrics
from nnunet_blob.postprocessing.rules import (
    LabelLayout,
    Setting,
    postprocess,
    remove_small_components,
    segmentation_from_probabilities,
)
from nnunet_blob.postprocessing.tables import TABLE_METRICS, component_table, grid_counts, metrics_of_counts

SPACING = (1.5, 0.8, 1.2)


def literal_remove_small(seg, label_or_region, min_volume, spacing):
    """Components by scipy's labelling with the full neighbourhood (26 in 3D, 8 in 2D), removed one by one."""
    values = label_or_region if isinstance(label_or_region, tuple) else (label_or_region,)
    mask = np.isin(seg, values)
    labels, n = ndimage.label(mask, structure=np.ones((3,) * seg.ndim))
    out = seg.copy()
    for i in range(1, n + 1):
        if (labels == i).sum() * float(np.prod(spacing)) < min_volume:
            out[labels == i] = 0
    return out


def literal_segmentation(probabilities, labels, thresholds):
    """Voxel by voxel: the best foreground class k wins where p_k > t_k (no threshold: where p_k > p_0)."""
    seg = np.zeros(probabilities.shape[1:], np.uint8)
    for index in np.ndindex(*probabilities.shape[1:]):
        p = probabilities[(slice(None), *index)]
        k = int(np.argmax(p[1:])) + 1
        t = thresholds.get(labels[k - 1])
        if (p[k] > p[0]) if t is None else (p[k] > t):
            seg[index] = labels[k - 1]
    return seg


def random_case(rng, shape=(10, 12, 14), classes=2, ignore=None):
    """Blobs of classes 1..classes in the reference; the prediction moves, drops and adds some, and speckles."""
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for _ in range(6):
        c = rng.integers(1, classes + 1)
        lo = [rng.integers(0, s - 3) for s in shape]
        size = [rng.integers(1, 4) for _ in shape]
        box = tuple(slice(a, a + b) for a, b in zip(lo, size, strict=True))
        ref[box] = c
        if rng.random() < 0.8:
            shifted = tuple(slice(min(a + rng.integers(0, 2), s - b), min(a + rng.integers(0, 2), s - b) + b)
                            for a, b, s in zip(lo, size, shape, strict=True))
            pred[shifted] = c
    speckles = rng.random(shape) < 0.01
    pred[speckles] = rng.integers(1, classes + 1, size=int(speckles.sum()))
    if ignore is not None:
        ref[:, :, -3:] = ignore
    return ref, pred


def test_remove_small_components_is_the_literal_removal():
    rng = np.random.default_rng(0)
    for _ in range(5):
        _, pred = random_case(rng)
        for label_or_region, volume in itertools.product((1, 2, (1, 2)), (0.0, 1.5, 3.0, 10.0)):
            expected = literal_remove_small(pred, label_or_region, volume, SPACING) if volume > 0 else pred
            np.testing.assert_array_equal(remove_small_components(pred, label_or_region, volume, SPACING),
                                          expected)
    # 2D: 8-connectivity, areas in mm²
    seg = np.zeros((6, 6), np.uint8)
    seg[0, 0] = seg[1, 1] = 1  # one component of two pixels (diagonal neighbours)
    seg[4, 4] = 1
    np.testing.assert_array_equal(remove_small_components(seg, 1, 1.5, (1.0, 1.0)),
                                  literal_remove_small(seg, 1, 1.5, (1.0, 1.0)))
    assert remove_small_components(seg, 1, 1.5, (1.0, 1.0)).sum() == 2


def test_segmentation_from_probabilities_is_the_literal_rule():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5, 6, 7))
    probabilities = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    layout = LabelLayout((1, 2, 3))
    # no threshold: nnU-Net's argmax exactly
    np.testing.assert_array_equal(segmentation_from_probabilities(probabilities, layout), probabilities.argmax(0))
    for thresholds in ({1: 0.3}, {2: 0.6, 3: None}, {1: 0.2, 2: 0.4, 3: 0.25}):
        np.testing.assert_array_equal(segmentation_from_probabilities(probabilities, layout, thresholds),
                                      literal_segmentation(probabilities, (1, 2, 3), thresholds))


def test_region_thresholds_write_the_regions_in_nnunets_order():
    rng = np.random.default_rng(2)
    probabilities = rng.random((2, 4, 5, 6)).astype(np.float32)
    layout = LabelLayout(((1, 2), (2,)), regions_class_order=(1, 2))
    expected = np.zeros((4, 5, 6), np.uint8)
    expected[probabilities[0] > 0.5] = 1
    expected[probabilities[1] > 0.7] = 2
    np.testing.assert_array_equal(segmentation_from_probabilities(probabilities, layout, {(2,): 0.7}), expected)


def test_postprocess_applies_thresholds_then_minimum_volumes():
    probabilities = np.zeros((2, 3, 8, 8), np.float32)
    probabilities[0] = 1.0
    probabilities[:, 1, 1:4, 1:4] = [[[0.2]], [[0.8]]]  # a lesion, 9 voxels
    probabilities[:, 1, 6, 6] = [0.3, 0.7]  # a one-voxel speckle
    probabilities[:, 2, 6, 1] = [0.45, 0.55]  # a faint one
    layout = LabelLayout((1,))
    spacing = (2.0, 1.0, 1.0)
    seg = postprocess(None, probabilities, [Setting(1)], layout, spacing)
    assert seg.sum() == 11
    seg = postprocess(None, probabilities, [Setting(1, threshold=0.6)], layout, spacing)
    assert seg.sum() == 10
    seg = postprocess(None, probabilities, [Setting(1, min_volume_mm3=4.0, threshold=0.6)], layout, spacing)
    assert seg.sum() == 9 and seg[1, 1:4, 1:4].all()
    with pytest.raises(ValueError, match="needs the probabilities"):
        postprocess(seg, None, [Setting(1, threshold=0.6)], layout, spacing)


@pytest.mark.parametrize("ignore", [None, 3])
def test_table_metrics_equal_evaluate_on_the_postprocessed_masks(ignore):
    rng = np.random.default_rng(3)
    one = float(np.prod(SPACING))  # volumes exactly at component sizes: a component of that size stays
    volumes = [0.0, 1.0, one, 1.5, 2 * one, 3.0, 3 * one, 4.0, 8.0, 20.0, 1e9]
    for _ in range(12):
        ref, pred = random_case(rng, ignore=ignore)
        for label_or_region in (1, 2, (1, 2)):
            table = component_table(ref, pred, label_or_region, SPACING, ignore)
            counts = grid_counts(table, volumes)
            for row, volume in zip(counts, volumes, strict=True):
                expected = label_metrics(ref, remove_small_components(pred, label_or_region, volume, SPACING),
                                         label_or_region, SPACING, ignore)
                got = metrics_of_counts(row, table.voxel_volume)
                for name in TABLE_METRICS:
                    assert got[name] == pytest.approx(expected[name], nan_ok=True, rel=1e-12), \
                        (name, label_or_region, volume)


def test_table_of_a_component_cut_by_the_ignore_label():
    """A predicted component crossing the ignore slab is one component for the postprocessing (its full volume)
    and two for the evaluation; both halves go together."""
    ref = np.zeros((1, 1, 9), np.uint8)
    pred = np.zeros_like(ref)
    ref[..., 4] = 2  # ignore
    pred[..., 2:7] = 1  # 5 voxels, cut into 2 + 2 by the ignore voxel
    table = component_table(ref[0], pred[0], 1, (1.0, 1.0), ignore_label=2)
    np.testing.assert_array_equal(table.pred_parent_volume, [5.0, 5.0])
    np.testing.assert_array_equal(table.pred_voxels, [2, 2])
    counts = grid_counts(table, [0.0, 5.0, 5.5])
    np.testing.assert_array_equal(counts[:, 6], [2, 2, 0])  # predicted components
