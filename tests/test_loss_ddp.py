"""The blob term under torch.distributed (gloo, 2 CPU processes) equals the single-process mean over the batch."""
from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_blob.losses import BlobCompoundLoss
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
        results[rank] = (value.detach(), x.grad / WORLD)  # DDP averages gradients over the workers
    finally:
        dist.destroy_process_group()


def test_blob_term_is_exact_across_gloo_workers():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_worker, args=(port, results), nprocs=WORLD, join=True)

    logits, target, instances = batch()
    x = logits.clone().requires_grad_(True)
    reference = BlobCompoundLoss(None, 0, 1, "dice").blob_term(x, target, instances)
    reference.backward()
    mean_of_workers = sum(results[r][0] for r in range(WORLD)) / WORLD
    torch.testing.assert_close(mean_of_workers, reference.detach())
    torch.testing.assert_close(torch.cat([results[r][1] for r in range(WORLD)]), x.grad)
