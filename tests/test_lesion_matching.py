"""One-to-one matching and panoptic quality (``--matching one-to-one``) against a literal implementation written
from the definition (every matching enumerated) and, where it is importable, against panoptica itself.

panoptica is not in the test extra: its releases pin numpy < 2.3 and connected-components-3d < 4, so installing it
would downgrade both below what ``pip install .`` gives. The literal implementation follows panoptica's
definitions (connected components with 26-connectivity, pairs with IoU >= 0.5 eligible, RQ = TP / (TP + FP/2 +
FN/2), SQ = mean IoU of the pairs, PQ = SQ * RQ, zero with no pair and NaN without any instance); the comparison
with panoptica runs where it is installed (``pip install --no-deps panoptica`` beside the test extra).
"""
import itertools
import math

import numpy as np
import pytest
from scipy import ndimage

from nnunet_blob.evaluation.metrics import label_metrics
from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.instances.matching import match_components, maximum_matching, overlap_table

NAN = float("nan")


def literal_components(mask):
    return ndimage.label(mask, structure=np.ones((3,) * mask.ndim))


def literal_scores(mask_ref, mask_pred):
    """{(r, p): (iou, dice)} of every overlapping pair, from set operations on the component masks."""
    ref, n_ref = literal_components(mask_ref)
    pred, n_pred = literal_components(mask_pred)
    scores = {}
    for r in range(1, n_ref + 1):
        for p in range(1, n_pred + 1):
            a, b = ref == r, pred == p
            inter = int((a & b).sum())
            if inter:
                scores[(r, p)] = (inter / int((a | b).sum()), 2 * inter / int(a.sum() + b.sum()))
    return scores, n_ref, n_pred


def literal_best_matching(pairs: dict):
    """Among all sets of disjoint pairs: the most pairs, then the largest summed score (pairs -> score)."""
    best, best_key = (), (-1, -1.0)
    items = list(pairs.items())
    for k in range(len(items), -1, -1):
        if k < best_key[0]:
            break
        for subset in itertools.combinations(items, k):
            refs, preds = [p[0][0] for p in subset], [p[0][1] for p in subset]
            if len(set(refs)) == k and len(set(preds)) == k:
                key = (k, sum(s for _, s in subset))
                if key[0] > best_key[0] or (key[0] == best_key[0] and key[1] > best_key[1] + 1e-12):
                    best, best_key = subset, key
    return dict(best)


def literal_panoptic(mask_ref, mask_pred, metric="iou", threshold=0.5):
    scores, n_ref, n_pred = literal_scores(mask_ref, mask_pred)
    index = 0 if metric == "iou" else 1
    eligible = {pair: s[index] for pair, s in scores.items() if s[index] >= threshold}
    matched = literal_best_matching(eligible)
    tp, fp, fn = len(matched), n_pred - len(matched), n_ref - len(matched)
    if tp == 0:
        zero = NAN if n_ref + n_pred == 0 else 0.0
        return dict(n_matched=0, RQ=zero, SQ=zero, PQ=zero, SQ_Dice=zero, n_ref=n_ref, n_pred=n_pred)
    rq = tp / (tp + fp / 2 + fn / 2)
    sq = float(np.mean([scores[p][0] for p in matched]))
    return dict(n_matched=tp, RQ=rq, SQ=sq, PQ=sq * rq, SQ_Dice=float(np.mean([scores[p][1] for p in matched])),
                IS=tp / n_ref, IP=tp / n_pred, F1=2 * tp / (n_ref + n_pred), n_ref=n_ref, n_pred=n_pred)


def ours(ref, pred, **options):
    return label_metrics(ref.astype(np.uint8), pred.astype(np.uint8), 1, (1.0,) * ref.ndim,
                         options=EvaluationOptions(matching="one-to-one", **options))


def assert_same(got: dict, want: dict):
    for key, value in want.items():
        mine = got["n_ref_instances" if key == "n_ref" else "n_pred_instances" if key == "n_pred" else key]
        assert (math.isnan(mine) and math.isnan(value)) or mine == pytest.approx(value, abs=1e-12), (key, mine, value)


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


@pytest.mark.parametrize("name,ref,pred,expected", HAND_BUILT, ids=[c[0] for c in HAND_BUILT])
def test_hand_built_cases(name, ref, pred, expected):
    got = ours(ref, pred)
    want = literal_panoptic(ref, pred)
    assert_same(got, want)
    n, rq, sq = expected
    assert got["n_matched"] == n
    for key, value in (("RQ", rq), ("SQ", sq)):
        assert (math.isnan(got[key]) and math.isnan(value)) or got[key] == pytest.approx(value), key
    # IS/IP/F1 and the counts come from the matching
    assert got["TP_ref_instances"] == got["TP_pred_instances"] == n
    if got["n_ref_instances"] + got["n_pred_instances"]:
        assert got["F1"] == pytest.approx(got["RQ"])


