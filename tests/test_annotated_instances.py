"""Instance maps from annotated instances (``instancesTr/``): objects that touch stay apart.

A tiny two-class dataset whose images have a zero border (nnU-Net crops it away), anisotropic spacings that differ
between cases (nnU-Net transposes the axes and resamples in 3d_fullres and 2d), and boxes of one class that touch
but carry different ids. The real ``nnUNetv2_plan_and_preprocess`` and ``nnunet_blob preprocess`` make the maps;
the test pushes the annotation through nnU-Net's geometry itself, from each case's ``.pkl`` properties.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import cc3d
import numpy as np
import pytest
import SimpleITK as sitk
from skimage.transform import resize

from helpers import build_trainer, run_cli
from nnunet_blob.demo.plans import shrink_plans
from nnunet_blob.preprocessing import InstanceMapError, ensure_instance_maps
from nnunet_blob.preprocessing.annotated import (
    AnnotationSource,
    _checked_ids,
    read_annotation,
    reconcile,
)

DATASET_ID = 680
SHAPE = (28, 32, 24)  # (z, y, x) raw voxels: enough for a network with deep supervision
#: x spacing largest: nnU-Net moves that axis first (transpose_forward [2, 0, 1]); the median is 1.8, so cases 0
#: and 1 are resampled in 3d_fullres
SPACINGS_X = (1.5, 2.1, 1.8, 1.8, 1.8)
TOUCHING = (1, 2)  # annotated ids of the two class-1 boxes that share a face
#: the class of each annotated id (:func:`make_case`)
ANNOTATION_CLASSES = {1: 1, 2: 1, 7: 2, 40: 1}


def write(array: np.ndarray, path: Path, spacing) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    sitk.WriteImage(image, str(path))


def make_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, instances): A (id 1) and B (id 2) class-1 boxes touching face to face, C (id 7) a class-2 box
    touching both, D (id 40) a lone class-1 box; the image is 0 on a 2-voxel border."""
    labels = np.zeros(SHAPE, np.uint8)
    ids = np.zeros(SHAPE, np.int16)
    z, y = rng.integers(2, 4), rng.integers(2, 4)
    for box, label, value in (((slice(z, z + 8), slice(y, y + 7), slice(3, 9)), 1, 1),
                              ((slice(z, z + 8), slice(y + 7, y + 14), slice(3, 9)), 1, 2),
                              ((slice(z, z + 8), slice(y, y + 14), slice(9, 12)), 2, 7),
                              ((slice(20, 23), slice(24, 27), slice(14, 18)), 1, 40)):
        labels[box], ids[box] = label, value
    image = np.zeros(SHAPE, np.float32)
    image[2:-2, 2:-2, 2:-2] = 10 + 5 * labels[2:-2, 2:-2, 2:-2] + rng.random((SHAPE[0] - 4, SHAPE[1] - 4,
                                                                              SHAPE[2] - 4))
    return image, labels, ids


@pytest.fixture(scope="module")
def annotated(nnunet_workspace):
    """(dataset name, raw folder), planned and preprocessed (2d and 3d_fullres) by nnU-Net."""
    rng = np.random.default_rng(0)
    raw = Path(os.environ["nnUNet_raw"]) / f"Dataset{DATASET_ID}_Touching"
    for sub in ("imagesTr", "labelsTr", "instancesTr"):
        (raw / sub).mkdir(parents=True, exist_ok=True)
    for i, spacing_x in enumerate(SPACINGS_X):
        image, labels, ids = make_case(rng)
        spacing = (1.0, 1.0, spacing_x)
        write(image, raw / "imagesTr" / f"case_{i:03d}_0000.nii.gz", spacing)
        write(labels, raw / "labelsTr" / f"case_{i:03d}.nii.gz", spacing)
        write(ids, raw / "instancesTr" / f"case_{i:03d}.nii.gz", spacing)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "cell": 1, "other": 2},
        "numTraining": len(SPACINGS_X), "file_ending": ".nii.gz"}))
    run_cli("nnUNetv2_plan_and_preprocess", "-d", DATASET_ID, "-c", "2d", "3d_fullres", "-np", 2, "-npfp", 2)
    shrink_plans(Path(os.environ["nnUNet_preprocessed"]) / raw.name / "nnUNetPlans.json")
    return raw.name, raw


