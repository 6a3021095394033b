"""The decision rules of ``nnunet_blob tune-postprocessing``: whether the best setting of a class's grid replaces
"no change". Both rules read ``values`` (cases, thresholds, volumes) of the metric, "no change" at ``[:, 0, 0]``.

The **objective** of both: the setting with the best mean of the metric over the cases (means as ``nnunet_blob
evaluate`` takes them: the cases where the metric is NaN do not count), :func:`best_of_grid`. Ties go to the first
threshold of the grid (nnU-Net's rule first, then ascending), then to the smaller volume.

**cross-validated** (the default): the selection is judged out of fold. For each fold ``k``, the best setting on
the other folds' validation cases (:func:`best_of_grid` on them) is applied to fold ``k``'s cases; every case so
gets a score of the whole selection procedure that its own value did not choose. One paired two-sided Wilcoxon
signed-rank test (:func:`nnunet_blob.evaluation.compare.paired_wilcoxon`: the cases where both are defined, ties
dropped) of these out-of-fold scores against "no change" is the decision: the best setting on *all* cases replaces
"no change" when the out-of-fold mean is better than no change's and ``p < alpha``. No multiplicity correction:
one test is made, of a procedure whose choice for a case never saw that case, so a setting that wins on a few cases
by chance is not rewarded (the other folds' choice is applied to them). A fold whose other folds choose "no
change" scores its cases unchanged. The out-of-fold scores of different folds are not independent (each fold's
choice saw the other folds' cases), which makes the test somewhat liberal: on settings of pure noise it passes more
often than alpha / 2 in the better direction (``tests/test_postprocessing_crossval.py`` measures it), far less often
than an uncorrected test of the best setting.

**bonferroni**: the best setting on all cases replaces "no change" when it is better on average and the same
Wilcoxon test of it against "no change" on all cases gives ``p * (number of other settings of the grid) < alpha``:
the correction for having picked the best of the grid. With 39 other settings at least 11 cases must improve, none
worsening; with 7, 9. Conservative with the ~20 validation cases of a small dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# light on purpose: the command line reads RULES when it builds its parser (scipy is imported where a test is made)

CROSS_VALIDATED = "cross-validated"
BONFERRONI = "bonferroni"
#: the decision rules, the default first
RULES = (CROSS_VALIDATED, BONFERRONI)


def check_rule(rule: str) -> str:
    from nnunet_blob.postprocessing.settings import DecisionError

    if rule not in RULES:
        raise DecisionError(f"unknown decision rule {rule!r}; use one of {list(RULES)}")
    return rule


def rule_text(rule: str, metric_name: str, alpha: float) -> str:
    """One sentence stating the rule, for the report and the file."""
    head = (f"Decision rule ({rule}): per class, the setting with the best mean {metric_name} over the cases replaces "
            f"'no change' only if")
    if rule == CROSS_VALIDATED:
        return (f"{head}, applied to each fold's validation cases as chosen on the other folds' cases, it is better "
                f"on average than 'no change' and a paired two-sided Wilcoxon signed-rank test of these out-of-fold "
                f"scores against 'no change' gives p < {alpha:g} (one test, no correction).")
    return (f"{head} it is better on average and a paired two-sided Wilcoxon signed-rank test over the cases against "
            f"'no change', Bonferroni-corrected for the other settings of the grid, gives p < {alpha:g}.")


def nan_means(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Means along ``axis`` over the values that are not NaN (NaN where none is), as ``evaluate`` takes them."""
    with np.errstate(all="ignore"):
        counts = (~np.isnan(values)).sum(axis)
        return np.where(counts > 0, np.nansum(values, axis) / np.maximum(counts, 1), np.nan)


def best_of_grid(values: np.ndarray, higher_is_better: bool) -> tuple[int, int]:
    """(threshold index, volume index) of the best mean over the cases of ``values`` (cases, thresholds, volumes);
    the first on ties; (0, 0) when no setting has a defined mean."""
    means = nan_means(np.asarray(values, dtype=np.float64))
    scored = np.where(np.isnan(means), -np.inf, (1.0 if higher_is_better else -1.0) * means)
    t, v = np.unravel_index(int(np.argmax(scored)), scored.shape)
    return int(t), int(v)


@dataclass(frozen=True, eq=False)
class OutOfFold:
    """The cross-validated selection of one class: per fold, the setting chosen on the other folds' cases, and
    each case's metric under its own fold's choice."""

    folds: tuple  # the folds, sorted
    choices: tuple[tuple[int, int], ...]  # per fold of ``folds``: (threshold index, volume index) chosen without it
    case_folds: tuple  # the fold of each case
    values: np.ndarray  # (cases,): the metric of each case under its fold's choice
    mean: float  # mean of ``values`` over the cases where it is defined


