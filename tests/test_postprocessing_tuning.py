"""The tuning with the Bonferroni rule on cases made for it: a planted speckle is removed when enough cases show it,
random small objects that are as often lesions as not keep "no change", few cases keep "no change", thresholds and
minimum volumes together, metrics the tables do not give, regions; and the time a hundred cases take. The cases
here carry no fold, so the default rule (cross-validated, tests/test_postprocessing_crossval.py) falls back to it."""
from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import wilcoxon

from nnunet_blob.evaluation.folder import evaluate_folder_simple
from nnunet_blob.postprocessing.cases import CaseFiles, Predictions
from nnunet_blob.postprocessing.rules import LabelLayout, Setting
from nnunet_blob.postprocessing.settings import read_postprocessing
from nnunet_blob.postprocessing.significance import BONFERRONI
from nnunet_blob.postprocessing.tuning import decide, default_min_volumes, metric_named, tune

SPACING_XYZ = (1.0, 1.0, 2.0)  # a voxel is 2 mm³
ONE_LABEL = LabelLayout((1,))  # one foreground class, label 1


def write(path, array):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(image, str(path))


def lesion_case(rng, shape=(8, 20, 20)):
    """Three or four lesions of 8-27 voxels, predicted a little shifted."""
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for i in range(rng.integers(3, 5)):
        z, y = 1 + 2 * (i % 3), 2 + 5 * i
        size = rng.integers(2, 4)
        ref[z:z + 2, y:y + size, 3:3 + size] = 1
        pred[z:z + 2, y:y + size, 4:4 + size] = 1
    return ref, pred


def make_predictions(tmp_path, cases, probabilities=None, layout=ONE_LABEL, folds=None) -> Predictions:
    """A Predictions object over NIfTI files (and .npz probabilities) of (reference, prediction) pairs; ``folds``:
    the fold of each case (default: not known)."""
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    files = []
    for i, (ref, pred) in enumerate(cases):
        name = f"case_{i:03d}"
        write(tmp_path / "gt" / f"{name}.nii.gz", ref)
        write(tmp_path / "pred" / f"{name}.nii.gz", pred)
        npz = ()
        if probabilities is not None:
            np.savez_compressed(tmp_path / "pred" / f"{name}.npz", probabilities=probabilities[i])
            npz = (str(tmp_path / "pred" / f"{name}.npz"),)
        files.append(CaseFiles(name, str(tmp_path / "gt" / f"{name}.nii.gz"),
                               str(tmp_path / "pred" / f"{name}.nii.gz"), npz, None if folds is None else folds[i]))
    fold_list = (0,) if folds is None else tuple(sorted(set(folds)))
    return Predictions("Dataset999_Test", "Test__Plans__3d", fold_list, files, tmp_path / "out", layout, ".nii.gz",
                       "SimpleITKIO", [], None if probabilities is not None else "no .npz")


def test_decide_is_the_stated_rule():
    rng = np.random.default_rng(0)
    before = rng.random(12)
    values = np.repeat(before[:, None, None], 5, 1).repeat(8, 2)
    values[:, 2, 3] = before + 0.1  # better in every one of 12 cases: p = 2 / 2^12, x 39 = 0.019
    d = decide(values, higher_is_better=True)
    assert d.best == (2, 3) and d.accepted and d.other_settings == 39
    assert d.p_value == pytest.approx(wilcoxon(before + 0.1, before).pvalue)
    assert d.p_corrected == pytest.approx(39 * d.p_value)
    values[:2, 2, 3] = before[:2] - 0.01  # two cases worse: not significant after the correction
    assert not decide(values, True).accepted and decide(values, True).chosen == (0, 0)
    # lower is better: the same values read the other way round choose nothing
    assert decide(values, higher_is_better=False).best != (2, 3)
    # ten cases, all better: p = 2 / 2^10 = 0.00195, x 39 = 0.076 -> no change
    assert not decide(values[2:], True).accepted


