"""Reading a reference/prediction pair safely: every fault is a ValueError naming the file, what is wrong and the
fix, never a score.

* **readable**: a file the reader cannot open, a gzip stream that ends early (a ``.nii.gz`` cut short, which
  SimpleITK would read as zeros without a word) or an uncompressed NIfTI shorter than its header says;
* **same grid**: same shape, and spacing, origin and direction (or nibabel's affine) equal within nnU-Net's
  tolerance (``np.allclose``, as ``nnUNetv2_plan_and_preprocess --verify_dataset_integrity`` checks images
  against labels); ``allow_geometry_mismatch`` skips the spacing/origin/direction check, not the shape check;
* **labels**: integer values among the declared labels (dataset.json's labels and ignore label, or ``-l``/``-il``
  with the background).
"""
from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from nnunet_blob.axes import axis_order, file_reader

_CHUNK = 1 << 20


def check_complete(path: str) -> None:
    """ValueError when ``path`` is a gzip file whose stream ends early or an uncompressed NIfTI shorter than its
    header's data size."""
    if path.endswith(".gz"):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    decompressor.decompress(chunk, _CHUNK)
                    while decompressor.unconsumed_tail:
                        decompressor.decompress(decompressor.unconsumed_tail, _CHUNK)
                    if decompressor.eof:
                        break
        except zlib.error as e:
            raise ValueError(f"{path}: not a readable gzip file ({e}); is it a segmentation in the dataset's file "
                             f"format? Replace the file") from e
        if not decompressor.eof:
            raise ValueError(f"{path}: the gzip stream ends early (the file is truncated, e.g. an interrupted copy "
                             f"or prediction); copy or predict it again")
    elif path.endswith(".nii"):
        import nibabel

        try:
            header: Any = nibabel.load(path).header  # a Nifti1Header
        except Exception as e:  # nibabel's own errors for a damaged header
            raise ValueError(f"{path}: not a readable NIfTI file ({first_line(e)}); replace the file") from e
        expected = int(header.get_data_offset()) + int(np.prod(header.get_data_shape())) * \
            header.get_data_dtype().itemsize
        if os.path.getsize(path) < expected:
            raise ValueError(f"{path}: {os.path.getsize(path)} bytes, its header needs {expected} (the file is "
                             f"truncated); copy or predict it again")


def first_line(error: BaseException) -> str:
    """The last non-empty line of an error's message (SimpleITK puts its reason there), shortened."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read_segmentation(reader_writer, path: str) -> tuple[np.ndarray, dict]:
    """``reader_writer.read_seg(path)`` after :func:`check_complete`; reader errors become a ValueError naming the
    file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist")
    check_complete(path)
    try:
        return reader_writer.read_seg(path)
    except Exception as e:  # the readers raise RuntimeError (SimpleITK), OSError, ValueError, ...
        raise ValueError(f"{path}: cannot be read with {type(reader_writer).__name__} ({first_line(e)}); is it a "
                         f"segmentation in the dataset's file format?") from e


def _differs(name: str, a, b, order: str = "") -> str | None:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or not np.allclose(a, b):
        def show(v):
            return tuple(np.round(v.ravel(), 6).tolist())

        return f"{name} {show(a)} vs the reference's {show(b)}" + (f" {order}" if order else "")
    return None


