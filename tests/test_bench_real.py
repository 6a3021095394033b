"""benchmarks/bench_real.py on a tiny folder in the 2018 Data Science Bowl layout made here: which images become
cases, the raw dataset nnU-Net reads (labels, annotated instances, the split), touching nuclei cut apart, and nnU-Net's
own planning and preprocessing of the result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPT = BENCHMARKS / "bench_real.py"
sys.path.insert(0, str(BENCHMARKS))
import _dsb2018 as dsb  # noqa: E402

RAW = Path("nnUNet_raw") / "Dataset992_DSB2018Nuclei"
FLUORESCENCE = ["f0", "f1", "f2", "f3", "f4", "f5"]
# nuclei as (row slice, column slice) per image, in mask file-name order
NUCLEI = {
    "f0": [(slice(4, 10), slice(4, 10)), (slice(4, 10), slice(10, 16)), (slice(20, 27), slice(20, 27))],  # 1|2 touch
    "f1": [(slice(5, 13), slice(5, 13)), (slice(10, 17), slice(10, 17))],  # overlap rows/cols 10-12: mask 2 wins
    "f2": [(slice(2, 8), slice(20, 28))],
    "f3": [(slice(12, 20), slice(3, 9)), (slice(25, 30), slice(25, 30))],
    "f4": [(slice(8, 16), slice(8, 16))],
    "f5": [(slice(14, 22), slice(14, 22))],
    "colour": [(slice(8, 16), slice(8, 16))],
    "bright": [(slice(8, 16), slice(8, 16))],
}


def write_dsb_folder(folder: Path) -> dict:
    """32x32 RGBA images with their nucleus masks; returns {image id: gray image} of the fluorescence ones."""
    rng = np.random.default_rng(0)
    grays = {}
    for image_id, nuclei in NUCLEI.items():
        inside = np.zeros((32, 32), bool)
        for rows, cols in nuclei:
            inside[rows, cols] = True
        if image_id == "bright":  # bright field: dark nuclei on a bright background
            gray = np.where(inside, 60, 220) + rng.integers(0, 10, (32, 32))
        else:
            gray = np.where(inside, 180, 8) + rng.integers(0, 10, (32, 32))
        rgba = np.stack([gray, gray, gray, np.full((32, 32), 255)], -1).astype(np.uint8)
        if image_id == "colour":  # stained tissue: the channels differ
            rgba[..., 0] = 255 - rgba[..., 0]
        (folder / image_id / "images").mkdir(parents=True)
        (folder / image_id / "masks").mkdir()
        Image.fromarray(rgba, "RGBA").save(folder / image_id / "images" / f"{image_id}.png")
        for k, (rows, cols) in enumerate(nuclei, start=1):
            mask = np.zeros((32, 32), np.uint8)
            mask[rows, cols] = 255
            Image.fromarray(mask).save(folder / image_id / "masks" / f"m{k}.png")
        if image_id in FLUORESCENCE:
            grays[image_id] = gray.astype(np.uint8)
    return grays


def expected_instances(image_id: str) -> np.ndarray:
    """Ids 1..N in mask order, later mask wins (a literal painting of the masks)."""
    ids = np.zeros((32, 32), np.int64)
    for k, (rows, cols) in enumerate(NUCLEI[image_id], start=1):
        ids[rows, cols] = k
    return ids


def read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(np.int64)


def components(label: np.ndarray) -> int:
    return int(ndimage.label(label > 0, structure=np.ones((3, 3)))[1])


def bench(*args, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The script's conversion stage (no cut) on the tiny folder: (workspace, fluorescence images, console)."""
    root = tmp_path_factory.mktemp("dsb")
    grays = write_dsb_folder(root / "stage1_train")
    result = bench("--dsb-folder", root / "stage1_train", "--workspace", root / "ws", "--stages", "convert", cwd=root)
    return root / "ws", grays, result.stdout