def pushed_through_geometry(raw: Path, base: Path, identifier: str, case: str, plans: dict) -> np.ndarray:
    """The annotation of ``case`` on the stored grid, computed here from nnU-Net's own records: transpose_forward,
    the crop box of the case's .pkl, skimage order-0 resize to the stored segmentation's shape."""
    ids = sitk.GetArrayFromImage(sitk.ReadImage(str(raw / "instancesTr" / f"{case}.nii.gz"))).astype(np.int64)
    with open(base / identifier / f"{case}.pkl", "rb") as f:
        properties = pickle.load(f)
    ids = ids.transpose(plans["transpose_forward"])
    assert list(ids.shape) == list(properties["shape_before_cropping"])
    ids = ids[tuple(slice(lo, hi) for lo, hi in properties["bbox_used_for_cropping"])]
    shape = load_stored_seg(base / identifier, case).shape
    return resize(ids.astype(float), shape, order=0, mode="edge", clip=True, anti_aliasing=False,
                  preserve_range=True).round().astype(np.int64)


def load_stored_seg(folder: Path, case: str) -> np.ndarray:
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    return np.asarray(nnUNetDatasetBlosc2(str(folder), [case]).load_case(case)[1][:])[0]


def test_command_makes_maps_from_the_annotation_through_nnunets_geometry(annotated):
    name, raw = annotated
    result = run_cli("nnunet_blob", "preprocess", "-d", DATASET_ID, "-np", 2)
    assert "instances: annotated, from" in result.stdout and "reconciled with nnU-Net's segmentation" in \
        result.stdout, result.stdout
    base = Path(os.environ["nnUNet_preprocessed"]) / name
    plans = json.loads((base / "nnUNetPlans.json").read_text())
    assert plans["transpose_forward"] != [0, 1, 2]  # the geometry below is not the identity
    cropped = resampled = False
    for configuration in ("3d_fullres", "2d"):
        identifier = plans["configurations"][configuration]["data_identifier"]
        store = ensure_instance_maps(DATASET_ID, configuration=configuration, write=False, log=lambda _: None)
        for i in range(len(SPACINGS_X)):
            case = f"case_{i:03d}"
            record = store.record(case)
            stored = np.asarray(store.open(case)[:])[0].astype(np.int64)
            annotation_ids = np.array([0] + record["annotation"]["instance_annotation_ids"])
            seg = load_stored_seg(base / identifier, case)
            expected = pushed_through_geometry(raw, base, identifier, case, plans)
            with open(base / identifier / f"{case}.pkl", "rb") as f:
                properties = pickle.load(f)
            cropped |= tuple(properties["shape_after_cropping_and_before_resampling"]) != SHAPE
            resampled |= tuple(properties["shape_after_cropping_and_before_resampling"]) != seg.shape
            expected_class = np.vectorize(lambda v: ANNOTATION_CLASSES.get(int(v), 0))(expected)
            agree = expected_class == np.where(seg > 0, seg, 0)
            # where nnU-Net's segmentation agrees with the pushed annotation, the stored id is the annotated id
            assert np.array_equal(annotation_ids[stored][agree], expected[agree])
            # everywhere: class c voxels carry an instance of class c, nothing else carries one
            stored_class = np.array([0] + record["instance_classes"])[stored]
            assert np.array_equal(stored_class, np.where(seg > 0, seg, 0))
            # what reconciliation changed, counted here
            changes = record["annotation"]["reconciled_voxels"]
            assert changes["relabelled"] == int(np.count_nonzero((seg > 0) & ~agree))
            assert changes["cleared"] == int(np.count_nonzero((seg <= 0) & (expected > 0)))
            # the touching boxes keep their own ids, where connected components give them one
            components = cc3d.connected_components(seg == 1)
            for values in (stored, components):
                one, two = (np.unique(values[(expected == a) & agree]) for a in TOUCHING)
                assert one.size == two.size == 1 and one[0] > 0 and two[0] > 0
                assert (one[0] != two[0]) == (values is stored)
        assert store.manifest["instances"] == "annotated"
    assert cropped and resampled


