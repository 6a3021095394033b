"""``nnunet_blob tune-postprocessing``: per class (or region), the probability threshold and minimum component
volume that maximise an instance metric on the cross-validation predictions, kept only when the gain is significant.

**Grid** (coarse on purpose): minimum volumes 0 and 7 values spaced geometrically from two voxels to the median
volume of the class's reference lesions (``--min-volumes`` to choose them); thresholds: nnU-Net's own rule and
0.3, 0.6, 0.75, 0.9 where the probabilities were saved (``--thresholds``). 8 x 5 = 40 settings per class.

**Decision rule** (:mod:`.significance`, ``rule``): per class, the setting with the best mean of the metric over
the cases (means as ``nnunet_blob evaluate`` takes them: cases where the metric is NaN do not count) replaces "no
change" only when a paired two-sided Wilcoxon signed-rank test says the gain is real. ``cross-validated`` (the
default): for each fold, the best setting on the other folds' cases is applied to the fold's cases, and the
out-of-fold scores of all cases are tested once against "no change" (``p < alpha``); the setting then applied is the
best on all cases. ``bonferroni``: the best setting's own test on all cases, ``p * (number of other settings in the
grid) < alpha``. Cross-validated selection needs cases of at least two folds; with fewer the Bonferroni rule is
used, and the report and the file say so. The grid (its default volumes come from all cases' reference lesions) is
the same in every fold.

**Speed**: each case is read once per pass; its components are labelled once per threshold and every minimum
volume is scored from the component table (:mod:`.tables`), for the metrics the table gives exactly. Other
metrics of ``nnunet_blob evaluate`` (surface-based ones) are computed on each distinct postprocessed mask.

Classes do not interact (:mod:`.rules`), so they are tuned together. Regions do (removing a component of one
region changes the label map the others are read from): they are tuned one after the other in the dataset's
order, each on the predictions with the settings chosen (on all cases) before it; cross-validated selection judges
each region's own setting out of fold given those. The before/after numbers printed and stored
are always those of the chosen file applied to the predictions (:func:`.rules.postprocess`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_blob.evaluation.compare import paired_wilcoxon
from nnunet_blob.evaluation.metric_facts import FACTS, METRICS, SIZE_BIN_PREFIX
from nnunet_blob.evaluation.metrics import label_metrics, spatial_view
from nnunet_blob.nnunet_internals import LabelLayout, label_or_region_key
from nnunet_blob.postprocessing.cases import CaseFiles, Predictions, load_case, reader_writer_class
from nnunet_blob.postprocessing.rules import (
    Setting,
    postprocess,
    remove_small_components,
    segmentation_from_probabilities,
)
from nnunet_blob.postprocessing.settings import DecisionError, PostprocessingFile
from nnunet_blob.postprocessing.significance import (
    BONFERRONI,
    CROSS_VALIDATED,
    Decision,
    check_rule,
    decide,
    decide_cross_validated,
    rule_text,
)
from nnunet_blob.postprocessing.tables import TABLE_METRICS, component_table, grid_counts, metrics_of_counts
from nnunet_blob.workers import Workers

#: thresholds tried besides nnU-Net's own rule (None)
DEFAULT_THRESHOLDS = (0.3, 0.6, 0.75, 0.9)
#: minimum volumes tried besides 0
DEFAULT_VOLUME_COUNT = 7
#: metrics printed next to the tuned one
REPORTED = ("F1", "IS", "IP", "Dice")
#: metrics of ``nnunet_blob evaluate`` that every evaluation computes, by direction
HIGHER_IS_BETTER = frozenset(f.name for f in METRICS if f.always and f.higher_is_better is True)
LOWER_IS_BETTER = frozenset(f.name for f in METRICS if f.always and f.higher_is_better is False)


@dataclass(frozen=True)
class Metric:
    """The metric to maximise (or minimise) and where its values come from."""

    name: str
    higher_is_better: bool

    @property
    def from_tables(self) -> bool:
        return self.name in TABLE_METRICS

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


def metric_named(name: str, direction: str | None = None) -> Metric:
    """The metric ``name`` of ``nnunet_blob evaluate``, with its direction from the metric facts
    (:mod:`nnunet_blob.evaluation.metric_facts`); ``direction`` (``"higher"``/``"lower"``) is needed only for
    metrics not known there.

    Raises:
        DecisionError: a direction other than higher/lower; a metric that only an evaluation option computes (the
            tuning evaluates every setting with the default options); a count without a better direction; an
            unknown metric without a direction.
    """
    if direction is not None and direction not in ("higher", "lower"):
        raise DecisionError(f"direction must be 'higher' or 'lower', got {direction!r}")
    known = sorted(HIGHER_IS_BETTER | LOWER_IS_BETTER)
    facts = FACTS.get(name)
    if facts is not None and not facts.always:
        raise DecisionError(f"metric {name!r} is computed only with nnunet_blob evaluate's {facts.needs}; "
                            f"tune-postprocessing evaluates each setting with the default options: tune one of "
                            f"{known}")
    if facts is not None and facts.higher_is_better is None and direction is None:
        raise DecisionError(f"metric {name!r} is a count: neither higher nor lower is better by itself; say which you "
                            f"want with --higher-is-better or --lower-is-better, or tune one of {known}")
    if direction is not None:
        return Metric(name, direction == "higher")
    if facts is not None:
        return Metric(name, bool(facts.higher_is_better))
    if name.startswith(SIZE_BIN_PREFIX):
        return Metric(name, True)
    raise DecisionError(f"metric {name!r}: is higher or lower better? Say so with --higher-is-better or "
                        f"--lower-is-better (known: {known})")


def default_min_volumes(reference_volumes: np.ndarray, voxel_volume_mm3: float,
                        count: int = DEFAULT_VOLUME_COUNT) -> tuple[float, ...]:
    """0 and ``count`` volumes spaced geometrically from two voxels to the median reference lesion volume (3
    significant digits)."""
    low = 2.0 * voxel_volume_mm3
    high = max(float(np.median(reference_volumes)) if reference_volumes.size else low, low)
    values = sorted({float(f"{v:.3g}") for v in np.geomspace(low, high, count)})
    return (0.0, *values)


# ---- per case (worker processes) ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaseJob:
    """What a worker needs to score one case."""

    case: CaseFiles
    reader_writer: str
    layout: LabelLayout
    keys: tuple  # the classes or regions of this pass
    thresholds: tuple  # None first
    fixed: tuple[Setting, ...]  # settings chosen before this pass (regions)
    connectivity: int


def _pass_segmentations(job: CaseJob, loaded):
    """(threshold, spatial reference, spatial prediction, spacing) per threshold of the pass."""
    reference, spacing = spatial_view(loaded.reference, loaded.spacing)
    fixed_thresholds = {s.label_or_region: s.threshold for s in job.fixed if s.threshold is not None}
    for t in job.thresholds:
        thresholds = dict(fixed_thresholds)
        if t is not None:
            thresholds.update({k: t for k in job.keys})
        if not thresholds and loaded.segmentation is not None:
            seg = loaded.segmentation
        else:
            if loaded.probabilities is None:
                raise DecisionError(f"case {job.case.name}: thresholds need probabilities (.npz)")
            seg = segmentation_from_probabilities(loaded.probabilities, job.layout, thresholds)
        prediction, _ = spatial_view(seg, loaded.spacing)
        for setting in job.fixed:
            if setting.min_volume_mm3 > 0:
                prediction = remove_small_components(prediction, setting.label_or_region, setting.min_volume_mm3,
                                                     spacing, job.connectivity)
        yield t, reference, prediction, spacing


def _case_name(job: CaseJob) -> str:
    """A job as the pool's errors name it."""
    return f"case {job.case.name}"


