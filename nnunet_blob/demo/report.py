"""The demo's results table: the blob-loss paper's Table 1 columns per trainer, from ``nnunet_blob evaluate``."""
from __future__ import annotations

import json
import math
from pathlib import Path

#: the name of a results row with the tuned postprocessing applied: ``<trainer> tuned``
TUNED_SUFFIX = " tuned"


def row_key(row: str) -> str:
    """A results row's name in file and stage names (``<trainer> tuned`` -> ``<trainer>_tuned``)."""
    return row.replace(" ", "_")


#: column -> key in the summary's ``foreground_mean`` (means over the test cases, then over foreground labels)
COLUMNS = {"DSC": "Dice", "SDSC": "SurfaceDice", "F1": "F1", "IS": "IS", "IP": "IP"}


def results_table(summaries: dict, evaluation_root: Path, caveat: str = "") -> tuple[dict, str]:
    """({trainer: {column: value}}, Markdown text with the table and the detection pictures' folders; ``caveat``
    first when given)."""
    table = {}
    for trainer, path in summaries.items():
        means = json.loads(Path(path).read_text())["foreground_mean"]
        table[trainer] = {column: means.get(key, math.nan) for column, key in COLUMNS.items()}
    num_cases = len(json.loads(Path(next(iter(summaries.values()))).read_text())["metric_per_case"])
    lines = [f"**{caveat}**", ""] if caveat else []
    lines += [f"Test split, {num_cases} cases (mean per case; DSC/SDSC volumetric, F1/IS/IP instance-wise):", "",
             "| trainer | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for trainer, row in table.items():
        lines.append(f"| {trainer} | " + " | ".join(f"{v:.3f}" for v in row.values()) + " |")
    lines += ["", "Detection pictures (maximum-intensity projections along each axis, outlined objects; green "
                  "found, red missed, blue false positive; legend in each picture):"]
    for trainer in summaries:
        folder = Path(evaluation_root) / row_key(trainer) / "pictures"
        pictures = sorted(folder.glob("*.png"))
        if pictures:
            lines.append(f"- {trainer}: {len(pictures)} PNG in {folder}, e.g. {pictures[0]}")
    tuned = [row for row in summaries if row.endswith(TUNED_SUFFIX)]
    if tuned:
        lines += ["", "Rows \"tuned\": the five-fold ensemble with the postprocessing that nnunet_blob "
                      "tune-postprocessing chose on the folds' validation predictions (never the test split); the "
                      "chosen settings and the tests behind them are in each trainer's logs/tune_<trainer>.log."]
    return table, "\n".join(lines) + "\n"
