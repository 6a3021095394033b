"""Hand-built cases with known answers for nnunet_blob.evaluation.metrics; surface Dice against MONAI."""
import math

import numpy as np
import pytest
from scipy import ndimage

from nnunet_blob.evaluation.metrics import label_metrics, spatial_view, surface_dice

SHAPE = (5, 8, 8)


def seg(boxes, shape=SHAPE):
    """Label map from ``[(label, (slice, ...)), ...]``."""
    out = np.zeros(shape, np.uint8)
    for label, box in boxes:
        out[box] = label
    return out


def line(x0, x1, z=2, y=2):
    return np.s_[z, y, x0:x1 + 1]


NAN = float("nan")
# name, reference, prediction, label or region, ignore label, expected
CASES = [
    ("split lesion", [(1, line(1, 6))], [(1, line(1, 2)), (1, line(5, 6))], 1, None,
     dict(n_ref_instances=1, n_pred_instances=2, IS=1.0, IP=1.0, F1=1.0, lesion_count_difference=1,
          TP=4, FP=0, FN=2)),
    ("merged lesions", [(1, line(1, 2)), (1, line(5, 6))], [(1, line(1, 6))], 1, None,
     dict(n_ref_instances=2, n_pred_instances=1, IS=1.0, IP=1.0, F1=1.0, TP=4, FP=2, FN=0)),
    ("missed one-voxel lesion", [(1, line(1, 3)), (1, np.s_[2, 6, 6])], [(1, line(1, 3))], 1, None,
     dict(n_ref_instances=2, n_pred_instances=1, IS=0.5, IP=1.0, F1=2 / 3, FN_instances=1, TP=3, FN=1)),
    ("one-voxel lesion hit by one voxel", [(1, np.s_[2, 6, 6])], [(1, np.s_[1:4, 5:8, 5:8])], 1, None,
     dict(n_ref_instances=1, n_pred_instances=1, IS=1.0, IP=1.0, F1=1.0, TP=1, FP=26, Dice=2 / 28)),
    ("empty reference", [], [(1, line(1, 3))], 1, None,
     dict(n_ref_instances=0, n_pred_instances=1, IS=NAN, IP=0.0, F1=0.0, Dice=0.0, SurfaceDice=0.0,
          sensitivity=NAN, precision=0.0)),
    ("empty prediction", [(1, line(1, 3))], [], 1, None,
     dict(n_ref_instances=1, n_pred_instances=0, IS=0.0, IP=NAN, F1=0.0, Dice=0.0, SurfaceDice=0.0,
          sensitivity=0.0, precision=NAN)),
    ("both empty", [], [], 1, None,
     dict(IS=NAN, IP=NAN, F1=NAN, Dice=NAN, IoU=NAN, SurfaceDice=NAN, lesion_count_difference=0,
          absolute_volume_difference_ml=0.0)),
    ("false positive under the ignore label", [(1, line(1, 3)), (2, np.s_[0, :, :])],
     [(1, line(1, 3)), (1, np.s_[0, 5, 5])], 1, 2,
     dict(n_ref_instances=1, n_pred_instances=1, IS=1.0, IP=1.0, F1=1.0, FP=0, TN=5 * 64 - 64 - 3)),
    ("region joins labels 1 and 2", [(1, line(1, 2)), (2, line(3, 4))], [(2, line(1, 4))], (1, 2), None,
     dict(n_ref_instances=1, n_pred_instances=1, IS=1.0, IP=1.0, F1=1.0, Dice=1.0, SurfaceDice=1.0, TP=4)),
    ("label 2 alone", [(1, line(1, 2)), (2, line(3, 4))], [(2, line(1, 4))], 2, None,
     dict(n_ref_instances=1, n_pred_instances=1, TP=2, FP=2, IS=1.0, IP=1.0)),
    ("false positive far away", [(1, line(1, 2))], [(1, line(1, 2)), (1, np.s_[4, 7, 7])], 1, None,
     dict(n_ref_instances=1, n_pred_instances=2, IS=1.0, IP=0.5, F1=2 / 3, FP_instances=1,
          absolute_volume_difference_ml=0.001)),
]


@pytest.mark.parametrize("name,ref,pred,label,ignore,expected", CASES, ids=[c[0] for c in CASES])
def test_hand_built_cases(name, ref, pred, label, ignore, expected):
    m = label_metrics(seg(ref), seg(pred), label, (1.0, 1.0, 1.0), ignore_label=ignore)
    for key, want in expected.items():
        got = m[key]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want), (key, got, want)


SPACING_2D = [
    # 2D image as nnU-Net's reader gives it: (1, 1, y, x), spacing 999 on the dummy axis
    ("diagonal pixels are one component (8-connectivity)", 26, 1, 2),
    ("6-connectivity becomes 4 in 2D", 6, 2, 3),
]


@pytest.mark.parametrize("name,connectivity,n_ref,n_pred", SPACING_2D, ids=[c[0] for c in SPACING_2D])
def test_2d_with_spacing(name, connectivity, n_ref, n_pred):
    ref = np.zeros((1, 1, 6, 6), np.uint8)
    ref[0, 0, 1, 1] = ref[0, 0, 2, 2] = 1
    pred = ref.copy()
    pred[0, 0, 4, 4] = 1  # one extra pixel: a false positive
    (r, spacing), (p, _) = spatial_view(ref, (999.0, 0.5, 2.0)), spatial_view(pred, (999.0, 0.5, 2.0))
    assert r.shape == (6, 6) and spacing == (0.5, 2.0)
    m = label_metrics(r, p, 1, spacing, connectivity=connectivity)
    assert (m["n_ref_instances"], m["n_pred_instances"]) == (n_ref, n_pred)
    assert (m["IS"], m["FP_instances"]) == (1.0, 1) and m["IP"] == pytest.approx((n_pred - 1) / n_pred)
    assert m["absolute_volume_difference_ml"] == pytest.approx(0.5 * 2.0 / 1000)


def _random_blobs(rng, shape, density):
    return ndimage.binary_dilation(rng.random(shape) > 1 - density, iterations=2)


SURFACE = [
    ("3D anisotropic, tol 1", (18, 20, 16), (2.5, 0.7, 1.3), 1.0, 0),
    ("3D anisotropic, tol 2.5", (18, 20, 16), (3.0, 0.5, 0.9), 2.5, 1),
    ("3D isotropic, tol 0", (16, 16, 16), (1.0, 1.0, 1.0), 0.0, 2),
    ("2D anisotropic, tol 1.5", (40, 30), (0.6, 1.7), 1.5, 3),
]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
@pytest.mark.parametrize("name,shape,spacing,tol,seed", SURFACE, ids=[c[0] for c in SURFACE])
def test_surface_dice_equals_monai_subvoxel(name, shape, spacing, tol, seed):
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(seed)
    a, b = _random_blobs(rng, shape, 0.02), _random_blobs(rng, shape, 0.02)
    onehot = lambda m: torch.tensor(np.stack([~m, m])[None], dtype=torch.float64)  # noqa: E731
    ref = monai_metrics.compute_surface_dice(onehot(b), onehot(a), [tol], spacing=spacing, use_subvoxels=True)
    ours = surface_dice(a, b, spacing, tol)
    assert 0.0 < ours < 1.0
    assert ours == pytest.approx(float(ref), abs=1e-6)


def test_surface_dice_rejects_mismatched_spacing():
    with pytest.raises(ValueError, match="spacing"):
        surface_dice(np.ones((3, 3, 3), bool), np.ones((3, 3, 3), bool), (1.0, 1.0), 1.0)
