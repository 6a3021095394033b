"""The short text ``nnunet_blob evaluate`` ends with: per label or region the case means of the main metrics,
the pooled lesion counts and where the summary went."""
from __future__ import annotations

import math

from nnunet_blob.evaluation.metric_facts import COLUMNS as MEAN_COLUMNS


def _number(value) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def format_summary(summary: dict, output_file, png_dir=None) -> str:
    """A few lines: one per label with the case means and pooled counts (and FROC/AP when computed), the metrics
    undefined in some cases, the cases left out (``--chill``), and where the summary and pictures went."""
    n_cases = len(summary["metric_per_case"])
    lines = [f"{n_cases} cases evaluated (means over cases; lesions pooled over cases)"]
    left_out = summary.get("references_without_prediction", [])
    if left_out:
        shown = ", ".join(left_out[:5]) + (", ..." if len(left_out) > 5 else "")
        lines.append(f"  note: {len(left_out)} reference case(s) without a prediction left out (--chill): {shown}")
    for label, means in summary["mean"].items():
        pooled = summary["pooled_instances"][label]
        columns = [f"{title} {_number(means[key])}" for key, title in MEAN_COLUMNS if key in means]
        lines.append(f"  label {label}: " + "  ".join(columns))
        counts = (f"    lesions: {pooled['n_ref_instances']} reference, {pooled['TP_ref_instances']} found, "
                  f"{pooled['FN_instances']} missed; {pooled['n_pred_instances']} predicted, "
                  f"{pooled['FP_instances']} false positive ({_number(pooled['FP_per_case'])} per case); pooled "
                  f"IS {_number(pooled['IS'])} IP {_number(pooled['IP'])} F1 {_number(pooled['F1'])}")
        lines.append(counts)
        undefined = {title: summary.get("nan_cases", {}).get(label, {}).get(key, 0) for key, title in MEAN_COLUMNS
                     if key in means}
        undefined = {title: n for title, n in undefined.items() if n}
        if undefined:
            which = ", ".join(f"{title} in {n}" for title, n in undefined.items())
            lines.append(f"    note: undefined (NaN: e.g. reference and prediction without this label) {which} of "
                         f"{n_cases} cases; each mean is over the cases where it is defined (nan when none is; "
                         f"--empty-case one scores such a case 1)")
        if "DSB_AP" in pooled:
            lines.append(f"    cell scores of the pooled counts: AP(DSB) {_number(pooled['DSB_AP'])}, AP@0.5 "
                         f"{_number(pooled['AP@0.5'])}, F1@0.5 {_number(pooled['F1@0.5'])}, precision@0.5 "
                         f"{_number(pooled['precision@0.5'])}, recall@0.5 {_number(pooled['recall@0.5'])}")
        if "FROC" in pooled:
            lines.append(f"    detection from probabilities: FROC mean {_number(pooled['FROC']['mean'])}, "
                         f"AP {_number(pooled['AP'])}")
    lines.append(f"summary: {output_file}")
    if png_dir is not None:
        lines.append(f"pictures: {png_dir}")
    return "\n".join(lines)
