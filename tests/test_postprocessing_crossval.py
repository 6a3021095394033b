"""Cross-validated selection, the default decision rule of tune-postprocessing: its out-of-fold bookkeeping against a
literal loop, its error rate on settings that are pure noise, and planted cross-validation predictions: a threshold
that removes faint false positives in every fold is applied (where the Bonferroni rule, on the same ten cases,
keeps no change), a setting that is lucky on two cases of one fold and hurts the others is not; one fold falls back
to the Bonferroni rule and says so."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import wilcoxon

from helpers import run_cli
from nnunet_blob.evaluation.compare import paired_wilcoxon
from nnunet_blob.postprocessing.cases import cross_validation_predictions
from nnunet_blob.postprocessing.rules import Setting
from nnunet_blob.postprocessing.settings import DecisionError, read_postprocessing
from nnunet_blob.postprocessing.significance import (
    BONFERRONI,
    CROSS_VALIDATED,
    decide,
    decide_cross_validated,
    out_of_fold,
)
from nnunet_blob.postprocessing.tuning import metric_named, tune
from test_postprocessing_tuning import lesion_case, make_predictions, softmax_case, write


def literal_best(values, cases, higher_is_better):
    """The setting with the best mean over ``cases`` (NaN left out), the first in (threshold, volume) order on
    ties; (0, 0) when no mean is defined."""
    best, best_score = (0, 0), -math.inf
    for t in range(values.shape[1]):
        for v in range(values.shape[2]):
            kept = [float(values[i, t, v]) for i in cases if not math.isnan(values[i, t, v])]
            if kept:
                mean = sum(kept) / len(kept)
                score = mean if higher_is_better else -mean
                if score > best_score:
                    best, best_score = (t, v), score
    return best


def literal_selection(values, folds, higher_is_better):
    """Per fold, the best setting on the cases of the other folds, and each case's value under its fold's choice."""
    n = values.shape[0]
    choices, oof = {}, [math.nan] * n
    for k in sorted(set(folds)):
        choices[k] = literal_best(values, [i for i in range(n) if folds[i] != k], higher_is_better)
        for i in range(n):
            if folds[i] == k:
                oof[i] = float(values[i, choices[k][0], choices[k][1]])
    return choices, np.array(oof)


def literal_mean(xs):
    kept = [x for x in xs if not math.isnan(x)]
    return sum(kept) / len(kept)


def lucky_values():
    """20 cases in 5 folds of 4: setting (2, 3) gains 0.3 on fold 0's cases and loses 0.05 on all others (better on
    all cases, 1.2 - 0.8); (2, 4) and (3, 0) tie with it; the other settings are worse than no change."""
    rng = np.random.default_rng(0)
    before = rng.uniform(0.3, 0.7, 20)
    values = before[:, None, None] - rng.uniform(0.01, 0.1, (20, 5, 8))
    values[:, 0, 0] = before
    folds = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    lucky = before + np.where(np.array(folds) == 0, 0.3, -0.05)
    for t, v in ((2, 3), (2, 4), (3, 0)):
        values[:, t, v] = lucky
    return values, folds


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_out_of_fold_bookkeeping_is_the_literal_loop(seed):
    rng = np.random.default_rng(seed)
    n = 23
    values = rng.random((n, 5, 8))
    values[rng.random(values.shape) < 0.05] = np.nan  # cases where the metric is undefined
    folds = [int(f) for f in rng.choice([0, 1, 3, 7], n)]  # unequal folds, not numbered 0..k
    for higher in (True, False):
        choices, oof = literal_selection(values, folds, higher)
        result = out_of_fold(values, folds, higher)
        assert result.folds == tuple(sorted(set(folds)))
        assert result.choices == tuple(choices[f] for f in result.folds)
        np.testing.assert_array_equal(result.values, oof)
        assert result.mean == pytest.approx(literal_mean(oof), rel=1e-12)
        d = decide_cross_validated(values, folds, higher)
        before = values[:, 0, 0]
        keep = ~(np.isnan(oof) | np.isnan(before))
        assert d.rule == CROSS_VALIDATED and d.paired_cases == int(keep.sum())
        assert d.p_value == d.p_corrected == pytest.approx(wilcoxon(oof[keep], before[keep]).pvalue, rel=1e-12)
        all_best = literal_best(values, range(n), higher)
        assert d.best == all_best
        gain = (1 if higher else -1) * (literal_mean(oof) - literal_mean(before))
        assert d.accepted == (all_best != (0, 0) and gain > 0 and d.p_value < 0.05)


def test_a_lucky_setting_is_the_best_on_all_cases_but_not_out_of_fold():
    values, folds = lucky_values()
    d = decide_cross_validated(values, folds, True)
    assert d.best == (2, 3) and d.mean_best > d.mean_no_change  # ties: first threshold, then smaller volume
    oof = d.out_of_fold
    assert oof.choices == ((0, 0), (2, 3), (2, 3), (2, 3), (2, 3))  # fold 0's cases: "no change" from the others
    np.testing.assert_allclose(oof.values[:4], values[:4, 0, 0])
    np.testing.assert_allclose(oof.values[4:], values[4:, 0, 0] - 0.05)
    assert oof.mean < d.mean_no_change and not d.accepted and d.chosen == (0, 0)
    assert d.p_value < 0.05  # significant, but in the wrong direction: sixteen cases worse out of fold
    assert not decide(values, True).accepted


@pytest.mark.parametrize("kind, most", [("independent", (0.3, 0.15)), ("smooth", (0.08, 0.06))])
def test_settings_of_pure_noise_are_mostly_kept_out(kind, most):
    """40 settings whose per-case change is noise around zero (20 cases, 5 folds), independent from setting to setting
    or alike for neighbours (a random walk over the grid). The best of them on all cases passes an uncorrected
    Wilcoxon test often; cross-validated selection rarely, though more often than the 2.5% a two-sided test at 0.05
    promises in the better direction (the out-of-fold scores of different folds are not independent: each fold's
    choice saw the other folds' cases); Bonferroni at most at its level. Measured counts of 300 in the comments."""
    rng = np.random.default_rng(7)
    folds = np.repeat(np.arange(5), 4)
    trials, naive, cross_validated, bonferroni = 300, 0, 0, 0
    for _ in range(trials):
        before = rng.uniform(0.3, 0.9, 20)
        noise = (rng.normal(0, 0.05, (20, 5, 8)) if kind == "independent" else
                 np.cumsum(np.cumsum(rng.normal(0, 0.02, (20, 5, 8)), 1), 2))
        values = before[:, None, None] + noise
        values[:, 0, 0] = before
        d = decide_cross_validated(values, folds, True)
        after = values[:, d.best[0], d.best[1]]
        naive += bool(after.mean() > before.mean() and paired_wilcoxon(after, before) < 0.05)
        cross_validated += d.accepted
        bonferroni += decide(values, True).accepted
    least_naive, most_cross_validated = most
    assert naive / trials > least_naive, naive  # 146 independent, 36 smooth
    assert cross_validated / trials < most_cross_validated, cross_validated  # 31 independent, 9 smooth
    assert bonferroni / trials <= 0.05, bonferroni  # 9 independent, 0 smooth


def test_one_fold_is_refused_by_the_rule_itself():
    values, _ = lucky_values()
    with pytest.raises(DecisionError, match="at least two folds"):
        out_of_fold(values, [0] * 20, True)


def planted_model(root, dataset, folds_of_cases):
    """nnU-Net's layout of a trained model's cross-validation: fold_<f>/validation/ with a label file and .npz per
    case (faint 16-voxel false positives at probability 0.65 in every case), gt_segmentations, splits_final.json."""
    rng = np.random.default_rng(11)
    results, preprocessed = root / "results", root / "preprocessed"
    model = results / dataset / "Planted__nnUNetPlans__3d_fullres"
    gt = preprocessed / dataset / "gt_segmentations"
    gt.mkdir(parents=True)
    splits = [{"train": [], "val": []} for _ in set(folds_of_cases)]
    names = [f"case_{i:03d}" for i in range(len(folds_of_cases))]
    for name, fold in zip(names, folds_of_cases, strict=True):
        ref, pred = lesion_case(rng)
        pred[7, 15:19, 15:19] = 1
        validation = model / f"fold_{fold}" / "validation"
        validation.mkdir(parents=True, exist_ok=True)
        write(gt / f"{name}.nii.gz", ref)
        write(validation / f"{name}.nii.gz", pred)
        np.savez_compressed(validation / f"{name}.npz", probabilities=softmax_case(ref, pred, 0.65))
        for f, split in enumerate(splits):
            split["val" if f == fold else "train"].append(name)
    (preprocessed / dataset / "splits_final.json").write_text(json.dumps(splits))
    (model / "plans.json").write_text(json.dumps({"dataset_name": dataset, "plans_name": "nnUNetPlans",
                                                  "configurations": {}, "image_reader_writer": "SimpleITKIO"}))
    (model / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "lesion": 1},
                                                    "file_ending": ".nii.gz"}))
    return results, preprocessed


