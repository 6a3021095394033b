"""``nnunet_blob evaluate`` and ``compare`` through the real command with the lesion options, and every faulty input
giving a clear error (file named, what is wrong, the fix) instead of a score or a traceback."""
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_blob.evaluation.metrics import label_metrics
from nnunet_blob.evaluation.options import EvaluationOptions

SPACING_XYZ = (0.8, 1.2, 3.0)
DATASET = {"labels": {"background": 0, "lesion": 1, "ignore": 2}, "file_ending": ".nii.gz",
           "channel_names": {"0": "FLAIR"}, "numTraining": 3}
PLANS = {"plans_name": "nnUNetPlans"}
SHAPE = (6, 24, 24)


def write(path, arr, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)):
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    sitk.WriteImage(img, str(path))


def run_cli(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "nnunet_blob")
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300)


def make_case(rng, index):
    ref = np.zeros(SHAPE, np.uint8)
    pred = np.zeros_like(ref)
    ref[2:4, 3:7, 3:7] = 1  # found, overlapping well
    pred[2:4, 4:8, 3:7] = 1
    ref[3, 15:17, 15:17] = 1  # small lesion: hit in some cases
    if index != 1:
        pred[3, 15, 15] = 1
    pred[1, 20, 2:4] = 1  # false positive
    if index == 2:  # an empty case for label 1 would need an empty reference: keep one lesion-free slice instead
        ref[5, :, :] = 2
    probabilities = np.zeros((3, *SHAPE), np.float32)
    probabilities[1] = np.where(pred == 1, rng.uniform(0.55, 1.0, SHAPE), rng.uniform(0.0, 0.45, SHAPE))
    probabilities[0] = 1 - probabilities[1]
    return ref, pred, probabilities


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_cli")
    rng = np.random.default_rng(3)
    for sub in ("gt", "pred"):
        (root / sub).mkdir()
    for i in range(3):
        ref, pred, probabilities = make_case(rng, i)
        write(root / "gt" / f"case_{i}.nii.gz", ref)
        write(root / "pred" / f"case_{i}.nii.gz", pred)
        np.savez_compressed(root / "pred" / f"case_{i}.npz", probabilities=probabilities)
    (root / "dataset.json").write_text(json.dumps(DATASET))
    (root / "plans.json").write_text(json.dumps(PLANS))
    return root


def evaluate(dataset, *options, out):
    return run_cli("evaluate", dataset / "gt", dataset / "pred", "-djfile", dataset / "dataset.json", "-pfile",
                   dataset / "plans.json", "-o", out, *options)


ALL_OPTIONS = ("--matching", "one-to-one", "--preset", "brats-met", "--cc-dice", "--empty-case", "one",
               "--confidence", "--size-bins", "0.001", "0.01")


def test_every_option_through_the_command(dataset, tmp_path):
    out = tmp_path / "all.json"
    proc = evaluate(dataset, *ALL_OPTIONS, out=out)
    assert proc.returncode == 0, proc.stderr
    assert "label 1: DSC" in proc.stdout and " F1 " in proc.stdout and " IS " in proc.stdout
    assert " IP " in proc.stdout and "false positive" in proc.stdout and f"summary: {out}" in proc.stdout
    assert "FROC mean" in proc.stdout
    summary = json.loads(out.read_text())
    settings = summary["settings"]
    assert settings["matching"] == "one-to-one" and settings["gt_dilation"] == 1 and settings["confidence"]
    assert settings["surface_dice_tolerance_mm"] == 1.0 and settings["connectivity"] == 26
    options = EvaluationOptions(matching="one-to-one", gt_dilation=1, min_lesion_volume_mm3=2.0, cc_dice=True,
                                empty_case="one", size_bins_ml=(0.001, 0.01))
    for case in summary["metric_per_case"]:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(case["reference_file"]))
        pred = sitk.GetArrayFromImage(sitk.ReadImage(case["prediction_file"]))
        want = label_metrics(ref, pred, 1, SPACING_XYZ[::-1], ignore_label=2, options=options)
        got = case["metrics"]["1"]
        assert set(got) == set(want)
        for key in ("RQ", "SQ", "PQ", "n_matched", "CC_Dice", "lesion_wise_Dice", "lesion_wise_HD95", "IS_<0.001ml",
                    "TP_ref_0.001-0.01ml", "FP_instances"):
            assert got[key] == pytest.approx(want[key], nan_ok=True), key
        assert [entry[0] for entry in case["detections"]["1"]].count(1) == got["n_ref_instances"]
    pooled = summary["pooled_instances"]["1"]
    assert set(pooled["FROC"]) == {"0.125", "0.25", "0.5", "1", "2", "4", "8", "mean"}
    assert 0 < pooled["AP"] <= 1
    assert pooled["FP_per_case"] == np.mean([c["metrics"]["1"]["FP_instances"] for c in summary["metric_per_case"]])
    assert pooled["FP_per_case"] == 5 / 3  # one-to-one: the one-voxel hit of a 4-voxel lesion (IoU 1/4) is one
    assert pooled["n_matched"] == sum(c["metrics"]["1"]["n_matched"] for c in summary["metric_per_case"])