def test_planted_speckles_are_removed_and_the_file_says_why(tmp_path):
    rng = np.random.default_rng(1)
    cases = []
    for _ in range(14):
        ref, pred = lesion_case(rng)
        pred[7, 18, rng.integers(10, 19)] = 1  # a one-voxel false positive far from the lesions
        cases.append((ref, pred))
    predictions = make_predictions(tmp_path, cases)
    result = tune(predictions, metric_named("F1"), rule=BONFERRONI)
    (c,) = result.classes
    assert c.thresholds == (None,) and "probability thresholds not tuned" in result.notes[0]
    assert c.decision.accepted and c.setting.threshold is None
    assert 2.0 < c.setting.min_volume_mm3 <= 16.0  # removes one voxel (2 mm³), keeps the smallest lesion (16 mm³)
    np.testing.assert_allclose(result.after["F1"][:, 0], 1.0)
    # the before/after numbers are nnunet_blob evaluate's
    summary = evaluate_folder_simple(str(tmp_path / "gt"), str(tmp_path / "pred"), [1], output_file=None)
    np.testing.assert_allclose(result.before["F1"][:, 0], [case["metrics"][1]["F1"] for case in
                                                           summary["metric_per_case"]])
    report = result.report()
    assert "Decision rule" in report and "chosen" in report and "Bonferroni" in report
    path = result.postprocessing_file().write(tmp_path / "pp.json")
    read = read_postprocessing(path)
    assert read.settings == (Setting(1, c.setting.min_volume_mm3, None),)
    assert read.record["tuning"][0]["changed"] and read.record["decision_rule"].startswith("Decision rule")


def test_few_cases_keep_no_change(tmp_path):
    rng = np.random.default_rng(2)
    cases = []
    for _ in range(8):  # every case gains, but 8 cases cannot reach p < 0.05 / 7
        ref, pred = lesion_case(rng)
        pred[7, 18, 15] = 1
        cases.append((ref, pred))
    result = tune(make_predictions(tmp_path, cases), metric_named("F1"), rule=BONFERRONI)
    d = result.classes[0].decision
    assert d.best != (0, 0) and d.mean_best > d.mean_no_change and not d.accepted
    assert result.settings == (Setting(1),)
    assert "kept no change" in result.report()


def test_random_small_objects_keep_no_change(tmp_path):
    """Small predicted objects that are as often true lesions as false alarms: removing them helps some cases and
    hurts others; the rule keeps no change."""
    rng = np.random.default_rng(3)
    cases = []
    for _ in range(20):
        ref, pred = lesion_case(rng)
        x = int(rng.integers(10, 19))
        pred[7, 18, x] = 1  # a one-voxel object ...
        if rng.random() < 0.5:
            ref[7, 18, x] = 1  # ... that is a one-voxel lesion half of the time
        cases.append((ref, pred))
    result = tune(make_predictions(tmp_path, cases), metric_named("F1"))
    assert result.settings == (Setting(1),)
    assert not result.classes[0].decision.accepted


def softmax_case(ref, pred, speckle_p):
    """Probabilities that give ``pred`` under nnU-Net's argmax: 0.9 on the lesions, ``speckle_p`` on the rest of
    the prediction, 0.05 elsewhere."""
    p = np.where(pred > 0, speckle_p, 0.05).astype(np.float32)
    p[(pred > 0) & (ref > 0)] = 0.9
    return np.stack([1 - p, p])


def test_thresholds_and_volumes_from_probabilities(tmp_path):
    """Large faint false positives (a threshold removes them, a minimum volume cannot without losing lesions)."""
    rng = np.random.default_rng(4)
    cases, probabilities = [], []
    for _ in range(14):
        ref, pred = lesion_case(rng)
        pred[7, 15:19, 15:19] = 1  # 16 voxels, as large as the smallest lesions
        cases.append((ref, pred))
        probabilities.append(softmax_case(ref, pred, 0.65))
    result = tune(make_predictions(tmp_path, cases, probabilities), metric_named("F1"))
    (c,) = result.classes
    assert c.thresholds == (None, 0.3, 0.6, 0.75, 0.9)
    assert c.decision.accepted and c.setting.threshold == 0.75 and c.setting.min_volume_mm3 == 0.0
    np.testing.assert_allclose(result.after["F1"][:, 0], 1.0)


