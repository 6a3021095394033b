"""Losses under torch.distributed (gloo, 2 CPU processes): the blob term equals the single-process mean over the
batch; batch TopK-Dice adds its sums over the workers (each selecting within its own share)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_blob.losses import BlobCompoundLoss, topk_dice_loss
from reference_losses import literal_topk_batch_dice_across_workers
from test_blob_loss import random_instance_batch

WORLD = 2


def batch():
    # 4 samples; rank 0 gets samples 0-1 (both with instances), rank 1 samples 2-3 (one empty): the per-rank
    # means differ from the global mean unless the reduction spans the workers
    target, instances = random_instance_batch((4, 8, 8, 8), 3, [6, 3, 5, 0], seed=21)
    logits = torch.randn(4, 3, 8, 8, 8, generator=torch.Generator().manual_seed(22), dtype=torch.float64)
    return logits, target, instances


def _worker(rank, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        logits, target, instances = batch()
        part = slice(2 * rank, 2 * rank + 2)
        x = logits[part].clone().requires_grad_(True)
        value = BlobCompoundLoss(None, 0, 1, "dice", ddp=True).blob_term(x, target[part], instances[part])
        value.backward()
        results["blob", rank] = (value.detach(), x.grad / WORLD)  # DDP averages gradients over the workers
        x = logits[part].clone().requires_grad_(True)
        value = topk_dice_loss(torch.softmax(x, 1), target[part], 30.0, batch_dice=True, ddp=True)
        value.backward()
        results["topk", rank] = (value.detach(), x.grad / WORLD)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def workers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(port, results), nprocs=WORLD, join=True)
    return dict(results)


def assert_matches(workers, name, reference, x):
    reference.backward()
    for rank in range(WORLD):  # every worker computes the same loss
        torch.testing.assert_close(workers[name, rank][0], reference.detach())
    torch.testing.assert_close(torch.cat([workers[name, r][1] for r in range(WORLD)]), x.grad)


def test_blob_term_is_exact_across_gloo_workers(workers):
    logits, target, instances = batch()
    x = logits.clone().requires_grad_(True)
    reference = BlobCompoundLoss(None, 0, 1, "dice").blob_term(x, target, instances)
    reference.backward()
    mean_of_workers = sum(workers["blob", r][0] for r in range(WORLD)) / WORLD
    torch.testing.assert_close(mean_of_workers, reference.detach())
    torch.testing.assert_close(torch.cat([workers["blob", r][1] for r in range(WORLD)]), x.grad)


def test_batch_topk_dice_adds_its_sums_over_gloo_workers(workers):
    logits, target, _ = batch()
    x = logits.clone().requires_grad_(True)
    reference = literal_topk_batch_dice_across_workers(torch.softmax(x, 1), target, 30.0, WORLD)
    assert_matches(workers, "topk", reference, x)
    alone = topk_dice_loss(torch.softmax(logits[:2], 1), target[:2], 30.0, batch_dice=True)
    assert not torch.isclose(alone, reference.detach())  # the workers' shares really differ
