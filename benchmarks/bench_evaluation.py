"""Cost of the per-case evaluation against the number of lesions: one synthetic case (128^3 voxels by default) with
250 and with 2,000 small lesions, the prediction a perturbed copy with false positives, timed for each set of
options (defaults, one-to-one matching, BraTS lesion-wise, CC-Dice, confidences, all), with the ratio 2,000 / 250
lesions: whether the cost grows with the number of lesions or only with their voxels.

    python benchmarks/bench_evaluation.py [--size 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import ndimage

from nnunet_blob.evaluation.metrics import label_evaluation
from nnunet_blob.evaluation.options import EvaluationOptions

OPTION_SETS = {
    "defaults": EvaluationOptions(),
    "one-to-one": EvaluationOptions(matching="one-to-one"),
    "brats-met": EvaluationOptions(gt_dilation=1, min_lesion_volume_mm3=2.0),
    "cc-dice": EvaluationOptions(cc_dice=True),
    "confidence": EvaluationOptions(confidence=True),
    "all": EvaluationOptions(matching="one-to-one", gt_dilation=1, min_lesion_volume_mm3=2.0, cc_dice=True,
                             confidence=True),
}


def make_case(size: int, n_lesions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ref = np.zeros((size,) * 3, bool)
    centres = rng.integers(3, size - 3, (n_lesions, 3))
    ref[tuple(centres.T)] = True
    ref = ndimage.binary_dilation(ref, iterations=1)  # lesions of 7 voxels, some merged
    pred = np.roll(ref, 1, axis=2) & (rng.random(ref.shape) > 0.1)
    spots = np.zeros_like(ref)
    spots[tuple(rng.integers(0, size, (n_lesions // 5, 3)).T)] = True
    pred |= ndimage.binary_dilation(spots)
    probabilities = np.where(pred, rng.uniform(0.5, 1, ref.shape), rng.uniform(0, 0.5, ref.shape)).astype(np.float32)
    return ref.astype(np.uint8), pred.astype(np.uint8), probabilities


def time_case(ref, pred, probabilities, options: EvaluationOptions, repeats: int) -> float:
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        label_evaluation(ref, pred, 1, (1.0, 1.0, 1.0), None, options,
                         probabilities if options.confidence else None)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cases = {n: make_case(args.size, n) for n in (250, 2000)}
    print(f"{args.size}^3 voxels, best of {args.repeats}; seconds per case and label")
    print("| options | 250 lesions | 2000 lesions | ratio |\n|---|---|---|---|")
    for name, options in OPTION_SETS.items():
        t = {n: time_case(*cases[n], options, args.repeats) for n in cases}
        print(f"| {name} | {t[250]:.3f} | {t[2000]:.3f} | {t[2000] / t[250]:.2f} |")


if __name__ == "__main__":
    main()
