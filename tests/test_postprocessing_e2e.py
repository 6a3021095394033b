"""The submission tools through the real command lines on a tiny dataset: models trained with nnUNetv2_train
(fold 0 validates 12 cases, probabilities saved with --npz), validation predictions planted where a test needs known
content (written with nnU-Net's own writer next to nnU-Net's properties), then tune-postprocessing,
apply-postprocessing, nnunet_blob evaluate, find-best against nnU-Net's own ensembling, checkpoint_best_instances.pth
through nnUNetv2_predict, and the --stock export installed and predicted where nnU-Net cannot see our trainers."""
from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from scipy import ndimage

from helpers import run_cli
from nnunet_blob.postprocessing.cases import cross_validation_predictions, ensemble_predictions
from nnunet_blob.postprocessing.rules import LabelLayout, Setting
from nnunet_blob.postprocessing.selection import inference_commands
from nnunet_blob.postprocessing.settings import PostprocessingFile
from nnunet_blob.trainers.lesion_validation import BEST_INSTANCES_CHECKPOINT, moving_averages

DATASET_ID = 651
CONFIGURATION = "3d_fullres"
MISSES, SPECKLES, PLANTED = "nnUNetTrainer_tiny", "nnUNetTrainerBlobDice_tiny", "nnUNetTrainerPlanted"
FULL = np.ones((3, 3, 3))


def model(dataset: str, trainer: str) -> Path:
    return Path(os.environ["nnUNet_results"]) / dataset / f"{trainer}__nnUNetPlans__{CONFIGURATION}"


def train(trainer: str, epochs: int = 1, *extra):
    env = {**os.environ, "NNUNET_BLOB_TEST_EPOCHS": str(epochs)}
    return run_cli("nnUNetv2_train", DATASET_ID, CONFIGURATION, 0, "-tr", trainer, "-device", "cpu", "--npz", *extra,
                   env=env)


@pytest.fixture(scope="module")
def trained(preprocessed):
    """Fold 0 trains on 3 cases and validates 12; nnUNetTrainer for one epoch, blob Dice for two."""
    dataset = preprocessed(DATASET_ID, num_train=15, num_test=2, name="Decisions")
    base = Path(os.environ["nnUNet_preprocessed"]) / dataset
    cases = sorted(p.name[: -len(".nii.gz")] for p in (base / "gt_segmentations").glob("*.nii.gz"))
    (base / "splits_final.json").write_text(json.dumps([{"train": cases[:3], "val": cases[3:]}]))
    train(MISSES)
    train(SPECKLES, 2)
    return dataset


def reference_cases(dataset: str):
    """(case, reference array, nnU-Net properties) of fold 0's validation cases."""
    rw = SimpleITKIO()
    gt = Path(os.environ["nnUNet_preprocessed"]) / dataset / "gt_segmentations"
    for file in sorted((model(dataset, MISSES) / "fold_0" / "validation").glob("*.nii.gz")):
        seg, properties = rw.read_seg(str(gt / file.name))
        yield file.name[: -len(".nii.gz")], seg[0], properties


def far_voxels(ref: np.ndarray, count: int) -> list[tuple]:
    """``count`` voxels at least 3 voxels from the reference, the volume's border and each other."""
    free = ndimage.binary_dilation(ref > 0, FULL, iterations=3) == 0
    free[:3], free[-3:], free[:, :3], free[:, -3:], free[:, :, :3], free[:, :, -3:] = (False,) * 6
    chosen = []
    for voxel in zip(*np.nonzero(free), strict=True):
        if all(max(abs(a - b) for a, b in zip(voxel, c, strict=True)) >= 3 for c in chosen):
            chosen.append(voxel)
            if len(chosen) == count:
                return chosen
    raise AssertionError("no room for the speckles")


def large_lesions(ref: np.ndarray, min_voxels: int) -> np.ndarray:
    labels, _ = ndimage.label(ref > 0, FULL)
    sizes = np.bincount(labels.ravel())
    return (sizes[labels] >= min_voxels) & (labels > 0)


