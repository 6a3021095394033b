"""BraTS lesion-wise Dice and HD95 (``--preset brats-*``, ``--gt-dilation``/``--min-lesion-volume``) against a
literal implementation of the BraTS 2023 lesion-wise procedure written from its description: lesion by lesion on
the full volume (dilate the lesion, collect the predicted components it touches, score them, drop small lesions,
add the false positives), with the HD95 of each lesion from MONAI's surface elements and areas
(``get_edge_surface_distance(use_subvoxels=True)``, the surfels of DeepMind's ``surface-distance``) and the
area-weighted 95th percentile written out here.

The ``brats-evaluation`` package on PyPI is not this procedure (its releases run panoptica with a one-to-one
matching, which ``--matching one-to-one --match-metric dice`` covers) and cannot be installed beside the project
without downgrading numpy (panoptica pins numpy < 2.3), so the comparison is with the literal implementation.
"""
import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics.utils import get_edge_surface_distance
from scipy import ndimage

from nnunet_blob.evaluation.brats import BRATS_MAX_HD95, brats_lesion_wise
from nnunet_blob.evaluation.metrics import label_metrics
from nnunet_blob.evaluation.options import BRATS_PRESETS, EvaluationOptions, options_from_arguments
from nnunet_blob.evaluation.surface import robust_hausdorff, surface_distances

FULL = np.ones((3, 3, 3))


def literal_hd95(lesion, prediction, spacing):
    """DeepMind's robust Hausdorff at 95 % from MONAI's surfel distances and areas (float32: where the cumulative
    area meets 95 % exactly, rounding may pick a neighbouring surfel, so the random cases use spacings where that
    does not happen)."""
    warnings.filterwarnings("ignore", category=FutureWarning)  # MONAI's own deprecation notice
    (e_pred, e_ref), (d_pred, d_ref), (area_pred, area_ref) = get_edge_surface_distance(
        torch.from_numpy(prediction), torch.from_numpy(lesion), spacing=spacing, use_subvoxels=True,
        symmetric=True)
    a_pred, a_ref = area_pred[e_pred], area_ref[e_ref]  # areas come as maps over the edge grid

    def percentile(d, a):
        d, a = d.numpy().astype(float), a.numpy().astype(float)
        order = np.lexsort((a, d))
        cumulative = np.cumsum(a[order]) / a.sum()
        return d[order][min(int(np.argmax(cumulative >= 0.95 - 1e-12)), d.size - 1)]

    return max(percentile(d_ref, a_ref), percentile(d_pred, a_pred))


def literal_brats(ref, pred, spacing, dilation, min_volume):
    struct = ndimage.generate_binary_structure(3, 2)
    gt_cc, _ = ndimage.label(ref, FULL)
    pred_cc, n_pred = ndimage.label(pred, FULL)
    dilated = ndimage.binary_dilation(ref, struct, iterations=dilation) if dilation else ref
    dil_cc, n = ndimage.label(dilated, FULL)
    lesions = np.zeros_like(gt_cc)
    for k in range(1, n + 1):
        lesions[(dil_cc == k) & (gt_cc > 0)] = k
    owned_any, rows = set(), []
    for k in range(1, n + 1):
        lesion = lesions == k
        roi = ndimage.binary_dilation(lesion, struct, iterations=dilation) if dilation else lesion
        hits = sorted(set(np.unique(pred_cc[roi]).tolist()) - {0})
        owned_any |= set(hits)
        union = np.isin(pred_cc, hits)
        dice = 2 * (union & lesion).sum() / (union.sum() + lesion.sum())
        hd = literal_hd95(lesion, union, spacing) if hits else math.inf
        rows.append((bool(hits), lesion.sum() * np.prod(spacing), dice, BRATS_MAX_HD95 if math.isinf(hd) else hd))
    fp = n_pred - len(owned_any)
    kept = [r for r in rows if r[1] > min_volume]
    denominator = len(kept) + fp
    return {
        "lesion_wise_Dice": sum(r[2] for r in kept) / denominator if denominator else 1.0,
        "lesion_wise_HD95": (sum(r[3] for r in kept) + BRATS_MAX_HD95 * fp) / denominator if denominator else 0.0,
        "lesion_wise_TP": sum(r[0] for r in kept), "lesion_wise_FN": sum(not r[0] for r in kept),
        "lesion_wise_FP": fp,
    }


def assert_equal(got, want):
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-6, abs=1e-9), (key, got[key], value)  # MONAI: float32


def box(mask, z, y, x):
    mask[z, y, x] = True
    return mask


def volume():
    return np.zeros((10, 16, 16), bool)


# name, reference, prediction, dilation, minimum volume
HAND_BUILT = [
    ("two nearby lesions merged by the dilation",
     box(box(volume(), slice(2, 5), slice(2, 6), slice(2, 5)), slice(2, 5), slice(2, 6), slice(7, 9)),
     box(volume(), slice(2, 5), slice(2, 6), slice(2, 5)), 1, 0.0),
    ("the same lesions apart without dilation",
     box(box(volume(), slice(2, 5), slice(2, 6), slice(2, 5)), slice(2, 5), slice(2, 6), slice(7, 9)),
     box(volume(), slice(2, 5), slice(2, 6), slice(2, 5)), 0, 0.0),
    ("prediction near, not on, a lesion belongs to it",
     box(volume(), slice(3, 6), slice(3, 6), slice(3, 6)), box(volume(), slice(3, 6), slice(3, 6), slice(7, 9)),
     3, 0.0),
    ("small lesion dropped, its prediction is no false positive",
     box(box(volume(), slice(2, 6), slice(2, 7), slice(2, 7)), 8, 13, 13),
     box(box(volume(), slice(2, 6), slice(3, 7), slice(2, 7)), 8, 13, 13), 1, 2.0),
    ("missed lesion and a false positive",
     box(box(volume(), slice(2, 5), slice(2, 5), slice(2, 5)), slice(6, 9), slice(10, 14), slice(10, 14)),
     box(box(volume(), slice(2, 5), slice(2, 5), slice(2, 5)), slice(7, 9), slice(1, 3), slice(12, 15)), 1, 0.0),
    ("empty reference, false positive", volume(), box(volume(), slice(2, 4), slice(2, 4), slice(2, 4)), 1, 0.0),
    ("both empty", volume(), volume(), 3, 50.0),
    ("only small lesions, nothing predicted", box(volume(), 4, 4, 4), volume(), 1, 2.0),
]


