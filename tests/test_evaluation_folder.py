"""Folder evaluation on real NIfTI files: nnU-Net's numbers, the CLI, the validation hook, compare, pictures."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.evaluation.evaluate_predictions import compute_metrics
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from PIL import Image
from scipy.stats import wilcoxon

from nnunet_blob.evaluation.compare import compare, paired_wilcoxon
from nnunet_blob.evaluation.folder import evaluate_folder_from_json, evaluate_validation_folder
from nnunet_blob.evaluation.pictures import DPI, LEGEND_INCHES, PANEL_INCHES

SPACING_XYZ = (0.8, 1.2, 3.0)  # SimpleITK order; arrays are (z, y, x)
DATASET = {"labels": {"background": 0, "lesion": 1, "ignore": 2}, "file_ending": ".nii.gz",
           "channel_names": {"0": "FLAIR"}, "numTraining": 3}
PLANS = {"plans_name": "nnUNetPlans"}


def write(path, arr, spacing=SPACING_XYZ):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))


def make_case(rng):
    ref = np.zeros((6, 24, 24), np.uint8)
    pred = np.zeros_like(ref)
    ref[2:4, 3:7, 3:7] = 1  # detected lesion
    pred[2:4, 4:8, 3:7] = 1
    ref[3, 15, 15] = 1  # one-voxel lesion, sometimes missed
    if rng.random() < 0.5:
        pred[3, 15, 15] = 1
    pred[1, rng.integers(18, 22), 2:4] = 1  # false positive
    ref[5, :, :] = 2  # ignore label on the last slice
    pred[5, 10:12, 10:12] = 1  # prediction under the ignore label: not counted
    return ref, pred


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    rng = np.random.default_rng(5)
    for sub in ("gt", "pred", "images"):
        (root / sub).mkdir()
    for i in range(3):
        ref, pred = make_case(rng)
        write(root / "gt" / f"case_{i}.nii.gz", ref)
        write(root / "pred" / f"case_{i}.nii.gz", pred)
        write(root / "images" / f"case_{i}_0000.nii.gz", rng.random(ref.shape).astype(np.float32))
    (root / "dataset.json").write_text(json.dumps(DATASET))
    (root / "plans.json").write_text(json.dumps(PLANS))
    return root


def run_cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet_blob")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_cli_evaluate_matches_nnunet_compute_metrics(dataset, tmp_path):
    out = tmp_path / "summary_instances.json"
    proc = run_cli("evaluate", dataset / "gt", dataset / "pred", "-djfile", dataset / "dataset.json",
                   "-pfile", dataset / "plans.json", "-o", out, "-np", 2, "--tolerance-mm", 1.5)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert set(summary) >= {"metric_per_case", "mean", "foreground_mean", "pooled_instances", "nan_cases"}
    assert summary["settings"]["surface_dice_tolerance_mm"] == 1.5
    for case in summary["metric_per_case"]:
        ours = case["metrics"]["1"]
        nn = compute_metrics(case["reference_file"], case["prediction_file"], SimpleITKIO(), [1], 2)["metrics"][1]
        for key in ("Dice", "IoU", "TP", "FP", "FN", "TN", "n_ref", "n_pred"):
            assert ours[key] == nn[key], (case["reference_file"], key)
        assert ours["FP_instances"] == 1 and ours["IP"] == ours["TP_pred_instances"] / ours["n_pred_instances"]
    pooled = summary["pooled_instances"]["1"]
    assert pooled["n_ref_instances"] == 6 and pooled["FP_instances"] == 3
    assert summary["foreground_mean"]["Dice"] == pytest.approx(summary["mean"]["1"]["Dice"])


REGIONS = {"labels": {"background": 0, "whole": [1, 2], "two": 2}, "regions_class_order": [1, 2],
           "file_ending": ".nii.gz", "channel_names": {"0": "FLAIR"}, "numTraining": 3}


def test_regions_from_dataset_json_match_nnunet(dataset, tmp_path):
    summary = evaluate_folder_from_json(str(dataset / "gt"), str(dataset / "pred"), REGIONS, PLANS,
                                        tmp_path / "s.json")
    assert list(summary["mean"]) == [(1, 2), 2]
    for case in summary["metric_per_case"]:
        nn = compute_metrics(case["reference_file"], case["prediction_file"], SimpleITKIO(), [(1, 2), 2])
        for region in ((1, 2), 2):
            for key in ("Dice", "TP", "FP", "FN"):
                assert case["metrics"][region][key] == nn["metrics"][region][key]
    written = json.loads((tmp_path / "s.json").read_text())
    assert set(written["mean"]) == {"(1, 2)", "2"}  # nnU-Net's spelling of region keys


BAD_INPUT = [
    ("prediction without reference", "extra.nii.gz", "pred", "without a reference"),
    ("reference without prediction", "extra.nii.gz", "gt", "without a prediction"),
]


@pytest.mark.parametrize("name,filename,where,message", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_unpaired_case_gives_clear_error(dataset, tmp_path, name, filename, where, message):
    folders = {}
    for sub in ("gt", "pred"):
        folders[sub] = tmp_path / sub
        folders[sub].mkdir()
        for f in (dataset / sub).iterdir():
            os.symlink(f, folders[sub] / f.name)
    write(folders[where] / filename, np.zeros((6, 24, 24), np.uint8))
    proc = run_cli("evaluate", folders["gt"], folders["pred"], "-l", 1)
    assert proc.returncode == 1
    assert message in proc.stderr and "extra.nii.gz" in proc.stderr


def test_validation_folder_hook_writes_next_to_summary(dataset, tmp_path):
    val = tmp_path / "fold_0" / "validation"
    val.mkdir(parents=True)
    os.symlink(dataset / "pred" / "case_1.nii.gz", val / "case_1.nii.gz")  # only this fold's case
    (val / "summary.json").write_text("{}")
    out = evaluate_validation_folder(val, dataset / "gt", str(dataset / "dataset.json"), PLANS)
    assert out == val / "summary_instances.json"
    summary = json.loads(out.read_text())
    assert [os.path.basename(c["reference_file"]) for c in summary["metric_per_case"]] == ["case_1.nii.gz"]
    assert "references_without_prediction" not in summary  # the other folds' cases are not this fold's to predict
    assert not [p for p in os.listdir(val) if ".tmp" in p]


def _summary_with(tmp_path, name, dice_values):
    cases = [{"reference_file": f"/gt/c{i}.nii.gz", "prediction_file": f"/{name}/c{i}.nii.gz",
              "metrics": {"1": {"Dice": d, "F1": 0.5}}} for i, d in enumerate(dice_values)]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"metric_per_case": cases}))
    return str(path)


WILCOXON = [
    ("clearly better", [0.9, 0.8, 0.85, 0.95, 0.7, 0.88, 0.91, 0.83], [0.6, 0.5, 0.7, 0.65, 0.4, 0.6, 0.62, 0.5]),
    ("mixed", [0.5, 0.6, 0.7, 0.4, 0.9, 0.3, 0.8, 0.55], [0.52, 0.58, 0.75, 0.35, 0.85, 0.33, 0.79, 0.6]),
]


@pytest.mark.parametrize("name,a,b", WILCOXON, ids=[w[0] for w in WILCOXON])
def test_compare_wilcoxon_and_rank_score(tmp_path, name, a, b):
    result = compare({"A": _summary_with(tmp_path, "A", a), "B": _summary_with(tmp_path, "B", b)})
    p = result["p_values"][("1", "Dice")][("A", "B")]
    assert p == pytest.approx(wilcoxon(a, b).pvalue, abs=0)
    a_beats_b = p < 0.05 and np.mean(a) > np.mean(b)
    assert result["scores"][("1", "Dice")] == {"A": int(a_beats_b), "B": 0}
    assert result["scores"][("1", "F1")] == {"A": 0, "B": 0}  # all ties
    assert result["rank_score"]["A"] == pytest.approx(int(a_beats_b) / 2)
    assert result["tables"][("1", "Dice")]["A"]["wins"] == int(np.sum(np.array(a) > np.array(b)))


def test_compare_refuses_different_case_sets(tmp_path):
    a = _summary_with(tmp_path, "A", [0.1, 0.2, 0.3])
    b = _summary_with(tmp_path, "B", [0.1, 0.2])
    with pytest.raises(ValueError, match="different cases"):
        compare({"A": a, "B": b})
    proc = run_cli("compare", a, b, "--names", "A", "B")
    assert proc.returncode == 1 and "c2.nii.gz" in proc.stderr


def test_paired_wilcoxon_all_ties_is_one():
    assert paired_wilcoxon([0.5, np.nan, 0.7], [0.5, 0.1, 0.7]) == 1.0


PICTURES = [("with image", True), ("plain background", False)]


@pytest.mark.parametrize("name,with_image", PICTURES, ids=[p[0] for p in PICTURES])
def test_pngs_have_size_and_detection_colours(dataset, tmp_path, name, with_image):
    png_dir = tmp_path / "png"
    evaluate_folder_from_json(str(dataset / "gt"), str(dataset / "pred"), str(dataset / "dataset.json"), PLANS,
                              tmp_path / "s.json", png_dir=str(png_dir),
                              images_dir=str(dataset / "images") if with_image else None)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sorted(os.listdir(png_dir)) == [f"case_{i}.png" for i in range(3)]
    for case in summary["metric_per_case"]:
        name = os.path.basename(case["reference_file"]).replace(".nii.gz", ".png")
        png = Image.open(png_dir / name)
        rgb = np.asarray(png.convert("RGB"))
        assert rgb.shape == ((PANEL_INCHES + LEGEND_INCHES) * DPI, 3 * PANEL_INCHES * DPI, 3)
        m = case["metrics"]["1"]
        for panel in json.loads(png.info["nnunet_blob"])["panels"]:  # one per axis; the legend shows every colour
            x0, y0, x1, y1 = panel["box"]
            colours = {tuple(c) for c in rgb[y0:y1, x0:x1].reshape(-1, 3)}
            assert (0, 255, 0) in colours  # detected lesions
            assert ((0, 0, 255) in colours) == (m["FP_instances"] > 0)
            assert ((255, 0, 0) in colours) == (m["FN_instances"] > 0)


def test_pooled_scores_when_a_model_predicts_nothing(dataset, tmp_path):
    """Reference lesions and no prediction at all: IS 0, IP undefined, F1 0 (as per case and online)."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for ref in sorted((dataset / "gt").iterdir()):
        write(empty / ref.name, np.zeros((6, 24, 24), np.uint8))
    summary = evaluate_folder_from_json(str(dataset / "gt"), str(empty), str(dataset / "dataset.json"), PLANS,
                                        tmp_path / "s.json")
    pooled = summary["pooled_instances"][1]
    assert pooled["n_ref_instances"] == 6 and pooled["n_pred_instances"] == 0
    assert pooled["IS"] == 0.0 and np.isnan(pooled["IP"]) and pooled["F1"] == 0.0
    assert all(case["metrics"][1]["F1"] == 0.0 for case in summary["metric_per_case"])


def test_compare_uses_and_prints_the_significance_level_asked_for(tmp_path):
    b = [0.5] * 6
    a = [0.6, 0.7, 0.8, 0.9, 1.0, 0.45]  # five better, one slightly worse: exact two-sided p = 4 / 64
    assert wilcoxon(a, b).pvalue == pytest.approx(0.0625)
    paths = [_summary_with(tmp_path, "A", a), _summary_with(tmp_path, "B", b)]
    for alpha, beaten in (("0.05", "0.000"), ("0.1", "0.500")):  # Dice beaten or not; F1 ties
        proc = run_cli("compare", *paths, "--names", "A", "B", "--alpha", alpha)
        assert proc.returncode == 0, proc.stderr
        assert f"rank score (mean number of methods beaten at p < {alpha}):" in proc.stdout
        assert re.search(rf"^  A +{beaten}$", proc.stdout, flags=re.MULTILINE), proc.stdout