def plant(folder: Path, dataset: str, make) -> None:
    """Replace a model's fold-0 validation predictions: ``make(ref) -> (prediction, foreground probability)``,
    written with nnU-Net's writer and properties; nnU-Net's .pkl files stay."""
    rw = SimpleITKIO()
    for case, ref, properties in reference_cases(dataset):
        prediction, p = make(ref)
        validation = folder / "fold_0" / "validation"
        rw.write_seg(prediction.astype(np.uint8), str(validation / f"{case}.nii.gz"), properties)
        np.savez_compressed(validation / f"{case}.npz", probabilities=np.stack([1 - p, p]).astype(np.float32))
        assert (validation / f"{case}.pkl").is_file()


def misses_small_lesions(ref):
    """Finds the lesions of >= 4 voxels, nothing else."""
    prediction = large_lesions(ref, 4)
    return prediction, np.where(prediction, 0.8, 0.05)


def faint_speckles(ref):
    """Finds every lesion, and ten faint 2x2x2 false positives (probability 0.55)."""
    prediction, p = (ref > 0).copy(), np.where(ref > 0, 0.95, 0.05)
    for z, y, x in far_voxels(ref, 10):
        prediction[z:z + 2, y:y + 2, x:x + 2] = True
        p[z:z + 2, y:y + 2, x:x + 2] = 0.55
    return prediction, p


def one_voxel_speckle(ref):
    """Finds the lesions of >= 4 voxels, and one confident one-voxel false positive."""
    prediction = large_lesions(ref, 4)
    prediction[far_voxels(ref, 1)[0]] = True
    return prediction, np.where(prediction, 0.95, 0.05)


@pytest.fixture(scope="module")
def planted(trained):
    """The two trained models' validation outputs replaced by known predictions, and a third model folder (a copy)
    with a one-voxel speckle per case."""
    shutil.copytree(model(trained, MISSES), model(trained, PLANTED))
    plant(model(trained, MISSES), trained, misses_small_lesions)
    plant(model(trained, SPECKLES), trained, faint_speckles)
    plant(model(trained, PLANTED), trained, one_voxel_speckle)
    return trained


def evaluate_mean(dataset: str, folder: Path, metric: str = "F1") -> float:
    """``nnunet_blob evaluate``'s foreground mean of a folder of predictions."""
    base = Path(os.environ["nnUNet_preprocessed"]) / dataset
    out = folder / "summary_check.json"
    run_cli("nnunet_blob", "evaluate", base / "gt_segmentations", folder, "-djfile", base / "dataset.json",
            "-pfile", base / "nnUNetPlans.json", "-o", out, "--chill")
    return json.loads(out.read_text())["foreground_mean"][metric]


def test_tune_removes_a_planted_speckle_and_apply_reproduces_its_numbers(planted, tmp_path):
    result = run_cli("nnunet_blob", "tune-postprocessing", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", PLANTED,
                     "-f", 0)
    assert "Decision rule" in result.stdout and "Bonferroni" in result.stdout and "chosen" in result.stdout
    file = model(planted, PLANTED) / "crossval_results_folds_0" / "postprocessing_instances.json"
    pp = json.loads(file.read_text())
    (setting,) = pp["settings"]
    assert setting["threshold"] is None and setting["min_volume_mm3"] == 2.0  # two voxels of 1 mm³
    (tuning,) = pp["tuning"]
    assert tuning["changed"] and tuning["paired_cases"] == 12 and tuning["thresholds"][0] is None
    assert len(tuning["thresholds"]) == 5 and tuning["p_corrected"] < 0.05
    validation = model(planted, PLANTED) / "fold_0" / "validation"
    run_cli("nnunet_blob", "apply-postprocessing", "-i", validation, "-o", tmp_path / "pp", "-pp", file, "-np", 2)
    after = evaluate_mean(planted, tmp_path / "pp")
    before = evaluate_mean(planted, validation)
    assert pp["cross_validation"]["after"]["F1"]["1"] == pytest.approx(after)
    assert pp["cross_validation"]["before"]["F1"]["1"] == pytest.approx(before)
    assert after > before and evaluate_mean(planted, tmp_path / "pp", "IP") == 1.0


