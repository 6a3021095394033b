"""Synthetic nnU-Net raw datasets with pronounced instance imbalance (for tests, benchmarks and the demo).

Each case has one or two large objects beside many small blobs of varying size, shape, intensity and texture,
like MS lesions next to a large structure. The result is a regular nnU-Net v2 raw dataset
(``imagesTr``/``labelsTr``, optional ``imagesTs``/``labelsTs``, ``dataset.json``) that the real
``nnUNetv2_plan_and_preprocess`` accepts.

    from nnunet_blob.synthetic import make_dataset
    make_dataset(os.environ["nnUNet_raw"], 501, "Blobs", num_train=6, num_test=2)
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _ellipsoid(shape, centre, radii):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1.0


def make_case(shape: Sequence[int], num_classes: int, rng: np.random.Generator, small_objects=(8, 14),
              ignore_label: int | None = None):
    """(image float32, labels uint8) of one case."""
    shape = tuple(shape)
    seg = np.zeros(shape, dtype=np.uint8)
    image = rng.normal(0.0, 0.35, size=shape).astype(np.float32)
    for _ in range(rng.integers(1, 3)):  # one or two large structures
        radii = [s * rng.uniform(0.12, 0.2) for s in shape]
        centre = [rng.uniform(r + 1, s - r - 1) for r, s in zip(radii, shape, strict=True)]
        mask = _ellipsoid(shape, centre, radii)
        seg[mask] = 1
        image[mask] += rng.uniform(1.2, 1.8)
    for _ in range(rng.integers(*small_objects)):  # many small blobs of varying size, shape and contrast
        radii = [rng.uniform(0.6, 2.2) for _ in shape]
        centre = [rng.uniform(2, s - 3) for s in shape]
        mask = _ellipsoid(shape, centre, radii) & (seg == 0)
        if not mask.any():
            continue
        seg[mask] = rng.integers(1, num_classes + 1)
        texture = rng.normal(0, rng.uniform(0.05, 0.3), size=shape).astype(np.float32)
        image[mask] += rng.uniform(0.9, 2.0) + texture[mask]
    if ignore_label is not None:  # an unannotated slab
        axis = int(rng.integers(0, len(shape)))
        width = max(1, shape[axis] // 8)
        start = int(rng.integers(0, shape[axis] - width))
        index = [slice(None)] * len(shape)
        index[axis] = slice(start, start + width)
        seg[tuple(index)] = ignore_label
    return image, seg


def make_dataset(raw_root: str | Path, dataset_id: int = 501, name: str = "Blobs", num_train: int = 6,
                 num_test: int = 0, shape: Sequence[int] = (32, 32, 32), num_classes: int = 1,
                 ignore_label: bool = False, regions: bool = False, seed: int = 0,
                 small_objects: tuple[int, int] = (8, 14), spacing: Sequence[float] | None = None) -> Path:
    """Write ``Dataset{id:03d}_{name}`` into ``raw_root``; returns its folder.

    Args:
        shape: 3D (or 2D) image shape.
        num_classes: foreground classes; small blobs draw their class at random.
        ignore_label: add an "ignore" label (highest label) covering a slab of every case.
        regions: BraTS-style nested regions (needs ``num_classes >= 2``): region r = labels >= r.
        small_objects: range of the number of small blobs per case.
        spacing: voxel spacing (default 1 mm isotropic).
    """
    import SimpleITK as sitk

    if regions and num_classes < 2:
        raise ValueError("region-based datasets need num_classes >= 2 (nested regions)")
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{name}"
    rng = np.random.default_rng(seed)
    ignore_value = num_classes + 1 if ignore_label else None
    spacing = tuple(spacing or (1.0,) * len(shape))
    for split, count, prefix in (("Tr", num_train, "case"), ("Ts", num_test, "test")):
        (folder / f"images{split}").mkdir(parents=True, exist_ok=True)
        (folder / f"labels{split}").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, seg = make_case(shape, num_classes, rng, small_objects, ignore_value)
            for array, path in ((image, folder / f"images{split}" / f"{prefix}_{i:03d}_0000.nii.gz"),
                                (seg, folder / f"labels{split}" / f"{prefix}_{i:03d}.nii.gz")):
                itk = sitk.GetImageFromArray(array)
                itk.SetSpacing(spacing[::-1])
                sitk.WriteImage(itk, str(path))
    if regions:
        labels = {"background": 0,
                  **{f"region_{r}": list(range(r, num_classes + 1)) for r in range(1, num_classes + 1)}}
    else:
        labels = {"background": 0, **{f"class_{c}": c for c in range(1, num_classes + 1)}}
    if ignore_value is not None:
        labels["ignore"] = ignore_value
    dataset_json = {"channel_names": {"0": "MR"}, "labels": labels, "numTraining": num_train, "file_ending": ".nii.gz",
                    "name": name, "description": "nnunet_blob synthetic instance-imbalanced dataset"}
    if regions:
        dataset_json["regions_class_order"] = list(range(1, num_classes + 1))
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=1))
    return folder
