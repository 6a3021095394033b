"""The synthetic dataset generator, read back with nnU-Net's own reader and label handling (no nnU-Net run)."""
from __future__ import annotations

import json

import cc3d
import numpy as np
import pytest
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_blob.synthetic import make_dataset


def read_labels(folder, split="Tr", prefix="case"):
    return [SimpleITKIO().read_seg(str(f))[0][0] for f in sorted((folder / f"labels{split}").glob(f"{prefix}_*"))]


def test_deterministic_by_seed_and_instance_imbalanced(tmp_path):
    a = read_labels(make_dataset(tmp_path / "a", 1, "A", num_train=3, num_test=1, seed=7))
    b = read_labels(make_dataset(tmp_path / "b", 1, "A", num_train=3, num_test=1, seed=7))
    c = read_labels(make_dataset(tmp_path / "c", 1, "A", num_train=3, num_test=1, seed=8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    for seg in a:
        sizes = np.bincount(cc3d.connected_components(seg > 0, connectivity=26).ravel())[1:]
        assert len(sizes) >= 4 and sizes.max() >= 20 * np.median(sizes)  # one large object beside small blobs
    assert len(read_labels(tmp_path / "a" / "Dataset001_A", "Ts", "test")) == 1


def test_2d_cases_are_2d_images(tmp_path):
    folder = make_dataset(tmp_path, 2, "Flat", num_train=2, shape=(48, 40))
    image, properties = SimpleITKIO().read_images([str(folder / "imagesTr" / "case_000_0000.nii.gz")])
    assert image.shape == (1, 1, 48, 40) and len(properties["sitk_stuff"]["spacing"]) == 2  # nnU-Net's 2D layout
    assert read_labels(folder)[0].max() >= 1


def test_classes_ignore_label_and_regions_as_nnunet_reads_them(tmp_path):
    folder = make_dataset(tmp_path, 3, "Multi", num_train=3, num_classes=2, ignore_label=True)
    spec = json.loads((folder / "dataset.json").read_text())
    manager = LabelManager(spec["labels"], spec.get("regions_class_order"))
    assert manager.ignore_label == 3 and manager.foreground_labels == [1, 2] and not manager.has_regions
    values = np.unique(np.concatenate([np.unique(s) for s in read_labels(folder)]))
    assert set(values) == {0, 1, 2, 3}

    folder = make_dataset(tmp_path, 4, "Brats", num_train=2, num_classes=3, regions=True)
    spec = json.loads((folder / "dataset.json").read_text())
    manager = LabelManager(spec["labels"], spec["regions_class_order"])
    assert manager.has_regions and manager.foreground_regions == [(1, 2, 3), (2, 3), (3,)]
    with pytest.raises(ValueError, match="num_classes >= 2"):
        make_dataset(tmp_path, 5, "Bad", num_train=1, regions=True)
