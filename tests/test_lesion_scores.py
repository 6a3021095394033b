"""Sensitivity by lesion volume, CC-Dice, the empty-case rule and FROC/AP from confidences, each against a literal
implementation written from its definition and, where installed, the authors' tools: ``ccmetrics`` (CC-Metrics)
and ``picai_eval`` (PI-CAI), both in the test extra."""
import math

import numpy as np
import pytest
from scipy import ndimage

from nnunet_blob.evaluation.confidence import average_precision, case_detections, froc
from nnunet_blob.evaluation.lesions import cc_dice
from nnunet_blob.evaluation.metrics import label_metrics
from nnunet_blob.evaluation.options import FROC_FP_PER_CASE, EvaluationOptions
from nnunet_blob.instances.detection import label_components

NAN = float("nan")
FULL = np.ones((3, 3, 3))


def random_masks(rng, shape=(10, 18, 18), density=0.004):
    ref = ndimage.binary_dilation(rng.random(shape) > 1 - density, iterations=int(rng.integers(0, 3)))
    pred = np.roll(ref, rng.integers(-2, 3, 3), axis=(0, 1, 2)) & (rng.random(shape) > 0.2)
    pred |= ndimage.binary_dilation(rng.random(shape) > 0.999)
    return ref, pred


# ------------------------------------------------------------------------------------------------ size bins
def test_size_bins_count_found_lesions_by_volume():
    """Literal: each reference component's volume in ml, its bin, touched or not."""
    rng = np.random.default_rng(1)
    spacing = (2.0, 0.5, 0.7)
    edges = (0.001, 0.005, 0.02)
    options = EvaluationOptions(size_bins_ml=edges)
    names = options.size_bin_names()
    assert names == ["<0.001ml", "0.001-0.005ml", "0.005-0.02ml", ">=0.02ml"]
    for _ in range(5):
        ref, pred = random_masks(rng)
        got = label_metrics(ref.astype(np.uint8), pred.astype(np.uint8), 1, spacing, options=options)
        labels, n = ndimage.label(ref, FULL)
        want = {name: [0, 0] for name in names}
        for k in range(1, n + 1):
            comp = labels == k
            ml = comp.sum() * np.prod(spacing) / 1000
            name = names[sum(ml >= e for e in edges)]
            want[name][0] += 1
            want[name][1] += int((comp & pred).any())
        for name, (count, hit) in want.items():
            assert (got[f"n_ref_{name}"], got[f"TP_ref_{name}"]) == (count, hit)
            assert (math.isnan(got[f"IS_{name}"]) and count == 0) or got[f"IS_{name}"] == hit / count


def test_size_bins_follow_the_one_to_one_matching():
    ref = np.zeros((3, 3, 12), np.uint8)
    pred = ref.copy()
    ref[1, 1, 0:6] = 1
    pred[1, 1, 0:2] = 1  # touches the lesion, IoU 1/3: found by overlap, not matched one-to-one
    overlap = label_metrics(ref, pred, 1, (1.0,) * 3)
    matched = label_metrics(ref, pred, 1, (1.0,) * 3, options=EvaluationOptions(matching="one-to-one"))
    assert overlap["TP_ref_<0.01ml"] == 1 and matched["TP_ref_<0.01ml"] == 0


def test_size_bins_must_increase():
    with pytest.raises(ValueError, match="--size-bins"):
        EvaluationOptions(size_bins_ml=(0.1, 0.01))


# ------------------------------------------------------------------------------------------------- CC-Dice
def literal_cc_dice(ref, pred):
    """Every voxel goes to its nearest reference component (brute force over the component voxels); Dice inside
    each cell, averaged over the components."""
    labels, n = ndimage.label(ref, FULL)
    if n == 0:
        return 0.0 if pred.any() else NAN
    voxels = np.argwhere(labels > 0)
    ids = labels[labels > 0]
    grid = np.indices(ref.shape).reshape(ref.ndim, -1).T
    distances = ((grid[:, None, :] - voxels[None, :, :]) ** 2).sum(-1)
    nearest = distances.min(1)
    scores = []
    for k in range(1, n + 1):
        best_k = np.where(ids == k, distances, np.inf).min(1)
        cell = (best_k == nearest).reshape(ref.shape)  # ties belong to every nearest component here
        tp, fp, fn = (cell & ref & pred).sum(), (cell & ~ref & pred).sum(), (cell & ref & ~pred).sum()
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores)), bool((np.add.reduce([(np.where(ids == k, distances, np.inf).min(1) == nearest)
                                                         for k in range(1, n + 1)]) > 1).any())