@dataclass(frozen=True)
class Decision:
    """The outcome of a decision rule for one class: the best setting of the grid (on all cases) and whether it
    is kept. ``p_corrected`` is what is compared with alpha: ``p_value`` times ``other_settings`` (bonferroni),
    ``p_value`` itself (cross-validated: the test of the out-of-fold scores)."""

    best: tuple[int, int]  # (threshold index, volume index) of the best mean on all cases
    accepted: bool
    mean_no_change: float
    mean_best: float
    p_value: float
    p_corrected: float
    other_settings: int
    paired_cases: int
    rule: str = BONFERRONI
    out_of_fold: OutOfFold | None = None

    @property
    def chosen(self) -> tuple[int, int]:
        return self.best if self.accepted else (0, 0)


def _gain(after: np.ndarray, before: np.ndarray, higher_is_better: bool) -> float:
    return (1.0 if higher_is_better else -1.0) * float(nan_means(after) - nan_means(before))


def _paired(after: np.ndarray, before: np.ndarray) -> int:
    return int((~np.isnan(before) & ~np.isnan(after)).sum())


def decide(values: np.ndarray, higher_is_better: bool, alpha: float = 0.05) -> Decision:
    """The bonferroni rule (module docstring) on ``values`` (cases, thresholds, volumes)."""
    from nnunet_blob.evaluation.compare import paired_wilcoxon

    values = np.asarray(values, dtype=np.float64)
    means = nan_means(values)
    best = best_of_grid(values, higher_is_better)
    before, after = values[:, 0, 0], values[:, best[0], best[1]]
    p = paired_wilcoxon(after, before) if best != (0, 0) else 1.0
    others = values.shape[1] * values.shape[2] - 1
    p_corrected = min(1.0, p * max(others, 1))
    gain = _gain(after, before, higher_is_better)
    accepted = bool(best != (0, 0) and np.isfinite(gain) and gain > 0 and p_corrected < alpha)
    return Decision(best, accepted, float(means[0, 0]), float(means[best]), float(p), float(p_corrected), others,
                    _paired(after, before), BONFERRONI)


def out_of_fold(values: np.ndarray, case_folds, higher_is_better: bool) -> OutOfFold:
    """Per fold, the best setting on the other folds' cases applied to the fold's cases (module docstring)."""
    from nnunet_blob.postprocessing.settings import DecisionError

    values = np.asarray(values, dtype=np.float64)
    case_folds = tuple(case_folds)
    if len(case_folds) != values.shape[0]:
        raise ValueError(f"{len(case_folds)} folds for {values.shape[0]} cases")
    folds = tuple(sorted(set(case_folds), key=lambda f: (isinstance(f, str), f)))
    if len(folds) < 2:
        raise DecisionError(f"cross-validated selection needs the validation cases of at least two folds, got folds "
                            f"{list(folds)}; tune on more folds (-f 0 1 2 3 4) or use --rule {BONFERRONI}")
    of_case = np.array([folds.index(f) for f in case_folds])
    oof = np.full(values.shape[0], np.nan)
    choices = []
    for index in range(len(folds)):
        held_out = of_case == index
        choice = best_of_grid(values[~held_out], higher_is_better)
        choices.append(choice)
        oof[held_out] = values[held_out, choice[0], choice[1]]
    return OutOfFold(folds, tuple(choices), case_folds, oof, float(nan_means(oof)))


def decide_cross_validated(values: np.ndarray, case_folds, higher_is_better: bool,
                           alpha: float = 0.05) -> Decision:
    """The cross-validated rule (module docstring) on ``values`` (cases, thresholds, volumes) whose cases belong
    to ``case_folds`` (one fold per case; at least two folds)."""
    from nnunet_blob.evaluation.compare import paired_wilcoxon

    values = np.asarray(values, dtype=np.float64)
    oof = out_of_fold(values, case_folds, higher_is_better)
    means = nan_means(values)
    best = best_of_grid(values, higher_is_better)
    before = values[:, 0, 0]
    p = paired_wilcoxon(oof.values, before)
    gain = _gain(oof.values, before, higher_is_better)
    accepted = bool(best != (0, 0) and np.isfinite(gain) and gain > 0 and p < alpha)
    return Decision(best, accepted, float(means[0, 0]), float(means[best]), float(p), float(p),
                    values.shape[1] * values.shape[2] - 1, _paired(oof.values, before), CROSS_VALIDATED, oof)
