"""The losses under ``torch.compile``: same values and gradients as eager.

On the accelerator's path (every voxel kept, no host synchronisation) each loss compiles into one graph
(``fullgraph=True``); inductor is the backend nnU-Net uses (it needs a C++ compiler on the CPU), ``aot_eager``
checks the traced graph without code generation. On the CPU's default path (inert voxels dropped with
``nonzero``) compilation works with graph breaks.
"""
from __future__ import annotations

import shutil

import pytest
import torch

import nnunet_blob.losses._common as common
from nnunet_blob.losses import (
    BlobCompoundLoss,
    TopKDiceAndCELoss,
    blob_loss,
    blob_loss_regions,
    cc_dice_ce_loss,
    cc_dice_ce_loss_regions,
    topk_dice_loss,
    tversky_loss,
)


def _batch(regions: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, 12, 12, 12)
    logits = torch.randn(*shape, generator=g)
    channels = 3 if regions else 1
    target = torch.randint(0, 2 if regions else 3, (2, channels, *shape[2:]), generator=g).to(torch.int16)
    ids = (torch.randint(1, 40, (2, channels, *shape[2:]), generator=g) * (target > 0)).to(torch.int16)
    mask = torch.rand(2, 1, *shape[2:], generator=g) > 0.2
    return logits, target, ids, mask


def _softmax(x):
    return torch.softmax(x, 1)


CASES = {
    # name: (regions, fn(logits, target, ids, mask) -> scalar)
    "blob dice": (False, lambda x, t, i, m: blob_loss(_softmax(x), t, i)),
    "blob dice, squared, masked": (False, lambda x, t, i, m: blob_loss(_softmax(x), t, i, squared=True, loss_mask=m)),
    "blob tversky, no masking": (False, lambda x, t, i, m: blob_loss(_softmax(x), t, i, "tversky", masking=False)),
    "blob bce": (False, lambda x, t, i, m: blob_loss(_softmax(x), t, i, "bce", loss_mask=m)),
    "blob dice, regions": (True, lambda x, t, i, m: blob_loss_regions(torch.sigmoid(x), t, i, loss_mask=m)),
    "topk dice": (False, lambda x, t, i, m: topk_dice_loss(_softmax(x), t, 30)),
    "topk dice, batch dice, masked": (False, lambda x, t, i, m: topk_dice_loss(_softmax(x), t, 30, batch_dice=True,
                                                                            loss_mask=m)),
    "topk dice, all classes, not squared": (False, lambda x, t, i, m: topk_dice_loss(_softmax(x), t, 10, squared=False,
                                                                                  classes="all")),
    "tversky": (False, lambda x, t, i, m: tversky_loss(_softmax(x), t, loss_mask=m)),
    "cc dice ce, masked": (False, lambda x, t, i, m: cc_dice_ce_loss(_softmax(x), t, i.expand(-1, 2, -1, -1, -1),
                                                                     loss_mask=m)),
    "cc dice ce, regions": (True, lambda x, t, i, m: cc_dice_ce_loss_regions(torch.sigmoid(x), t, i)),
    "BlobCompoundLoss (blob term)": (False, lambda x, t, i, m: BlobCompoundLoss(None, 0, 1).blob_term(x, t, i)),
    "TopKDiceAndCELoss, ignore label": (False, lambda x, t, i, m: TopKDiceAndCELoss(30, ignore_label=2)(x, t)),
}


def _value_and_grad(fn, logits, *args):
    x = logits.clone().requires_grad_(True)
    value = fn(x, *args)
    (grad,) = torch.autograd.grad(value, x)
    return value.detach(), grad


def _check(fn, backend, fullgraph, regions):
    logits, target, ids, mask = _batch(regions)
    torch._dynamo.reset()
    eager = _value_and_grad(fn, logits, target, ids, mask)
    compiled_fn = torch.compile(fn, backend=backend, fullgraph=fullgraph)
    for seed in (0, 1):  # the second batch runs the compiled graph again (no recompilation for the same shapes)
        logits, target, ids, mask = _batch(regions, seed)
        eager = _value_and_grad(fn, logits, target, ids, mask)
        compiled = _value_and_grad(compiled_fn, logits, target, ids, mask)
        torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", list(CASES))
def test_one_graph_on_the_accelerator_path(name, monkeypatch):
    monkeypatch.setattr(common, "COMPACT_ON_HOST", False)
    regions, fn = CASES[name]
    _check(fn, "aot_eager", fullgraph=True, regions=regions)


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor needs a compiler")
@pytest.mark.parametrize("name", ["blob dice", "blob bce", "blob dice, regions", "topk dice, batch dice, masked",
                                  "tversky", "cc dice ce, masked"])
@pytest.mark.parametrize("path", ["device", "host"])
def test_inductor_matches_eager(name, path, monkeypatch):
    monkeypatch.setattr(common, "COMPACT_ON_HOST", path == "host")
    regions, fn = CASES[name]
    _check(fn, "inductor", fullgraph=path == "device", regions=regions)