def literal_threshold_and_size(p_foreground, threshold, min_voxels):
    mask = p_foreground > threshold
    labels, n = ndimage.label(mask, FULL)
    sizes = np.bincount(labels.ravel())
    return (mask & (sizes[labels] >= min_voxels)).astype(np.uint8)


def write_pp(path: Path, min_volume: float, threshold) -> Path:
    return PostprocessingFile((Setting(1, min_volume, threshold),), LabelLayout((1,)), ".nii.gz",
                              "SimpleITKIO").write(path)


def test_apply_to_labels_and_to_probabilities(ensemble_run, tmp_path):
    predicted = tmp_path / "predicted"  # nnUNetv2_predict's output with --save_probabilities
    shutil.copytree(ensemble_run[1] / "OUTPUT_FOLDER_MODEL_2", predicted)
    rng = np.random.default_rng(0)
    for npz in predicted.glob("*.npz"):  # smooth random probabilities: components of many sizes
        shape = np.load(npz)["probabilities"].shape[1:]
        p = ndimage.gaussian_filter(rng.random(shape), 1.5)
        p = (p - p.min()) / (p.max() - p.min())
        np.savez_compressed(npz, probabilities=np.stack([1 - p, p]).astype(np.float32))

    # probabilities: threshold, then minimum volume
    pp = write_pp(tmp_path / "threshold.json", 5.0, 0.6)
    run_cli("nnunet_blob", "apply-postprocessing", "-i", predicted, "-o", tmp_path / "from_npz", "-pp", pp)
    for npz in sorted(predicted.glob("*.npz")):
        out_file = tmp_path / "from_npz" / f"{npz.stem}.nii.gz"
        got = sitk.ReadImage(str(out_file))
        nnunet = sitk.ReadImage(str(predicted / f"{npz.stem}.nii.gz"))
        expected = literal_threshold_and_size(np.load(npz)["probabilities"][1], 0.6, 5)
        assert 0 < expected.sum() < expected.size and (expected != (np.load(npz)["probabilities"][1] > 0.6)).any()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(got), expected)
        assert got.GetSpacing() == nnunet.GetSpacing() and got.GetOrigin() == nnunet.GetOrigin()
        assert got.GetDirection() == nnunet.GetDirection()
        assert got.GetPixelIDTypeAsString() == nnunet.GetPixelIDTypeAsString()

    # labels: minimum volume only, on nnU-Net's label files (their content replaced by the 0.5 threshold)
    labels_only = tmp_path / "labels_only"
    labels_only.mkdir()
    for npz in sorted(predicted.glob("*.npz")):
        image = sitk.ReadImage(str(predicted / f"{npz.stem}.nii.gz"))
        array = (np.load(npz)["probabilities"][1] > 0.5).astype(np.uint8)
        relabelled = sitk.GetImageFromArray(array)
        relabelled.CopyInformation(image)
        sitk.WriteImage(relabelled, str(labels_only / f"{npz.stem}.nii.gz"))
    pp = write_pp(tmp_path / "size.json", 5.0, None)
    run_cli("nnunet_blob", "apply-postprocessing", "-i", labels_only, "-o", tmp_path / "from_labels", "-pp", pp)
    for file in sorted(labels_only.glob("*.nii.gz")):
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(file)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "from_labels" / file.name))),
                                      literal_threshold_and_size(array.astype(float), 0.5, 5))

    # refusals name the case and the fix
    refused = run_cli("nnunet_blob", "apply-postprocessing", "-i", labels_only, "-o", tmp_path / "x", "-pp",
                      tmp_path / "threshold.json", check=False)
    assert refused.returncode == 1 and "test_000" in refused.stderr and "--save_probabilities" in refused.stderr
    assert "Traceback" not in refused.stderr
    same = run_cli("nnunet_blob", "apply-postprocessing", "-i", labels_only, "-o", labels_only, "-pp", pp, check=False)
    assert same.returncode == 1 and "must differ" in same.stderr
    other = json.loads(pp.read_text())
    other["labels_or_regions"] = [1, 2]
    (tmp_path / "other.json").write_text(json.dumps(other))
    (labels_only / "dataset.json").write_text((predicted / "dataset.json").read_text())
    wrong = run_cli("nnunet_blob", "apply-postprocessing", "-i", labels_only, "-o", tmp_path / "y", "-pp",
                    tmp_path / "other.json", check=False)
    assert wrong.returncode == 1 and "tuned for [1, 2]" in wrong.stderr
    (tmp_path / "pkl.json").write_text("{}")
    bad = run_cli("nnunet_blob", "apply-postprocessing", "-i", labels_only, "-o", tmp_path / "z", "-pp",
                  tmp_path / "pkl.json", check=False)
    assert bad.returncode == 1 and "not a postprocessing file of nnunet_blob" in bad.stderr