def case_tables(job: CaseJob) -> dict:
    """``{key: [ComponentTable per threshold]}`` of one case."""
    loaded = load_case(job.case, reader_writer_class(job.reader_writer)(),
                       use_probabilities=any(t is not None for t in job.thresholds)
                       or any(s.threshold is not None for s in job.fixed))
    tables: dict = {k: [] for k in job.keys}
    for _, reference, prediction, spacing in _pass_segmentations(job, loaded):
        for key in job.keys:
            tables[key].append(component_table(reference, prediction, key, spacing, job.layout.ignore_label,
                                               job.connectivity))
    return tables


def case_metric_grid(job: CaseJob, volumes: dict, metric: str, tolerance_mm: float) -> dict:
    """``{key: (thresholds, volumes) array}`` of a metric the tables do not give, from ``label_metrics`` on each
    distinct postprocessed mask."""
    loaded = load_case(job.case, reader_writer_class(job.reader_writer)(),
                       use_probabilities=any(t is not None for t in job.thresholds))
    out = {k: np.full((len(job.thresholds), len(volumes[k])), np.nan) for k in job.keys}
    for ti, (_, reference, prediction, spacing) in enumerate(_pass_segmentations(job, loaded)):
        for key in job.keys:
            cache: dict = {}
            for vi, volume in enumerate(volumes[key]):
                processed = remove_small_components(prediction, key, volume, spacing, job.connectivity)
                signature = int(np.count_nonzero(processed != prediction))
                if signature not in cache:
                    cache[signature] = label_metrics(reference, processed, key, spacing, job.layout.ignore_label,
                                                     tolerance_mm, job.connectivity)
                if metric not in cache[signature]:
                    raise DecisionError(f"nnunet_blob evaluate has no per-case metric {metric!r}; it has "
                                        f"{sorted(cache[signature])}")
                out[key][ti, vi] = cache[signature][metric]
    return out