def test_a_threshold_that_helps_in_every_fold_is_applied(tmp_path, monkeypatch):
    """Ten cases in five folds, each with a faint false positive that p > 0.75 removes: every fold's choice on the
    other folds is that threshold, ten cases better out of fold (p = 2 / 2^10): applied. The Bonferroni rule on the
    same cases needs p * 39 < 0.05 and keeps no change."""
    dataset = "Dataset998_CrossVal"
    folds_of_cases = [0, 1, 2, 3, 4] * 2
    results, preprocessed = planted_model(tmp_path, dataset, folds_of_cases)
    monkeypatch.setenv("nnUNet_results", str(results))
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    predictions = cross_validation_predictions(dataset, "Planted", "nnUNetPlans", "3d_fullres", (0, 1, 2, 3, 4))
    assert [c.fold for c in predictions.cases] == folds_of_cases  # from the fold folder that holds each case
    splits = json.loads((preprocessed / dataset / "splits_final.json").read_text())
    assert all(c.name in splits[c.fold]["val"] for c in predictions.cases)  # nnU-Net's split of the folds

    result = tune(predictions, metric_named("F1"))
    (c,) = result.classes
    d = c.decision
    assert result.rule == CROSS_VALIDATED and d.rule == CROSS_VALIDATED and not result.notes
    assert [s for _, _, s in c.fold_choices()] == [Setting(1, 0.0, 0.75)] * 5
    assert d.accepted and c.setting == Setting(1, 0.0, 0.75)
    assert d.p_value == pytest.approx(2 / 2 ** 10)
    np.testing.assert_allclose(result.after["F1"][:, 0], 1.0)
    np.testing.assert_allclose(d.out_of_fold.values, result.after["F1"][:, 0])  # the same choice in every fold

    record = result.postprocessing_file().write(tmp_path / "pp.json")
    saved = read_postprocessing(record).record
    assert saved["rule"] == CROSS_VALIDATED and "out-of-fold" in saved["decision_rule"]
    (tuning,) = saved["tuning"]
    assert tuning["changed"] and tuning["p_value"] == pytest.approx(d.p_value) and "p_corrected" not in tuning
    assert [f["fold"] for f in tuning["out_of_fold"]["folds"]] == [0, 1, 2, 3, 4]
    assert all(f["cases"] == 2 and f["chosen_on_other_folds"]["threshold"] == 0.75
               for f in tuning["out_of_fold"]["folds"])
    cases = tuning["out_of_fold"]["cases"]
    assert [cases[n]["fold"] for n in sorted(cases)] == folds_of_cases
    assert [cases[n]["out_of_fold"] for n in sorted(cases)] == pytest.approx(list(result.after["F1"][:, 0]))
    assert [cases[n]["no_change"] for n in sorted(cases)] == pytest.approx(list(result.before["F1"][:, 0]))
    report = result.report()
    assert "Decision rule (cross-validated)" in report and "fold 4 (2 cases): probability > 0.75" in report
    assert "out of fold" in report and "chosen" in report

    bonferroni = tune(predictions, metric_named("F1"), rule=BONFERRONI)
    b = bonferroni.classes[0].decision
    assert b.rule == BONFERRONI and b.best == d.best and b.other_settings == 39
    assert b.p_corrected == pytest.approx(39 * 2 / 2 ** 10) and not b.accepted
    assert bonferroni.settings == (Setting(1),)
    saved = read_postprocessing(bonferroni.postprocessing_file().write(tmp_path / "b.json")).record
    assert saved["rule"] == BONFERRONI and "Bonferroni" in saved["decision_rule"]
    assert "p_corrected" in saved["tuning"][0] and "out_of_fold" not in saved["tuning"][0]