def test_changed_annotation_is_recomputed_and_a_missing_one_is_an_error(annotated, tmp_path):
    name, raw = annotated
    messages: list[str] = []
    ensure_instance_maps(DATASET_ID, configuration="3d_fullres", log=messages.append, progress=False)
    assert "all 5 cases up to date" in messages[-1]
    path = raw / "instancesTr" / "case_003.nii.gz"
    shutil.copy(path, tmp_path / "saved.nii.gz")
    try:
        image = sitk.ReadImage(str(path))
        ids = sitk.GetArrayFromImage(image)
        merged = np.where(ids == TOUCHING[1], TOUCHING[0], ids)  # the annotator merges the touching boxes
        changed = sitk.GetImageFromArray(merged)
        changed.CopyInformation(image)
        sitk.WriteImage(changed, str(path))
        messages.clear()
        store = ensure_instance_maps(DATASET_ID, configuration="3d_fullres", log=messages.append, progress=False)
        assert "computing instance maps of 1 of 5 cases" in messages[0]
        assert "case_003: its annotated instances changed" in messages[0]
        record = store.record("case_003")
        assert TOUCHING[1] not in record["annotation"]["instance_annotation_ids"]
        assert record["instances_per_class"] == {"1": 2, "2": 1}

        path.unlink()
        with pytest.raises(InstanceMapError, match="case_003: no annotated instances .*instancesTr"):
            ensure_instance_maps(DATASET_ID, configuration="3d_fullres", log=messages.append, progress=False)
    finally:
        shutil.copy(tmp_path / "saved.nii.gz", path)
    store = ensure_instance_maps(DATASET_ID, configuration="3d_fullres", log=messages.append, progress=False)
    assert store.record("case_003")["instances_per_class"] == {"1": 3, "2": 1}


def test_blob_trainer_step_on_annotated_maps(annotated, single_process_loading):
    import torch

    from nnunet_blob.trainers.instance_transforms import unpack_instances
    from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice

    name, _ = annotated
    trainer = build_trainer(nnUNetTrainerBlobDice, name)
    train_loader, val_loader = trainer.get_dataloaders()
    assert "instances: annotated, from" in open(trainer.log_file).read()  # the trainer's own start-up check
    np.random.seed(0)
    torch.manual_seed(0)
    split = 0
    for _ in range(3):  # nnU-Net's crops: a patch where one class-1 component holds two instances
        target, instances = unpack_instances(next(val_loader)["target"], trainer.instance_packing)
        for j in range(target[0].shape[0]):
            labels, ids = target[0][j, 0].numpy(), instances[0][j, 0].numpy()
            components = cc3d.connected_components(labels == 1)
            split += any(np.unique(ids[components == k]).size > 1 for k in range(1, components.max() + 1))
    assert split
    batch = next(train_loader)
    before = [p.detach().clone() for p in trainer.network.parameters()]
    loss = trainer.train_step(batch)["loss"]
    assert np.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.network.parameters(), strict=True))


def test_without_the_raw_dataset_annotated_maps_are_kept(annotated, monkeypatch, tmp_path):
    ensure_instance_maps(DATASET_ID, configuration="3d_fullres", log=lambda _: None, progress=False)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))  # a training machine without the raw data
    messages: list[str] = []
    store = ensure_instance_maps(DATASET_ID, configuration="3d_fullres", write=False, log=messages.append)
    assert "instances: annotated, as the existing maps" in messages[-1] and "all 5 cases up to date" in messages[-1]
    assert store.manifest["instances"] == "annotated"