def check_geometry(pred_file: str, ref_file: str, props_pred: dict, props_ref: dict) -> None:
    """ValueError when the prediction's spacing, origin, direction or affine differ from the reference's.

    The spacing is shown in nnU-Net's axis order (z, y, x) and as the file's reader reports it (x, y, z); origin and
    direction as SimpleITK reports them."""
    differences: list[str | None] = []
    if _differs("spacing", props_pred["spacing"], props_ref["spacing"]):
        differences.append("spacing " + axis_order(props_pred["spacing"], file_reader(props_ref),
                                                   ("the reference's", props_ref["spacing"])))
    sitk_pred, sitk_ref = props_pred.get("sitk_stuff"), props_ref.get("sitk_stuff")
    if sitk_pred and sitk_ref:
        differences += [_differs(key, sitk_pred[key], sitk_ref[key], "as SimpleITK reports it")
                        for key in ("origin", "direction")]
    nib_pred, nib_ref = props_pred.get("nibabel_stuff"), props_ref.get("nibabel_stuff")
    if nib_pred and nib_ref and "original_affine" in nib_pred and "original_affine" in nib_ref:
        differences.append(_differs("affine", nib_pred["original_affine"], nib_ref["original_affine"]))
    found = [d for d in differences if d]
    if found:
        raise ValueError(f"{pred_file}: {'; '.join(found)} ({ref_file}); the prediction must lie on the "
                         f"reference's grid (nnUNetv2_predict writes it so): resample it, or pass "
                         f"--allow-geometry-mismatch to compare the arrays anyway")


def check_labels(path: str, seg: np.ndarray, allowed: Iterable[int]) -> None:
    """ValueError when ``seg`` holds non-integer values or labels outside ``allowed``."""
    allowed = sorted({int(a) for a in allowed})
    if seg.dtype.kind == "f":
        if not np.isfinite(seg).all() or np.any(seg != np.round(seg)):
            raise ValueError(f"{path}: holds non-integer values; segmentations must be integer label maps")
    elif seg.dtype.kind not in "iub":
        raise ValueError(f"{path}: values of type {seg.dtype} are not integer labels")
    low, high = (int(v) for v in (seg.min(initial=0), seg.max(initial=0)))
    if low >= 0 and high < 1 << 16:
        present = np.flatnonzero(np.bincount(seg.astype(np.int64).ravel(), minlength=1))
    else:
        present = np.unique(seg).astype(np.int64)
    unknown = sorted(set(present.tolist()) - set(allowed))
    if unknown:
        raise ValueError(f"{path}: labels {unknown[:10]} are not among the declared labels {allowed} (dataset.json "
                         f"labels or -l/-il); fix the file or declare the labels (an instance map, ids 1, 2, 3, ...? "
                         f"give it with --reference-instances/--prediction-instances beside the label files, or "
                         f"evaluate instance maps of one class with --instance-inputs -l 1)")


def read_pair(reader_writer, ref_file: str, pred_file: str, allowed_labels: Iterable[int] | None,
              allow_geometry_mismatch: bool = False) -> tuple[np.ndarray, np.ndarray, dict]:
    """(reference, prediction, reference properties) of one case, checked (module docstring)."""
    seg_ref, props = read_segmentation(reader_writer, ref_file)
    seg_pred, props_pred = read_segmentation(reader_writer, pred_file)
    if seg_ref.shape != seg_pred.shape:
        shapes = axis_order(seg_pred.shape[1:], file_reader(props), (f"the reference {ref_file}", seg_ref.shape[1:]))
        raise ValueError(f"{pred_file}: other shape, {shapes}; predictions must be in the reference's image space")
    if not allow_geometry_mismatch:
        check_geometry(pred_file, ref_file, props_pred, props)
    if allowed_labels is not None:
        allowed_labels = list(allowed_labels)
        check_labels(ref_file, seg_ref, allowed_labels)
        check_labels(pred_file, seg_pred, allowed_labels)
    return seg_ref, seg_pred, props


