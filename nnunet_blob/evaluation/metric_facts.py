"""The one table of facts about the per-case metrics of ``nnunet_blob evaluate``: which direction is better, which
``nnunet_blob compare`` compares by default, which columns the printed summary shows, which are undefined on an
empty case, which are added over the cases, and which every evaluation computes (what
``nnunet_blob tune-postprocessing`` can tune without evaluation options).

:mod:`~nnunet_blob.evaluation.compare`, :mod:`~nnunet_blob.evaluation.report`,
:mod:`~nnunet_blob.evaluation.lesions`, :mod:`~nnunet_blob.evaluation.folder` and
:mod:`nnunet_blob.postprocessing.tuning` read their lists from here.
"""
from __future__ import annotations

from dataclasses import dataclass

#: IoU thresholds of the cell scores (2018 Data Science Bowl): 0.5, 0.55, ..., 0.95
CELL_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: the threshold at which the cell scores' F1, precision and recall are kept per case
CELL_REPORTED_THRESHOLD = 0.5


def at(name: str, threshold: float) -> str:
    """The key of a cell score at an IoU threshold: ``AP@0.75``."""
    return f"{name}@{threshold:g}"


@dataclass(frozen=True)
class MetricFacts:
    name: str
    higher_is_better: bool | None  # None: a count with no better direction (e.g. n_ref_instances)
    compared: bool = False  # compared by ``nnunet_blob compare`` without --metrics
    column: str | None = None  # its column title in the lines ``nnunet_blob evaluate`` prints (case means)
    empty_case: bool = False  # NaN when reference and prediction are empty; 1.0 with ``--empty-case one``
    summed: bool = False  # added over the cases in ``pooled_instances``
    always: bool = False  # computed by every evaluation (no option needed)
    needs: str | None = None  # the ``nnunet_blob evaluate`` option that computes it (when not ``always``)


#: the options that compute the metrics which not every evaluation has
ONE_TO_ONE = "--matching one-to-one"
CELL_SCORES = "--cell-scores (or instance maps: --reference-instances, --instance-inputs)"
CC_DICE = "--cc-dice"
BRATS = "--gt-dilation N (or a BraTS --preset)"


def _cell_metrics() -> tuple[MetricFacts, ...]:
    facts = [MetricFacts("DSB_AP", True, compared=True, column="AP(DSB)", empty_case=True, needs=CELL_SCORES)]
    for t in CELL_THRESHOLDS:
        facts += [MetricFacts(at("TP", t), True, needs=CELL_SCORES),
                  MetricFacts(at("AP", t), True, empty_case=True, needs=CELL_SCORES)]
    t = CELL_REPORTED_THRESHOLD
    facts += [MetricFacts(at("F1", t), True, compared=True, column="F1@0.5", empty_case=True, needs=CELL_SCORES),
              MetricFacts(at("precision", t), True, empty_case=True, needs=CELL_SCORES),
              MetricFacts(at("recall", t), True, empty_case=True, needs=CELL_SCORES)]
    return tuple(facts)


#: every per-case metric of ``nnunet_blob evaluate`` (the size bins' ``n_ref_<bin>``, ``TP_ref_<bin>`` and
#: ``IS_<bin>`` are named by their options: :func:`direction` knows them by prefix)
METRICS: tuple[MetricFacts, ...] = (
    MetricFacts("Dice", True, compared=True, column="DSC", empty_case=True, always=True),
    MetricFacts("IoU", True, empty_case=True, always=True),
    MetricFacts("TP", True, always=True),
    MetricFacts("FP", False, always=True),
    MetricFacts("FN", False, always=True),
    MetricFacts("TN", True, always=True),
    MetricFacts("n_pred", None, always=True),
    MetricFacts("n_ref", None, always=True),
    MetricFacts("sensitivity", True, empty_case=True, always=True),
    MetricFacts("precision", True, empty_case=True, always=True),
    MetricFacts("SurfaceDice", True, compared=True, empty_case=True, always=True),
    MetricFacts("n_ref_instances", None, summed=True, always=True),
    MetricFacts("TP_ref_instances", True, summed=True, always=True),
    MetricFacts("n_pred_instances", None, summed=True, always=True),
    MetricFacts("TP_pred_instances", True, summed=True, always=True),
    MetricFacts("FN_instances", False, summed=True, always=True),
    MetricFacts("FP_instances", False, summed=True, always=True),
    MetricFacts("IS", True, compared=True, column="IS", empty_case=True, always=True),
    MetricFacts("IP", True, compared=True, column="IP", empty_case=True, always=True),
    MetricFacts("F1", True, compared=True, column="F1", empty_case=True, always=True),
    MetricFacts("lesion_count_difference", False, always=True),
    MetricFacts("absolute_volume_difference_ml", False, always=True),
    # --matching one-to-one
    MetricFacts("n_matched", True, needs=ONE_TO_ONE),
    MetricFacts("RQ", True, compared=True, empty_case=True, needs=ONE_TO_ONE),
    MetricFacts("SQ", True, compared=True, empty_case=True, needs=ONE_TO_ONE),
    MetricFacts("PQ", True, compared=True, column="PQ", empty_case=True, needs=ONE_TO_ONE),
    MetricFacts("SQ_Dice", True, compared=True, empty_case=True, needs=ONE_TO_ONE),
    # --cell-scores
    *_cell_metrics(),
    # --cc-dice
    MetricFacts("CC_Dice", True, compared=True, column="CC-Dice", empty_case=True, needs=CC_DICE),
    # BraTS lesion-wise scores
    MetricFacts("lesion_wise_Dice", True, compared=True, column="LW-DSC", needs=BRATS),
    MetricFacts("lesion_wise_HD95", False, compared=True, column="LW-HD95", needs=BRATS),
    MetricFacts("lesion_wise_TP", True, needs=BRATS),
    MetricFacts("lesion_wise_FN", False, needs=BRATS),
    MetricFacts("lesion_wise_FP", False, needs=BRATS),
)
FACTS = {f.name: f for f in METRICS}
#: prefix of the sensitivity of a lesion-volume bin (``IS_<bin>``, higher is better)
SIZE_BIN_PREFIX = "IS_"

#: metric -> higher is better, compared by default (when the summaries have them)
COMPARED = {f.name: bool(f.higher_is_better) for f in METRICS if f.compared}
#: metric -> higher is better, of every metric with a direction
DIRECTIONS = {f.name: f.higher_is_better for f in METRICS if f.higher_is_better is not None}
#: the metrics undefined (NaN) on a case without reference and prediction
EMPTY_CASE_METRICS = tuple(f.name for f in METRICS if f.empty_case)
#: the instance counts added over the cases in ``pooled_instances``
SUMMED = tuple(f.name for f in METRICS if f.summed)
#: the metrics every evaluation of ``nnunet_blob evaluate`` computes
ALWAYS = tuple(f.name for f in METRICS if f.always)
#: (key, column title) of the case means the printed summary shows, when the summary has them
COLUMNS = tuple((f.name, f.column) for f in METRICS if f.column)


def direction(name: str) -> bool | None:
    """True when higher is better, False when lower is, None when unknown (or a count without direction)."""
    if name.startswith(SIZE_BIN_PREFIX):
        return True
    return DIRECTIONS.get(name)


def needed_option(name: str) -> str | None:
    """The ``nnunet_blob evaluate`` option that computes a metric; None when every evaluation has it (or unknown)."""
    if name in FACTS:
        return FACTS[name].needs
    if name.startswith(SIZE_BIN_PREFIX):
        return "--size-bins with this bin's edges"
    return None
