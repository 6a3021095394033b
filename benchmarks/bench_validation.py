"""A validation epoch of stock nnUNetTrainer vs nnUNetTrainerBlobDice (its online instance F1 included).

Both trainers are built from the same nnU-Net-style 3d_fullres plans, get the same network weights and the same
validation batches (the blob trainer's carry the instance maps, packed by the same pipeline its loader uses), and
run nnU-Net's validation epoch: ``on_validation_epoch_start``, ``validation_step`` per batch,
``on_validation_epoch_end`` (which, for the blob trainer, collects the detection counts scored in a background
thread). A third candidate is the blob trainer with the online score left out (its scorer returns zeros at once),
so that what the online instance F1 adds is told apart from what the blob loss adds to the
validation loss. Prints the median epoch time over interleaved rounds, the ratios, and the per-step cost of the
host part alone (connected components and counts of one batch), which is what the online score would add per step
on a GPU if it did not overlap the next forward pass.

    python benchmarks/bench_validation.py [--patch 64] [--batch 2] [--stages 5] [--instances 100] [--steps 5]
"""
from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import Future

from _workspace import workspace

# nnU-Net reads its folders at import time: point them at a scratch workspace first
_WORKSPACE = workspace("nnunet_blob_bench_validation_")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from _bench_trainers import add_shape_arguments, build, make_batch, make_plans, placeholder_dataset  # noqa: E402

WITHOUT = "nnUNetTrainerBlobDice without online F1"


def validation_epoch(trainer, batches, device) -> float:
    """Seconds of one validation epoch as nnU-Net's ``run_training`` runs it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        trainer.on_validation_epoch_start()
        outputs = [trainer.validation_step(batch) for batch in batches]
        trainer.on_validation_epoch_end(outputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def candidate_trainers(plans: dict, device) -> dict:
    """The three candidates, built from ``plans`` with the same network weights."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice

    class BlobDice(nnUNetTrainerBlobDice):
        online_connectivity = 26  # the maps' connectivity; this benchmark makes its batches without maps

    class NoScore:
        def __init__(self, rows: int):
            self.rows = rows

        def submit(self, *arrays) -> Future:
            done: Future = Future()
            done.set_result(np.zeros((self.rows, 4), dtype=np.int64))
            return done

    class BlobDiceWithoutOnlineScore(BlobDice):
        def _online_scorer(self):
            return NoScore(1)

    trainers = {"nnUNetTrainer": build(nnUNetTrainer, plans, device),
                "nnUNetTrainerBlobDice": build(BlobDice, plans, device),
                WITHOUT: build(BlobDiceWithoutOnlineScore, plans, device)}
    for name in ("nnUNetTrainerBlobDice", WITHOUT):
        trainers[name].network.load_state_dict(trainers["nnUNetTrainer"].network.state_dict())
    return trainers


def validation_batches(trainers: dict, args: argparse.Namespace) -> dict:
    """``args.steps`` batches per candidate: the same images, the stock target or the packed one."""
    batches: dict = {name: [] for name in trainers}
    for seed in range(args.steps):
        data, stock_target, packed_target, _ = make_batch(trainers["nnUNetTrainer"], args.batch, args.patch,
                                                          args.instances, seed)
        batches["nnUNetTrainer"].append({"data": data, "target": stock_target})
        batches["nnUNetTrainerBlobDice"].append({"data": data, "target": packed_target})
        batches[WITHOUT].append({"data": data, "target": packed_target})
    return batches


def interleaved_epochs(trainers: dict, batches: dict, rounds: int, device) -> dict:
    """Seconds of each candidate's validation epochs over ``rounds`` rounds (after one warm-up round), the order
    rotated each round."""
    times: dict = {name: [] for name in trainers}
    names = list(trainers)
    for round_index in range(rounds + 1):
        for name in names[round_index % 3:] + names[:round_index % 3]:  # rotate the order
            trainers[name].current_epoch = round_index  # one logged value per epoch, as in training
            seconds = validation_epoch(trainers[name], batches[name], device)
            if round_index:  # round 0 warms up
                times[name].append(seconds)
    return times


def host_part_seconds(blob, batches: list, device) -> list[float]:
    """Seconds of the host part alone per batch: components and counts of the batch's uint8 prediction."""
    from nnunet_blob.trainers.instance_transforms import unpack_instances
    from nnunet_blob.trainers.online_detection import labels_to_host, patch_detection_counts, predicted_labels

    host = []
    scorer = blob._online_scorer()
    with torch.no_grad():
        for batch in batches:
            output = blob.network(batch["data"].to(device))[0]
            labels = labels_to_host(predicted_labels(output, False), output.shape[1])
            reference, instances = unpack_instances(batch["target"][0], 1)
            start = time.perf_counter()
            patch_detection_counts(labels, reference.numpy(), instances.numpy(), **scorer.options)
            host.append(time.perf_counter() - start)
    return host


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shape_arguments(parser)
    parser.add_argument("--steps", type=int, default=5, help="validation steps per epoch (distinct batches)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    placeholder_dataset()
    trainers = candidate_trainers(make_plans(args.patch, args.stages, args.batch, args.features), device)
    batches = validation_batches(trainers, args)
    times = interleaved_epochs(trainers, batches, args.rounds, device)
    host = host_part_seconds(trainers["nnUNetTrainerBlobDice"], batches["nnUNetTrainerBlobDice"], device)

    median = {name: statistics.median(t) for name, t in times.items()}
    stock = median["nnUNetTrainer"]
    print(f"# bench_validation: patch {args.patch}^3, batch {args.batch}, {args.stages} stages, {args.instances} "
          f"instances per sample, {args.steps} steps per epoch, device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} interleaved rounds")
    print("| trainer | validation epoch s | per step s | ratio to nnUNetTrainer |")
    print("|---|---|---|---|")
    for name, value in median.items():
        print(f"| {name} | {value:.3f} | {value / args.steps:.4f} | {value / stock:.3f}x |")
    print(f"the online instance F1 adds {median['nnUNetTrainerBlobDice'] / median[WITHOUT] - 1:+.1%} to the blob "
          f"trainer's validation epoch")
    print(f"host part alone (components + counts of one batch): {statistics.median(host) * 1000:.1f} ms per step "
          f"({statistics.median(host) / (stock / args.steps):.1%} of a stock step here)")


if __name__ == "__main__":
    main()
