"""Border-core representation of touching nuclei: both directions against literal definitions, the round trip, and
both commands end to end through the installed CLI on tiny datasets (a PNG 2D one checked by nnU-Net's own dataset
integrity check)."""
from __future__ import annotations

import json
import os
from dataclasses import astuple
from pathlib import Path

import cc3d
import numpy as np
import pytest

from helpers import line_with, run_cli
from nnunet_blob.border_core.representation import (
    BORDER,
    CORE,
    BorderCoreError,
    border_core_labels,
    compare_instances,
    default_border_thickness,
    instances_from_border_core,
)


def touching_nuclei(shape, spacing, centres, radius) -> np.ndarray:
    """Discs (balls) of ``radius`` (physical) around ``centres`` (voxel coordinates); where they overlap each voxel
    goes to its nearest centre, so overlapping discs become nuclei that touch along a flat interface."""
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"), -1)
    distances = np.stack([np.linalg.norm(grid - np.asarray(c) * spacing, axis=-1) for c in centres])
    return np.where(distances.min(0) <= radius, distances.argmin(0) + 1, 0).astype(np.uint16)


#: 32x32: nuclei 1, 2, 3 touch each other, 4 is alone, 5 is cut by the image edge
LAYOUT_2D = dict(shape=(32, 32), spacing=(1.0, 1.0), centres=[(8, 7), (8, 17), (17, 12), (24, 25), (29, 5)],
                 radius=5.5)
#: anisotropic 3D: four nuclei touching in one foreground component
LAYOUT_3D = dict(shape=(16, 24, 24), spacing=(2.0, 1.0, 1.0), centres=[(6, 7, 7), (6, 7, 16), (8, 16, 12),
                                                                        (4, 18, 20)], radius=5.0)


def literal_border(instances, spacing, r):
    """Border by the definition: a voxel of nucleus A within distance r of any voxel of the image not in A."""
    coords = np.argwhere(np.ones(instances.shape, bool)) * np.asarray(spacing, float)
    ids = instances.ravel()
    border = np.zeros(ids.shape, bool)
    for i in np.flatnonzero(ids):
        others = ids != ids[i]
        if others.any():
            border[i] = np.sqrt(((coords[others] - coords[i]) ** 2).sum(1)).min() <= r + 1e-9
    return border.reshape(instances.shape)


def same_partition(a, b) -> bool:
    comparison = compare_instances(a, b)
    return comparison.exact == comparison.nuclei == comparison.decoded and comparison.voxels_off == 0


# ------------------------------------------------------------------------------------------ the two directions


@pytest.mark.parametrize("spacing, r", [((1.0, 1.0), None), ((1.0, 1.0), 2.0), ((0.5, 0.8), 1.3), ((1.0, 1.0), 0.0)])
def test_border_is_every_voxel_within_r_of_its_outside_2d(spacing, r):
    rng = np.random.default_rng(0)
    instances = touching_nuclei((20, 22), spacing, rng.uniform(3, 18, size=(5, 2)), 4.0)
    instances[0, 5:9] = 7  # a nucleus on the image edge: no border along the edge
    labels, cores = border_core_labels(instances, spacing, r)
    thickness = default_border_thickness(spacing, instances.shape) if r is None else r
    border = literal_border(instances, spacing, thickness)
    expected = np.where(instances > 0, np.where(border, BORDER, CORE), 0)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(cores, np.where(expected == CORE, instances, 0))
    assert (labels == BORDER).any() == (thickness > 0)


def test_border_is_every_voxel_within_r_of_its_outside_3d_and_one_slice_volumes():
    rng = np.random.default_rng(1)
    spacing = (2.0, 0.7, 0.7)
    instances = touching_nuclei((6, 12, 12), spacing, rng.uniform(2, 10, size=(4, 3)), 3.5)
    labels, _ = border_core_labels(instances, spacing, 1.5)
    np.testing.assert_array_equal(labels == BORDER, literal_border(instances, spacing, 1.5))
    # nnU-Net reads a 2D image as one slice with spacing 999 on the first axis: that axis is no axis of the image
    image = touching_nuclei((16, 16), (1.0, 1.0), [(5, 5), (5, 12)], 4.5)
    labels_2d, _ = border_core_labels(image, (1.0, 1.0))
    labels_one_slice, _ = border_core_labels(image[None], (999.0, 1.0, 1.0))
    np.testing.assert_array_equal(labels_one_slice[0], labels_2d)
    assert default_border_thickness((999.0, 1.0, 1.0), (1, 16, 16)) == pytest.approx(np.sqrt(2))