def read_probabilities(npz_file: str, case: str, spatial_shape: tuple[int, ...]) -> np.ndarray:
    """(C, *spatial) probabilities nnU-Net saved for a case (``nnUNetv2_predict --save_probabilities``)."""
    if not os.path.isfile(npz_file):
        raise FileNotFoundError(f"case {case}: no probabilities {npz_file}; predict with nnUNetv2_predict "
                                f"--save_probabilities, or drop --confidence")
    try:
        with np.load(npz_file) as data:
            probabilities = data["probabilities"]
    except (OSError, ValueError, KeyError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ValueError(f"case {case}: {npz_file} holds no readable 'probabilities' array ({first_line(e)}); "
                         f"predict again with --save_probabilities") from e
    except Exception as e:  # zipfile.BadZipFile and other damage
        raise ValueError(f"case {case}: {npz_file} is not a readable .npz ({first_line(e)}); predict again with "
                         f"--save_probabilities") from e
    if tuple(probabilities.shape[1:]) != tuple(spatial_shape):
        shapes = axis_order(probabilities.shape[1:], versus=("the segmentation's", spatial_shape))
        raise ValueError(f"case {case}: probabilities ({probabilities.shape[0]} classes) of shape {shapes} do not "
                         f"match; use the .npz written with this prediction")
    return probabilities


def read_instances(reader_writer, path: str, case: str, option: str, seg: np.ndarray, seg_file: str,
                   props: dict, ignore_label: int | None, allow_geometry_mismatch: bool = False) -> np.ndarray:
    """The instance map of a case (``--reference-instances``/``--prediction-instances``), checked against the
    case's label map ``seg`` (read from ``seg_file`` with ``props``): readable, same grid, integer ids >= 0 (0: no
    object), and every object inside one foreground label of ``seg`` (not the background, not the ignore label).
    Every fault is a ValueError (FileNotFoundError for a missing file) naming the case, the option and the fix."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"case {case}: no instance map {path} ({option}); give one instance map per case, "
                                f"with the label file's name ({os.path.basename(seg_file)})")
    instances, props_instances = read_segmentation(reader_writer, path)
    if instances.shape != seg.shape:
        shapes = axis_order(instances.shape[1:], file_reader(props), (f"its label file {seg_file}", seg.shape[1:]))
        raise ValueError(f"case {case}: the instance map {path} ({option}) has shape {shapes}; instance maps must lie "
                         f"on the label file's grid")
    if not allow_geometry_mismatch:
        check_geometry(path, seg_file, props_instances, props)
    instances = instance_ids(instances, path, case, option)
    inside = instances > 0
    ids, labels = instances[inside], np.asarray(seg)[inside].astype(np.int64)
    outside = (labels == 0) | ((labels == ignore_label) if ignore_label is not None else False)
    if outside.any():
        bad = np.unique(ids[outside])
        raise ValueError(f"case {case}: objects {bad[:10].tolist()} of the instance map {path} ({option}) cover "
                         f"{int(outside.sum())} voxels that are background or ignore label in {seg_file}; every "
                         f"object must lie inside one foreground label of its label file")
    base = int(labels.max(initial=0)) + 1
    pairs = np.unique(ids * base + labels)  # one entry per (object, label) pair
    object_ids, count = np.unique(pairs // base, return_counts=True)
    if (count > 1).any():
        split = object_ids[count > 1]
        raise ValueError(f"case {case}: objects {split[:10].tolist()} of the instance map {path} ({option}) span "
                         f"several labels of {seg_file}; every object must lie inside one foreground label (give "
                         f"each class's objects their own ids)")
    return instances


def instance_ids(instances: np.ndarray, path: str, case: str, option: str) -> np.ndarray:
    """An instance map as int64 ids; ValueError naming the case when it holds non-integer or negative values."""
    if instances.dtype.kind == "f":
        if not np.isfinite(instances).all() or np.any(instances != np.round(instances)):
            raise ValueError(f"case {case}: the instance map {path} ({option}) holds non-integer values; instance "
                             f"maps hold object ids (integers > 0, 0 for no object)")
    elif instances.dtype.kind not in "iub":
        raise ValueError(f"case {case}: the instance map {path} ({option}) holds values of type {instances.dtype}, "
                         f"not integer object ids")
    if instances.min(initial=0) < 0:
        raise ValueError(f"case {case}: the instance map {path} ({option}) holds negative ids; object ids are > 0 "
                         f"and 0 is no object")
    return instances.astype(np.int64)