def test_region_dataset_tables_list_the_annotated_instances_of_each_region(annotated):
    """The preprocessed data of the annotated dataset under a region-based dataset.json (regions (1, 2) and (2,))."""
    name, raw = annotated
    target = f"Dataset{DATASET_ID + 1}_TouchingRegions"
    labels = {"background": 0, "both": [1, 2], "other": 2}
    root = Path(os.environ["nnUNet_preprocessed"])
    shutil.rmtree(root / target, ignore_errors=True)
    shutil.rmtree(Path(os.environ["nnUNet_raw"]) / target, ignore_errors=True)
    shutil.copytree(root / name / "nnUNetPlans_3d_fullres", root / target / "nnUNetPlans_3d_fullres")
    (root / target / "nnUNetPlans.json").write_text((root / name / "nnUNetPlans.json").read_text()
                                                    .replace(name, target))
    dataset_json = {**json.loads((raw / "dataset.json").read_text()), "labels": labels, "regions_class_order": [1, 2]}
    for folder in (root / target, Path(os.environ["nnUNet_raw"]) / target):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    for sub in ("labelsTr", "instancesTr"):
        shutil.copytree(raw / sub, Path(os.environ["nnUNet_raw"]) / target / sub)
    store = ensure_instance_maps(target, configuration="3d_fullres", num_processes=1, log=lambda _: None,
                                 progress=False)
    assert store.manifest["instances"] == "annotated"
    for case in store.manifest["cases"]:
        record = store.record(case)
        assert record["instances_per_class"] == {"1": 3, "2": 1}
        table = store.region_table(case)
        assert sorted(table.classes.tolist()) == [1, 1, 1, 1, 2]  # region 1 = labels 1 and 2: all four instances
        assert sorted(table.sizes[table.classes == 2].tolist()) == sorted(
            s for s, c in zip(record["instance_sizes"], record["instance_classes"], strict=True) if c == 2)


# ---- unit level: the checks of the raw annotation and the reconciliation rule -----------------------------------

def test_reconcile_gives_the_nearest_instance_of_the_class_within_its_region():
    seg = np.array([[1, 1, 1, 1, 0, 1, 1, 2, 2, 0]])
    ids = np.array([[1, 1, 0, 2, 2, 0, 0, 3, 1, 1]])  # classes: id 1, 2 -> 1; id 3 -> 2
    out, classes, changes = reconcile(ids, seg, np.array([1, 1, 2]), None, 26)
    # voxel 2 (id 0): nearest class-1 instance voxels are 1 (id 1) and 3 (id 2) at equal distance: the feature
    # transform's choice; voxel 4 (background) cleared; voxels 5, 6: a class-1 region without instance -> new id 4;
    # voxel 8 (id 1 of class 1 on class 2) -> id 3; voxel 9 (background) cleared
    assert out[0, 2] in (1, 2)
    assert out[0].tolist()[:2] + out[0].tolist()[3:] == [1, 1, 2, 0, 4, 4, 3, 3, 0]
    assert classes.tolist() == [1, 1, 2, 1]
    assert (changes.relabelled, changes.cleared, changes.new_instances) == (4, 2, 1)


def test_reconcile_respects_the_ignore_label():
    seg = np.array([[1, 3, 3]])
    out, _, changes = reconcile(np.array([[1, 1, 0]]), seg, np.array([1]), 3, 26)
    assert out.tolist() == [[1, 0, 0]] and changes.cleared == 1 and changes.relabelled == 0


@pytest.mark.parametrize("ids,labels,message", [
    ([[0, 5, 5]], [[0, 0, 1]], "1 voxels of .* carry instance ids outside the foreground .* e.g. ids \\[5\\]"),
    ([[5, 5, 6]], [[1, 2, 2]], "1 instance ids of .* span two or more classes .*\\{5: \\[1, 2\\]\\}"),
    ([[0, -1, 0]], [[0, 1, 0]], "negative ids"),
    ([[0, 1.5, 0]], [[0, 1, 0]], "non-integer"),
    ([[0, 2**25, 0]], [[0, 1, 0]], "ids above 16777216"),
    ([[3, 3, 0]], [[1, 4, 4]], "ignore label 4"),
])
def test_raw_annotation_errors_name_the_case_and_the_fix(ids, labels, message):
    dtype = np.float32 if any(isinstance(v, float) or abs(v) > 2**20 for row in ids for v in row) else np.int64
    with pytest.raises(InstanceMapError, match=f"case c7: .*{message}"):
        _checked_ids(np.array(ids, dtype), np.array(labels), "c7", Path("instancesTr/c7.nii.gz"), 4)