def random_case(rng, shape=(8, 14, 14), density=0.02):
    """Blobs and their shifted, grown or eroded copies: splits, merges and overlaps of every size."""
    ref = ndimage.binary_dilation(rng.random(shape) > 1 - density, iterations=1)
    pred = np.roll(ref, rng.integers(-1, 2, 3), axis=(0, 1, 2))
    pred = ndimage.binary_dilation(pred) if rng.random() < 0.3 else pred
    pred = pred & (rng.random(shape) > 0.15)
    pred |= rng.random(shape) > 0.995
    return ref, pred


@pytest.mark.parametrize("metric,threshold", [("iou", 0.5), ("iou", 0.2), ("dice", 0.5), ("dice", 0.1)])
def test_random_cases_equal_literal_matching(metric, threshold):
    rng = np.random.default_rng(7)
    for _ in range(12):
        ref, pred = random_case(rng)
        want = literal_panoptic(ref, pred, metric, threshold)
        assert_same(ours(ref, pred, match_metric=metric, match_threshold=threshold), want)


def test_maximum_matching_prefers_more_pairs_then_higher_scores():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = rng.integers(1, 7)
        rows, cols = rng.integers(0, 4, n), rng.integers(0, 4, n)
        keep = np.unique(rows * 10 + cols, return_index=True)[1]
        rows, cols, scores = rows[keep], cols[keep], rng.random(keep.size)
        chosen = maximum_matching(rows, cols, scores)
        assert len(set(rows[chosen])) == chosen.size == len(set(cols[chosen]))
        best = literal_best_matching({(r, c): s for r, c, s in zip(rows, cols, scores, strict=True)})
        assert chosen.size == len(best)
        assert scores[chosen].sum() == pytest.approx(sum(best.values()))


def test_overlap_table_counts():
    ref = np.array([[1, 1, 0, 2], [0, 1, 0, 2]])
    pred = np.array([[3, 0, 0, 1], [3, 3, 0, 0]])
    table = overlap_table(ref, pred)
    assert table.ref_sizes.tolist() == [3, 3, 2] and table.pred_sizes.tolist() == [4, 1, 0, 3]
    pairs = zip(table.ref.tolist(), table.pred.tolist(), table.intersection.tolist(), strict=True)
    assert list(pairs) == [(1, 3, 2), (2, 1, 1)]
    assert table.iou().tolist() == [2 / 4, 1 / 2]
    m = match_components(table, "dice", 0.6)
    assert m.ref.tolist() == [1, 2] and m.dice.tolist() == pytest.approx([4 / 6, 2 / 3])


def test_threshold_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match="--match-threshold"):
        EvaluationOptions(matching="one-to-one", match_threshold=0.0)


PANOPTICA_CASES = [(c[1], c[2]) for c in HAND_BUILT if c[0] != "both empty"]


def _panoptica_result(ref, pred):
    panoptica = pytest.importorskip("panoptica")
    evaluator = panoptica.Panoptica_Evaluator(
        expected_input=panoptica.InputType.SEMANTIC,
        instance_approximator=panoptica.ConnectedComponentsInstanceApproximator(),
        instance_matcher=panoptica.NaiveThresholdMatching(), verbose=False)
    return next(iter(evaluator.evaluate(pred.astype(np.uint8), ref.astype(np.uint8), verbose=False).values()))


@pytest.mark.filterwarnings("ignore")
def test_equal_to_panoptica_where_installed():
    """panoptica's own numbers (its default evaluator: connected components, IoU >= 0.5) on the hand-built and
    random cases; skipped where panoptica is not installed (see the module docstring)."""
    rng = np.random.default_rng(11)
    cases = PANOPTICA_CASES + [random_case(rng) for _ in range(15)]
    for ref, pred in cases:
        theirs = _panoptica_result(ref, pred)
        got = ours(ref, pred)
        assert (got["n_matched"], got["n_ref_instances"], got["n_pred_instances"]) == \
            (theirs.tp, theirs.n_ref_instances, theirs.n_pred_instances)
        for key, value in (("RQ", theirs.rq), ("SQ", theirs.sq), ("PQ", theirs.pq), ("SQ_Dice", theirs.sq_dsc)):
            assert got[key] == pytest.approx(value, abs=1e-12), key
