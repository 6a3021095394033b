"""Batches per second of the blob trainers' training loader vs nnU-Net's stock loader (same plans, same data).

Loading and augmentation run in this process (nnUNet_n_proc_DA=0), so the figure is the per-batch cost without
worker-pool effects. A synthetic dataset with ~300 instances per case. Prints each loader's batches per second, its
ratio to stock and instance sampling's ratio to the same loader without it. Instance sampling is measured twice: with
exponent 0 (its patches are centred elsewhere, e.g. more often near the border, which changes the cost of nnU-Net's
own cropping and augmentation) and with exponent 1 (the voxel-uniform distribution of patches without it: only the
machinery's own cost). The CC-DiceCE trainer's loader computes the Voronoi cells of every deep-supervision scale's
target at the end of the pipeline (in nnU-Net's augmentation workers when it has them).

    python benchmarks/bench_dataloader.py [--cases 8] [--shape 96 96 96] [--batches 10] [--rounds 21]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from _workspace import plan, timed, workspace


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--blobs", type=int, nargs=2, default=[280, 330])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=21)
    args = parser.parse_args()

    root = workspace("nnunet_blob_bench_loader_")
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_blob.nnunet_internals import trainer_plans
    from nnunet_blob.synthetic import make_dataset
    from nnunet_blob.trainers.variants import (
        nnUNetTrainerBlobDice,
        nnUNetTrainerBlobDice_instSampling,
        nnUNetTrainerCCDiceCE,
    )

    make_dataset(root / "raw", 702, "BenchLoader", num_train=args.cases, shape=args.shape,
                 small_objects=tuple(args.blobs))
    plan(702, 2)
    timed("nnUNetv2_preprocess", "-d", 702, "-c", "3d_fullres", "-np", 2)
    timed("nnunet_blob", "preprocess", "-d", 702, "-c", "3d_fullres", "-np", 2)
    os.environ["nnUNet_n_proc_DA"] = "0"  # after planning: nnU-Net's planner cannot run with 0
    base = root / "preprocessed" / "Dataset702_BenchLoader"
    plans, dataset_json = json.loads((base / "nnUNetPlans.json").read_text()), json.loads(
        (base / "dataset.json").read_text())
    plans = trainer_plans(plans)
    manifest = json.loads((base / "nnUNetPlans_3d_fullres_instances" / "manifest.json").read_text())
    instances = [r["num_instances"] for r in manifest["cases"].values()]

    class InstSamplingVoxelUniform(nnUNetTrainerBlobDice_instSampling):
        """The sampling machinery with exponent 1: nnU-Net's voxel-uniform draws, so only its cost differs."""
        instance_sampling_exponent = 1.0

    loaders = {}
    for trainer_class in (nnUNetTrainer, nnUNetTrainerBlobDice, nnUNetTrainerBlobDice_instSampling,
                          InstSamplingVoxelUniform, nnUNetTrainerCCDiceCE):
        trainer = trainer_class(dict(plans), "3d_fullres", 0, dataset_json, torch.device("cpu"))
        trainer.initialize()
        loaders[trainer_class.__name__] = trainer.get_dataloaders()[0]
    times = {name: [] for name in loaders}
    for round_index in range(args.rounds):
        for name, loader in loaders.items():
            np.random.seed(round_index)  # nnU-Net draws patches and augmentation parameters with np.random
            torch.manual_seed(round_index)
            start = time.perf_counter()
            for _ in range(args.batches):
                next(loader)
            times[name].append(args.batches / (time.perf_counter() - start))
    rate = {name: statistics.median(t) for name, t in times.items()}
    print(f"# bench_dataloader: {args.cases} cases of {tuple(args.shape)}, {min(instances)}-{max(instances)} "
          f"instances per case, patch {plans['configurations']['3d_fullres']['patch_size']}, batch "
          f"{plans['configurations']['3d_fullres']['batch_size']}, single process, median of {args.rounds} rounds "
          f"of {args.batches} batches")
    print("| loader | batches/s | ratio to stock |")
    print("|---|---|---|")
    for name, r in rate.items():
        print(f"| {name} | {r:.2f} | {r / rate['nnUNetTrainer']:.2f}x |")
    without = rate["nnUNetTrainerBlobDice"]
    print(f"instance sampling vs the same loader without it: exponent 0 (uniform over instances) "
          f"{rate['nnUNetTrainerBlobDice_instSampling'] / without:.2f}x, exponent 1 (nnU-Net's voxel-uniform "
          f"distribution: only the machinery's cost) {rate['InstSamplingVoxelUniform'] / without:.2f}x")


if __name__ == "__main__":
    main()
