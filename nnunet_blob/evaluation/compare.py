"""Compare trainers on the same cases: per-metric table, paired Wilcoxon tests, Loss Odyssey rank score.

Rank score (J. Ma et al., "Loss odyssey in medical image segmentation", Medical Image Analysis 71, 2021,
section 3.4): for each metric, a method's significance score is the number of other methods it beats in a paired
two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``) at p < alpha (default 0.05); the rank score is the
mean of these scores over metrics (and labels). "Beats" means significant and the mean paired difference is in the
metric's better direction.
"""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
from scipy.stats import wilcoxon

from nnunet_blob.evaluation.metric_facts import ALWAYS, COMPARED, DIRECTIONS, SIZE_BIN_PREFIX, direction, needed_option

#: metric -> True when higher is better; compared by default when the summaries have them (most only exist when
#: evaluate was asked for them)
DEFAULT_METRICS = COMPARED


def metric_directions(names) -> dict[str, bool]:
    """``{metric: higher is better}`` for metric names given on the command line; ValueError for an unknown one."""
    unknown = [n for n in names if direction(n) is None]
    if unknown:
        raise ValueError(f"--metrics: no known direction for {unknown}; choose from {sorted(DIRECTIONS)} or "
                         f"{SIZE_BIN_PREFIX}<bin> (the size bins' sensitivities, e.g. IS_0.01-0.1ml)")
    return {n: bool(direction(n)) for n in names}


def load_summary(path: str) -> dict:
    """Per-case values ``{label: {metric: {case: value}}}`` of a summary written by ``nnunet_blob evaluate``."""
    expected = ("expected an evaluation summary: the summary_instances.json of 'nnunet_blob evaluate' (or "
                "nnU-Net's summary.json)")
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path} does not exist; {expected}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a JSON file ({e}); {expected}") from e
    if not isinstance(data, dict) or "metric_per_case" not in data:
        raise ValueError(f"{path} is not an evaluation summary (no 'metric_per_case'); "
                         f"create it with 'nnunet_blob evaluate'")
    values: dict = {}
    for case in data["metric_per_case"]:
        name = os.path.basename(case["reference_file"])
        for label, metrics in case["metrics"].items():
            for metric, v in metrics.items():
                values.setdefault(label, {}).setdefault(metric, {})[name] = np.nan if v is None else float(v)
    return values


def paired_wilcoxon(a, b) -> float:
    """Two-sided p of ``scipy.stats.wilcoxon(a, b)`` over cases where both are defined; 1.0 when all tie."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) == 0 or np.all(a == b):
        return 1.0
    return float(wilcoxon(a, b).pvalue)


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p of the exact paired Wilcoxon signed-rank test over ``n`` pairs: ``2 / 2**n`` (all
    differences of one sign; each of the ``2**n`` sign patterns is equally likely under the null hypothesis)."""
    return 2.0 / 2.0 ** n if n > 0 else 1.0


def _labels(values: dict) -> list:
    return sorted(values, key=str)


def _cases(values: dict) -> list:
    return sorted(next(iter(values[next(iter(values))].values())).keys()) if values else []


def _check_same_cases(loaded: dict, summaries: dict) -> None:
    """ValueError naming what differs when two summaries cover other cases or other labels."""
    first_name, first = next(iter(loaded.items()))
    for name, vals in loaded.items():
        if _labels(vals) != _labels(first):
            raise ValueError(f"{summaries[name]} has labels {_labels(vals)}, {summaries[first_name]} has labels "
                             f"{_labels(first)}; evaluate both with the same labels (dataset.json or -l)")
        only_here, only_there = (sorted(set(_cases(vals)) - set(_cases(first))),
                                 sorted(set(_cases(first)) - set(_cases(vals))))
        if only_here or only_there:
            raise ValueError(f"{summaries[name]} and {summaries[first_name]} cover different cases: "
                             f"{len(only_here)} only in the first (e.g. {only_here[:5]}), {len(only_there)} only in "
                             f"the second (e.g. {only_there[:5]}); evaluate both on the same reference cases")


def _missing_metrics(loaded: dict, summaries: dict, metrics: dict, requested: bool) -> list[str]:
    """Notes on the metrics some summary lacks: which, in which summary, and what computes them."""
    notes = []
    for method, vals in loaded.items():
        lacking = [m for m in metrics if not any(m in by_metric for by_metric in vals.values())]
        plain = [m for m in lacking if m in ALWAYS]
        if plain:
            notes.append(f"{summaries[method]} has no {', '.join(plain)} (an nnU-Net summary.json has Dice and IoU "
                         f"only), so they are not compared; 'nnunet_blob evaluate' computes them")
        for metric in lacking if requested else ():
            if needed_option(metric) is not None:
                notes.append(f"{summaries[method]} has no {metric}: it needs 'nnunet_blob evaluate ... "
                             f"{needed_option(metric)}'")
    return list(dict.fromkeys(notes))