def case_scores(job: CaseJob, settings: tuple, metric: str, tolerance_mm: float) -> dict:
    """``{metric name: {key: value}}`` of one case with ``settings`` applied (the reported metrics and ``metric``)."""
    loaded = load_case(job.case, reader_writer_class(job.reader_writer)(),
                       use_probabilities=any(s.threshold is not None for s in settings))
    seg = postprocess(loaded.segmentation, loaded.probabilities, settings, job.layout, loaded.spacing,
                      job.connectivity)
    reference, spacing = spatial_view(loaded.reference, loaded.spacing)
    prediction, _ = spatial_view(seg, loaded.spacing)
    names = list(dict.fromkeys((*REPORTED, metric)))
    scores: dict = {name: {} for name in names}
    for key in job.layout.labels_or_regions:
        if metric in TABLE_METRICS:
            table = component_table(reference, prediction, key, spacing, job.layout.ignore_label, job.connectivity)
            values = metrics_of_counts(grid_counts(table, [0.0])[0], table.voxel_volume)
        else:
            values = label_metrics(reference, prediction, key, spacing, job.layout.ignore_label, tolerance_mm,
                                   job.connectivity)
        for name in names:
            scores[name][key] = float(values[name])
    return scores


# ---- tuning -------------------------------------------------------------------------------------------------------


@dataclass
class ClassTuning:
    """The grid of one class or region and its outcome."""

    label_or_region: int | tuple
    thresholds: tuple
    min_volumes: tuple
    values: np.ndarray  # (cases, thresholds, volumes) of the metric
    decision: Decision

    @property
    def setting(self) -> Setting:
        t, v = self.decision.chosen
        return Setting(self.label_or_region, float(self.min_volumes[v]), self.thresholds[t])

    @property
    def best_setting(self) -> Setting:
        return self.setting_at(self.decision.best)

    def setting_at(self, index: tuple[int, int]) -> Setting:
        """The setting at (threshold index, volume index) of the grid."""
        t, v = index
        return Setting(self.label_or_region, float(self.min_volumes[v]), self.thresholds[t])

    def fold_choices(self) -> list[tuple]:
        """Cross-validated rule: (fold, its number of cases, the setting chosen on the other folds' cases)."""
        oof = self.decision.out_of_fold
        if oof is None:
            return []
        return [(fold, sum(f == fold for f in oof.case_folds), self.setting_at(choice))
                for fold, choice in zip(oof.folds, oof.choices, strict=True)]


