"""Instance-balanced foreground sampling through nnU-Net's own get_bbox (fixed seeds, not flaky)."""
from __future__ import annotations

import cc3d
import numpy as np
import pytest
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.label_handling.label_handling import LabelManager

from nnunet_blob.instances.tables import InstanceLocations, region_instance_locations, sample_instance_locations
from nnunet_blob.trainers.instance_sampling import InstanceBalancedLocations, balanced_class_locations, region_groups

PATCH = 16


def one_large_many_small(shape=(64, 64, 64), n_small=30, seed=0):
    """One 24^3 object and ``n_small`` 2^3 ones, all at least PATCH // 2 from the border."""
    rng = np.random.default_rng(seed)
    seg = np.zeros(shape, dtype=np.int16)
    seg[8:32, 8:32, 8:32] = 1
    placed = 0
    while placed < n_small:
        lo = rng.integers(34, shape[0] - 10, size=3)
        box = tuple(slice(a - 1, a + 3) for a in lo)
        if seg[box].any():
            continue
        seg[tuple(slice(a, a + 2) for a in lo)] = 1
        placed += 1
    instances = cc3d.connected_components(seg, connectivity=26)
    assert instances.max() == n_small + 1
    return seg, instances


class _Cases:
    identifiers = ["case"]


def loader():
    label_manager = LabelManager({"background": 0, "lesion": 1}, regions_class_order=None)
    return nnUNetDataLoader(_Cases(), 2, (PATCH,) * 3, (PATCH,) * 3, label_manager, oversample_foreground_percent=1.0)


def centred_instance_frequencies(class_locations, instances, draws=6000, seed=0):
    """Which instance each forced-foreground patch of nnU-Net's get_bbox is centred on."""
    np.random.seed(seed)
    dl = loader()
    counts = np.zeros(int(instances.max()) + 1)
    for _ in range(draws):
        lbs, _ = dl.get_bbox(instances.shape, True, class_locations)
        centre = tuple(lb + PATCH // 2 for lb in lbs)
        counts[instances[centre]] += 1
    return counts[1:] / draws


@pytest.fixture(scope="module")
def case():
    seg, instances = one_large_many_small()
    stock = DefaultPreprocessor._sample_foreground_locations(seg[None], [1], seed=1234)
    return seg, instances, stock, sample_instance_locations(instances, seg, max_per_instance=50)


def test_exponent_zero_is_uniform_over_instances(case):
    seg, instances, stock, table = case
    freq = centred_instance_frequencies(balanced_class_locations(stock, table, exponent=0.0), instances)
    assert np.allclose(freq, 1 / len(freq), atol=0.012), freq
    stock_freq = centred_instance_frequencies(stock, instances)
    assert stock_freq[0] > 0.9  # stock: the large object gets almost every forced patch


def test_exponent_one_matches_nnunet_stock_sampling(case):
    seg, instances, stock, table = case
    ours = centred_instance_frequencies(balanced_class_locations(stock, table, exponent=1.0), instances, seed=1)
    reference = centred_instance_frequencies(stock, instances, seed=2)
    assert np.abs(ours - reference).max() < 0.012, (ours[:3], reference[:3])


def test_table_keeps_a_bounded_sample_inside_each_instance(case):
    seg, instances, _, table = case
    assert len(table.sizes) == instances.max()
    assert table.sizes[0] == 24 ** 3 and np.all(table.sizes[1:] == 8)
    assert np.all(np.diff(table.offsets) == np.minimum(table.sizes, 50))
    for i in range(len(table.sizes)):
        coords = table.coordinates[table.offsets[i]:table.offsets[i + 1]]
        labels = instances[tuple(coords.T)]
        assert np.all(labels == labels[0]) and len(np.unique(coords, axis=0)) == len(coords)
    assert np.all(table.classes == 1)


def test_class_without_instances_and_other_keys_are_left_alone():
    seg = np.zeros((8, 8, 8), np.int16)
    table = sample_instance_locations(np.zeros_like(seg), seg)
    locations = {1: np.zeros((0, 4), np.int64), (-1, 1): np.ones((3, 4), np.int64)}
    balanced = balanced_class_locations(locations, table, 0.0)
    assert balanced[1] is locations[1] and balanced[(-1, 1)] is locations[(-1, 1)]
    assert len(InstanceBalancedLocations(table, 1, 0.0)) == 0


def test_voxel_within_the_instance_is_uniform_and_uses_no_extra_random_draw():
    """nnU-Net's one index picks instance and voxel: the augmentation's random stream is not shifted."""
    x = np.concatenate([np.arange(50), 100 + np.arange(3)])  # instance 0: 50 stored voxels, instance 1: 3
    table = InstanceLocations(np.array([1, 1]), np.array([50, 3]), np.stack([x, 0 * x, 0 * x], 1),
                              np.array([0, 50, 53]))
    locations = InstanceBalancedLocations(table, 1, exponent=0.0)
    np.random.seed(7)
    state = np.random.get_state()[1].copy()
    indices = np.random.default_rng(0).integers(0, len(locations), 20000)
    counts = np.bincount([locations[i][1] for i in indices], minlength=103)
    assert np.array_equal(np.random.get_state()[1], state)
    assert counts[:50].sum() == pytest.approx(10000, rel=0.03)  # uniform over the two instances
    assert counts[:50].min() > 140 and counts[:50].max() < 260  # ~200 per voxel of the big one
    assert counts[100:].min() > 3000 and counts[50:100].sum() == 0


@pytest.fixture(scope="module")
def region_case():
    """BraTS-like nesting: the large object is label 1 around a label-2 core; the small ones alternate 1 and 2."""
    seg, whole = one_large_many_small()
    seg[14:26, 14:26, 14:26] = 2
    small = np.isin(whole, np.arange(2, whole.max() + 1, 2))
    seg[small] = 2
    regions = [(1, 2), (2,)]
    stock = DefaultPreprocessor._sample_foreground_locations(seg[None], regions, seed=1234)
    region_ids = np.stack([cc3d.connected_components(np.isin(seg, r), connectivity=26) for r in regions])
    return seg, regions, stock, region_ids, region_instance_locations(region_ids)


def test_region_table_holds_each_region_mask_components(region_case):
    seg, regions, _, region_ids, table = region_case
    for r, ids in enumerate(region_ids):
        members = table.of_class(r + 1)
        assert len(members) == ids.max() and sorted(table.sizes[members]) == sorted(np.bincount(ids.ravel())[1:])
        for i in members:
            coords = table.coordinates[table.offsets[i]:table.offsets[i + 1]]
            assert len(np.unique(ids[tuple(coords.T)])) == 1 and np.all(np.isin(seg[tuple(coords.T)], regions[r]))


@pytest.mark.parametrize("region", [0, 1])
def test_region_keys_are_uniform_over_the_components_of_their_region(region_case, region):
    """nnU-Net keys region datasets' class_locations by label tuple; each region draws its own components."""
    seg, regions, stock, region_ids, table = region_case
    key = tuple(regions[region])
    groups = region_groups([(1, 2), 2])  # dataset.json may name a one-label region by the bare label
    balanced = balanced_class_locations({key: stock[key]}, table, 0.0, groups)
    assert isinstance(balanced[key], InstanceBalancedLocations)
    freq = centred_instance_frequencies(balanced, region_ids[region], seed=3)
    assert np.allclose(freq, 1 / len(freq), atol=0.015), freq