def _table(arr: dict[str, np.ndarray], higher: bool) -> dict:
    """Each method's mean and median over the cases (NaN ignored) and its wins: the cases where it alone is best."""
    methods = list(arr)
    stacked = (1.0 if higher else -1.0) * np.vstack([arr[m] for m in methods])
    filled = np.where(np.isnan(stacked), -np.inf, stacked)
    best = filled.max(0)
    unique_best = (filled == best).sum(0) == 1
    return {m: {"mean": float(np.nanmean(arr[m])) if not np.isnan(arr[m]).all() else np.nan,
                "median": float(np.nanmedian(arr[m])) if not np.isnan(arr[m]).all() else np.nan,
                "wins": int(((filled[i] == best) & unique_best & np.isfinite(best)).sum())}
            for i, m in enumerate(methods)}


def _pairwise_scores(arr: dict[str, np.ndarray], higher: bool, alpha: float) -> tuple[dict, dict]:
    """The paired Wilcoxon p of each pair of methods, and each method's score: how many others it beats (p < alpha,
    better mean difference)."""
    sign = 1.0 if higher else -1.0
    p_values, scores = {}, {m: 0 for m in arr}
    for m1, m2 in itertools.combinations(arr, 2):
        p = paired_wilcoxon(arr[m1], arr[m2])
        p_values[(m1, m2)] = p
        diff = sign * np.nanmean(arr[m1] - arr[m2]) if not np.isnan(arr[m1] - arr[m2]).all() else 0.0
        if p < alpha and diff > 0:
            scores[m1] += 1
        elif p < alpha and diff < 0:
            scores[m2] += 1
    return p_values, scores


def compare(summaries: dict[str, str], metrics: dict[str, bool] | None = None, alpha: float = 0.05) -> dict:
    """Compare named summaries (``{method: path}``) on identical case sets.

    Returns ``{"tables": {(label, metric): {method: {mean, median, wins}}}, "p_values": {(label, metric):
    {(m1, m2): p}}, "scores": {(label, metric): {method: n_beaten}}, "rank_score": {method: mean score}}``.
    """
    if len(summaries) < 2:
        raise ValueError("compare needs at least two summaries")
    requested = metrics is not None
    metrics = metrics or DEFAULT_METRICS
    loaded = {m: load_summary(p) for m, p in summaries.items()}
    _check_same_cases(loaded, summaries)
    first = next(iter(loaded.values()))
    cases = _cases(first)
    notes = _missing_metrics(loaded, summaries, metrics, requested)
    methods = list(loaded)
    tables: dict = {}
    p_values: dict = {}
    scores: dict = {}
    for label in first:
        for metric, higher in metrics.items():
            if metric not in first[label]:
                continue
            if any(metric not in loaded[m][label] for m in methods):
                continue  # evaluated with other options: compare what both have
            arr = {m: np.array([loaded[m][label][metric][c] for c in cases]) for m in methods}
            key = (label, metric)
            tables[key] = _table(arr, higher)
            p_values[key], scores[key] = _pairwise_scores(arr, higher, alpha)
    if not scores:
        raise ValueError(f"none of the metrics {list(metrics)} is in every summary" +
                         (": " + "; ".join(notes) if notes else ""))
    compared = sorted({metric for _, metric in scores})
    if any("not compared" in note for note in notes):
        notes.append(f"ranked on {', '.join(compared)} alone")
    if smallest_wilcoxon_p(len(cases)) >= alpha:
        notes.append(f"{len(cases)} cases: a paired two-sided Wilcoxon test cannot reach p < {alpha:g} (its smallest "
                     f"p is 2/2^{len(cases)} = {smallest_wilcoxon_p(len(cases)):.4g}), so no method beats another and "
                     f"every rank score is 0; compare on more cases")
    rank = {m: float(np.mean([s[m] for s in scores.values()])) for m in methods}
    return {"cases": cases, "alpha": alpha, "tables": tables, "p_values": p_values, "scores": scores,
            "rank_score": rank, "notes": notes}


def format_report(result: dict) -> str:
    """Plain-text tables of :func:`compare`'s result."""
    lines = [f"{len(result['cases'])} cases"] + [f"note: {note}" for note in result.get("notes", ())]
    for (label, metric), table in result["tables"].items():
        lines.append(f"\nlabel {label}  {metric}")
        lines.append(f"  {'method':<32} {'mean':>8} {'median':>8} {'wins':>5} {'beats':>5}")
        for m, row in table.items():
            lines.append(f"  {m:<32} {row['mean']:8.4f} {row['median']:8.4f} {row['wins']:5d} "
                         f"{result['scores'][(label, metric)][m]:5d}")
        for (m1, m2), p in result["p_values"][(label, metric)].items():
            lines.append(f"  Wilcoxon {m1} vs {m2}: p = {p:.4g}")
    lines.append(f"\nrank score (mean number of methods beaten at p < {result['alpha']:g}):")
    for m, s in sorted(result["rank_score"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  {m:<32} {s:.3f}")
    return "\n".join(lines)