@dataclass
class TuningResult:
    predictions: Predictions
    metric: Metric
    alpha: float
    connectivity: int
    classes: list[ClassTuning]
    before: dict  # {metric name: (cases, keys) array} with nothing changed
    after: dict  # the same with the chosen settings applied
    notes: list[str]
    rule: str = CROSS_VALIDATED  # the decision rule used (:mod:`.significance`)

    @property
    def settings(self) -> tuple[Setting, ...]:
        return tuple(c.setting for c in self.classes)

    def foreground_mean(self, which: str = "after", metric: str | None = None) -> float:
        """Mean over classes of the mean over cases (``nnunet_blob evaluate``'s ``foreground_mean``)."""
        values = (self.after if which == "after" else self.before)[metric or self.metric.name]
        with np.errstate(all="ignore"):
            per_class = [np.nanmean(values[:, k]) if not np.isnan(values[:, k]).all() else np.nan
                         for k in range(values.shape[1])]
        return float(np.mean(per_class))

    def case_means(self, which: str = "after") -> np.ndarray:
        """Per case, the mean over classes of the metric (NaN where no class defines it)."""
        values = (self.after if which == "after" else self.before)[self.metric.name]
        with np.errstate(all="ignore"):
            counts = (~np.isnan(values)).sum(1)
            return np.where(counts > 0, np.nansum(values, 1) / np.maximum(counts, 1), np.nan)

    def postprocessing_file(self) -> PostprocessingFile:
        p = self.predictions
        record = {
            "metric": self.metric.name, "higher_is_better": self.metric.higher_is_better,
            "decision_rule": rule_text(self.rule, self.metric.name, self.alpha), "rule": self.rule,
            "alpha": self.alpha,
            "source": {"dataset": p.dataset, "model": p.identifier, "members": p.members, "folds": list(p.folds),
                       "cases": len(p.cases), "probabilities": p.has_probabilities},
            "tuning": [_class_record(c, [case.name for case in p.cases]) for c in self.classes],
            "cross_validation": {which: {name: {label_or_region_key(k): _number(np.nanmean(values[:, i]))
                                                if not np.isnan(values[:, i]).all() else None
                                                for i, k in enumerate(p.layout.labels_or_regions)}
                                         for name, values in data.items()}
                                 for which, data in (("before", self.before), ("after", self.after))},
            "notes": self.notes,
        }
        return PostprocessingFile(self.settings, p.layout, p.file_ending, p.reader_writer, self.connectivity, record)

    def report(self) -> str:
        p = self.predictions
        lines = [f"{p.identifier}: {len(p.cases)} cross-validation cases of folds {list(p.folds)}, "
                 f"metric {self.metric.name} ({self.metric.direction})",
                 rule_text(self.rule, self.metric.name, self.alpha)]
        lines += [f"note: {n}" for n in self.notes]
        names = list(dict.fromkeys((self.metric.name, *REPORTED)))
        for index, c in enumerate(self.classes):
            d = c.decision
            grid = f"{len(c.min_volumes)} minimum volumes x {len(c.thresholds)} thresholds"
            lines.append(f"\n{_key_name(c.label_or_region)} ({grid}, {d.paired_cases} paired cases):")
            lines.append(f"  grid: minimum volumes {', '.join(f'{v:g}' for v in c.min_volumes)} mm³; thresholds "
                         f"{', '.join('nnU-Net' if t is None else f'{t:g}' for t in c.thresholds)}")
            lines.append(f"  no change: mean {self.metric.name} {d.mean_no_change:.4f}; best of the grid "
                         f"({c.best_setting.describe()}): {d.mean_best:.4f}")
            if d.out_of_fold is not None:
                lines.append("  per fold, the best on the other folds' cases: " + "; ".join(
                    f"fold {fold} ({n} cases): {setting.describe()}" for fold, n, setting in c.fold_choices()))
                lines.append(f"  out of fold: mean {self.metric.name} {d.out_of_fold.mean:.4f} vs no change "
                             f"{d.mean_no_change:.4f}")
            if d.best == (0, 0):
                lines.append("  no setting of the grid is better than no change")
            else:
                verdict = "chosen" if d.accepted else "kept no change"
                test = (f"Wilcoxon p (out of fold vs no change) = {d.p_value:.3g}" if d.rule == CROSS_VALIDATED
                        else f"Wilcoxon p = {d.p_value:.3g}, x {d.other_settings} = {d.p_corrected:.3g}")
                lines.append(f"  {test} {'<' if d.p_corrected < self.alpha else '>='} {self.alpha:g}"
                             + (", out-of-fold mean not better" if d.p_corrected < self.alpha and not d.accepted
                                else "") + f": {verdict}")
            lines.append(f"  -> {c.setting.describe()}")
            for name in names:
                before, after = self.before[name][:, index], self.after[name][:, index]
                lines.append(f"     {name:<5} before {_fmt(before)}  after {_fmt(after)}  "
                             f"(Wilcoxon p = {paired_wilcoxon(after, before):.3g})")
        lines.append(f"\nforeground mean {self.metric.name}: before {self.foreground_mean('before'):.4f}, after "
                     f"{self.foreground_mean('after'):.4f}")
        return "\n".join(lines)