def test_cc_dice_equals_literal_nearest_component_cells():
    rng = np.random.default_rng(4)
    checked = 0
    for _ in range(20):
        ref, pred = random_masks(rng, shape=(6, 11, 13), density=0.01)
        want = literal_cc_dice(ref, pred)
        got = cc_dice(*label_components(ref), pred)
        if isinstance(want, float):
            assert (math.isnan(want) and math.isnan(got)) or got == want
            continue
        value, has_ties = want
        if not has_ties:  # a voxel at the same distance from two components: the transform picks one
            assert got == pytest.approx(value, abs=1e-12)
            checked += 1
    assert checked >= 5


def test_cc_dice_equals_ccmetrics():
    torch = pytest.importorskip("torch")
    grad_enabled = torch.is_grad_enabled()
    try:
        ccmetrics = pytest.importorskip("CCMetrics")
    finally:
        torch.set_grad_enabled(grad_enabled)  # importing CCMetrics switches autograd off for the whole process
    rng = np.random.default_rng(8)
    for _ in range(8):
        ref, pred = random_masks(rng)
        metric = ccmetrics.CCDiceMetric(cc_reduction="patient")
        onehot = lambda m: torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))  # noqa: E731
        metric(y_pred=onehot(pred), y=onehot(ref))
        theirs = float(metric.cc_aggregate()[0])
        assert cc_dice(*label_components(ref), pred) == pytest.approx(theirs, abs=1e-6)


def test_cc_dice_empty_reference():
    empty = np.zeros((4, 5, 6), bool)
    assert math.isnan(cc_dice(*label_components(empty), empty))
    assert cc_dice(*label_components(empty), ~empty) == 0.0


# ----------------------------------------------------------------------------------------------- empty case
def test_empty_case_one_scores_both_empty_as_one():
    empty = np.zeros((4, 5, 6), np.uint8)
    options = EvaluationOptions(empty_case="one", matching="one-to-one", cc_dice=True)
    got = label_metrics(empty, empty, 1, (1.0,) * 3, options=options)
    for key in ("Dice", "IoU", "SurfaceDice", "IS", "IP", "F1", "RQ", "SQ", "PQ", "CC_Dice", "sensitivity"):
        assert got[key] == 1.0, key
    default = label_metrics(empty, empty, 1, (1.0,) * 3)
    assert math.isnan(default["Dice"]) and math.isnan(default["F1"])
    one_sided = empty.copy()
    one_sided[1, 1, 1] = 1
    got = label_metrics(empty, one_sided, 1, (1.0,) * 3, options=options)
    assert got["Dice"] == 0.0 and math.isnan(got["IS"]) and got["IP"] == 0.0  # something to count: no rule


# ---------------------------------------------------------------------------------------- FROC, AP from confidences
def random_detection_case(rng):
    ref, pred = random_masks(rng, shape=(8, 16, 16), density=0.006)
    labels, n = label_components(pred)
    probabilities = np.where(pred, rng.uniform(0.5, 1.0, pred.shape), rng.uniform(0.0, 0.5, pred.shape))
    return ref, pred, probabilities


def literal_entries(ref, pred, probabilities, iou=0.1):
    """PI-CAI's rule written out: every assignment of candidates to lesions enumerated."""
    from test_lesion_matching import literal_best_matching  # the tests' folder is on the path (rootdir)

    ref_labels, n_ref = ndimage.label(ref, FULL)
    pred_labels, n_pred = ndimage.label(pred, FULL)
    conf = {p: float(probabilities[pred_labels == p].max()) for p in range(1, n_pred + 1)}
    pairs, sufficient = {}, set()
    for r in range(1, n_ref + 1):
        for p in range(1, n_pred + 1):
            a, b = ref_labels == r, pred_labels == p
            score = (a & b).sum() / (a | b).sum()
            if score >= iou:
                pairs[(r, p)] = score
                sufficient.add(p)
    matched = literal_best_matching(pairs)
    by_ref = {r: conf[p] for r, p in matched}
    return [[1, by_ref.get(r, 0.0)] for r in range(1, n_ref + 1)] + \
        [[0, conf[p]] for p in range(1, n_pred + 1) if p not in sufficient]


