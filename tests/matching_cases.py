"""The one-to-one matching tests' cases, shared by ``test_lesion_matching.py`` and the script that records
panoptica's results on them (``fixtures/make_panoptica_reference.py``, run in panoptica's own environment: this
module needs only numpy and scipy).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

NAN = float("nan")


def line(mask, x0, x1, z=2, y=2):
    mask[z, y, x0:x1 + 1] = True
    return mask


def empty():
    return np.zeros((5, 8, 12), bool)


# name, reference, prediction, expected (n_matched, RQ, SQ)
HAND_BUILT = [
    ("split lesion: two halves, each IoU 1/3", line(empty(), 0, 5), line(line(empty(), 0, 1), 4, 5), (0, 0.0, 0.0)),
    ("merged lesions: the larger reaches IoU 1/2", line(line(empty(), 0, 2), 4, 5), line(empty(), 0, 5),
     (1, 2 / 3, 0.5)),
    ("IoU 1/4", line(empty(), 0, 3), line(empty(), 2, 7), (0, 0.0, 0.0)),
    ("IoU 4/8 at the threshold is eligible", line(empty(), 0, 5), line(empty(), 2, 7), (1, 1.0, 0.5)),
    ("IoU 4/9 just below", line(empty(), 0, 5), line(empty(), 2, 8), (0, 0.0, 0.0)),
    ("both empty", empty(), empty(), (0, NAN, NAN)),
    ("empty reference", empty(), line(empty(), 0, 2), (0, 0.0, 0.0)),
    ("empty prediction", line(empty(), 0, 2), empty(), (0, 0.0, 0.0)),
]


def random_case(rng, shape=(8, 14, 14), density=0.02):
    """Blobs and their shifted, grown or eroded copies: splits, merges and overlaps of every size."""
    ref = ndimage.binary_dilation(rng.random(shape) > 1 - density, iterations=1)
    pred = np.roll(ref, rng.integers(-1, 2, 3), axis=(0, 1, 2))
    pred = ndimage.binary_dilation(pred) if rng.random() < 0.3 else pred
    pred = pred & (rng.random(shape) > 0.15)
    pred |= rng.random(shape) > 0.995
    return ref, pred


def panoptica_cases():
    """(name, reference, prediction): the hand-built cases with an instance, then 15 random ones."""
    rng = np.random.default_rng(11)
    hand = [(name, ref, pred) for name, ref, pred, _ in HAND_BUILT if name != "both empty"]
    return hand + [(f"random {i}", *random_case(rng)) for i in range(15)]
