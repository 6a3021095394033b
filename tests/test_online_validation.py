"""The trainers' validation step: nnU-Net's pseudo Dice unchanged, and online detection counts that equal a literal
count from the definition (a reference instance is detected when the prediction overlaps it by >= 1 voxel, a
predicted connected component is correct when it overlaps the reference)."""
from __future__ import annotations

import itertools
from collections import deque

import numpy as np
import pytest
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from helpers import build_trainer
from nnunet_blob.nnunet_internals import deep_supervision_scales
from nnunet_blob.trainers.instance_transforms import make_instance_aware, unpack_instances
from nnunet_blob.trainers.online_detection import patch_detection_counts
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice

# ---- a literal reference, written from the definitions -----------------------------------------------------------


def literal_components(mask: np.ndarray, connectivity: int) -> list[set]:
    """Connected components of a 2D or 3D boolean mask by breadth-first search; each a set of voxel tuples.
    Neighbours differ by at most 1 along each axis in at most 1 (6 / 4), 2 (18 / 8 in 2D) or 3 (26) axes."""
    reach = {6: 1, 18: 2, 26: 3}[connectivity]
    steps = [d for d in itertools.product((-1, 0, 1), repeat=mask.ndim) if 0 < sum(map(abs, d)) <= reach]
    seen, components = set(), []
    for start in zip(*np.nonzero(mask), strict=True):
        start = tuple(int(i) for i in start)
        if start in seen:
            continue
        seen.add(start)
        component, queue = set(), deque([start])
        while queue:
            voxel = queue.popleft()
            component.add(voxel)
            for step in steps:
                n = tuple(v + s for v, s in zip(voxel, step, strict=True))
                if all(0 <= i < s for i, s in zip(n, mask.shape, strict=True)) and mask[n] and n not in seen:
                    seen.add(n)
                    queue.append(n)
        components.append(component)
    return components


def literal_counts(pred: np.ndarray, ref: np.ndarray, ids: np.ndarray, connectivity: int) -> list[int]:
    """[reference instances, detected ones, predicted components, correct ones] of one class or region."""
    ref_ids = {int(i) for i in np.unique(ids[ref]) if i > 0}
    detected = {i for i in ref_ids if np.any(pred[ref & (ids == i)])}
    components = literal_components(pred, connectivity)
    correct = [c for c in components if any(ref[v] for v in c)]
    return [len(ref_ids), len(detected), len(components), len(correct)]


def literal_batch_counts(pred, target, instances, num_rows, regions, ignore_label, connectivity) -> np.ndarray:
    rows = np.zeros((num_rows, 4), dtype=np.int64)
    for b in range(pred.shape[0]):
        for r in range(num_rows):
            if regions:
                valid = np.ones(pred.shape[2:], bool) if ignore_label is None else ~target[b, -1].astype(bool)
                p, ref, ids = pred[b, r].astype(bool) & valid, target[b, r].astype(bool) & valid, instances[b, r]
            else:
                valid = np.ones(pred.shape[2:], bool) if ignore_label is None else target[b, 0] != ignore_label
                p, ref, ids = (pred[b, 0] == r + 1) & valid, (target[b, 0] == r + 1) & valid, instances[b, 0]
            rows[r] += literal_counts(p, ref, ids, connectivity)
    return rows


# ---- a hand-made batch --------------------------------------------------------------------------------------------