def literal_decoding_allows(segmentation, spacing, decoded, min_core_size=0):
    """Whether ``decoded`` follows the rule: seeds are the core components (8/26-connected) of at least
    ``min_core_size`` voxels, every other foreground voxel has the id of a nearest seed voxel of its foreground
    component (any one of them at equal distance), a component without a seed is one instance."""
    seeds = cc3d.connected_components((segmentation == CORE).astype(np.uint8))
    sizes = np.bincount(seeds.ravel())
    seeds[(seeds > 0) & (sizes[seeds] < min_core_size)] = 0
    components = cc3d.connected_components((segmentation > 0).astype(np.uint8))
    coords = np.argwhere(np.ones(segmentation.shape, bool)) * np.asarray(spacing, float)
    seeds, components, decoded = seeds.ravel(), components.ravel(), decoded.ravel()
    mapping = {}  # seed id -> decoded id, one to one
    for s in np.unique(seeds[seeds > 0]):
        ids = np.unique(decoded[seeds == s])
        if ids.size != 1 or mapping.setdefault(int(s), int(ids[0])) != ids[0]:
            return False
    if len(set(mapping.values())) != len(mapping):
        return False
    alone = []
    for c in np.unique(components[components > 0]):
        member = components == c
        own = member & (seeds > 0)
        targets = np.flatnonzero(member & (seeds == 0))
        if not own.any():
            ids = np.unique(decoded[member])
            if ids.size != 1 or ids[0] in mapping.values() or ids[0] in alone:
                return False
            alone.append(ids[0])
            continue
        own_idx = np.flatnonzero(own)
        for t in targets:
            d = np.sqrt(((coords[own_idx] - coords[t]) ** 2).sum(1))
            nearest = {mapping[int(s)] for s in seeds[own_idx[np.isclose(d, d.min())]]}
            if int(decoded[t]) not in nearest:
                return False
    return bool(np.all((decoded > 0) == (segmentation.ravel() > 0)))


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (0.6, 1.0)])
def test_decoding_gives_each_voxel_the_nearest_core_of_its_component(spacing):
    rng = np.random.default_rng(2)
    for _ in range(3):
        segmentation = rng.choice([0, CORE, BORDER], p=[0.4, 0.2, 0.4], size=(14, 15))
        decoded = instances_from_border_core(segmentation, spacing)
        assert literal_decoding_allows(segmentation, spacing, decoded)
        decoded = instances_from_border_core(segmentation, spacing, min_core_size=3)
        assert literal_decoding_allows(segmentation, spacing, decoded, min_core_size=3)
    # the literal check can fail: a border voxel given to the farther core
    segmentation = np.array([[1, 2, 2, 2, 2, 1]])
    assert not literal_decoding_allows(segmentation, spacing, np.array([[1, 2, 2, 2, 2, 2]]))
    assert literal_decoding_allows(segmentation, spacing, np.array([[1, 1, 1, 2, 2, 2]]))


