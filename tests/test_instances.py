"""nnunet_blob.instances: connectivity rule, detection counts and scores against literal definitions, tables."""
from __future__ import annotations

import math
import zipfile

import numpy as np
import pytest
from scipy import ndimage

from nnunet_blob.instances.connectivity import cc3d_connectivity
from nnunet_blob.instances.detection import (
    COUNT_KEYS,
    detection_counts,
    instance_scores,
    label_components,
    overlap_detection,
)
from nnunet_blob.instances.tables import (
    TABLE_KEYS,
    InstanceLocations,
    read_table,
    region_instance_locations,
    sample_instance_locations,
    write_table,
)

NAN = float("nan")


@pytest.mark.parametrize("ndim,connectivity,expected", [(3, 6, 6), (3, 18, 18), (3, 26, 26), (2, 6, 4),
                                                        (2, 18, 8), (2, 26, 8)])
def test_cc3d_connectivity(ndim, connectivity, expected):
    assert cc3d_connectivity(ndim, connectivity) == expected


@pytest.mark.parametrize("ndim,connectivity", [(3, 4), (2, 8), (3, 27), (4, 26), (1, 6)])
def test_cc3d_connectivity_rejects(ndim, connectivity):
    with pytest.raises(ValueError):
        cc3d_connectivity(ndim, connectivity)


def reference_components(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    """scipy's labelling with the neighbourhood written out: 6/4 faces (rank 1), 18 faces and edges (rank 2),
    26/8 everything (rank ndim)."""
    rank = {6: 1, 18: 2, 26: mask.ndim}[connectivity]
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))


def reference_counts(ref_ids: np.ndarray, pred_ids: np.ndarray) -> list[int]:
    """From the definition: one instance at a time, found when any of its voxels is foreground on the other side."""
    ref = [i for i in np.unique(ref_ids) if i > 0]
    pred = [i for i in np.unique(pred_ids) if i > 0]
    detected = [i for i in ref if np.any(pred_ids[ref_ids == i] > 0)]
    correct = [i for i in pred if np.any(ref_ids[pred_ids == i] > 0)]
    return [len(ref), len(detected), len(pred), len(correct)]


@pytest.mark.parametrize("shape", [(12, 14, 10), (30, 26)])
@pytest.mark.parametrize("connectivity", [6, 18, 26])
@pytest.mark.parametrize("seed", range(3))
def test_label_components_and_counts_match_the_definition(shape, connectivity, seed):
    rng = np.random.default_rng(seed)
    ref_mask, pred_mask = rng.random(shape) > 0.8, rng.random(shape) > 0.85
    ref, n_ref = label_components(ref_mask, connectivity)
    pred, n_pred = label_components(pred_mask, connectivity)
    for ours, n, mask in ((ref, n_ref, ref_mask), (pred, n_pred, pred_mask)):
        expected, n_expected = reference_components(mask, connectivity)
        assert n == n_expected > 1
        # the same partition of the voxels (ids may be numbered differently)
        pairs = set(zip(ours[mask].tolist(), expected[mask].tolist(), strict=True))
        assert len(pairs) == n and not np.any(ours[~mask])
    counts = detection_counts(ref, pred)
    assert counts.dtype == np.int64 and counts.tolist() == reference_counts(ref, pred)
    detected, true = overlap_detection(ref, pred)
    assert detected.tolist() == [i for i in range(1, n_ref + 1) if np.any(pred_mask[ref == i])]
    assert true.tolist() == [i for i in range(1, n_pred + 1) if np.any(ref_mask[pred == i])]


def test_counts_of_instance_maps_with_gaps_in_their_ids():
    ref = np.zeros((4, 10), np.int32)
    ref[0, 0:2], ref[2, 3:5], ref[0, 8] = 7, 40, 1000  # three instances, ids not consecutive
    pred = np.zeros_like(ref)
    pred[0, 1], pred[3, 9] = 3, 9  # touches id 7; one false positive
    assert detection_counts(ref, pred).tolist() == [3, 1, 2, 1] == reference_counts(ref, pred)
    assert COUNT_KEYS == ("n_ref", "ref_detected", "n_pred", "pred_correct")


SCORES = [
    # counts, IS, IP, F1 written out from the definitions
    ([4, 3, 5, 2], 3 / 4, 2 / 5, 2 * (3 / 4) * (2 / 5) / (3 / 4 + 2 / 5)),
    ([2, 2, 2, 2], 1.0, 1.0, 1.0),
    ([3, 0, 0, 0], 0.0, NAN, 0.0),  # lesions, nothing predicted
    ([0, 0, 4, 0], NAN, 0.0, 0.0),  # nothing to find, false positives
    ([0, 0, 0, 0], NAN, NAN, NAN),  # nothing either side
    ([3, 0, 2, 0], 0.0, 0.0, 0.0),  # both sides, no overlap
    ([[3, 0, 0, 0], [0, 0, 0, 0], [1, 1, 2, 1]], 1 / 4, 1 / 2, 2 * (1 / 4) * (1 / 2) / (1 / 4 + 1 / 2)),  # pooled
    ([[3, 0, 0, 0], [2, 0, 0, 0]], 0.0, NAN, 0.0),  # pooled, never predicted anything
]


@pytest.mark.parametrize("counts,sensitivity,precision,f1", SCORES)
def test_instance_scores(counts, sensitivity, precision, f1):
    scores = instance_scores(np.array(counts))
    for key, want in (("IS", sensitivity), ("IP", precision), ("F1", f1)):
        got = scores[key]
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-15), (key, got)


def test_instance_scores_rejects_rows_of_the_wrong_length():
    with pytest.raises(ValueError, match="rows of"):
        instance_scores(np.zeros(3))


def test_table_round_trip_and_errors(tmp_path):
    ids = np.zeros((6, 6, 6), np.uint8)
    ids[0:2, 0:2, 0:2], ids[4, 4, 4] = 1, 2
    seg = np.where(ids == 2, 3, ids).astype(np.int16)
    table = sample_instance_locations(ids, seg, max_per_instance=5)
    assert table.classes.tolist() == [1, 3] and table.sizes.tolist() == [8, 1]
    assert table.offsets.tolist() == [0, 5, 6]
    regions = region_instance_locations(np.stack([ids, (ids == 2).astype(np.uint8)]))
    assert regions.classes.tolist() == [1, 1, 2]
    path = tmp_path / "case_table.npz"
    write_table(path, table)
    back = read_table(path)
    assert all(np.array_equal(getattr(back, k), getattr(table, k)) for k in TABLE_KEYS)
    with pytest.raises(ValueError, match="region_classes"):  # written without a region table
        read_table(path, regions=True)
    write_table(path, table, regions)
    assert np.array_equal(read_table(path, regions=True).classes, regions.classes)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    path.write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a readable instance table"):
        read_table(path)
    with zipfile.ZipFile(path, "w") as f:
        f.writestr("junk.txt", "x")
    with pytest.raises(ValueError, match=str(path.name)):
        read_table(path)
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.npz")
    assert isinstance(back, InstanceLocations)