def test_raw_annotation_renumbers_in_the_order_of_the_ids():
    ids, table = _checked_ids(np.array([[0, 40, 7, 7, 3]]), np.array([[0, 1, 2, 2, 1]]), "c", Path("x"), None)
    assert ids.tolist() == [[0, 3, 2, 2, 1]] and table.tolist() == [[3, 7, 40], [1, 2, 1]]


def test_border_core_datasets_instances_are_accepted_and_their_border_becomes_components():
    """What ``border-core-dataset`` writes (ids on the core class only, 0 on the border) passes the checks; the
    cores keep their ids and each connected region of the border class becomes one instance."""
    from nnunet_blob.border_core import border_core_labels
    from nnunet_blob.border_core.representation import BORDER, CORE

    nuclei = np.zeros((12, 16), np.int32)
    nuclei[2:9, 2:8], nuclei[2:9, 8:14] = 3, 9  # two touching nuclei
    labels, cores = border_core_labels(nuclei[None], (1.0, 1.0, 1.0))
    ids, table = _checked_ids(cores, labels, "n", Path("instancesTr/n.png"), None)
    assert table.tolist() == [[3, 9], [CORE, CORE]]
    out, classes, changes = reconcile(ids, labels.astype(np.int16), table[1], None, 26)
    assert np.array_equal(out[labels == CORE], ids[labels == CORE])  # the cores keep their own ids
    border = cc3d.connected_components(labels == BORDER, connectivity=26)
    assert changes.new_instances == border.max() and changes.relabelled == np.count_nonzero(border)
    assert np.array_equal(out[labels == BORDER] - 2, border[labels == BORDER])  # ids 3.. after the two cores
    assert classes.tolist() == [CORE, CORE] + [BORDER] * int(border.max())


def test_instance_limit_is_what_the_loaders_two_id_channels_carry():
    from nnunet_blob.preprocessing.annotated import MAX_INSTANCES
    from nnunet_blob.trainers.instance_data import join_ids, split_ids

    low, high = split_ids(np.array([MAX_INSTANCES]))
    assert join_ids(low, high) == MAX_INSTANCES and high[0] == low[0] == np.iinfo(np.int16).max
    assert split_ids(np.array([MAX_INSTANCES + 1]))[1][0] > np.iinfo(np.int16).max  # one more does not fit


def test_annotation_files_of_another_geometry_are_refused(tmp_path):
    (tmp_path / "labelsTr").mkdir()
    (tmp_path / "instancesTr").mkdir()
    source = AnnotationSource(tmp_path, {"file_ending": ".nii.gz"}, {"image_reader_writer": "SimpleITKIO"})
    write(np.zeros((4, 5, 6), np.uint8), tmp_path / "labelsTr" / "a.nii.gz", (1, 1, 1))
    with pytest.raises(InstanceMapError, match="case a: no annotated instances .*rename that folder"):
        read_annotation(source, "a", None)
    write(np.zeros((4, 5, 5), np.uint8), tmp_path / "instancesTr" / "a.nii.gz", (1, 1, 1))
    with pytest.raises(InstanceMapError, match="case a: .* has shape \\(4, 5, 5\\) vs its label .* \\(4, 5, 6\\) "
                                                "in nnU-Net's axis order \\(z, y, x\\)"):
        read_annotation(source, "a", None)
    write(np.zeros((4, 5, 6), np.uint8), tmp_path / "instancesTr" / "a.nii.gz", (1, 1, 2))
    with pytest.raises(InstanceMapError, match="case a: .* has spacing .*copy its header"):
        read_annotation(source, "a", None)