def test_decoding_rules_on_small_examples():
    # two cores in one component: the border between them is split at the middle; nearest in physical distance
    row = np.array([[1, 1, 2, 2, 2, 2, 1]])
    np.testing.assert_array_equal(instances_from_border_core(row, (1.0, 1.0)), [[1, 1, 1, 1, 2, 2, 2]])
    # a component of border only is one instance; so is the border of a core across background: never the
    # nearest core of another component
    row = np.array([[1, 2, 0, 2, 2, 0, 0, 0]])
    np.testing.assert_array_equal(instances_from_border_core(row, (1.0, 1.0)), [[1, 1, 0, 2, 2, 0, 0, 0]])
    # a core below --min-core-size seeds nothing: its voxels join the nearest core like border
    row = np.array([[1, 1, 1, 2, 2, 1, 2]])
    np.testing.assert_array_equal(instances_from_border_core(row, (1.0, 1.0), min_core_size=2),
                                  [[1, 1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(instances_from_border_core(row, (1.0, 1.0)), [[1, 1, 1, 1, 2, 2, 2]])
    # other labels: the core and border labels are chosen
    np.testing.assert_array_equal(instances_from_border_core(np.array([[3, 3, 5, 5, 3]]), (1.0, 1.0), 3, 5),
                                  [[1, 1, 1, 2, 2]])
    with pytest.raises(BorderCoreError, match=r"labels \[4\] are neither background"):
        instances_from_border_core(np.array([[1, 4, 2]]), (1.0, 1.0), what="x.png")
    with pytest.raises(BorderCoreError, match="non-integer"):
        instances_from_border_core(np.array([[1.0, 0.5]]), (1.0, 1.0))


def test_compare_instances_counts_exact_nuclei_and_misplaced_voxels():
    reference = np.array([[1, 1, 0, 2, 2, 2, 3, 3]])
    assert compare_instances(reference, reference * 7).exact == 3
    merged = np.array([[5, 5, 0, 6, 6, 6, 6, 6]])  # 3 merged into 2
    comparison = compare_instances(reference, merged)
    assert (comparison.nuclei, comparison.exact, comparison.decoded, comparison.voxels_off) == (3, 1, 2, 2)
    shifted = np.array([[5, 5, 5, 6, 6, 6, 7, 7]])  # one background voxel taken by 5
    assert astuple(compare_instances(reference, shifted)) == (3, 2, 3, 0)
    split = np.array([[5, 5, 0, 6, 6, 8, 7, 7]])  # 2 split 2 + 1
    assert astuple(compare_instances(reference, split)) == (3, 2, 4, 1)


# ------------------------------------------------------------------------------------------------ the round trip


@pytest.mark.parametrize("layout", [LAYOUT_2D, LAYOUT_3D], ids=["2d", "3d"])
def test_round_trip_gives_the_same_nuclei(layout):
    """Exact (up to renumbering) when the border is at least the voxel diagonal, every nucleus keeps one connected
    core, and each border voxel is nearer to its own core than to a touching nucleus' core (module docstring of
    nnunet_blob.border_core.representation)."""
    instances = touching_nuclei(**layout)
    spacing = layout["spacing"]
    components = cc3d.connected_components((instances > 0).astype(np.uint8))
    assert any(np.unique(instances[components == c]).size > 1 for c in range(1, components.max() + 1)), \
        "the layout must have touching nuclei"
    labels, cores = border_core_labels(instances, spacing)
    assert set(np.unique(cores)) == set(np.unique(instances))  # every nucleus keeps a core
    decoded = instances_from_border_core(labels, spacing)
    assert same_partition(instances, decoded)
    # a one-voxel-thin border (face neighbours only) lets cores of touching nuclei meet at corners in 3D
    if len(spacing) == 3:
        merged = instances_from_border_core(border_core_labels(instances, spacing, 0.99)[0], spacing)
        assert compare_instances(instances, merged).decoded < len(layout["centres"])


def test_round_trip_loses_a_nucleus_thinner_than_twice_the_border():
    instances = touching_nuclei(**LAYOUT_2D)
    instances[2:5, 12:22] = 9  # 3 voxels thin, touching nucleus 2: no core at r = 2
    labels, cores = border_core_labels(instances, (1.0, 1.0), 2.0)
    assert 9 not in cores
    comparison = compare_instances(instances, instances_from_border_core(labels, (1.0, 1.0)))
    assert comparison.exact < comparison.nuclei and comparison.decoded == comparison.nuclei - 1


# ------------------------------------------------------------------------------------------ the commands, end to end


def write_png(path: Path, array: np.ndarray) -> None:
    from skimage import io

    path.parent.mkdir(parents=True, exist_ok=True)
    io.imsave(str(path), array.astype(np.uint8), check_contrast=False)


def png_dataset(raw: Path, cases: int = 3, test_cases: int = 0) -> tuple[Path, dict]:
    """Dataset870_Nuclei: 32x32 PNG images, labels 0/1, instancesTr (instancesTs) with the nucleus ids."""
    folder = raw / "Dataset870_Nuclei"
    rng = np.random.default_rng(3)
    instances = {}
    for i in range(cases + test_cases):
        split, case = ("Tr", f"case_{i}") if i < cases else ("Ts", f"test_{i}")
        layout = dict(LAYOUT_2D, centres=[(r + i, c) for r, c in LAYOUT_2D["centres"]])
        ids = touching_nuclei(**layout)
        ids = np.where(ids > 0, ids + 10 * i, 0)  # ids need not start at 1
        instances[case] = ids
        write_png(folder / f"images{split}" / f"{case}_0000.png", 40 + 150 * (ids > 0) + rng.integers(0, 30, ids.shape))
        write_png(folder / f"labels{split}" / f"{case}.png", ids > 0)
        write_png(folder / f"instances{split}" / f"{case}.png", ids)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "fluorescence"}, "labels": {"background": 0, "nucleus": 1},
        "numTraining": cases, "file_ending": ".png"}))
    return folder, instances