def box(array, lo, hi, value):
    array[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = value


def hand_made_label_batch():
    """Two 12^3 patches, classes 1 and 2, ignore label 3, instance ids 1..n per patch."""
    shape = (2, 1, 12, 12, 12)
    target, ids, pred = (np.zeros(shape, np.int16) for _ in range(3))
    t, i, p = target[0, 0], ids[0, 0], pred[0, 0]
    box(t, (0, 0, 0), (3, 3, 3), 1), box(i, (0, 0, 0), (3, 3, 3), 1), box(p, (1, 1, 1), (2, 2, 2), 1)  # found
    box(t, (0, 6, 0), (2, 8, 2), 1), box(i, (0, 6, 0), (2, 8, 2), 2)  # missed
    box(t, (5, 0, 0), (6, 6, 1), 1), box(i, (5, 0, 0), (6, 6, 1), 3)  # split into two predicted blobs
    box(p, (5, 0, 0), (6, 2, 1), 1), box(p, (5, 4, 0), (6, 6, 1), 1)
    box(t, (8, 8, 8), (9, 9, 9), 2), box(i, (8, 8, 8), (9, 9, 9), 4)  # two class-2 lesions merged by one blob
    box(t, (8, 10, 8), (9, 11, 9), 2), box(i, (8, 10, 8), (9, 11, 9), 5)
    box(p, (8, 8, 8), (9, 11, 9), 2)
    box(p, (10, 6, 0), (11, 7, 1), 2), box(p, (11, 7, 1), (12, 8, 2), 2)  # false positive, touching diagonally
    box(t, (0, 10, 10), (2, 12, 12), 2), box(i, (0, 10, 10), (2, 12, 12), 6)  # class 2 predicted as class 1
    box(p, (0, 10, 10), (1, 11, 11), 1)
    box(target[0, 0], (3, 0, 9), (12, 3, 12), 3)  # ignored slab: the prediction there counts for nothing
    box(pred[0, 0], (6, 0, 10), (7, 1, 11), 1)
    t, i, p = target[1, 0], ids[1, 0], pred[1, 0]
    box(t, (2, 2, 2), (10, 10, 10), 1), box(i, (2, 2, 2), (10, 10, 10), 7)  # one large lesion, half found
    box(p, (2, 2, 2), (5, 5, 5), 1)
    return pred, target, ids


def hand_made_region_batch(ignore: bool):
    """Two 12^3 patches of two nested regions (+ the ignore channel), instances per region."""
    pred, target, _ = hand_made_label_batch()
    regions = np.stack([(target[:, 0] >= 1) & (target[:, 0] <= 2), target[:, 0] == 2], 1)
    predicted = np.stack([pred[:, 0] >= 1, pred[:, 0] == 2], 1).astype(np.uint8)
    ids = np.zeros(regions.shape, np.int16)
    for b, r in itertools.product(range(2), range(2)):
        for n, component in enumerate(literal_components(regions[b, r], 26), start=1):
            for v in component:
                ids[(b, r, *v)] = n
    if ignore:
        regions = np.concatenate([regions, (target == 3)], 1)
    return predicted, regions, ids


@pytest.mark.parametrize("connectivity", [26, 6])
@pytest.mark.parametrize("ignore", [None, 3])
def test_label_counts_equal_a_literal_count(connectivity, ignore):
    pred, target, ids = hand_made_label_batch()
    if ignore is None:
        target = np.where(target == 3, 0, target)
    counts = patch_detection_counts(pred.astype(np.uint8), target, ids, 2, False, ignore, connectivity)
    expected = literal_batch_counts(pred, target, ids, 2, False, ignore, connectivity)
    assert np.array_equal(counts, expected), (counts, expected)
    if ignore and connectivity == 26:  # the hand-made cases, read off the picture
        assert counts.tolist() == [[4, 3, 5, 4], [3, 2, 2, 1]]


@pytest.mark.parametrize("ignore", [False, True])
def test_region_counts_equal_a_literal_count(ignore):
    pred, target, ids = hand_made_region_batch(ignore)
    counts = patch_detection_counts(pred, target, ids, 2, True, True if ignore else None, 26)
    expected = literal_batch_counts(pred, target, ids, 2, True, True if ignore else None, 26)
    assert np.array_equal(counts, expected), (counts, expected)


def test_2d_patches_count_with_the_2d_neighbourhood():
    pred, target, ids = (a[:, :, 0] for a in hand_made_label_batch())  # (2, 1, 12, 12)
    for connectivity in (26, 6):  # 8 and 4 in 2D
        counts = patch_detection_counts(pred.astype(np.uint8), target, ids, 2, False, 3, connectivity)
        assert np.array_equal(counts, literal_batch_counts(pred, target, ids, 2, False, 3, connectivity))


# ---- the trainer's validation step ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)


def packed_batch(trainer, seed: int = 0) -> dict:
    """A hand-made batch packed by the trainer's own validation pipeline: a few lesions per patch."""
    rng = np.random.default_rng(seed)
    patch = tuple(trainer.configuration_manager.patch_size)
    pipeline = make_instance_aware(nnUNetTrainer.get_validation_transforms(deep_supervision_scales(trainer)))
    images, targets = [], []
    for _ in range(trainer.batch_size):
        seg = np.zeros(patch, np.int16)
        for _ in range(8):
            lo = rng.integers(0, np.array(patch) - 4)
            box(seg, lo, lo + rng.integers(1, 4, 3), 1)
        ids = np.zeros(patch, np.int16)  # the instances: connected components of the lesions
        for n, component in enumerate(literal_components(seg > 0, 26), start=1):
            ids[tuple(np.array(sorted(component)).T)] = n
        image = torch.from_numpy(rng.normal(size=(1, *patch)).astype(np.float32) + 2 * seg)
        out = pipeline(image=image, segmentation=torch.from_numpy(np.stack([seg, ids])))
        images.append(out["image"])
        targets.append(out["segmentation"])
    scales = range(len(targets[0]))
    return {"data": torch.stack(images), "target": [torch.stack([t[s] for t in targets]) for s in scales]}


def test_validation_step_counts_equal_a_literal_count(blobs):
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    trainer.network.eval()
    batch = packed_batch(trainer)
    with torch.no_grad():
        result = trainer.validation_step(batch)
        output = trainer.network(batch["data"])[0]
    counts = result["instance_counts"].result()
    target, instances = unpack_instances(batch["target"][0], 1)
    expected = literal_batch_counts(output.argmax(1, keepdim=True).numpy(), target.numpy(), instances.numpy(), 1,
                                    False, None, trainer.online_connectivity)
    assert np.array_equal(counts, expected)
    assert expected[0, 0] > 0 and expected[0, 2] > 0  # lesions and predicted components on both sides


@pytest.mark.parametrize("dataset", ["labels", "ignore label", "regions"])
def test_pseudo_dice_equals_stock_validation_step(preprocessed, monkeypatch, dataset):
    """Same network, same real validation batch: our step's loss target is packed, its pseudo Dice nnU-Net's."""
    name = {"labels": lambda: preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2),
            "ignore label": lambda: preprocessed(602, num_train=5, num_classes=2, ignore_label=True, name="Ignore"),
            "regions": lambda: preprocessed(603, num_train=5, num_classes=2, regions=True, name="Regions")}[dataset]()
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")  # the loader in this process (after nnU-Net's preprocessing)
    ours = build_trainer(nnUNetTrainerBlobDice, name)
    stock = build_trainer(nnUNetTrainer, name)
    stock.network.load_state_dict(ours.network.state_dict())
    _, val_loader = ours.get_dataloaders()
    batch = next(val_loader)
    regions = ours.label_manager.has_regions
    plain, _ = unpack_instances(batch["target"], ours.num_instance_channels, as_bool=regions)
    for trainer in (ours, stock):
        trainer.network.eval()
    with torch.no_grad():
        expected = stock.validation_step({"data": batch["data"], "target": [t.clone() for t in plain]})
        result = ours.validation_step(batch)
    result["instance_counts"].result()
    for key in ("tp_hard", "fp_hard", "fn_hard"):
        assert np.array_equal(result[key], expected[key]), key
    assert result["tp_hard"].sum() + result["fp_hard"].sum() > 0
