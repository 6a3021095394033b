"""Reading and writing one case's label files with nnU-Net's reader/writer, checked (shared by both commands)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_blob.border_core.representation import BorderCoreError
from nnunet_blob.evaluation.checks import read_segmentation
from nnunet_blob.files import atomic_path_and_companions
from nnunet_blob.nnunet_internals import largest_writable_label


def read_map(reader_writer, path: str | Path) -> tuple[np.ndarray, dict]:
    """((*spatial) array, nnU-Net's properties) of a single-channel label or instance file; BorderCoreError naming
    the file when it cannot be read. nnU-Net's readers give 3D spatial axes (a 2D image is one slice)."""
    try:
        array, properties = read_segmentation(reader_writer, str(path))
    except (OSError, ValueError) as e:
        raise BorderCoreError(str(e)) from e
    if array.shape[0] != 1:
        raise BorderCoreError(f"{path}: {array.shape[0]} channels; label and instance files have one")
    return array[0], properties


def write_map(reader_writer, array: np.ndarray, path: str | Path, properties: dict, what: str) -> None:
    """Write a (*spatial) map as nnU-Net writes segmentations (its reader/writer, the case's properties),
    atomically; a map whose largest value the writer would not store unchanged is a BorderCoreError naming ``what``."""
    largest = int(array.max(initial=0))
    limit = largest_writable_label(reader_writer)
    if largest > limit:
        raise BorderCoreError(f"{what}: {largest} instances, but {type(reader_writer).__name__} writes label files "
                              f"with values up to {limit}; use a dataset file format that stores more (e.g. .nii.gz "
                              f"with SimpleITKIO)")
    with atomic_path_and_companions(path) as tmp:
        reader_writer.write_seg(array, str(tmp), properties)  # spatial axes only: nnU-Net's writers take no channel