@pytest.mark.parametrize("name,ref,pred,dilation,min_volume", HAND_BUILT, ids=[c[0] for c in HAND_BUILT])
def test_hand_built_cases(name, ref, pred, dilation, min_volume):
    spacing = (1.0, 1.0, 1.0)
    got = brats_lesion_wise(ref, pred, spacing, dilation, min_volume)
    assert_equal(got, literal_brats(ref, pred, spacing, dilation, min_volume))


def test_hand_built_values():
    """Numbers worked out by hand for three of the cases."""
    merged = brats_lesion_wise(*HAND_BUILT[0][1:3], (1.0,) * 3, 1, 0.0)
    assert (merged["lesion_wise_TP"], merged["lesion_wise_FN"], merged["lesion_wise_FP"]) == (1, 0, 0)
    assert merged["lesion_wise_Dice"] == pytest.approx(2 * 36 / (36 + 60))  # one lesion of 36 + 24 voxels
    apart = brats_lesion_wise(*HAND_BUILT[1][1:3], (1.0,) * 3, 0, 0.0)
    assert apart["lesion_wise_FN"] == 1 and apart["lesion_wise_Dice"] == pytest.approx((1.0 + 0.0) / 2)
    assert apart["lesion_wise_HD95"] == pytest.approx((0.0 + BRATS_MAX_HD95) / 2)
    empty = brats_lesion_wise(*HAND_BUILT[6][1:3], (1.0,) * 3, 3, 50.0)
    assert (empty["lesion_wise_Dice"], empty["lesion_wise_HD95"]) == (1.0, 0.0)
    fp_only = brats_lesion_wise(*HAND_BUILT[5][1:3], (1.0,) * 3, 1, 0.0)
    assert (fp_only["lesion_wise_Dice"], fp_only["lesion_wise_HD95"]) == (0.0, BRATS_MAX_HD95)


@pytest.mark.parametrize("dilation,min_volume,spacing", [(1, 2.0, (1.0, 1.0, 1.0)), (3, 50.0, (1.0, 1.0, 1.0)),
                                                         (2, 10.0, (2.0, 0.8, 1.1)), (0, 0.0, (1.37, 1.0, 0.91))])
def test_random_cases(dilation, min_volume, spacing):
    rng = np.random.default_rng(dilation * 10 + int(min_volume))
    for _ in range(6):
        ref = ndimage.binary_dilation(rng.random((12, 20, 20)) > 0.997, iterations=rng.integers(0, 3))
        pred = np.roll(ref, rng.integers(-2, 3, 3), axis=(0, 1, 2)) & (rng.random(ref.shape) > 0.1)
        pred |= ndimage.binary_dilation(rng.random(ref.shape) > 0.999)
        assert_equal(brats_lesion_wise(ref, pred, spacing, dilation, min_volume),
                     literal_brats(ref, pred, spacing, dilation, min_volume))


def test_robust_hausdorff_equals_literal_percentile():
    rng = np.random.default_rng(2)
    for spacing in ((1.0, 1.0, 1.0), (2.5, 0.7, 1.3)):
        a = ndimage.binary_dilation(rng.random((12, 14, 16)) > 0.995, iterations=2)
        b = ndimage.binary_dilation(rng.random((12, 14, 16)) > 0.995, iterations=2)
        assert robust_hausdorff(surface_distances(a, b, spacing)) == pytest.approx(literal_hd95(a, b, spacing))


def test_presets_and_option_errors():
    assert options_from_arguments(preset="brats-met").gt_dilation == BRATS_PRESETS["brats-met"][0] == 1
    assert options_from_arguments(preset="brats-gli").min_lesion_volume_mm3 == 50.0
    with pytest.raises(ValueError, match="--preset brats-gli sets --gt-dilation"):
        options_from_arguments(preset="brats-gli", gt_dilation=1)
    with pytest.raises(ValueError, match="add --gt-dilation"):
        options_from_arguments(min_lesion_volume=5.0)
    with pytest.raises(ValueError, match="--gt-dilation must be >= 0"):
        options_from_arguments(gt_dilation=-1)


def test_label_metrics_add_the_lesion_wise_keys_only_when_asked():
    ref, pred = HAND_BUILT[4][1].astype(np.uint8), HAND_BUILT[4][2].astype(np.uint8)
    plain = label_metrics(ref, pred, 1, (1.0, 1.0, 1.0))
    assert "lesion_wise_Dice" not in plain
    brats = label_metrics(ref, pred, 1, (1.0, 1.0, 1.0), options=options_from_arguments(gt_dilation=1))
    assert brats["lesion_wise_FP"] == 1 and brats["lesion_wise_FN"] == 1
    assert {k: v for k, v in brats.items() if k in plain} == pytest.approx(plain, nan_ok=True)
    assert EvaluationOptions().brats is False
