"""Forward + backward time of the nnunet_blob losses against nnU-Net's own, measured in the same run.

For a (B, C, S, S, S) patch with 1, 10, 100, 1000 instances it prints the best time (over interleaved rounds) of
- nnU-Net's MemoryEfficientSoftDiceLoss and DC_and_CE_loss (the references),
- blob dice, blob tversky (the blob term alone, softmax included), TopK-Dice, CE + TopK-Dice, the CC-DiceCE term
  (its Voronoi cells are computed beforehand, as the trainers' data loader does),
- a loop-over-instances blob dice baseline (one full-volume mask per instance, like the public reference code)
  at <= 100 instances,
and the ratios (best of several interleaved rounds), so that the cost per instance count, and its growth from 1 to
1000 instances, can be read against nnU-Net's Dice.

Targets and instance maps are int16, as the trainers' loader delivers them. ``--path device`` runs the
accelerator's algorithm on any device (every voxel kept and masked, no host synchronisation); ``--path host`` (the
CPU's default) first drops the voxels that cannot contribute.

    python benchmarks/bench_losses.py [--size 128] [--batch 2] [--classes 2] [--repeats 5] [--path host|device]
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.helpers import softmax_helper_dim1

from nnunet_blob.instances.voronoi import voronoi_cells
from nnunet_blob.losses import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss, topk_dice_loss


def make_batch(batch, classes, size, num_instances, seed=0):
    """One large object plus ``num_instances - 1`` small cubes per sample, classes drawn at random."""
    rng = np.random.default_rng(seed)
    target = np.zeros((batch, 1, size, size, size), dtype=np.int16)
    instances = np.zeros_like(target)
    for b in range(batch):
        half = size // 4
        target[b, 0, :half, :half, :half], instances[b, 0, :half, :half, :half] = 1, 1
        for n in range(2, num_instances + 1):
            lo = rng.integers(half + 1, size - 4, size=3)
            w = rng.integers(1, 4, size=3)
            box = (b, 0) + tuple(slice(a, a + d) for a, d in zip(lo, w, strict=True))
            target[box], instances[box] = rng.integers(1, classes), n
    return torch.from_numpy(target), torch.from_numpy(instances)


def loop_blob_dice(logits, target, instances, smooth=1e-5):
    """The public reference's approach: one masked copy of the volume per instance."""
    probs = torch.softmax(logits.float(), 1)
    sample_losses = []
    for b in range(logits.shape[0]):
        class_losses = []
        for c in range(1, logits.shape[1]):
            labelled = target[b, 0] == c
            ids = torch.unique(instances[b, 0][labelled])
            ids = ids[ids > 0]
            losses = []
            for n in ids:
                instance = labelled & (instances[b, 0] == n)
                domain = ~(labelled & ~instance)
                p = probs[b, c] * domain
                g = instance.float()
                losses.append(1 - (2 * (p * g).sum() + smooth) / (g.sum() + p.sum() + smooth))
            if losses:
                class_losses.append(torch.stack(losses).mean())
        if class_losses:
            sample_losses.append(torch.stack(class_losses).mean())
    return torch.stack(sample_losses).mean()


def time_fwd_bwd(fn, logits):
    x = logits.detach().clone().requires_grad_(True)
    if logits.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn(x).backward()
    if logits.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def interleaved_best(candidates: dict, logits, repeats: int) -> dict:
    """Best fwd+bwd time of each candidate over rounds timed round-robin (one warm-up round).

    Round-robin makes drift hit all candidates alike; the minimum is the least disturbed run (at ~30 ms per call
    on a shared 2-core machine, page faults and other processes dominate the spread).
    """
    times = {name: [] for name in candidates}
    for round_index in range(repeats + 1):
        for name, fn in candidates.items():
            elapsed = time_fwd_bwd(fn, logits)
            if round_index:
                times[name].append(elapsed)
    return {name: min(t) for name, t in times.items()}


def timed_losses(losses: dict, target, instances, cells, with_loop: bool) -> dict:
    """The timed functions of the logits, each bound to this batch's target, instance map and Voronoi cells."""
    candidates = {
        "dice": lambda x: losses["dice"](x, target),
        "dc_ce": lambda x: losses["dc_ce"](x, target),
        "blob": lambda x: losses["blob"].blob_term(x, target, instances),
        "tversky": lambda x: losses["tversky"].blob_term(x, target, instances),
        "topk": lambda x: topk_dice_loss(torch.softmax(x, 1), target, 50),
        "ce_topk": lambda x: losses["ce_topk"](x, target),
        "cc": lambda x: losses["cc"].instance_term(x, target, cells),
    }
    if with_loop:
        candidates["loop"] = lambda x: loop_blob_dice(x, target, instances)
    return candidates


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=2, help="channels including background")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--loop-max", type=int, default=100, help="largest instance count for the loop baseline")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--path", choices=["host", "device"], default=None,
                        help="entry path of the losses (default: the device's own; see nnunet_blob.losses._common)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.path is not None:
        import nnunet_blob.losses._common as common

        common.COMPACT_ON_HOST = args.path == "host"

    dice_kwargs = {"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}
    losses = {"dice": MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, **dice_kwargs),
              "dc_ce": DC_and_CE_loss(dice_kwargs, {}, dice_class=MemoryEfficientSoftDiceLoss),
              "blob": BlobCompoundLoss(None, 0, 1, "dice"), "tversky": BlobCompoundLoss(None, 0, 1, "tversky"),
              "ce_topk": TopKDiceAndCELoss(k=50), "cc": CCDiceCELoss(None, 0, 1)}

    shape = (args.batch, args.classes, args.size, args.size, args.size)
    print(f"# bench_losses: patch {shape}, device {device}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats} interleaved fwd+bwd rounds, loss path {args.path or 'default'}")
    header = ("instances", "MemEffDice s", "DC_and_CE s", "blob dice", "blob tversky", "TopK-Dice", "CE+TopK-Dice",
              "CC-DiceCE term", "loop blob dice")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    first = {}
    for index, count in enumerate(args.counts):
        target, instances = (t.to(device) for t in make_batch(args.batch, args.classes, args.size, count))
        cells = voronoi_cells(target, args.classes).to(torch.int16)  # computed by the data loader in training
        candidates = timed_losses(losses, target, instances, cells, with_loop=count <= args.loop_max)
        if index == 0:  # the process's first rounds run slower (allocator and thread pool warming up): discard
            interleaved_best(candidates, logits, args.repeats)
        t = interleaved_best(candidates, logits, args.repeats)
        ref, ref_ce = t["dice"], t["dc_ce"]
        loop = f"{t['loop'] / ref:.2f}x ({t['loop']:.3f} s)" if "loop" in t else "-"
        last = {name: t[name] for name in ("blob", "tversky", "cc")}
        for name, seconds in last.items():
            first.setdefault(name, seconds)
        print(f"| {count} | {ref:.3f} | {ref_ce:.3f} | {t['blob'] / ref:.2f}x | {t['tversky'] / ref:.2f}x "
              f"| {t['topk'] / ref:.2f}x | {t['ce_topk'] / ref_ce:.2f}x of DC_and_CE | {t['cc'] / ref:.2f}x | {loop} |",
              flush=True)
    print(f"growth of the blob-dice time from {args.counts[0]} to {args.counts[-1]} instances: "
          f"{last['blob'] / first['blob']:.2f}x; blob tversky: {last['tversky'] / first['tversky']:.2f}x; CC-DiceCE "
          f"term: {last['cc'] / first['cc']:.2f}x")


if __name__ == "__main__":
    main()
