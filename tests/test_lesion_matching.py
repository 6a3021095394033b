"""One-to-one matching and panoptic quality (``--matching one-to-one``) against a literal implementation written
from the definition (every matching enumerated) and against panoptica's own results.

panoptica is not in the test extra: its releases pin numpy < 2.3 and connected-components-3d < 4, so installing it
would downgrade both below what ``pip install .`` gives. Its results on the cases of ``matching_cases.py`` are
recorded once in its own environment (``fixtures/make_panoptica_reference.py``, which says how) and compared here.
The literal implementation follows panoptica's definitions (connected components with 26-connectivity, pairs with
IoU >= 0.5 eligible, RQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the pairs, PQ = SQ * RQ, zero with no pair and
NaN without any instance).
"""
import base64
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from matching_cases import HAND_BUILT, NAN, panoptica_cases, random_case
from nnunet_blob.evaluation.metrics import label_metrics
from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.instances.matching import match_components, maximum_matching, overlap_table


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


PANOPTICA_REFERENCE = Path(__file__).parent / "fixtures" / "panoptica_reference.json"


def _unpack(text: str, shape) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8))
    return bits[:int(np.prod(shape))].reshape(shape).astype(bool)


def test_panoptica_reference_is_of_these_cases():
    """The recorded arrays are the cases of ``matching_cases.py`` (a changed case needs a new recording)."""
    record = json.loads(PANOPTICA_REFERENCE.read_text())
    cases = panoptica_cases()
    assert [c["name"] for c in record["cases"]] == [name for name, _, _ in cases]
    for case, (_, ref, pred) in zip(record["cases"], cases, strict=True):
        assert np.array_equal(_unpack(case["reference"], case["shape"]), ref), case["name"]
        assert np.array_equal(_unpack(case["prediction"], case["shape"]), pred), case["name"]


@pytest.mark.parametrize("case", json.loads(PANOPTICA_REFERENCE.read_text())["cases"], ids=lambda c: c["name"])
def test_equal_to_panoptica(case):
    """panoptica's own numbers (its default evaluator: connected components, IoU >= 0.5), recorded by
    ``fixtures/make_panoptica_reference.py``."""
    ref, pred = _unpack(case["reference"], case["shape"]), _unpack(case["prediction"], case["shape"])
    got = ours(ref, pred)
    assert (got["n_matched"], got["n_ref_instances"], got["n_pred_instances"]) == \
        (case["tp"], case["n_ref_instances"], case["n_pred_instances"])
    for key in ("RQ", "SQ", "PQ", "SQ_Dice"):
        assert got[key] == pytest.approx(case[key], abs=1e-12), key
