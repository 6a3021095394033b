"""Instance maps from annotated instances: ``instancesTr/<case><file_ending>`` beside ``labelsTr/`` in the raw dataset.

Connected components merge objects that touch (nuclei, cells, confluent lesions). A dataset that has its instances
annotated puts them in ``nnUNet_raw/DatasetXXX_Name/instancesTr/``, one file per training case with the label
file's name, geometry and reader/writer; ids > 0, each id inside one foreground class, 0 = no instance. The stored
map of a case is then that annotation:

1. read with the reader/writer nnU-Net preprocessed the labels with, checked against the case's label file (same
   shape and spacing; no id on background or on the ignore label; no id in two classes; ids exact in the reader's
   type) -- :func:`read_annotation`, errors name the case and the fix;
2. pushed through nnU-Net's preprocessing geometry of the configuration -- :func:`to_preprocessed_geometry`: the
   plans' ``transpose_forward``, the case's crop box (``bbox_used_for_cropping`` of its ``.pkl``) and order-0
   (nearest-neighbour) resampling to the stored segmentation's shape, as ``DefaultPreprocessor.run_case_npy`` does
   (transpose, crop, resample);
3. reconciled with nnU-Net's preprocessed segmentation (which nnU-Net resampled label-wise linearly, so borders
   differ by a voxel here and there) -- :func:`reconcile`: an instance voxel on background, on the ignore label or
   outside the image's nonzero region becomes 0; a voxel of class c > 0 without an instance of class c (id 0, or
   an id of another class) takes the id of the nearest voxel (Euclidean, in voxels) that has an instance of class
   c *within the same connected region of class c* (the maps' connectivity); a connected region of class c that
   has no such voxel at all becomes one new instance. So every voxel of class c carries an instance of class c,
   and no instance reaches beyond its class, exactly as for connected components.

Ids are renumbered 1..n in the order of the annotation's ids (new instances after them); the record lists the
annotation id of every stored id (0 for a new instance) and how many voxels reconciliation changed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cc3d
import numpy as np
from scipy import ndimage

from nnunet_blob.axes import axis_order, file_reader
from nnunet_blob.instances.components import CaseInstances, smallest_id_dtype
from nnunet_blob.instances.connectivity import cc3d_connectivity
from nnunet_blob.nnunet_internals import (
    CROP_BBOX_KEY,
    LOADER_SEG_DTYPE,
    SHAPE_AFTER_CROPPING_KEY,
    SHAPE_BEFORE_CROPPING_KEY,
    nearest_resize_indices,
    raw_label_file,
    raw_reader_writer,
)
from nnunet_blob.preprocessing.errors import InstanceMapError

#: the folder of annotated instances in nnU-Net's raw dataset folder, beside ``labelsTr``
ANNOTATION_FOLDER = "instancesTr"
#: instances a case can have in the store: the loader carries ids in two 15-bit halves of its segmentation dtype
#: (int16; :func:`nnunet_blob.trainers.instance_data.split_ids`, whose radix is ``int16 max + 1``)
MAX_INSTANCES = (int(np.iinfo(LOADER_SEG_DTYPE).max) + 1) ** 2 - 1
#: float32 (what nnU-Net's SimpleITK/nibabel readers return) holds every integer up to this exactly
FLOAT32_EXACT_IDS = 2**24


@dataclass(frozen=True)
class AnnotationSource:
    """Where the annotated instances of a dataset are and how nnU-Net reads its raw files."""

    raw_folder: Path  # nnUNet_raw/DatasetXXX_Name
    dataset_json: dict  # the raw dataset.json
    plans: dict  # the plans whose reader/writer read the labels

    @property
    def folder(self) -> Path:
        return self.raw_folder / ANNOTATION_FOLDER

    def instance_file(self, case: str) -> Path:
        return self.folder / f"{case}{self.dataset_json['file_ending']}"

    def label_file(self, case: str) -> Path:
        return Path(raw_label_file(self.raw_folder, self.dataset_json, case))


def raw_dataset_folder(dataset_name: str) -> Path | None:
    """``$nnUNet_raw/<dataset_name>`` when it exists, else None (nnUNet_raw unset, or data not on this machine)."""
    root = os.environ.get("nnUNet_raw")
    if not root:
        return None
    folder = Path(root) / dataset_name
    return folder if (folder / "dataset.json").is_file() else None


def find_annotations(dataset_name: str, plans: dict) -> tuple[AnnotationSource | None, Path | None]:
    """(the annotation source when the raw dataset has ``instancesTr/``, else None; the raw dataset folder, None
    when this machine has none)."""
    import json

    raw = raw_dataset_folder(dataset_name)
    if raw is None or not (raw / ANNOTATION_FOLDER).is_dir():
        return None, raw
    return AnnotationSource(raw, json.loads((raw / "dataset.json").read_text()), plans), raw


def annotation_stamp(path: Path) -> dict:
    """File name, size, mtime and sha1 of an annotation file (the sha1 is part of the case's identity)."""
    from nnunet_blob.preprocessing.store import file_stamp

    return {"file": path.name, **file_stamp(path)}


def annotation_unchanged(stamp: dict | None, path: Path) -> tuple[bool, dict | None]:
    """(whether ``path`` still holds the recorded annotation; its new stamp when only its mtime changed, else None).
    Costs one ``stat``; the file is hashed only when its size or mtime changed."""
    if not stamp:
        return False, None
    try:
        stat = path.stat()
    except OSError:
        return False, None
    if stamp.get("file") != path.name or stat.st_size != stamp.get("size"):
        return False, None
    if stat.st_mtime_ns == stamp.get("mtime_ns"):
        return True, None
    from nnunet_blob.preprocessing.store import file_sha1

    if file_sha1(path) != stamp.get("sha1"):
        return False, None
    return True, {**stamp, "mtime_ns": stat.st_mtime_ns}


def _fix(source: AnnotationSource) -> str:
    return (f"Every training case needs its file in {source.folder} (ids > 0, each inside one foreground class of "
            f"labelsTr, 0 = no instance); rename that folder to use connected components instead.")


def read_annotation(source: AnnotationSource, case: str, ignore_label: int | None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ids (*spatial) renumbered 1..n in the order of the annotated ids, int32 or int64; the annotated id of each
    renumbered id, and the class of each, as (2, n) int64) of one case, checked against its raw label file.

    Raises:
        InstanceMapError: naming the case and the fix, for a missing file, another shape or spacing than the label,
            non-integer or negative values, ids on background or the ignore label, an id in two classes, ids a
            float32 reader cannot carry exactly, or more instances than the store can carry.
    """
    path, label_path = source.instance_file(case), source.label_file(case)
    if not path.is_file():
        raise InstanceMapError(f"case {case}: no annotated instances {path}. {_fix(source)}")
    reader = raw_reader_writer(source.plans)
    try:
        ids, id_properties = reader.read_seg(str(path))
        labels, label_properties = reader.read_seg(str(label_path))
    except Exception as e:  # readers raise many kinds of errors for unreadable files
        raise InstanceMapError(f"case {case}: cannot read {path} or {label_path} with {type(reader).__name__} "
                               f"({type(e).__name__}: {e}). Write the instances in the labels' format.") from e
    ids, labels = ids[0], labels[0]
    if ids.shape != labels.shape:
        shapes = axis_order(ids.shape, file_reader(label_properties), (f"its label {label_path}", labels.shape))
        raise InstanceMapError(f"case {case}: {path} has shape {shapes}. The instances must be on the label's voxel "
                               f"grid.")
    if not np.allclose(id_properties["spacing"], label_properties["spacing"], rtol=1e-5, atol=0):
        spacings = [tuple(float(s) for s in p["spacing"]) for p in (id_properties, label_properties)]
        spacing = axis_order(spacings[0], file_reader(label_properties), ("its label's", spacings[1]))
        raise InstanceMapError(f"case {case}: {path} has spacing {spacing}. Write the instances with the label's "
                               f"geometry (copy its header).")
    return _checked_ids(ids, np.asarray(labels), case, path, ignore_label)


def _checked_ids(ids: np.ndarray, labels: np.ndarray, case: str, path: Path,
                 ignore_label: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The checks and the renumbering of :func:`read_annotation` (raw arrays of equal shape)."""
    if ids.dtype.kind == "f":
        with np.errstate(invalid="ignore"):  # NaN and inf cast to some integer, and then differ from it
            cast = ids.astype(np.int64)
        if not np.array_equal(cast.astype(ids.dtype), ids):
            raise InstanceMapError(f"case {case}: {path} holds non-integer values; instance ids must be integers.")
        if ids.size and cast.max() > FLOAT32_EXACT_IDS and ids.dtype == np.float32:
            raise InstanceMapError(f"case {case}: {path} holds ids above {FLOAT32_EXACT_IDS}, which nnU-Net's "
                                   f"reader (float32) cannot carry exactly. Renumber the instances from 1.")
        ids = cast
    elif ids.dtype.kind not in "iub":
        raise InstanceMapError(f"case {case}: {path} has dtype {ids.dtype}; instance ids must be integers.")
    if ids.size and ids.min() < 0:
        raise InstanceMapError(f"case {case}: {path} holds negative ids; ids are > 0, 0 = no instance.")
    annotated = ids > 0
    values = ids[annotated].astype(np.int64)
    classes = np.rint(labels[annotated]).astype(np.int64)
    outside = (classes <= 0) if ignore_label is None else (classes <= 0) | (classes == ignore_label)
    if outside.any():
        where = "background" + ("" if ignore_label is None else f" or the ignore label {ignore_label}")
        raise InstanceMapError(f"case {case}: {int(outside.sum())} voxels of {path} carry instance ids outside the "
                               f"foreground ({where} in the label), e.g. ids {np.unique(values[outside])[:5].tolist()}"
                               f". Instances must lie inside the labelled foreground: set those voxels to 0, or fix "
                               f"the label.")
    base = int(classes.max(initial=0)) + 1
    pairs = np.unique(values * base + classes)
    id_of, class_of = pairs // base, pairs % base
    spanning = np.unique(id_of[1:][id_of[1:] == id_of[:-1]])
    if spanning.size:
        shown = {int(i): class_of[id_of == i].tolist() for i in spanning[:5]}
        raise InstanceMapError(f"case {case}: {spanning.size} instance ids of {path} span two or more classes of the "
                               f"label (id: classes {shown}). Each instance must lie inside one class: give each "
                               f"class's part its own id.")
    if id_of.size > MAX_INSTANCES:
        raise InstanceMapError(f"case {case}: {path} has {id_of.size} instances, more than the {MAX_INSTANCES} a "
                               f"case can carry. Split the case.")
    renumbered = np.zeros(ids.shape, dtype=smallest_id_dtype(max(int(id_of.size), 32768)))
    renumbered[annotated] = np.searchsorted(id_of, values) + 1
    return renumbered, np.stack([id_of, class_of])


def to_preprocessed_geometry(ids: np.ndarray, properties: dict, transpose: list[int], shape: tuple[int, ...],
                             case: str = "") -> np.ndarray:
    """Raw (*spatial) ids on the voxel grid of nnU-Net's preprocessed case: transposed (``transpose``: the plans'
    ``transpose_forward``), cropped to the case's crop box, resampled nearest-neighbour to ``shape`` (the stored
    segmentation's spatial shape), in the order of ``DefaultPreprocessor.run_case_npy``."""
    ids = ids.transpose(transpose)
    expected = tuple(int(s) for s in properties[SHAPE_BEFORE_CROPPING_KEY])
    if ids.shape != expected:
        raise InstanceMapError(f"case {case}: the annotated instances have shape {ids.shape} after nnU-Net's "
                               f"transpose, nnU-Net preprocessed the case from shape {expected}. Re-run "
                               f"nnUNetv2_preprocess if the raw data changed.")
    ids = ids[tuple(slice(int(lo), int(hi)) for lo, hi in properties[CROP_BBOX_KEY])]
    cropped = tuple(int(s) for s in properties[SHAPE_AFTER_CROPPING_KEY])
    if ids.shape != cropped:
        raise InstanceMapError(f"case {case}: the crop box {properties[CROP_BBOX_KEY]} gives shape {ids.shape}, "
                               f"the case's properties say {cropped}. Re-run nnUNetv2_preprocess for it.")
    if ids.shape == tuple(shape):
        return np.ascontiguousarray(ids)
    indices = (nearest_resize_indices(o, n) for o, n in zip(ids.shape, shape, strict=True))
    return np.ascontiguousarray(ids[np.ix_(*indices)])


@dataclass(frozen=True)
class Reconciliation:
    """What :func:`reconcile` changed: voxels of a class given an instance of their class, instance voxels cleared
    (background, ignore label, outside the image), instances made for regions without any."""

    relabelled: int
    cleared: int
    new_instances: int

    def as_dict(self) -> dict:
        return {"relabelled": self.relabelled, "cleared": self.cleared, "new_instances": self.new_instances}


def reconcile(ids: np.ndarray, seg: np.ndarray, classes: np.ndarray, ignore_label: int | None,
              connectivity: int) -> tuple[np.ndarray, np.ndarray, Reconciliation]:
    """(ids, class of each id 1..len, what changed): ``ids`` (*spatial, renumbered, ``classes[i]`` the class of id
    i + 1) made consistent with nnU-Net's segmentation ``seg`` (*spatial), the rule of this module's docstring.
    New instances get ids after ``len(classes)``; ids are not renumbered here."""
    seg = np.asarray(seg)
    ids = np.array(ids, dtype=np.int32, copy=True)  # ids stay below MAX_INSTANCES + pieces of the case
    foreground = seg > 0
    if ignore_label is not None:
        foreground &= seg != ignore_label
    cleared = int(np.count_nonzero(ids[~foreground]))
    ids[~foreground] = 0
    lookup = np.concatenate(([0], np.asarray(classes, np.int64)))
    wrong = foreground & (lookup[ids] != seg)
    relabelled = int(np.count_nonzero(wrong))
    new_classes: list[int] = []
    if relabelled:
        pieces = cc3d.connected_components(np.ascontiguousarray(np.where(foreground, seg, 0)),
                                           connectivity=cc3d_connectivity(seg.ndim, connectivity))
        boxes = ndimage.find_objects(pieces)
        for piece in np.unique(pieces[wrong]):
            box = boxes[piece - 1]
            inside = pieces[box] == piece
            bad = inside & wrong[box]
            good = inside & ~bad
            local = ids[box]
            if good.any():
                nearest = ndimage.distance_transform_edt(~good, return_distances=False, return_indices=True)
                local[bad] = local[tuple(axis[bad] for axis in nearest)]
            else:
                new_classes.append(int(seg[box][bad][0]))
                local[bad] = len(classes) + len(new_classes)
            ids[box] = local
    all_classes = np.concatenate((np.asarray(classes, np.int64), np.asarray(new_classes, np.int64)))
    return ids, all_classes, Reconciliation(relabelled, cleared, len(new_classes))


def annotated_instances(source: AnnotationSource, case: str, seg: np.ndarray, properties: dict,
                        transpose: list[int], ignore_label: int | None, connectivity: int
                        ) -> tuple[CaseInstances, list[int], Reconciliation]:
    """(the case's instances on nnU-Net's preprocessed grid, the annotated id of every stored id (0: a new
    instance), what reconciliation changed) from its annotation file; ``seg`` as stored, (1, *spatial)."""
    raw_ids, table = read_annotation(source, case, ignore_label)
    seg = np.asarray(seg)[0]
    ids = to_preprocessed_geometry(raw_ids, properties, transpose, seg.shape, case)
    ids, classes, changes = reconcile(ids, seg, table[1], ignore_label, connectivity)
    annotation_ids = np.concatenate((table[0], np.zeros(changes.new_instances, np.int64)))
    sizes = np.bincount(ids.ravel(), minlength=classes.size + 1)[1:]
    present = np.flatnonzero(sizes > 0)  # instances resampling or reconciliation removed are dropped
    if present.size > MAX_INSTANCES:
        raise InstanceMapError(f"case {case}: {present.size} instances after reconciliation with nnU-Net's "
                               f"segmentation, more than the {MAX_INSTANCES} a case can carry. Split the case.")
    lookup = np.zeros(classes.size + 1, np.int64)
    lookup[present + 1] = np.arange(1, present.size + 1)
    instance_map = lookup[ids].astype(smallest_id_dtype(int(present.size)))[None]
    return (CaseInstances(instance_map, classes[present], sizes[present].astype(np.int64)),
            annotation_ids[present].tolist(), changes)