def _key_name(key) -> str:
    return f"region {label_or_region_key(key)}" if isinstance(key, tuple) else f"class {key}"


def _fmt(values: np.ndarray) -> str:
    return "nan   " if np.isnan(values).all() else f"{np.nanmean(values):.4f}"


def _number(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def _setting_record(setting: Setting) -> dict:
    return {"threshold": setting.threshold, "min_volume_mm3": setting.min_volume_mm3,
            "description": setting.describe()}


def _class_record(c: ClassTuning, case_names: list[str]) -> dict:
    d = c.decision
    with np.errstate(all="ignore"):
        means = np.nanmean(c.values, 0) if c.values.size else np.zeros((len(c.thresholds), len(c.min_volumes)))
    record: dict = {
        "label_or_region": label_or_region_key(c.label_or_region), "min_volumes_mm3": list(c.min_volumes),
        "thresholds": list(c.thresholds), "mean": [[_number(v) for v in row] for row in means],
        "no_change": _number(d.mean_no_change), "best": c.best_setting.describe(), "best_mean": _number(d.mean_best),
        "rule": d.rule, "p_value": d.p_value}
    if d.out_of_fold is None:
        record.update({"p_corrected": d.p_corrected, "other_settings": d.other_settings})
    else:
        oof = d.out_of_fold
        record["out_of_fold"] = {
            "mean": _number(oof.mean),
            "folds": [{"fold": fold, "cases": n, "chosen_on_other_folds": _setting_record(setting)}
                      for fold, n, setting in c.fold_choices()],
            "cases": {name: {"fold": fold, "no_change": _number(c.values[i, 0, 0]),
                             "out_of_fold": _number(oof.values[i])}
                      for i, (name, fold) in enumerate(zip(case_names, oof.case_folds, strict=True))},
        }
    record.update({"paired_cases": d.paired_cases, "chosen": c.setting.describe(), "changed": d.accepted})
    return record


def tune(predictions: Predictions, metric: Metric, *, thresholds: Sequence[float] | None = DEFAULT_THRESHOLDS,
         min_volumes: Sequence[float] | None = None, alpha: float = 0.05, connectivity: int = 26,
         tolerance_mm: float = 1.0, num_processes: int = 1, rule: str = CROSS_VALIDATED) -> TuningResult:
    """Tune the postprocessing of ``predictions`` (see the module docstring). ``thresholds=None`` or no
    probabilities: minimum volumes only. ``min_volumes``: the grid in mm³ (0 is added), default from the data.
    ``rule``: the decision rule (:data:`.significance.RULES`)."""
    if not predictions.cases:
        raise DecisionError(f"{predictions.identifier}: no cases to tune on")
    notes: list[str] = []
    rule = _usable_rule(check_rule(rule), predictions, notes)
    case_folds = [case.fold for case in predictions.cases]
    threshold_grid: tuple = (None,)
    if thresholds:
        if predictions.has_probabilities:
            threshold_grid = (None, *sorted({float(t) for t in thresholds}))
            if not all(0.0 < t < 1.0 for t in threshold_grid[1:]):
                raise DecisionError(f"thresholds must lie between 0 and 1, got {list(thresholds)}")
        else:
            notes.append(f"probability thresholds not tuned: {predictions.no_probabilities}")
    volume_grid = None if min_volumes is None else tuple(sorted({0.0, *(float(v) for v in min_volumes)}))
    if volume_grid is not None and min(volume_grid) < 0:
        raise DecisionError(f"minimum volumes must be >= 0 mm³, got {list(min_volumes or [])}")
    layout = predictions.layout
    keys = layout.labels_or_regions
    passes = [(k,) for k in keys] if layout.has_regions else [tuple(keys)]
    fixed: list[Setting] = []
    classes: list[ClassTuning] = []
    with Workers(min(num_processes, len(predictions.cases))) as workers:
        for keys_of_pass in passes:
            jobs = [CaseJob(case, predictions.reader_writer, layout, keys_of_pass, threshold_grid, tuple(fixed),
                            connectivity) for case in predictions.cases]
            tables = workers.map(case_tables, jobs, (), f"labelling components ({len(threshold_grid)} thresholds)",
                                 _case_name)
            grids = {key: volume_grid or _data_volumes(tables, key) for key in keys_of_pass}
            if metric.from_tables:
                values = {key: _table_values(tables, key, grids[key], metric.name) for key in keys_of_pass}
            else:
                grids_per_case = workers.map(case_metric_grid, jobs, (grids, metric.name, tolerance_mm),
                                             f"{metric.name} on the postprocessed masks", _case_name)
                values = {key: np.stack([g[key] for g in grids_per_case]) for key in keys_of_pass}
            for key in keys_of_pass:
                decision = (decide_cross_validated(values[key], case_folds, metric.higher_is_better, alpha)
                            if rule == CROSS_VALIDATED else decide(values[key], metric.higher_is_better, alpha))
                tuning = ClassTuning(key, threshold_grid, grids[key], values[key], decision)
                classes.append(tuning)
                fixed.append(tuning.setting)
        settings = tuple(c.setting for c in classes)
        jobs = [CaseJob(case, predictions.reader_writer, layout, tuple(keys), (None,), (), connectivity)
                for case in predictions.cases]
        before = _scores(workers.map(case_scores, jobs, ((), metric.name, tolerance_mm), "scoring the predictions",
                                     _case_name), keys)
        after = before if all(s.changes_nothing for s in settings) else \
            _scores(workers.map(case_scores, jobs, (settings, metric.name, tolerance_mm),
                                "scoring the postprocessed predictions", _case_name), keys)
    return TuningResult(predictions, metric, alpha, connectivity, classes, before, after, notes, rule)


def _usable_rule(rule: str, predictions: Predictions, notes: list[str]) -> str:
    """``rule``, or the Bonferroni rule (with a note saying why) when the cases do not span two folds."""
    if rule != CROSS_VALIDATED:
        return rule
    unknown = [case.name for case in predictions.cases if case.fold is None]
    folds = sorted({str(case.fold) for case in predictions.cases if case.fold is not None})
    if not unknown and len(folds) >= 2:
        return rule
    why = (f"the fold of {len(unknown)} cases is not known (e.g. {unknown[0]})" if unknown else
           f"all {len(predictions.cases)} cases are validation cases of fold {folds[0]}")
    notes.append(f"decision rule {BONFERRONI} used instead of {CROSS_VALIDATED}: cross-validated selection needs the "
                 f"validation cases of at least two folds, and {why}; tune on more folds (e.g. -f 0 1 2 3 4) to "
                 f"use it")
    return BONFERRONI


def _data_volumes(tables: list, key) -> tuple[float, ...]:
    reference = np.concatenate([t[key][0].ref_volume for t in tables])
    voxel = float(np.median([t[key][0].voxel_volume for t in tables]))
    return default_min_volumes(reference, voxel)


def _table_values(tables: list, key, volumes: tuple, metric: str) -> np.ndarray:
    out = np.empty((len(tables), len(tables[0][key]), len(volumes)))
    for ci, per_case in enumerate(tables):
        for ti, table in enumerate(per_case[key]):
            for vi, counts in enumerate(grid_counts(table, volumes)):
                out[ci, ti, vi] = metrics_of_counts(counts, table.voxel_volume)[metric]
    return out


def _scores(per_case: list[dict], keys) -> dict:
    names = per_case[0].keys()
    return {name: np.array([[case[name][k] for k in keys] for case in per_case], dtype=np.float64) for name in names}