def test_find_best_ranks_after_postprocessing_and_prints_the_commands(planted, tmp_path):
    result = run_cli("nnunet_blob", "find-best", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", MISSES, SPECKLES,
                     "-f", 0)
    info = json.loads((Path(os.environ["nnUNet_results"]) / planted / "inference_information_instances.json")
                      .read_text())
    misses, speckles = (f"{t}__nnUNetPlans__{CONFIGURATION}" for t in (MISSES, SPECKLES))
    ensemble = f"ensemble___{misses}___{speckles}___0"
    assert set(info["results"]) == {misses, speckles, ensemble}
    # before postprocessing: nnunet_blob evaluate of each model's validation folder, and of nnU-Net's own ensemble
    from nnunetv2.ensembling.ensemble import ensemble_crossvalidations

    ensemble_crossvalidations([str(model(planted, MISSES)), str(model(planted, SPECKLES))], str(tmp_path / "ens"),
                              (0,), num_processes=1)
    for name, folder in ((misses, model(planted, MISSES) / "fold_0" / "validation"),
                         (speckles, model(planted, SPECKLES) / "fold_0" / "validation"), (ensemble, tmp_path / "ens")):
        assert info["results"][name]["before_postprocessing"] == pytest.approx(evaluate_mean(planted, folder)), name
    # the faint speckles cost the sensitive model the first place before postprocessing, a threshold wins it back
    assert info["results"][speckles]["before_postprocessing"] < info["results"][misses]["before_postprocessing"]
    assert info["results"][speckles]["after_postprocessing"] == pytest.approx(1.0)
    assert info["best"]["identifier"] == speckles
    pp = json.loads(Path(info["best"]["postprocessing_file"]).read_text())
    assert pp["settings"][0]["threshold"] == 0.6 and pp["settings"][0]["min_volume_mm3"] == 0.0
    commands = info["commands"]
    assert commands[0].startswith(f"nnUNetv2_predict -d {planted} -i INPUT_FOLDER -o OUTPUT_FOLDER -f 0 -tr {SPECKLES}")
    assert commands[0].endswith("--save_probabilities")
    assert commands[-1].startswith("nnunet_blob apply-postprocessing -i OUTPUT_FOLDER -o OUTPUT_FOLDER_PP -pp ")
    assert "\n".join(commands) in result.stdout
    assert (Path(os.environ["nnUNet_results"]) / planted / "ensembles" / ensemble / "postprocessing_instances.json"
            ).is_file()