def test_only_fluorescence_images_become_cases_with_the_stated_split(converted):
    ws, grays, out = converted
    split = json.loads((ws / "split.json").read_text())
    assert split["seed"] == 0 and split["test_fraction"] == 0.2
    assert sorted(split["train"] + split["test"]) == FLUORESCENCE and len(split["test"]) == 1
    order = np.random.default_rng(0).permutation(6)  # the stated rule, literally
    assert split["test"] == [FLUORESCENCE[order[0]]]
    raw = ws / RAW
    assert sorted(p.name for p in (raw / "imagesTr").iterdir()) == [f"{c}_0000.png" for c in split["train"]]
    assert sorted(p.name for p in (raw / "imagesTs").iterdir()) == [f"{c}_0000.png" for c in split["test"]]
    for folder, cases in (("Tr", split["train"]), ("Ts", split["test"])):
        for sub in ("labels", "instances"):
            assert sorted(p.name for p in (raw / f"{sub}{folder}").iterdir()) == [f"{c}.png" for c in cases]
    report = json.loads((ws / "conversion.json").read_text())
    assert report["excluded_colour"] == ["colour"] and report["excluded_bright_background"] == ["bright"]
    assert report["selected"] == 6 and report["nuclei"] == 10 and report["touching_nuclei"] == 4  # f0: 1|2, f1: 1|2
    assert report["overlap_pixels"] == 9 and report["dropped_masks"] == 0
    assert "6 fluorescence images selected" in out and "excluded 1 colour and 1 bright-background" in out
    dataset = json.loads((raw / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "fluorescence"} and dataset["labels"] == {"background": 0, "nucleus": 1}
    assert dataset["numTraining"] == 5 and dataset["file_ending"] == ".png"
    assert "CC0" in dataset["licence" if "licence" in dataset else "license"]


def test_images_labels_and_annotated_instances(converted):
    ws, grays, _ = converted
    raw = ws / RAW
    for case in FLUORESCENCE:
        split = "Tr" if (raw / "imagesTr" / f"{case}_0000.png").is_file() else "Ts"
        image = Image.open(raw / f"images{split}" / f"{case}_0000.png")
        assert image.mode == "L" and np.array_equal(np.asarray(image), grays[case])  # one gray channel
        ids = read(raw / f"instances{split}" / f"{case}.png")
        assert np.array_equal(ids, expected_instances(case)), case
        assert np.array_equal(read(raw / f"labels{split}" / f"{case}.png"), (ids > 0).astype(np.int64))
    # without the cut, the two touching nuclei of f0 are one component of the label
    label = read(raw / ("labelsTr" if (raw / "labelsTr" / "f0.png").is_file() else "labelsTs") / "f0.png")
    assert components(label) == 2


def literal_cut(ids: np.ndarray) -> np.ndarray:
    """A pixel is removed when one of its 8 neighbours holds a lower nonzero id (loops, from the definition)."""
    out = ids.copy()
    h, w = ids.shape
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v = ids[y + dy, x + dx] if 0 <= y + dy < h and 0 <= x + dx < w else 0
                    if 0 < v < ids[y, x]:
                        out[y, x] = 0
    return out


def literal_touching(ids: np.ndarray) -> set:
    h, w = ids.shape
    found = set()
    for y in range(h):
        for x in range(w):
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    v = ids[y + dy, x + dx] if 0 <= y + dy < h and 0 <= x + dx < w else 0
                    if ids[y, x] > 0 and v > 0 and v != ids[y, x]:
                        found.add(int(ids[y, x]))
    return found


@pytest.mark.parametrize("seed", range(4))
def test_cut_and_touching_match_their_definitions(seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 6, (12, 13))
    ids[rng.random((12, 13)) < 0.3] = 0
    assert np.array_equal(dsb.cut_touching(ids), literal_cut(ids))
    assert set(dsb.touching_ids(ids).tolist()) == literal_touching(ids)
    cut = dsb.cut_touching(ids)
    assert not literal_touching(cut)  # no two nuclei 8-neighbour each other after the cut


def test_cut_touching_separates_the_touching_pair(tmp_path):
    write_dsb_folder(tmp_path / "stage1_train")
    report, split = dsb.convert(tmp_path / "stage1_train", tmp_path / "raw", cut=True)
    folder = "Tr" if "f0" in split["train"] else "Ts"
    label = read(tmp_path / "raw" / f"labels{folder}" / "f0.png")
    ids = read(tmp_path / "raw" / f"instances{folder}" / "f0.png")
    assert components(label) == 3 and ids.max() == 3  # the pair is two components now
    painted = expected_instances("f0")
    # the line: column 10 (nucleus 2's pixels beside nucleus 1), rows 4-9; nothing else changes
    removed = (painted > 0) & (label == 0)
    assert np.argwhere(removed).tolist() == [[r, 10] for r in range(4, 10)]
    assert np.array_equal(ids, np.where(removed, 0, painted)) and np.array_equal(label, (ids > 0).astype(np.int64))
    assert report.cut_pixels == 6 + 7 and report.components_after_cut == 10  # f0's line; f1: mask 1's L beside 2
    assert report.nuclei_not_one_component_after_cut == 0 and report.components_before_cut == 8


def test_refuses_a_folder_without_images_and_too_few_training_cases(tmp_path, capsys):
    import bench_real

    (tmp_path / "empty").mkdir()
    assert bench_real.main(["--dsb-folder", str(tmp_path / "empty"), "--workspace", str(tmp_path / "ws"),
                            "--dry-run"]) == 1
    assert "holds no <image_id>/images/<image_id>.png; give the stage1_train folder" in capsys.readouterr().err
    write_dsb_folder(tmp_path / "stage1_train")
    assert bench_real.main(["--dsb-folder", str(tmp_path / "stage1_train"), "--workspace", str(tmp_path / "ws"),
                            "--max-images", "3", "--stages", "preprocess"]) == 1
    assert "2 training cases: nnU-Net's five-fold split" in capsys.readouterr().err


def test_nnunet_plans_and_preprocesses_the_converted_dataset(converted):
    """nnU-Net's integrity check, 2d planning and preprocessing, and the instance maps, through the script."""
    ws, _, _ = converted
    out = bench("--dsb-folder", ws.parent / "stage1_train", "--workspace", ws, "--stages", "preprocess",
                "--device", "cpu", "-np", 1, cwd=ws.parent).stdout
    assert "DSB2018 fluorescence nuclei -> Dataset992_DSB2018Nuclei: done before, skipped" in out
    plans = json.loads((ws / "nnUNet_preprocessed" / RAW.name / "nnUNetPlans.json").read_text())
    assert plans["configurations"]["2d"]["architecture"]["arch_kwargs"]["features_per_stage"][0] == 8
    assert (ws / ".stages" / "instance_maps.done").is_file()


def test_results_table_means_over_seeds_and_wilcoxon_against_stock(tmp_path):
    """results.md from evaluation summaries: mean +- sd over seeds of the test means, scipy's Wilcoxon per seed."""
    import argparse

    import bench_real
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(1)
    per_case = {(seed, trainer): rng.random((8, 2)) for seed in (0, 1) for trainer in ("nnUNetTrainer", "Other")}
    summaries: dict = {}
    for (seed, trainer), values in per_case.items():
        path = tmp_path / f"{seed}_{trainer}.json"
        cases = [{"reference_file": f"/gt/c{i}.png", "metrics": {"1": {"Dice": d, "F1": f}}}
                 for i, (d, f) in enumerate(values)]
        means = dict(zip(("Dice", "F1"), values.mean(0), strict=True))
        path.write_text(json.dumps({"metric_per_case": cases, "foreground_mean": means}))
        summaries.setdefault(seed, {"overlap": {}})["overlap"][trainer] = path
    (tmp_path / "conversion.json").write_text(json.dumps({"train_cases": 30, "test_cases": 8, "nuclei": 99}))
    args = argparse.Namespace(max_images=None, cut_touching=False, epochs=20, iterations=25, split_seed=0,
                              trainers=["nnUNetTrainer", "Other"])
    text = bench_real.results_markdown(tmp_path, args, summaries, {"overlap": []}, 8, "cpu")
    assert "30 training and 8 test images, 99 nuclei" in text
    mean_line, p_line, pooled_line = [line.split(" | ") for line in text.splitlines() if line.startswith("| Other |")]
    means = [per_case[(s, "Other")][:, 0].mean() for s in (0, 1)]
    assert mean_line[1] == f"{np.mean(means):.3f} +- {np.std(means, ddof=1):.3f}"
    stock, other = ([per_case[(s, t)][:, 1] for s in (0, 1)] for t in ("nnUNetTrainer", "Other"))
    expected = [("+" if o.mean() > r.mean() else "−") + f"{wilcoxon(r, o).pvalue:.2g}"
                for r, o in zip(stock, other, strict=True)]
    assert p_line[2] == " / ".join(expected) + " |"
    # over each image's mean over the two seeds
    assert pooled_line[2] == f"{wilcoxon((stock[0] + stock[1]) / 2, (other[0] + other[1]) / 2).pvalue:.2g} |"
    assert "SDSC" not in text  # a metric the evaluation did not compute is left out


def test_evaluate_options_are_detected_by_the_parser():
    import bench_real

    assert bench_real.evaluate_accepts("--matching", "one-to-one")
    assert not bench_real.evaluate_accepts("--no-such-option")
    evaluations = bench_real.evaluations(Path("raw"))
    assert evaluations["one-to-one"] == ["--matching", "one-to-one"]
    assert ("instances" in evaluations) == bench_real.evaluate_accepts("--reference-instances", "DIR")
    if "instances" in evaluations:  # the annotated nuclei of the test split as the reference objects
        assert evaluations["instances"][:4] == ["--reference-instances", Path("raw") / "instancesTs", "--matching",
                                                "one-to-one"]


def test_tuned_rows_listed_in_order_without_running_anything(tmp_path, capfd):
    """--list-commands: the tuned rows' five folds (--npz), the five-fold ensemble's test predictions with their
    probabilities, tune-postprocessing with the cross-validated rule, apply-postprocessing of the file it writes and
    the evaluation of the tuned predictions -- printed, nothing trained or converted."""
    import bench_real

    ws = tmp_path / "ws"
    assert bench_real.main(["--dsb-folder", str(tmp_path / "absent"), "--workspace", str(ws), "--list-commands",
                            "--seeds", "3", "--trainers", "nnUNetTrainer", "--tuned-rows", "--tuned-trainers",
                            "nnUNetTrainer", "nnUNetTrainerCCDiceCE", "--device", "cpu"]) == 0
    out = capfd.readouterr().out  # the stages print to the process's stdout
    tuned = out[out.index("tuned rows:"):]
    assert "seed 3" in tuned and "(done)" not in out
    lines = [line.split(": ", 1)[1] for line in tuned.splitlines()[1:]]
    model = ws / "tuned" / "nnUNet_results" / RAW.name / "nnUNetTrainerCCDiceCE_demo__nnUNetPlans__2d"
    ccdice = lines[lines.index(next(x for x in lines if "-tr nnUNetTrainerCCDiceCE_demo" in x)):]
    assert ccdice[:5] == [f"nnUNetv2_train 992 2d {k} -tr nnUNetTrainerCCDiceCE_demo -device cpu --npz"
                          for k in range(5)]
    assert ccdice[5].startswith(f"nnUNetv2_predict -i {ws / RAW / 'imagesTs'} -o "
                                f"{ws / 'tuned' / 'predictions' / 'nnUNetTrainerCCDiceCE'} -d 992 -c 2d -f 0 1 2 3 4")
    assert ccdice[5].endswith("--save_probabilities")
    assert ccdice[7] == ("nnunet_blob tune-postprocessing -d 992 -c 2d -tr nnUNetTrainerCCDiceCE_demo -f 0 1 2 3 4 "
                         "-np 2 --rule cross-validated")
    assert ccdice[8] == (f"nnunet_blob apply-postprocessing -i {ws / 'tuned' / 'predictions' / 'nnUNetTrainerCCDiceCE'}"
                         f" -o {ws / 'tuned' / 'predictions_tuned' / 'nnUNetTrainerCCDiceCE'} -pp "
                         f"{model / 'crossval_results_folds_0_1_2_3_4' / 'postprocessing_instances.json'} -np 2")
    assert ccdice[9].startswith(f"nnunet_blob evaluate {ws / RAW / 'labelsTs'} "
                                f"{ws / 'tuned' / 'predictions_tuned' / 'nnUNetTrainerCCDiceCE'} ")
    assert not (ws / "nnUNet_raw").exists() and not (ws / "tuned" / "nnUNet_results").exists()


def test_tuned_table_raw_and_tuned_means_and_the_chosen_postprocessing(tmp_path):
    import argparse

    import bench_real

    summaries: dict = {"overlap": {"raw": {}, "tuned": {}}}
    for k, trainer in enumerate(("nnUNetTrainer", "nnUNetTrainerBlobDice")):
        for kind, value in (("raw", 0.5 + k / 10), ("tuned", 0.55 + k / 10)):
            path = tmp_path / f"{trainer}_{kind}.json"
            path.write_text(json.dumps({"metric_per_case": [], "foreground_mean": {"Dice": value, "F1": value / 2}}))
            summaries["overlap"][kind][trainer] = path
        model = (tmp_path / "tuned" / "nnUNet_results" / RAW.name / f"{trainer}_demo__nnUNetPlans__2d"
                 / "crossval_results_folds_0_1_2_3_4")
        model.mkdir(parents=True)
        (model / "postprocessing_instances.json").write_text(json.dumps(
            {"settings": [{"description": f"remove components under {k + 1} mm3"}],
             "tuning": [{"best": f"min volume {k + 1}", "p_value": 0.01 * (k + 1)}]}))
    args = argparse.Namespace(seeds=[0], tuned_seed=None, tuned_trainers=["nnUNetTrainer", "nnUNetTrainerBlobDice"])
    text = bench_real.tuned_markdown(tmp_path, args, summaries)
    assert "| nnUNetTrainer | 0.500 / 0.550 | 0.250 / 0.275 |" in text
    assert "| nnUNetTrainerBlobDice | 0.600 / 0.650 | 0.300 / 0.325 |" in text
    assert "- nnUNetTrainerBlobDice: remove components under 2 mm3; best on the folds: min volume 2, p = 0.02" in text
    assert "seed 0" in text and "--rule cross-validated" in text