def test_a_lucky_setting_of_one_fold_is_not_applied(tmp_path):
    """Fold 0 has two cases with five one-voxel false positives each, the other folds four cases with a true
    one-voxel lesion: removing one-voxel objects is the best on all cases, but chosen without fold 0 it is "no
    change", and applied to the other folds it loses lesions."""
    rng = np.random.default_rng(12)
    folds = [0, 0, 0] + [1, 1, 1] + [2, 2, 2] + [3, 3, 3] + [4, 4, 4]
    cases = []
    for i, fold in enumerate(folds):
        ref, pred = lesion_case(rng)
        if fold == 0 and i < 2:
            for x in range(10, 19, 2):
                pred[7, 18, x] = 1  # five false positives
        elif fold > 0 and i % 3 == 0:
            ref[7, 18, 12] = pred[7, 18, 12] = 1  # a one-voxel lesion, found
        cases.append((ref, pred))
    result = tune(make_predictions(tmp_path, cases, folds=folds), metric_named("F1"))
    (c,) = result.classes
    d = c.decision
    assert result.rule == CROSS_VALIDATED and result.notes == ["probability thresholds not tuned: no .npz"]
    assert c.best_setting.min_volume_mm3 > 2.0 and d.mean_best > d.mean_no_change  # best on all cases ...
    choices = [s for _, _, s in c.fold_choices()]
    assert choices[0] == Setting(1) and all(s == c.best_setting for s in choices[1:])
    assert d.out_of_fold.mean < d.mean_no_change and not d.accepted  # ... but worse out of fold
    assert result.settings == (Setting(1),)
    np.testing.assert_array_equal(result.after["F1"], result.before["F1"])
    oof = d.out_of_fold.values
    np.testing.assert_allclose(oof[:3], c.values[:3, 0, 0])  # fold 0: no change
    hurt = [i for i, f in enumerate(folds) if f > 0 and i % 3 == 0]
    assert (oof[hurt] < c.values[hurt, 0, 0]).all() and "kept no change" in result.report()


def test_one_fold_falls_back_to_bonferroni_and_says_so(tmp_path):
    rng = np.random.default_rng(13)
    cases = []
    for _ in range(8):
        ref, pred = lesion_case(rng)
        pred[7, 18, 15] = 1
        cases.append((ref, pred))
    predictions = make_predictions(tmp_path, cases, folds=[0] * 8)
    result = tune(predictions, metric_named("F1"))
    assert result.rule == BONFERRONI and result.classes[0].decision.rule == BONFERRONI
    assert "at least two folds" in result.notes[0] and "fold 0" in result.notes[0]
    assert "at least two folds" in result.report()
    saved = read_postprocessing(result.postprocessing_file().write(tmp_path / "pp.json")).record
    assert saved["rule"] == BONFERRONI and "at least two folds" in saved["notes"][0]
    with pytest.raises(DecisionError, match="unknown decision rule"):
        tune(predictions, metric_named("F1"), rule="holm")


def test_the_command_line_offers_both_rules():
    text = " ".join(run_cli("nnunet_blob", "tune-postprocessing", "--help").stdout.split())
    assert "--rule {cross-validated,bonferroni}" in text and "cross-validated (default)" in text
