"""Every metric ``nnunet_blob evaluate`` can write is in the one table of metric facts
(:mod:`nnunet_blob.evaluation.metric_facts`), and ``compare`` and ``tune-postprocessing`` read it from there: a
metric added to the evaluation without its facts fails here, not when a user first compares or tunes it."""
from __future__ import annotations

import numpy as np
import pytest

from nnunet_blob.evaluation.compare import metric_directions
from nnunet_blob.evaluation.metric_facts import FACTS, SIZE_BIN_PREFIX, direction, needed_option
from nnunet_blob.evaluation.metrics import label_evaluation
from nnunet_blob.evaluation.options import EvaluationOptions
from nnunet_blob.postprocessing.settings import DecisionError
from nnunet_blob.postprocessing.tuning import metric_named

#: every option that adds metrics, on
EVERYTHING = EvaluationOptions(matching="one-to-one", cell_scores=True, cc_dice=True, gt_dilation=1,
                               size_bins_ml=(0.001, 0.01))


def _case():
    """Two reference lesions, one found, one missed, and a false positive, in 3D."""
    ref, pred = np.zeros((6, 12, 12), np.uint8), np.zeros((6, 12, 12), np.uint8)
    ref[1:3, 1:4, 1:4] = 1
    ref[3:5, 7:10, 7:10] = 1
    pred[1:3, 1:4, 2:5] = 1
    pred[4:6, 1:3, 8:11] = 1
    return ref, pred


def _all_metric_names() -> list[str]:
    ref, pred = _case()
    metrics, _, _ = label_evaluation(ref, pred, 1, (1.0, 1.0, 1.0), None, EVERYTHING)
    return sorted(metrics)


def _is_size_bin_count(name: str) -> bool:
    return name.startswith(("n_ref_", "TP_ref_")) and name not in FACTS


def test_every_metric_evaluate_writes_is_in_the_table():
    names = _all_metric_names()
    assert {"PQ", "DSB_AP", "CC_Dice", "lesion_wise_Dice", "IS_0.001-0.01ml", "F1"} <= set(names), names
    unknown = [n for n in names if n not in FACTS and not n.startswith(SIZE_BIN_PREFIX) and not _is_size_bin_count(n)]
    assert unknown == [], f"metrics of evaluate without facts in metric_facts.METRICS: {unknown}"


def test_compare_knows_the_direction_of_every_metric_with_one():
    for name in _all_metric_names():
        facts = FACTS.get(name)
        if _is_size_bin_count(name) or (facts is not None and facts.higher_is_better is None):
            assert direction(name) is None, name  # counts: no better direction
            continue
        want = facts.higher_is_better if facts is not None else True  # IS_<bin>: a sensitivity
        assert direction(name) is want, name
        assert metric_directions([name]) == {name: want}


def test_tuning_knows_every_metric_or_names_the_option_it_needs():
    for name in _all_metric_names():
        facts = FACTS.get(name)
        if facts is not None and not facts.always:
            with pytest.raises(DecisionError) as error:
                metric_named(name)
            assert facts.needs in str(error.value) and needed_option(name) == facts.needs, name
        elif facts is not None and facts.higher_is_better is None or _is_size_bin_count(name):
            with pytest.raises(DecisionError, match="neither higher nor lower|higher or lower better"):
                metric_named(name)
        else:
            want = facts.higher_is_better if facts is not None else True
            assert metric_named(name).higher_is_better is want, name