@pytest.fixture(scope="module")
def ensemble_run(planted, tmp_path_factory):
    """The commands find-best prints for the ensemble of the two models with a threshold (predict each member with
    probabilities, nnU-Net's ensembling with --save_npz, apply), run as printed on the test images."""
    tmp_path = tmp_path_factory.mktemp("ensemble_run")
    first, second = (cross_validation_predictions(planted, t, "nnUNetPlans", CONFIGURATION, (0,))
                     for t in (MISSES, SPECKLES))
    pp_file = tmp_path / "pp.json"
    pp = PostprocessingFile((Setting(1, 0.0, 0.3),), first.layout, ".nii.gz", "SimpleITKIO")
    pp.write(pp_file)
    commands = inference_commands(ensemble_predictions(first, second), pp, pp_file, 1)
    folders = {"INPUT_FOLDER": Path(os.environ["nnUNet_raw"]) / planted / "imagesTs"}
    for command in commands:
        words = [str(folders.get(w, tmp_path / w if w.startswith("OUTPUT_FOLDER") else w)) for w in command.split()]
        if words[0] == "nnUNetv2_predict":
            words += ["-device", "cpu", "-npp", "1", "-nps", "1", "--disable_tta"]
        run_cli(*words)
    return commands, tmp_path, first


def test_the_commands_for_an_ensemble_run(ensemble_run, tmp_path):
    """... and give the threshold applied to the mean of the members' probabilities."""
    commands, folder, first = ensemble_run
    assert [c.split()[0] for c in commands] == ["nnUNetv2_predict", "nnUNetv2_predict", "nnUNetv2_ensemble",
                                                "nnunet_blob"]
    assert commands[2].endswith("--save_npz") and all(c.endswith("--save_probabilities") for c in commands[:2])
    cases = sorted((folder / "OUTPUT_FOLDER").glob("*.npz"))
    assert len(cases) == 2
    for case in cases:
        mean = (np.load(folder / "OUTPUT_FOLDER_MODEL_1" / case.name)["probabilities"].astype(np.float32)
                + np.load(folder / "OUTPUT_FOLDER_MODEL_2" / case.name)["probabilities"]) / 2
        result = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "OUTPUT_FOLDER_PP" / f"{case.stem}.nii.gz")))
        np.testing.assert_array_equal(result, (mean[1] > 0.3).astype(np.uint8))
    no_change = PostprocessingFile((Setting(1),), first.layout, ".nii.gz", "SimpleITKIO")
    assert inference_commands(first, no_change, tmp_path / "pp.json", 1)[-1].startswith(
        "# the tuned postprocessing changes")


def test_checkpoint_best_instances_is_kept_and_predicts(trained, tmp_path):
    folder = model(trained, SPECKLES) / "fold_0"
    log = "".join(p.read_text() for p in folder.glob("training_log_*.txt"))
    assert "new best EMA instance F1" in log
    best = torch.load(folder / BEST_INSTANCES_CHECKPOINT, map_location="cpu", weights_only=False)
    final = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    f1 = final["logging"]["instance_f1"]
    ema = final["logging"]["ema_instance_f1"]
    assert len(f1) == len(ema) == 2 and ema == pytest.approx(moving_averages(f1), nan_ok=True)
    best_epoch = int(np.nanargmax(ema))  # the first epoch with the largest moving average
    assert best["current_epoch"] == best_epoch + 1
    assert best["logging"]["ema_instance_f1"] == pytest.approx(ema[:best_epoch + 1], nan_ok=True)
    raw = Path(os.environ["nnUNet_raw"]) / trained
    run_cli("nnUNetv2_predict", "-i", raw / "imagesTs", "-o", tmp_path / "pred", "-d", DATASET_ID, "-c",
            CONFIGURATION, "-f", 0, "-tr", SPECKLES, "-chk", BEST_INSTANCES_CHECKPOINT, "-device", "cpu", "-npp", 1,
            "-nps", 1, "--disable_tta")
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 2