@pytest.fixture
def raw_env(tmp_path):
    env = {**os.environ, "nnUNet_raw": str(tmp_path / "raw"), "nnUNet_preprocessed": str(tmp_path / "pre"),
           "nnUNet_results": str(tmp_path / "results"), "nnUNet_def_n_proc": "2"}
    (tmp_path / "raw").mkdir()
    return env


def read_png(path: Path) -> np.ndarray:
    from skimage import io

    array = np.asarray(io.imread(str(path)))
    assert array.shape == LAYOUT_2D["shape"], f"{path}: shape {array.shape}"  # a 2D image, as the source
    return array


def test_png_dataset_end_to_end(tmp_path, raw_env):
    source, instances = png_dataset(tmp_path / "raw", test_cases=1)
    result = run_cli("nnunet_blob", "border-core-dataset", "-i", 870, "-o", 871, "-np", 1, env=raw_env)
    assert "4 cases, 20 nuclei (ids from instancesTr/; ids from instancesTs/)" in result.stdout
    assert "20 of 20 nuclei exactly" in result.stdout
    target = tmp_path / "raw" / "Dataset871_NucleiBorderCore"
    dataset_json = json.loads((target / "dataset.json").read_text())
    assert dataset_json["labels"] == {"background": 0, "core": 1, "border": 2}
    assert dataset_json["file_ending"] == ".png" and dataset_json["border_core"]["source"] == "Dataset870_Nuclei"
    for case, ids in instances.items():
        split = "Ts" if case.startswith("test") else "Tr"
        labels, cores = border_core_labels(ids, (1.0, 1.0))
        np.testing.assert_array_equal(read_png(target / f"labels{split}" / f"{case}.png"), labels)
        np.testing.assert_array_equal(read_png(target / f"instances{split}" / f"{case}.png"), cores)  # source ids
        assert (target / f"images{split}" / f"{case}_0000.png").read_bytes() == \
            (source / f"images{split}" / f"{case}_0000.png").read_bytes()
    # nnU-Net's own check of a raw dataset (what nnUNetv2_plan_and_preprocess --verify_dataset_integrity runs)
    run_cli("nnUNetv2_extract_fingerprint", "-d", 871, "-np", 1, "--verify_dataset_integrity", env=raw_env)

    # the labels as if predicted: back to the nuclei, same file names and format
    output = tmp_path / "instances"
    result = run_cli("nnunet_blob", "instances-from-border-core", "-i", target / "labelsTr", "-o", output,
                     "-np", 1, env=raw_env)
    assert "3 instance maps written" in result.stdout
    for case, ids in instances.items():
        if case.startswith("case"):
            assert same_partition(ids, read_png(output / f"{case}.png"))

    # a second run refuses to replace the dataset unless told; --overwrite replaces what it wrote
    refused = run_cli("nnunet_blob", "border-core-dataset", "-i", 870, "-o", 871, env=raw_env, check=False)
    assert refused.returncode == 1 and "pass --overwrite" in refused.stderr
    run_cli("nnunet_blob", "border-core-dataset", "-i", source, "-o", "Dataset871_NucleiBorderCore",
            "--overwrite", "--border-thickness", "2", "-np", 1, env=raw_env)
    assert json.loads((target / "dataset.json").read_text())["border_core"]["border_thickness"] == 2.0


