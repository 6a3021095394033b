"""One training iteration (forward, loss, backward, optimizer step) of each trainer vs stock nnUNetTrainer.

All trainers are built from the same nnU-Net-style 3d_fullres plans and fed the same batch (the blob trainers
additionally get the batch's instance maps, the CC-DiceCE trainer the Voronoi cells of every scale, packed by the same
pipelines their loaders use). Prints the median ``train_step`` time over interleaved rounds and the ratio to
``nnUNetTrainer``.

    python benchmarks/bench_training_step.py [--patch 64] [--batch 2] [--stages 5] [--instances 100] [--repeats 5]

Default is a CPU-sized network (5 stages, 32 base features); use --patch 128 --stages 6 on a GPU for nnU-Net's
default shape.
"""
from __future__ import annotations

import argparse
import statistics
import time

from _workspace import workspace

# nnU-Net reads its folders at import time: point them at a scratch workspace first
_WORKSPACE = workspace("nnunet_blob_bench_step_")

import torch  # noqa: E402
from _bench_trainers import (  # noqa: E402
    add_shape_arguments,
    build,
    make_batch,
    make_plans,
    placeholder_dataset,
    target_for,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--trainers", nargs="+",
                        default=["nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerTopKDice",
                                 "nnUNetTrainerTversky", "nnUNetTrainerCCDiceCE"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_blob.trainers import variants

    device = torch.device(args.device)
    placeholder_dataset()
    plans = make_plans(args.patch, args.stages, args.batch, args.features)
    trainers = {"nnUNetTrainer": build(nnUNetTrainer, plans, device)}
    for name in args.trainers:
        trainers[name] = build(getattr(variants, name), plans, device)
    data, *targets = make_batch(trainers["nnUNetTrainer"], args.batch, args.patch, args.instances)
    batches = {name: {"data": data, "target": target_for(t, *targets)} for name, t in trainers.items()}

    times = {name: [] for name in trainers}
    names = list(trainers)
    for round_index in range(args.repeats + 1):
        shift = round_index % len(names)  # rotate the order so no trainer always runs first
        for name in names[shift:] + names[:shift]:
            trainer = trainers[name]
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            trainer.train_step(batches[name])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if round_index:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    stock = statistics.median(times["nnUNetTrainer"])
    print(f"# bench_training_step: patch {args.patch}^3, batch {args.batch}, {args.stages} stages, "
          f"{args.instances} instances per sample, device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} interleaved rounds")
    print("| trainer | train_step s | ratio to nnUNetTrainer |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.3f} | {statistics.median(t) / stock:.3f}x |")


if __name__ == "__main__":
    main()
