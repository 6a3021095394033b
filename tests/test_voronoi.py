"""Voronoi cells of components against a literal nearest-component search (exact Euclidean, with spacing)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nnunet_blob.instances.detection import label_components
from nnunet_blob.instances.voronoi import class_cells, component_cells, voronoi_cells


def literal_nearest_components(components: np.ndarray, spacing) -> list[set[int]]:
    """For every voxel (C order), the set of components at the smallest Euclidean distance (all of them on ties)."""
    spacing = np.ones(components.ndim) if spacing is None else np.asarray(spacing, float)
    voxels = np.argwhere(components > 0)
    ids = components[components > 0]
    nearest = []
    for v in np.ndindex(*components.shape):
        d2 = (((voxels - np.array(v)) * spacing) ** 2).sum(1)
        nearest.append(set(ids[d2 == d2.min()].tolist()))
    return nearest


def assert_cells_are_nearest(components, spacing=None):
    cells = component_cells(components, spacing)
    nearest = literal_nearest_components(components, spacing)
    assert all(int(c) in n for c, n in zip(cells.ravel(), nearest, strict=True))
    assert np.array_equal(cells[components > 0], components[components > 0])  # a component lies in its own cell
    return cells, nearest


def test_two_components_split_the_line_at_the_bisector():
    components = np.array([[1, 0, 0, 0, 0, 0, 2]])
    cells, nearest = assert_cells_are_nearest(components)
    assert cells.tolist() == [[1, 1, 1, cells[0, 3], 2, 2, 2]] and nearest[3] == {1, 2}  # the middle voxel is a tie


def test_spacing_moves_the_boundary():
    components = np.zeros((5, 5), dtype=np.int32)
    components[0, 0], components[4, 4] = 1, 2
    assert_cells_are_nearest(components, spacing=(3.0, 1.0))
    near_axis0 = component_cells(components, spacing=(3.0, 1.0))
    assert near_axis0[2, 4] == 2 and near_axis0[2, 0] == 1


def test_no_component_gives_zeros():
    assert not component_cells(np.zeros((4, 4, 4), np.int32)).any()


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from([(6, 7), (4, 5, 6), (3, 3, 8)]), density=st.floats(0.02, 0.3),
       seed=st.integers(0, 10_000), anisotropic=st.booleans())
def test_random_components_every_voxel_in_a_nearest_cell(shape, density, seed, anisotropic):
    rng = np.random.default_rng(seed)
    components, n = label_components(rng.random(shape) < density, 26)
    spacing = tuple(rng.choice([0.5, 1.0, 2.5], size=len(shape))) if anisotropic else None
    if n:
        assert_cells_are_nearest(components, spacing)


def test_class_cells_per_class_and_ignore_label():
    seg = np.zeros((1, 12), dtype=np.int64)
    seg[0, [0, 6]] = 1
    seg[0, 11] = 2
    seg[0, 3] = 3  # ignore label: no component
    cells = class_cells(seg, classes=(1, 2, 3), ignore_label=3)
    row = cells[0, 0].tolist()
    assert row[:3] == [1, 1, 1] and row[3] in (1, 2) and row[4:] == [2] * 8  # voxel 3 is equidistant (a tie)
    assert (cells[1] == 1).all() and not cells[2].any()


def test_voronoi_cells_tensor_shape_and_device():
    target = torch.zeros(2, 1, 6, 6, 6, dtype=torch.int16)
    target[0, 0, 0, 0, 0] = 1
    target[0, 0, 5, 5, 5] = 2
    target[1, 0, 2:4, 2:4, 2:4] = 2
    cells = voronoi_cells(target, 3)
    assert cells.shape == (2, 2, 6, 6, 6) and cells.dtype == torch.int32
    assert (cells[0, 0] == 1).all() and (cells[0, 1] == 1).all() and not cells[1, 0].any() and (cells[1, 1] == 1).all()
    with pytest.raises(ValueError, match="shape"):
        voronoi_cells(target[:, 0], 3)