def test_nifti_dataset_with_instance_labels_in_workers(tmp_path, raw_env):
    """3D NIfTI, the ids in labelsTr itself, two worker processes."""
    import SimpleITK as sitk

    folder = tmp_path / "raw" / "Dataset872_Cells"
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True)
    cases = {}
    for i in range(2):
        ids = touching_nuclei(**LAYOUT_3D)
        cases[f"c{i}"] = ids
        for array, path in ((ids.astype(np.float32), folder / "imagesTr" / f"c{i}_0000.nii.gz"),
                            (ids, folder / "labelsTr" / f"c{i}.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(LAYOUT_3D["spacing"][::-1])
            image.SetOrigin((3.0, -2.0, 1.0))
            sitk.WriteImage(image, str(path))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "x"}, "labels": {"background": 0, "cell": 1}, "numTraining": 2,
        "file_ending": ".nii.gz"}))
    result = run_cli("nnunet_blob", "border-core-dataset", "-i", folder, "-o", 873, "-np", 2, env=raw_env)
    assert "8 nuclei (ids from labelsTr/, each value one nucleus)" in result.stdout
    assert "8 of 8 nuclei exactly" in result.stdout
    target = tmp_path / "raw" / "Dataset873_CellsBorderCore"
    output = tmp_path / "decoded"
    run_cli("nnunet_blob", "instances-from-border-core", "-i", target / "labelsTr", "-o", output, "-np", 2,
            env=raw_env)
    for case, ids in cases.items():
        image = sitk.ReadImage(str(output / f"{case}.nii.gz"))
        assert image.GetSpacing() == pytest.approx(LAYOUT_3D["spacing"][::-1])
        assert image.GetOrigin() == pytest.approx((3.0, -2.0, 1.0))
        assert same_partition(ids, sitk.GetArrayFromImage(image))


def test_errors_name_the_problem(tmp_path, raw_env, monkeypatch):
    from nnunet_blob.border_core.dataset import convert_dataset
    from nnunet_blob.border_core.folder import decode_folder

    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("nnunet_blob", "instances-from-border-core", "-i", empty, "-o", tmp_path / "o", env=raw_env,
                     check=False)
    assert result.returncode == 1
    line_with(result.stderr, "instances-from-border-core: error:", empty, "empty")

    mixed = tmp_path / "mixed"
    write_png(mixed / "a.png", np.zeros((4, 4)))
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 4, 4), np.uint8)), str(mixed / "b.nii.gz"))
    (mixed / "plans.json").write_text("{}")
    with pytest.raises(BorderCoreError, match=r"mixes file endings \(1 .nii.gz, 1 .png\)"):
        decode_folder(mixed, tmp_path / "o")

    floats = tmp_path / "floats"
    floats.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.full((2, 4, 4), 0.5, np.float32)), str(floats / "f.nii.gz"))
    with pytest.raises(BorderCoreError, match="f.nii.gz: holds non-integer values"):
        decode_folder(floats, tmp_path / "o", progress=False)

    source, instances = png_dataset(tmp_path / "raw", cases=1)
    monkeypatch.setenv("nnUNet_raw", raw_env["nnUNet_raw"])
    summary = convert_dataset("870", "875", border_thickness=0.5, progress=False)
    line_with(summary.lines()[2], "warning", "thinner", "1 cases", "case_0")
    write_png(source / "labelsTr" / "case_0.png", np.zeros((32, 32)))  # labels disagree with the instances
    with pytest.raises(BorderCoreError, match="case case_0: .* voxels are foreground in one of"):
        convert_dataset("870", "874", progress=False)
    assert not (tmp_path / "raw" / "Dataset874_NucleiBorderCore").exists()  # no half dataset left behind
    (source / "instancesTr" / "case_0.png").unlink()
    with pytest.raises(BorderCoreError, match="case case_0 .* has no instancesTr/case_0.png"):
        convert_dataset("870", "874", progress=False)
    with pytest.raises(BorderCoreError, match="give the new dataset's id"):
        convert_dataset("870", "new", progress=False)
    with pytest.raises(BorderCoreError, match="is the source dataset"):
        convert_dataset("870", "Dataset870_Nuclei", progress=False)