def test_metric_the_tables_do_not_give_and_lower_is_better(tmp_path):
    rng = np.random.default_rng(5)
    cases = []
    for _ in range(12):
        ref, pred = lesion_case(rng)
        pred[7, 18, 15] = 1
        cases.append((ref, pred))
    predictions = make_predictions(tmp_path, cases)
    surface = tune(predictions, metric_named("SurfaceDice"), min_volumes=[3.0])
    assert surface.classes[0].setting == Setting(1, 3.0)
    assert (surface.after["SurfaceDice"] > surface.before["SurfaceDice"]).all()
    fp = tune(predictions, metric_named("FP_instances"), min_volumes=[3.0])
    assert fp.classes[0].setting == Setting(1, 3.0) and (fp.after["FP_instances"] == 0).all()
    with pytest.raises(ValueError, match="neither higher nor lower"):
        metric_named("n_pred")


def test_regions_are_tuned_one_after_the_other(tmp_path):
    rng = np.random.default_rng(6)
    cases = []
    for _ in range(12):
        ref, pred = lesion_case(rng)
        ref[ref > 0] = 2
        pred[pred > 0] = 2
        ref[:, 2:4, 3:5] = np.where(ref[:, 2:4, 3:5] == 2, 1, ref[:, 2:4, 3:5])
        pred[7, 18, 15] = 1  # a speckle of the outer region only
        cases.append((ref, pred))
    layout = LabelLayout(((1, 2), (2,)), regions_class_order=(1, 2))
    result = tune(make_predictions(tmp_path, cases, layout=layout), metric_named("F1"))
    outer, inner = result.classes
    assert outer.label_or_region == (1, 2) and outer.decision.accepted and outer.setting.min_volume_mm3 > 2.0
    assert inner.setting == Setting((2,))
    np.testing.assert_allclose(result.after["F1"][:, 0], 1.0)


def test_default_grid():
    # two voxels to the median lesion volume, geometric, 3 significant digits
    assert default_min_volumes(np.array([10.0, 40.0, 100.0]), 1.0) == (0.0, 2.0, 3.3, 5.43, 8.94, 14.7, 24.3, 40.0)
    assert default_min_volumes(np.array([]), 1.0) == (0.0, 2.0)
    assert default_min_volumes(np.array([1.0]), 1.0) == (0.0, 2.0)


def test_a_hundred_cases_take_seconds(tmp_path, capsys):
    """100 cases of 48³ with probabilities, 8 x 5 grid, one process."""
    rng = np.random.default_rng(7)
    cases, probabilities = [], []
    for _ in range(100):
        ref = np.zeros((48, 48, 48), np.uint8)
        for _ in range(12):
            z, y, x = rng.integers(2, 44, 3)
            r = rng.integers(1, 3)
            ref[z - r:z + r, y - r:y + r, x - r:x + r] = 1
        pred = ref.copy()
        pred[rng.random(ref.shape) < 0.0005] = 1
        cases.append((ref, pred))
        probabilities.append(softmax_case(ref, pred, 0.6))
    predictions = make_predictions(tmp_path, cases, probabilities)
    start = time.perf_counter()
    result = tune(predictions, metric_named("F1"), num_processes=1)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\ntuning 100 cases of 48³, grid {len(result.classes[0].min_volumes)} x "
              f"{len(result.classes[0].thresholds)}, one process: {seconds:.1f} s")
    assert result.classes[0].decision.accepted
    assert seconds < 120