def literal_froc_ap(entries, n_cases):
    lesions = sum(e[0] for e in entries)
    thresholds = sorted({e[1] for e in entries if e[1] > 0}, reverse=True)
    points = []
    for t in thresholds:
        tp = sum(1 for e in entries if e[0] and e[1] >= t)
        fp = sum(1 for e in entries if not e[0] and e[1] >= t)
        points.append((tp, fp))
    froc_values = {f: max([tp / lesions for tp, fp in points if fp / n_cases <= f], default=0.0)
                   for f in FROC_FP_PER_CASE}
    ap, previous = 0.0, 0.0
    for tp, fp in points:
        ap += (tp / lesions - previous) * tp / (tp + fp)
        previous = tp / lesions
    return froc_values, ap


@pytest.fixture(scope="module")
def detection_cases():
    rng = np.random.default_rng(12)
    cases = [random_detection_case(rng) for _ in range(8)]
    entries = []
    for ref, pred, prob in cases:
        ref_labels, n_ref = label_components(ref)
        pred_labels, n_pred = label_components(pred)
        conf = np.asarray(ndimage.maximum(prob, pred_labels, np.arange(1, n_pred + 1)), float)
        entries.append(case_detections(ref_labels, n_ref, pred_labels, n_pred, conf))
    return cases, entries


def test_detection_entries_froc_ap_equal_literal(detection_cases):
    cases, entries = detection_cases
    for (ref, pred, prob), mine in zip(cases, entries, strict=True):
        assert sorted(map(tuple, mine)) == sorted(map(tuple, literal_entries(ref, pred, prob)))
    pooled = [e for case in entries for e in case]
    assert any(e[0] and e[1] == 0 for e in pooled) and any(not e[0] for e in pooled)  # misses and false positives
    want_froc, want_ap = literal_froc_ap(pooled, len(cases))
    got = froc(pooled, len(cases), FROC_FP_PER_CASE)
    for f, value in want_froc.items():
        assert got[f"{f:g}"] == pytest.approx(value)
    assert got["mean"] == pytest.approx(np.mean(list(want_froc.values())))
    assert average_precision(pooled) == pytest.approx(want_ap)


def test_detection_equals_picai_eval(detection_cases):
    """picai_eval on the same detection maps (each candidate's voxels set to its confidence): the same entries,
    the same AP, and the same FROC read from its lesion TPR/FPR curve."""
    picai = pytest.importorskip("picai_eval")
    cases, entries = detection_cases
    detection_maps = []
    for _ref, pred, prob in cases:
        pred_labels, n_pred = label_components(pred)
        conf = ndimage.maximum(prob, pred_labels, np.arange(1, n_pred + 1))
        detection_maps.append(np.concatenate(([0.0], np.asarray(conf, float)))[pred_labels].astype(np.float32))
    metrics = picai.evaluate(y_det=detection_maps, y_true=[c[0].astype(np.int32) for c in cases],
                             num_parallel_calls=1)
    for i, mine in enumerate(entries):
        theirs = sorted((int(t), float(c)) for t, c, _ in metrics.lesion_results[i])
        assert sorted((int(t), float(np.float32(c))) for t, c in mine) == theirs  # picai reads float32 maps
    pooled = [e for case in entries for e in case]
    assert average_precision(pooled) == pytest.approx(metrics.AP)
    tpr, fpr = np.asarray(metrics.lesion_TPR), np.asarray(metrics.lesion_FPR)
    got = froc(pooled, len(cases), FROC_FP_PER_CASE)
    for f in FROC_FP_PER_CASE:
        assert got[f"{f:g}"] == pytest.approx(float(tpr[fpr <= f].max(initial=0.0)))