def test_defaults_keep_the_old_keys_and_add_only_size_bins(dataset, tmp_path):
    out = tmp_path / "default.json"
    assert evaluate(dataset, out=out).returncode == 0
    metrics = json.loads(out.read_text())["metric_per_case"][0]["metrics"]["1"]
    old = {"Dice", "IoU", "TP", "FP", "FN", "TN", "n_pred", "n_ref", "sensitivity", "precision", "SurfaceDice",
           "n_ref_instances", "TP_ref_instances", "n_pred_instances", "TP_pred_instances", "FN_instances",
           "FP_instances", "IS", "IP", "F1", "lesion_count_difference", "absolute_volume_difference_ml"}
    new = set(metrics) - old
    assert old <= set(metrics)
    assert new and all(k.split("_")[0] in ("n", "TP", "IS") and k.endswith("ml") for k in new), new


def test_compare_takes_the_new_metrics(dataset, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert evaluate(dataset, *ALL_OPTIONS, out=a).returncode == 0
    assert evaluate(dataset, "--matching", "one-to-one", "--match-threshold", "0.2", "--preset", "brats-met",
                    "--cc-dice", "--empty-case", "one", "--size-bins", "0.001", "0.01", out=b).returncode == 0
    proc = run_cli("compare", a, b, "--names", "A", "B")
    assert proc.returncode == 0, proc.stderr
    for metric in ("PQ", "SQ", "RQ", "CC_Dice", "lesion_wise_Dice", "lesion_wise_HD95"):
        assert f"label 1  {metric}\n" in proc.stdout, metric
    proc = run_cli("compare", a, b, "--names", "A", "B", "--metrics", "FP_instances", "IS_0.001-0.01ml")
    assert proc.returncode == 0 and "label 1  IS_0.001-0.01ml" in proc.stdout, proc.stderr
    proc = run_cli("compare", a, b, "--names", "A", "B", "--metrics", "Hausdorff")
    assert proc.returncode == 1 and "--metrics: no known direction for ['Hausdorff']" in proc.stderr


def copy_dataset(dataset, tmp_path):
    for name in ("dataset.json", "plans.json"):
        os.symlink(dataset / name, tmp_path / name)
    for sub in ("gt", "pred"):
        (tmp_path / sub).mkdir()
        for f in (dataset / sub).iterdir():
            os.symlink(f, tmp_path / sub / f.name)
    return tmp_path


def truncate(path):
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def replace_with(path, write_fn):
    path.unlink()
    write_fn(path)


FAULTS = [
    ("truncated .nii.gz", lambda p: truncate(p), "gzip stream ends early"),
    ("random bytes", lambda p: replace_with(p, lambda q: q.write_bytes(np.random.default_rng(0).bytes(3000))),
     "not a readable gzip file"),
    ("gzipped random bytes", lambda p: replace_with(p, lambda q: q.write_bytes(gzip.compress(
        np.random.default_rng(0).bytes(3000)))), "cannot be read with SimpleITKIO"),
    ("other spacing", lambda p: replace_with(p, lambda q: write(q, np.zeros(SHAPE, np.uint8), (0.8, 1.2, 2.0))),
     "spacing (2.0, 1.2, 0.8) vs the reference's (3.0, 1.2, 0.8)"),
    ("other origin", lambda p: replace_with(p, lambda q: write(q, np.zeros(SHAPE, np.uint8), origin=(5, 0, 0))),
     "origin (5.0, 0.0, 0.0) vs the reference's (0.0, 0.0, 0.0)"),
    ("other shape", lambda p: replace_with(p, lambda q: write(q, np.zeros((6, 24, 23), np.uint8))),
     "other shape, (6, 24, 23) vs the reference"),
    ("undeclared label", lambda p: replace_with(p, lambda q: write(q, np.full(SHAPE, 5, np.uint8))),
     "labels [5] are not among the declared labels [0, 1, 2]"),
    ("non-integer labels", lambda p: replace_with(p, lambda q: write(q, np.full(SHAPE, 0.5, np.float32))),
     "holds non-integer values"),
]


@pytest.mark.parametrize("name,damage,message", FAULTS, ids=[f[0] for f in FAULTS])
def test_faulty_prediction_gives_a_clear_error(dataset, tmp_path, name, damage, message):
    folders = copy_dataset(dataset, tmp_path)
    target = folders / "pred" / "case_1.nii.gz"
    damage(target)
    proc = evaluate(folders, out=tmp_path / "s.json")
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr and str(target) in proc.stderr and message in proc.stderr, proc.stderr
    assert not (tmp_path / "s.json").exists()


def test_geometry_mismatch_can_be_allowed(dataset, tmp_path):
    folders = copy_dataset(dataset, tmp_path)
    target = folders / "pred" / "case_1.nii.gz"
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(dataset / "pred" / "case_1.nii.gz")))
    replace_with(target, lambda q: write(q, pred, origin=(0.0, 0.0, 1e-9)))  # within nnU-Net's tolerance
    assert evaluate(folders, out=tmp_path / "a.json").returncode == 0
    replace_with(target, lambda q: write(q, pred, origin=(5.0, 0.0, 0.0)))
    assert evaluate(folders, out=tmp_path / "b.json").returncode == 1
    proc = evaluate(folders, "--allow-geometry-mismatch", out=tmp_path / "c.json")
    assert proc.returncode == 0, proc.stderr


