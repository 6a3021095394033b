"""benchmarks/bench_ms.py on a tiny folder in the open_ms_data layout made here: which patients become cases, the 3D
raw dataset nnU-Net reads (channels as they are, the consensus mask, lesion counts), the folds over patients, faults
named, the listed training commands, the results table, and nnU-Net's own planning and preprocessing of the result."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import _ms_lesions as ms  # noqa: E402
import bench_ms  # noqa: E402

from nnunet_blob.demo.plans import set_patch_size  # noqa: E402

RAW = Path("nnUNet_raw") / "Dataset993_LjubljanaMSLesions"
SHAPE = (8, 9, 10)  # numpy (z, y, x)
SPACING, ORIGIN = (0.47, 0.47, 0.8), (-10.0, 5.0, 2.5)  # SimpleITK (x, y, z)
COREGISTERED = {"FLAIR": "FLAIR.nii.gz", "T1": "T1W.nii.gz", "T1POST": "T1WKS.nii.gz", "T2": "T2W.nii.gz"}
# lesions as boxes (z, y, x slices) per patient; patient01's two boxes touch at a corner only: one 26-connected lesion
LESIONS = {
    "patient01": [(slice(1, 3), slice(1, 3), slice(1, 3)), (slice(3, 5), slice(3, 5), slice(3, 5)),
                  (slice(6, 8), slice(6, 8), slice(7, 9))],
    "patient02": [(slice(2, 4), slice(2, 5), slice(2, 6))],
    "patient03": [(slice(0, 1), slice(0, 1), slice(0, 1)), (slice(4, 6), slice(4, 6), slice(1, 2)),
                  (slice(7, 8), slice(1, 3), slice(6, 9))],
}
EXPECTED_LESIONS = {"patient01": 2, "patient02": 1, "patient03": 3}


def write(array: np.ndarray, path: Path, spacing=SPACING) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def mask(patient: str) -> np.ndarray:
    label = np.zeros(SHAPE, np.uint8)
    for box in LESIONS.get(patient, []):
        label[box] = 1
    return label


def write_open_ms_data(root: Path) -> Path:
    """patient01-03 complete in coregistered space; patient04 lacks T2W, patient05 the label; one MNI patient."""
    rng = np.random.default_rng(0)
    base = root / "open_ms_data" / "cross_sectional"
    for patient in ("patient01", "patient02", "patient03", "patient04", "patient05"):
        folder = base / "coregistered" / patient
        for channel, name in COREGISTERED.items():
            if not (patient == "patient04" and channel == "T2"):
                write((rng.normal(size=SHAPE) + 3 * mask(patient)).astype(np.float32), folder / name)
        if patient != "patient05":
            write(mask(patient), folder / "consensus_gt.nii.gz")
    mni = base / "MNI" / "patient07"
    for name in ms.SPACES["MNI"].channels.values():
        write(rng.normal(size=SHAPE).astype(np.float32), mni / name)
    write(mask("patient02"), mni / ms.SPACES["MNI"].label)
    return root / "open_ms_data"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ms")
    folder = write_open_ms_data(root)
    assert bench_ms.main(["--ms-folder", str(folder), "--workspace", str(root / "ws"), "--stages", "convert"]) == 0
    return folder, root / "ws"


def test_complete_patients_become_cases_with_their_channels_and_masks(converted):
    folder, ws = converted
    raw = ws / RAW
    cases = ["patient01", "patient02", "patient03"]
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"{c}_000{k}.nii.gz" for c in cases
                                                                     for k in range(3)]
    assert sorted(p.name for p in (raw / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    for case in cases:
        source = folder / "cross_sectional" / "coregistered" / case
        for k, name in enumerate(("FLAIR.nii.gz", "T1W.nii.gz", "T2W.nii.gz")):  # channels as they are, in order
            assert (raw / "imagesTr" / f"{case}_000{k}.nii.gz").read_bytes() == (source / name).read_bytes()
        label = sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))
        assert label.GetPixelID() == sitk.sitkUInt8
        assert np.array_equal(sitk.GetArrayFromImage(label), mask(case))
        assert np.allclose(label.GetSpacing(), SPACING) and np.allclose(label.GetOrigin(), ORIGIN)
    report = json.loads((ws / "conversion.json").read_text())
    assert report["space"] == "coregistered" and report["patients_found"] == 5 and report["cases"] == cases
    assert report["skipped"] == {"patient04": ["T2"], "patient05": ["label"]}
    assert report["lesions"] == EXPECTED_LESIONS  # 26-connected: patient01's corner-touching boxes are one lesion
    assert report["lesion_voxels"] == {c: int(mask(c).sum()) for c in cases}
    assert report["shape"]["patient01"] == [10, 9, 8]
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "FLAIR", "1": "T1", "2": "T2"}
    assert dataset["labels"] == {"background": 0, "lesion": 1} and dataset["numTraining"] == 3
    assert dataset["file_ending"] == ".nii.gz" and "10.1007/s12021-017-9348-7" in dataset["citation"]


def test_leave_one_patient_out_up_to_five_folds():
    assert ms.patient_folds(["p3", "p1", "p2"]) == [{"train": ["p2", "p3"], "val": ["p1"]},
                                                    {"train": ["p1", "p3"], "val": ["p2"]},
                                                    {"train": ["p1", "p2"], "val": ["p3"]}]
    cases = [f"p{i}" for i in range(7)]
    folds = ms.patient_folds(cases)
    assert len(folds) == 5 and folds[0]["val"] == ["p0", "p5"] and folds[4]["val"] == ["p4"]
    assert sorted(c for f in folds for c in f["val"]) == cases  # every patient validated once
    assert all(sorted(f["train"] + f["val"]) == cases for f in folds)


def test_faults_name_the_patient_and_the_fix(tmp_path, capsys):
    folder = write_open_ms_data(tmp_path)
    assert bench_ms.main(["--ms-folder", str(folder), "--workspace", str(tmp_path / "ws"), "--space", "MNI",
                          "--dry-run"]) == 1
    assert "1 of 1 patients have every file of channels FLAIR, T1, T2 and the label" in capsys.readouterr().err
    patient = folder / "cross_sectional" / "coregistered" / "patient02"
    write(2 * mask("patient02"), patient / "consensus_gt.nii.gz")
    with pytest.raises(ms.ConversionError, match="consensus_gt.nii.gz: label values \\[0, 2\\]"):
        ms.convert(folder, tmp_path / "raw")
    write(mask("patient02"), patient / "consensus_gt.nii.gz")
    write(np.zeros(SHAPE, np.float32), patient / "T2W.nii.gz", spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ms.ConversionError, match="patient02: T2W.nii.gz has size/spacing"):
        ms.convert(folder, tmp_path / "raw")
    with pytest.raises(ms.ConversionError, match="choose distinct ones of FLAIR, T1, T1POST, T2"):
        ms.convert(folder, tmp_path / "raw", channels=["FLAIR", "PD"])


def test_listed_commands_train_every_fold_and_evaluate_each_patient_held_out(converted, capfd):
    folder, ws = converted
    assert bench_ms.main(["--ms-folder", str(folder), "--workspace", str(ws), "--list-commands", "--device",
                          "cpu"]) == 0
    lines = [line.split(": ", 1)[1] for line in capfd.readouterr().out.splitlines() if line.startswith("[")]
    raw = ws / RAW
    assert lines[0] == "(python) Ljubljana MS lesions -> Dataset993_LjubljanaMSLesions"  # done, but listed
    assert lines[1] == ("nnUNetv2_plan_and_preprocess -d 993 -c 3d_fullres -np 2 -npfp 2 "
                        "--verify_dataset_integrity")
    assert lines[2] == "(python) 3 folds over the patients (splits_final.json)"
    blob = lines[lines.index(next(x for x in lines if "nnUNetTrainerBlobDice_demo" in x)):]
    assert blob[:3] == [f"nnUNetv2_train 993 3d_fullres {k} -tr nnUNetTrainerBlobDice_demo -device cpu --npz"
                        for k in range(3)]
    assert blob[3] == "(python) nnUNetTrainerBlobDice: each patient's prediction by the fold that held it out"
    assert blob[4].startswith(f"nnunet_blob evaluate {raw / 'labelsTr'} {ws / 'predictions' / 'nnUNetTrainerBlobDice'}")
    assert blob[5].endswith("--matching one-to-one") and len(blob) == 6
    assert not (ws / "nnUNet_preprocessed").exists()


def test_results_table_means_and_each_patient(tmp_path):
    cases = ["patient07", "patient19", "patient26"]
    values = {"nnUNetTrainer": [0.2, 0.5, 0.8], "nnUNetTrainerBlobDice": [0.3, 0.6, 0.6]}
    summaries: dict = {"overlap": {}, "one-to-one": {}}
    for name in summaries:
        for trainer, f1 in values.items():
            path = tmp_path / f"{trainer}_{name}.json"
            per_case = [{"reference_file": f"/gt/{c}.nii.gz", "metrics": {"1": {"F1": v, "Dice": v / 2}}}
                        for c, v in zip(cases, f1, strict=True)]
            path.write_text(json.dumps({"metric_per_case": per_case,
                                        "foreground_mean": {"F1": np.mean(f1), "Dice": np.mean(f1) / 2}}))
            summaries[name][trainer] = path
    counts = {"cases": cases, "space": "MNI", "channels": ["FLAIR", "T1", "T2"],
              "lesions": {"patient07": 37, "patient19": 98, "patient26": 19}}
    args = argparse.Namespace(epochs=10, iterations=10, seed=0)
    text = bench_ms.results_markdown(counts, args, summaries, ms.patient_folds(cases), 8, "cpu", [64, 64, 64])
    assert "a sanity check on real 3D lesions (n = 3 patients), not a benchmark" in text
    assert "reduced to 8 features in the first stage, training patch 64x64x64" in text
    assert "Leave-one-patient-out" in text and "154 lesions" in text and "no paired test can reach p < 0.05" in text
    assert "| nnUNetTrainerBlobDice | 0.250 | 0.500 |" in text  # DSC, F1 means over the patients
    assert "| nnUNetTrainer | 0.100 / 0.250 / 0.400 | 0.200 / 0.500 / 0.800 |" in text  # per patient, in order
    assert "PQ" not in text and "SDSC" not in text  # metrics the summaries lack are left out


def test_nnunet_plans_and_preprocesses_the_converted_dataset_with_the_patient_folds(converted):
    """nnU-Net's integrity check, 3d_fullres planning and preprocessing of the 3-channel dataset, the folds and the
    instance maps, through the script."""
    folder, ws = converted
    assert bench_ms.main(["--ms-folder", str(folder), "--workspace", str(ws), "--stages", "preprocess", "--device",
                          "cpu", "-np", "1"]) == 0
    preprocessed = ws / "nnUNet_preprocessed" / RAW.name
    assert json.loads((preprocessed / "splits_final.json").read_text()) == ms.patient_folds(
        ["patient01", "patient02", "patient03"])
    plans = json.loads((preprocessed / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 8
    assert (ws / ".stages" / "instance_maps.done").is_file()


def test_a_smaller_training_patch_must_be_a_multiple_of_the_downsampling(tmp_path):
    """``--patch-size``: the patch is replaced in the plans (nothing else); an axis the network's strides do not
    divide, a wrong number of axes or an unknown configuration is refused with the planned patch named."""
    strides = [[1, 1, 1], [2, 2, 2], [2, 2, 2], [1, 2, 2]]  # downsampling 4 x 8 x 8
    plans = {"configurations": {"3d_fullres": {"patch_size": [40, 160, 128], "batch_size": 2,
                                               "architecture": {"arch_kwargs": {"strides": strides}}}}}
    file = tmp_path / "nnUNetPlans.json"
    file.write_text(json.dumps(plans))
    assert set_patch_size(file, "3d_fullres", [8, 64, 32]) == "3d_fullres: patch size [40, 160, 128] -> [8, 64, 32]"
    changed = json.loads(file.read_text())
    assert changed["configurations"]["3d_fullres"].pop("patch_size") == [8, 64, 32]
    assert changed["configurations"]["3d_fullres"].pop("planned_patch_size") == [40, 160, 128]
    assert changed["configurations"]["3d_fullres"] == {k: v for k, v in plans["configurations"]["3d_fullres"].items()
                                                       if k != "patch_size"}
    refused = (([6, 64, 32], r"not a positive multiple of the network's downsampling \[4, 8, 8\] along axis 0;"),
               ([8, 0, 12], "along axes 1, 2;"), ([8, 64], "has 2 axes; 3d_fullres has 3"))
    for patch, message in refused:
        with pytest.raises(ValueError, match=message):
            set_patch_size(file, "3d_fullres", patch)
    with pytest.raises(ValueError, match="no configuration '3d_lowres'; it has 3d_fullres"):
        set_patch_size(file, "3d_lowres", [8, 64, 32])
    assert json.loads(file.read_text())["configurations"]["3d_fullres"]["patch_size"] == [8, 64, 32]  # refused: kept
    # set again: from nnU-Net's patch, which stays the one named
    assert set_patch_size(file, "3d_fullres", [4, 8, 8]) == "3d_fullres: patch size [40, 160, 128] -> [4, 8, 8]"
    with pytest.raises(ValueError, match=r"\(planned \[40, 160, 128\]\)"):
        set_patch_size(file, "3d_fullres", [5, 8, 8])


def test_the_cpu_patch_is_the_planned_patch_cut_to_64_and_bad_sizes_are_refused(tmp_path, capsys):
    plans = tmp_path / "nnUNetPlans.json"
    assert bench_ms._cpu_patch(plans) == [64, 64, 64]  # before planning (the listing)
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [40, 160, 128]}}}))
    assert bench_ms._cpu_patch(plans) == [40, 64, 64]  # never larger than planned
    plans.write_text(json.dumps({"configurations": {"3d_fullres": {"patch_size": [32, 32, 32],
                                                                   "planned_patch_size": [40, 160, 128]}}}))
    assert bench_ms._cpu_patch(plans) == [40, 64, 64]  # after an earlier --patch-size: from nnU-Net's patch
    for sizes in (["64", "64"], ["64", "-64", "64"], ["0", "0", "0"]):
        with pytest.raises(SystemExit):
            bench_ms.main(["--ms-folder", str(tmp_path), "--patch-size", *sizes])
        assert "--patch-size: three positive sizes (z y x) or 0 for nnU-Net's planned patch" in capsys.readouterr().err