def unregistered_environment(results: Path) -> dict:
    """A machine where nnU-Net cannot see our trainers: the start-up hook off, nnUNet_extTrainer unset."""
    env = {k: v for k, v in os.environ.items() if k != "nnUNet_extTrainer"}
    env.update(NNUNET_BLOB_NO_AUTOREGISTER="1", nnUNet_results=str(results))
    return env


def test_stock_export_predicts_where_our_trainers_are_unknown(planted, ensemble_run, tmp_path):
    run_cli("nnunet_blob", "tune-postprocessing", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", SPECKLES, "-f", 0)
    zip_file = tmp_path / "model.zip"
    run_cli("nnunet_blob", "export", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", SPECKLES, "-f", 0, "-o", zip_file,
            "--stock")
    with zipfile.ZipFile(zip_file) as archive:
        names = archive.namelist()
    prefix = f"{planted}/{SPECKLES}__nnUNetPlans__{CONFIGURATION}/"
    for name in ("fold_0/checkpoint_final.pth", "crossval_results_folds_0/postprocessing_instances.json",
                 "fold_0/validation/summary_instances.json", "fold_0/validation/summary.json", "plans.json"):
        assert prefix + name in names, name

    raw = Path(os.environ["nnUNet_raw"]) / planted
    predict = ["nnUNetv2_predict", "-i", raw / "imagesTs", "-d", DATASET_ID, "-c", CONFIGURATION, "-f", 0, "-tr",
               SPECKLES, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta", "--save_probabilities"]
    stock = unregistered_environment(tmp_path / "stock_results")
    run_cli("nnUNetv2_install_pretrained_model_from_zip", zip_file, env=stock)
    run_cli(*predict, "-o", tmp_path / "stock_pred", env=stock)
    # the same command with the trainers registered, from the original results (the ensemble's first step)
    ours_folder = ensemble_run[1] / "OUTPUT_FOLDER_MODEL_2"
    assert len(list(ours_folder.glob("*.nii.gz"))) == 2
    for ours in sorted(ours_folder.glob("*.nii.gz")):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stock_pred" / ours.name))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(ours))))

    # the same model exported without --stock cannot be predicted there: the environment really lacks our trainers
    run_cli("nnunet_blob", "export", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", SPECKLES, "-f", 0, "-o",
            tmp_path / "plain.zip")
    plain = unregistered_environment(tmp_path / "plain_results")
    run_cli("nnUNetv2_install_pretrained_model_from_zip", tmp_path / "plain.zip", env=plain)
    failed = run_cli(*predict, "-o", tmp_path / "plain_pred", env=plain, check=False)
    assert failed.returncode != 0 and SPECKLES in failed.stdout + failed.stderr


def test_commands_name_the_missing_piece_and_the_fix(trained):
    def refused(*args):
        result = run_cli("nnunet_blob", *map(str, args), check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        return result.stderr

    message = refused("tune-postprocessing", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", MISSES, "-f", 0, 1)
    assert "fold 1" in message and f"nnUNetv2_train {DATASET_ID} {CONFIGURATION} 1 -tr {MISSES}" in message
    message = refused("tune-postprocessing", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", "nnUNetTrainerNever", "-f",
                      0)
    assert "no trained model nnUNetTrainerNever__nnUNetPlans__3d_fullres" in message
    message = refused("tune-postprocessing", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", MISSES, "-f", 0,
                      "--metric", "n_pred")
    assert "--higher-is-better or --lower-is-better" in message
    message = refused("find-best", "-d", DATASET_ID, "-c", "2d", "-tr", MISSES, "-f", 0)
    assert "no trained model" in message
    message = refused("export", "-d", DATASET_ID, "-c", CONFIGURATION, "-tr", MISSES, "-f", 0, "-o", "x.zip", "-chk",
                      BEST_INSTANCES_CHECKPOINT)  # stock nnU-Net trainers keep no such checkpoint
    assert BEST_INSTANCES_CHECKPOINT in message and "-chk" in message
