"""The loss terms compiled where nnU-Net compiles (:mod:`nnunet_blob.losses.compiled`).

On the accelerator's path (every voxel kept, as on CUDA; ``COMPACT_ON_HOST`` off) each compiled term gives eager's
values and gradients under inductor, traces one graph per deep-supervision scale whatever the number of instances
of a batch (no recompilation after the first batch), and stays eager where a static graph cannot be had. The
trainers' use of it is tested in ``test_compile.py``.
"""
from __future__ import annotations

import shutil

import pytest
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

import nnunet_blob.losses._common as common
from nnunet_blob.losses import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss
from nnunet_blob.losses.compiled import COMPILE_ENV, compile_loss_terms, compiled_terms
from nnunet_blob.trainers.instance_transforms import InstancePacking, PackedInstancesLoss

CLASSES = 3
#: five deep-supervision scales of a 16^3 patch, as nnU-Net's outputs come
SCALES = [(16, 16, 16), (8, 8, 8), (4, 4, 4), (2, 2, 2), (1, 1, 1)]


@pytest.fixture(autouse=True)
def accelerator_path(monkeypatch):
    """What CUDA runs: every voxel kept and masked (the CPU's default drops voxels, whose shapes depend on data)."""
    monkeypatch.setattr(common, "COMPACT_ON_HOST", False)
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _global_term():
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                          dice_class=MemoryEfficientSoftDiceLoss)


#: term name: (maps per target (0: the loss reads no map), the loss on one scale)
TERMS = {
    "blob term": (1, lambda with_global: BlobCompoundLoss(_global_term() if with_global else None,
                                                         2.0 if with_global else 0.0, 1.0, ddp=False)),
    "CC-DiceCE term": (CLASSES - 1, lambda with_global: CCDiceCELoss(_global_term() if with_global else None,
                                                                    1.0 if with_global else 0.0, 1.0, ddp=False)),
    "TopK-Dice + CE": (0, lambda with_global: TopKDiceAndCELoss(30)),
}


def _batch(shape, instances: int, seed: int, maps: int):
    """Logits, int16 labels and ``maps`` int16 id maps with ids in [1, instances] on the foreground voxels."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, CLASSES, *shape, generator=g)
    target = torch.randint(0, CLASSES, (2, 1, *shape), generator=g).to(torch.int16)
    ids = torch.randint(1, instances + 1, (2, max(maps, 1), *shape), generator=g) if instances else \
        torch.zeros(2, max(maps, 1), *shape, dtype=torch.int64)
    return logits, target, (ids * (target > 0)).to(torch.int16)


def _packed(loss: torch.nn.Module, maps: int) -> torch.nn.Module:
    """The per-scale loss as the trainers call it: ``loss(output, target)`` with the maps packed into the target."""
    return PackedInstancesLoss(loss, InstancePacking(maps), regions=False) if maps else loss


def _target(target, ids, maps):
    return torch.cat((target, ids[:, :maps]), 1) if maps else target


def _value_and_grad(loss, logits, target):
    x = [t.clone().requires_grad_(True) for t in logits] if isinstance(logits, list) else \
        logits.clone().requires_grad_(True)
    value = loss(x, target)
    grad = torch.autograd.grad(value, x)
    return value.detach(), torch.cat([g.reshape(-1) for g in grad])


@pytest.mark.parametrize("name", list(TERMS))
def test_one_graph_per_scale_whatever_the_instances(name):
    """nnU-Net's deep supervision over 5 scales, three batches with 0, 5 and 300 instances: the first batch
    traces one graph per scale (no graph break), the later ones compile nothing; the last one's value and gradient
    as eager."""
    maps, make = TERMS[name]
    counter = CompileCounter()
    compiled = DeepSupervisionWrapper(_packed(make(True), maps), [1.0] * len(SCALES))
    eager = DeepSupervisionWrapper(_packed(make(True), maps), [1.0] * len(SCALES))
    assert compile_loss_terms(compiled, True, backend=counter) == [name]
    for step, instances in enumerate((0, 5, 300)):
        batches = [_batch(shape, instances, seed=step * 10 + i, maps=maps) for i, shape in enumerate(SCALES)]
        logits = [b[0] for b in batches]
        targets = [_target(b[1], b[2], maps) for b in batches]
        got = _value_and_grad(compiled, logits, targets)
        assert counter.frame_count == len(SCALES), f"batch {step} ({instances} instances): {counter.frame_count} " \
                                                   f"graphs for {len(SCALES)} scales"
    torch.testing.assert_close(got, _value_and_grad(eager, logits, targets), rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a compiler")
@pytest.mark.parametrize("name", list(TERMS))
def test_inductor_matches_eager(name):
    """nnU-Net's backend: values and gradients of the compiled term equal eager's, for two batches with different
    numbers of instances (the second reuses the first one's graph)."""
    maps, make = TERMS[name]
    counter = CompileCounterWithBackend("inductor")
    compiled, eager = _packed(make(False), maps), _packed(make(False), maps)
    compile_loss_terms(compiled, True, backend=counter)
    for seed, instances in enumerate((3, 40)):
        logits, target, ids = _batch((8, 8, 8), instances, seed, maps)
        value, grad = _value_and_grad(compiled, logits, _target(target, ids, maps))
        want_value, want_grad = _value_and_grad(eager, logits, _target(target, ids, maps))
        torch.testing.assert_close(value, want_value, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5 * float(want_grad.abs().max()))
    assert counter.frame_count == 1


def test_eager_where_no_static_graph_is_had(monkeypatch):
    """Without gradients (validation), on the CPU's compacting path and with wide (int32) ids nothing is traced."""
    maps, make = TERMS["blob term"]
    counter = CompileCounter()
    loss = make(False)
    compile_loss_terms(loss, True, backend=counter)
    logits, target, ids = _batch((4, 4, 4), 5, 0, maps)
    with torch.no_grad():
        loss(logits, target, ids)
    loss(logits.requires_grad_(True), target, ids.to(torch.int32)).backward()
    monkeypatch.setattr(common, "COMPACT_ON_HOST", True)
    loss(logits, target, ids).backward()
    assert counter.frame_count == 0


@pytest.mark.parametrize("switch, enabled, compiled", [(None, True, True), ("t", True, True), ("f", True, False),
                                                      ("0", True, False), (None, False, False)])
def test_switches(monkeypatch, switch, enabled, compiled):
    """nnU-Net's setting (``enabled``) and ours (``nnUNet_blob_compile``) must both be on."""
    if switch is None:
        monkeypatch.delenv(COMPILE_ENV, raising=False)
    else:
        monkeypatch.setenv(COMPILE_ENV, switch)
    loss = DeepSupervisionWrapper(_packed(TERMS["blob term"][1](True), 1), [1.0, 0.5])
    names = compile_loss_terms(loss, enabled, backend=CompileCounter())
    assert names == (["blob term"] if compiled else [])
    assert [term.name for term in compiled_terms(loss)] == names
    assert compile_loss_terms(loss, enabled) == []  # never twice
