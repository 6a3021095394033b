"""The cell field's scores of ``nnunet_blob evaluate`` (average precision over IoU thresholds of the 2018 Data
Science Bowl, F1/precision/recall at IoU 0.5, panoptic quality) on instance maps: checked against a literal
implementation written here from the definitions, and against StarDist's ``stardist.matching`` (the peer tool);
touching objects through the real command on PNG files; the checks of the instance maps.

The definitions (see :mod:`nnunet_blob.evaluation.lesions`): per threshold t, TP(t) is the largest number of
one-to-one (reference, predicted) pairs with IoU >= t; ``AP@t = TP / (TP + FP + FN)``, ``DSB_AP`` = mean over
t in 0.5, 0.55, ..., 0.95. ``>=`` as StarDist and Cellpose compare (the challenge's text says "greater than").
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_blob.evaluation.folder import evaluate_folder_simple
from nnunet_blob.evaluation.lesions import pooled_cell_scores
from nnunet_blob.evaluation.metrics import label_evaluation
from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.instances.detection import class_instances
from nnunet_blob.instances.matching import match_components, overlap_table

THRESHOLDS = [0.5 + 0.05 * i for i in range(10)]
CELLS = EvaluationOptions(matching="one-to-one", cell_scores=True)


# ----------------------------------------------------------------------------- literal reference (float64)
def literal_iou(ref: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, list, list]:
    """IoU of every (reference object, predicted object) pair, one pair at a time."""
    ref_ids = sorted(set(np.unique(ref).tolist()) - {0})
    pred_ids = sorted(set(np.unique(pred).tolist()) - {0})
    iou = np.zeros((len(ref_ids), len(pred_ids)), np.float64)
    for i, a in enumerate(ref_ids):
        for j, b in enumerate(pred_ids):
            inter = np.sum((ref == a) & (pred == b))
            union = np.sum((ref == a) | (pred == b))
            iou[i, j] = inter / union
    return iou, ref_ids, pred_ids


def best_matching(iou: np.ndarray, t: float) -> tuple[int, float]:
    """(most pairs, largest IoU sum among those) over every one-to-one matching of the pairs with IoU >= t,
    by enumerating them all."""
    pairs = [(i, j) for i in range(iou.shape[0]) for j in range(iou.shape[1]) if iou[i, j] >= t]
    best = (0, 0.0)

    def grow(start: int, rows: frozenset, cols: frozenset, count: int, total: float):
        nonlocal best
        best = max(best, (count, total))
        for k in range(start, len(pairs)):
            i, j = pairs[k]
            if i not in rows and j not in cols:
                grow(k + 1, rows | {i}, cols | {j}, count + 1, total + iou[i, j])

    grow(0, frozenset(), frozenset(), 0, 0.0)
    return best


def ratio(a, b):
    return a / b if b else float("nan")


def literal_scores(ref: np.ndarray, pred: np.ndarray) -> dict:
    iou, ref_ids, pred_ids = literal_iou(ref, pred)
    n_ref, n_pred = len(ref_ids), len(pred_ids)
    out = {}
    for t in THRESHOLDS:
        tp = best_matching(iou, t)[0]
        out[f"TP@{t:g}"] = tp
        out[f"AP@{t:g}"] = ratio(tp, tp + (n_pred - tp) + (n_ref - tp))
    out["DSB_AP"] = float(np.mean([out[f"AP@{t:g}"] for t in THRESHOLDS])) if n_ref + n_pred else float("nan")
    tp = out["TP@0.5"]
    out["F1@0.5"] = ratio(2 * tp, n_ref + n_pred)
    out["precision@0.5"] = ratio(tp, n_pred)
    out["recall@0.5"] = ratio(tp, n_ref)
    count, total = best_matching(iou, 0.5)
    rq = ratio(count, count + 0.5 * (n_pred - count) + 0.5 * (n_ref - count))
    out["PQ"] = (total / count) * rq if count else (float("nan") if n_ref + n_pred == 0 else 0.0)
    return out


# ----------------------------------------------------------------------------- instance maps of the tests
def random_instances(rng, shape, n_objects: int) -> np.ndarray:
    """Boxes with ids 1..n (later boxes cover earlier ones, so objects touch and may be cut)."""
    out = np.zeros(shape, np.int64)
    for k in range(1, n_objects + 1):
        lo = [int(rng.integers(0, s - 3)) for s in shape]
        hi = [min(s, a + int(rng.integers(3, 10))) for a, s in zip(lo, shape, strict=True)]
        out[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = k
    ids = np.unique(out[out > 0])  # objects covered completely are gone: renumber 1..n
    return np.where(out > 0, np.searchsorted(ids, out) + 1, 0)


def perturbed(rng, instances: np.ndarray) -> np.ndarray:
    """A prediction: objects kept, or shifted by 1 or 2 voxels along one axis, some dropped, a few new boxes."""
    out = np.zeros_like(instances)
    for k in np.unique(instances[instances > 0]):
        if rng.random() < 0.15:
            continue
        shift = int(rng.choice([0, 0, 1, -1, 2]))
        moved = np.roll(instances == k, shift, axis=int(rng.integers(instances.ndim)))
        out[moved] = k + 100
    extra = random_instances(rng, instances.shape, int(rng.integers(0, 3)))
    out[extra > 0] = extra[extra > 0] + 200
    return out


def our_scores(ref: np.ndarray, pred: np.ndarray, options: EvaluationOptions = CELLS) -> dict:
    """The case's metrics of label 1 through the evaluation's own path, with both instance maps."""
    metrics, _, _ = label_evaluation((ref > 0).astype(np.uint8), (pred > 0).astype(np.uint8), 1,
                                     (1.0,) * ref.ndim, None, options, None, ref, pred)
    return metrics


def cases(n: int = 12):
    rng = np.random.default_rng(20180416)
    for index in range(n):
        shape = (32, 32) if index % 3 else (10, 16, 16)  # every third case is 3D
        ref = random_instances(rng, shape, int(rng.integers(1, 9)))
        yield ref, perturbed(rng, ref)


def assert_same(ours: dict, expected: dict, keys) -> None:
    for key in keys:
        assert np.isclose(ours[key], expected[key], rtol=0, atol=1e-12, equal_nan=True), (key, ours[key],
                                                                                          expected[key])


KEYS = [*(f"TP@{t:g}" for t in THRESHOLDS), *(f"AP@{t:g}" for t in THRESHOLDS), "DSB_AP", "F1@0.5",
        "precision@0.5", "recall@0.5", "PQ"]


def test_scores_equal_the_literal_definition():
    for ref, pred in cases():
        assert_same(our_scores(ref, pred), literal_scores(ref, pred), KEYS)


def test_matching_below_one_half_is_the_largest_one_to_one_matching():
    """Below IoU 0.5 a pair is no longer unique: the matching has the most pairs, then the largest IoU sum."""
    for ref, pred in cases():
        iou, ref_ids, pred_ids = literal_iou(ref, pred)
        table = overlap_table(class_instances(ref, ref > 0)[0], class_instances(pred, pred > 0)[0])
        for t in (0.05, 0.2, 0.35):
            matching = match_components(table, "iou", t)
            count, total = best_matching(iou, t)
            assert matching.n_matched == count
            assert np.isclose(matching.iou.sum(), total, rtol=0, atol=1e-12)


def test_instance_ids_may_have_gaps_and_be_large():
    ref, pred = next(cases())
    for offset in (1000, 1 << 30):  # a lookup table, then sorted ids
        gapped_ref = np.where(ref > 0, ref * 7 + offset, 0)
        gapped_pred = np.where(pred > 0, pred * 3 + offset, 0)
        assert_same(our_scores(gapped_ref, gapped_pred), our_scores(ref, pred), KEYS)
        labels, n = class_instances(gapped_ref, gapped_ref > 0)
        assert n == np.unique(ref[ref > 0]).size and np.array_equal(labels > 0, ref > 0)


def test_an_iou_of_exactly_the_threshold_is_a_match():
    """Two touching halves of one reference object: IoU exactly 0.5 each; ``>=``: one of them matches."""
    ref = np.zeros((6, 10), np.int64)
    ref[1:3, 1:9] = 1
    pred = np.zeros_like(ref)
    pred[1:3, 1:5], pred[1:3, 5:9] = 1, 2
    out = our_scores(ref, pred)
    assert out["TP@0.5"] == 1 and out["AP@0.5"] == pytest.approx(1 / 2) and out["TP@0.55"] == 0
    assert out["DSB_AP"] == pytest.approx(0.05)


@pytest.mark.parametrize("side", ["reference", "prediction", "both"])
def test_empty_sides(side):
    full = np.zeros((12, 12), np.int64)
    full[2:5, 2:5], full[7:10, 7:10] = 1, 2
    empty = np.zeros_like(full)
    ref, pred = (empty, full) if side == "reference" else (full, empty) if side == "prediction" else (empty, empty)
    out = our_scores(ref, pred)
    assert_same(out, literal_scores(ref, pred), KEYS)
    nan = float("nan")
    expected = {"reference": {"DSB_AP": 0.0, "F1@0.5": 0.0, "precision@0.5": 0.0, "recall@0.5": nan},
                "prediction": {"DSB_AP": 0.0, "F1@0.5": 0.0, "precision@0.5": nan, "recall@0.5": 0.0},
                "both": {"DSB_AP": nan, "F1@0.5": nan, "precision@0.5": nan, "recall@0.5": nan}}[side]
    assert_same(out, expected, expected)
    if side == "both":
        one = our_scores(ref, pred, EvaluationOptions(matching="one-to-one", cell_scores=True, empty_case="one"))
        assert all(one[k] == 1.0 for k in ("DSB_AP", "AP@0.75", "F1@0.5", "precision@0.5", "recall@0.5", "PQ"))


# ----------------------------------------------------------------------------- the peer: StarDist
def test_scores_equal_stardist_per_case_and_pooled():
    """StarDist's ``matching`` (accuracy = TP/(TP+FP+FN), f1, precision, recall, panoptic_quality) per case and
    ``matching_dataset`` pooled (``by_image=False``: counts added) and per image (``by_image=True``: means)."""
    stardist_matching = pytest.importorskip("stardist.matching", reason="StarDist (test extra) is not installed")
    refs, preds, ours = [], [], []
    for ref, pred in cases():
        refs.append(ref.astype(np.int32))
        preds.append(pred.astype(np.int32))
        ours.append(our_scores(ref, pred))
        for t in THRESHOLDS:
            peer = stardist_matching.matching(refs[-1], preds[-1], thresh=t)
            assert ours[-1][f"TP@{t:g}"] == peer.tp
            assert ours[-1][f"AP@{t:g}"] == pytest.approx(peer.accuracy, abs=1e-12)
            if t == 0.5:
                assert ours[-1]["F1@0.5"] == pytest.approx(peer.f1, abs=1e-12)
                assert ours[-1]["precision@0.5"] == pytest.approx(peer.precision, abs=1e-12)
                assert ours[-1]["recall@0.5"] == pytest.approx(peer.recall, abs=1e-12)
                # StarDist sums its IoUs in float32
                assert ours[-1]["PQ"] == pytest.approx(peer.panoptic_quality, rel=1e-6, abs=1e-7)
    pooled = pooled_cell_scores(ours)
    for t in THRESHOLDS:
        peer = stardist_matching.matching_dataset(refs, preds, thresh=t, by_image=False, show_progress=False)
        assert pooled[f"TP@{t:g}"] == peer.tp and pooled[f"AP@{t:g}"] == pytest.approx(peer.accuracy, abs=1e-12)
        per_image = stardist_matching.matching_dataset(refs, preds, thresh=t, by_image=True, show_progress=False)
        assert np.mean([c[f"AP@{t:g}"] for c in ours]) == pytest.approx(per_image.accuracy, abs=1e-12)
    assert pooled["F1@0.5"] == pytest.approx(
        stardist_matching.matching_dataset(refs, preds, thresh=0.5, show_progress=False).f1, abs=1e-12)


# ----------------------------------------------------------------------------- folders and the command
def write_png(path, array) -> None:
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def three_squares() -> tuple[np.ndarray, np.ndarray]:
    """Labels (all 1) and instances (1, 2, 3) of three squares, the first two touching."""
    instances = np.zeros((24, 24), np.uint8)
    instances[2:10, 2:10], instances[2:10, 10:18], instances[14:22, 14:22] = 1, 2, 3
    return (instances > 0).astype(np.uint8), instances


@pytest.fixture
def png_folders(tmp_path):
    labels, instances = three_squares()
    for sub in ("gt", "gt_instances", "pred", "pred_instances"):
        (tmp_path / sub).mkdir()
    for case in ("cells_a", "cells_b"):
        write_png(tmp_path / "gt" / f"{case}.png", labels)
        write_png(tmp_path / "gt_instances" / f"{case}.png", instances)
        write_png(tmp_path / "pred" / f"{case}.png", labels)
        write_png(tmp_path / "pred_instances" / f"{case}.png", instances)
    return tmp_path


def run_cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet_blob")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)


def test_touching_squares_through_the_command(png_folders):
    """PNG files (nnU-Net's NaturalImage2DIO): without instance maps the touching squares are one object; with
    the reference's instance maps they are two, and the prediction's connected component (the two squares merged:
    IoU exactly 0.5 with each) matches one of them at IoU 0.5 only; with both instance maps everything matches."""
    root = png_folders
    result = run_cli("evaluate", root / "gt", root / "pred", "-l", 1, "--reference-instances", root / "gt_instances",
                     "-o", root / "ref_only.json")
    assert result.returncode == 0, result.stderr
    assert "lesions: 6 reference" in result.stdout and "AP(DSB)" in result.stdout
    summary = json.loads((root / "ref_only.json").read_text())
    case = summary["metric_per_case"][0]["metrics"]["1"]
    at_half, above = 2 / 3, 1 / 4  # TP 2 FP 0 FN 1 at 0.5; TP 1 (the lone square) FP 1 FN 2 above
    assert case["AP@0.5"] == pytest.approx(at_half) and case["AP@0.55"] == pytest.approx(above)
    assert case["DSB_AP"] == pytest.approx((at_half + 9 * above) / 10)
    assert summary["mean"]["1"]["DSB_AP"] == pytest.approx((at_half + 9 * above) / 10)
    pooled = summary["pooled_instances"]["1"]
    assert pooled["cell_scores"]["TP"] == [4] + [2] * 9 and pooled["n_ref_instances"] == 6
    assert summary["settings"]["matching"] == "one-to-one" and summary["settings"]["cell_scores"] is True

    both = EvaluationOptions(matching="one-to-one", cell_scores=True, reference_instances=str(root / "gt_instances"),
                             prediction_instances=str(root / "pred_instances"))
    summary = evaluate_folder_simple(str(root / "gt"), str(root / "pred"), [1], output_file=None, options=both)
    assert summary["mean"][1]["DSB_AP"] == 1.0 and summary["pooled_instances"][1]["n_ref_instances"] == 6
    with pytest.raises(ValueError, match=r"labels \[2, 3\] are not among .* --instance-inputs -l 1"):
        evaluate_folder_simple(str(root / "gt_instances"), str(root / "pred"), [1], output_file=None)
    plain = evaluate_folder_simple(str(root / "gt"), str(root / "pred"), [1], output_file=None)
    assert plain["pooled_instances"][1]["n_ref_instances"] == 4 and "DSB_AP" not in plain["mean"][1]
    inputs = evaluate_folder_simple(str(root / "gt_instances"), str(root / "pred_instances"), [1], output_file=None,
                                    options=EvaluationOptions(matching="one-to-one", cell_scores=True,
                                                              instance_inputs=True))
    assert inputs["mean"][1]["DSB_AP"] == 1.0 and inputs["pooled_instances"][1]["n_ref_instances"] == 6


def test_instance_maps_are_checked_naming_the_case(png_folders):
    root = png_folders
    labels, instances = three_squares()
    options = EvaluationOptions(matching="one-to-one", cell_scores=True, reference_instances=str(root / "gt_instances"))

    def evaluate():
        return evaluate_folder_simple(str(root / "gt"), str(root / "pred"), [1, 2], output_file=None, options=options)

    spilled = instances.copy()
    spilled[12, 12] = 3  # over the background
    write_png(root / "gt_instances" / "cells_b.png", spilled)
    with pytest.raises(ValueError, match=r"case cells_b: objects \[3\] .* background or ignore label"):
        evaluate()
    two_classes = labels.copy()
    two_classes[2:10, 10:14] = 2  # square 2 is half label 1, half label 2
    write_png(root / "gt" / "cells_b.png", two_classes)
    write_png(root / "gt_instances" / "cells_b.png", instances)
    with pytest.raises(ValueError, match=r"case cells_b: objects \[2\] .* span several labels"):
        evaluate()
    os.remove(root / "gt_instances" / "cells_b.png")
    with pytest.raises(FileNotFoundError, match=r"case cells_b: no instance map .*--reference-instances"):
        evaluate()


def test_nifti_3d_case_with_instance_maps(tmp_path):
    """3D NIfTI through the folder evaluation: equals the literal scores."""
    rng = np.random.default_rng(7)
    ref = random_instances(rng, (8, 14, 14), 6)
    pred = perturbed(rng, ref)
    for sub, array in (("gt", ref > 0), ("pred", pred > 0), ("gti", ref), ("pri", pred)):
        (tmp_path / sub).mkdir()
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(array, np.uint16)), str(tmp_path / sub / "c.nii.gz"))
    options = EvaluationOptions(matching="one-to-one", cell_scores=True, reference_instances=str(tmp_path / "gti"),
                                prediction_instances=str(tmp_path / "pri"))
    summary = evaluate_folder_simple(str(tmp_path / "gt"), str(tmp_path / "pred"), [1], output_file=None,
                                     options=options)
    assert_same(summary["metric_per_case"][0]["metrics"][1], literal_scores(ref, pred), KEYS)