def test_truncated_reference_is_an_error_not_a_score(dataset, tmp_path):
    folders = copy_dataset(dataset, tmp_path)
    target = folders / "gt" / "case_0.nii.gz"
    truncate(target)
    with gzip.open(target) as f, pytest.raises(EOFError):
        f.read()  # the file really is cut; SimpleITK alone reads it as a partly empty image
    proc = run_cli("evaluate", folders / "gt", folders / "pred", "-l", 1, "-il", 2, "-o", tmp_path / "s.json")
    assert proc.returncode == 1 and str(target) in proc.stderr and "truncated" in proc.stderr


USAGE = [
    ("missing GT folder with -l", lambda d, t: ("evaluate", t / "nowhere", d / "pred", "-l", 1),
     "GT_FOLDER {t}/nowhere is not a folder"),
    ("missing prediction folder", lambda d, t: ("evaluate", d / "gt", t / "nowhere", "-l", 1),
     "PRED_FOLDER {t}/nowhere is not a folder"),
    ("threshold without one-to-one", lambda d, t: ("evaluate", d / "gt", d / "pred", "-l", 1, "--match-threshold",
                                                   0.3), "--match-threshold apply to --matching one-to-one"),
    ("threshold out of range", lambda d, t: ("evaluate", d / "gt", d / "pred", "-l", 1, "--matching", "one-to-one",
                                             "--match-threshold", 1.5), "--match-threshold must be in (0, 1]"),
    ("preset and explicit dilation", lambda d, t: ("evaluate", d / "gt", d / "pred", "-l", 1, "--preset",
                                                   "brats-gli", "--gt-dilation", 2), "--preset brats-gli sets"),
    ("confidence without probabilities", lambda d, t: ("evaluate", d / "gt", t, "-l", 1, "--confidence"),
     "no probabilities"),
    ("missing dataset.json", lambda d, t: ("evaluate", d / "gt", d / "pred", "-djfile", t / "dataset.json", "-pfile",
                                           d / "plans.json"), "-djfile {t}/dataset.json does not exist"),
]


@pytest.mark.parametrize("name,args,message", USAGE, ids=[u[0] for u in USAGE])
def test_impossible_options_and_missing_inputs_name_the_fix(dataset, tmp_path, name, args, message):
    if name == "confidence without probabilities":
        for f in (dataset / "pred").glob("*.nii.gz"):
            os.symlink(f, tmp_path / f.name)
    proc = run_cli(*args(dataset, tmp_path))
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stderr and "Errno" not in proc.stderr
    assert message.format(t=tmp_path) in proc.stderr, proc.stderr


def test_help_says_what_is_required():
    proc = run_cli("evaluate", "--help")
    assert proc.returncode == 0
    assert "(-djfile DATASET_JSON -pfile PLANS_JSON | -l LABEL [LABEL ...] [-il IGNORE])" in proc.stdout
    assert "Required: -djfile and -pfile, or -l." in " ".join(proc.stdout.split())  # wherever argparse wraps
    proc = run_cli("evaluate", "gt", "pred")
    assert proc.returncode == 2 and "give -djfile and -pfile, or -l" in proc.stderr
