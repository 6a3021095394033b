"""What the benchmarks on public, human-annotated data share (``bench_real.py``: DSB2018 nuclei, ``bench_ms.py``: MS
lesions): the lesion-wise evaluations, the summaries' numbers, the workspace's settings, the device, and a listing of
the commands a run would execute."""
from __future__ import annotations

import io
import json
import shlex
import statistics
from collections.abc import Callable, Sequence
from contextlib import redirect_stderr
from pathlib import Path

from nnunet_blob.demo.stages import StageError, Stages
from nnunet_blob.evaluation.compare import load_summary, paired_wilcoxon

#: evaluation -> (table column -> metric of the summary); a metric an evaluation did not compute is left out
METRICS = {
    "overlap": {"DSC": "Dice", "SDSC": "SurfaceDice", "F1": "F1", "IS": "IS", "IP": "IP"},
    "one-to-one": {"F1": "F1", "IS": "IS", "IP": "IP", "PQ": "PQ"},
}
DESCRIPTIONS = {
    "overlap": "blob-loss paper's rule: a reference component is found when a predicted component touches it",
    "one-to-one": "one-to-one matching of components at IoU >= 0.5 (panoptica)",
}
#: ``nnunet_blob evaluate`` options of the evaluations every benchmark makes ("overlap" is evaluate's default)
COMPONENT_EVALUATIONS: dict[str, list] = {"overlap": [], "one-to-one": ["--matching", "one-to-one"]}


def evaluate_accepts(*options: str) -> bool:
    """Whether this nnunet_blob's ``evaluate`` parses ``options``."""
    from nnunet_blob.cli import build_parser

    try:
        with redirect_stderr(io.StringIO()):
            build_parser().parse_args(["evaluate", "GT", "PRED", "-l", "1", *options])
    except SystemExit:
        return False
    return True


def row_name(trainer: str, evaluation: str) -> str:
    """Results row (and evaluation folder) of ``trainer`` under ``evaluation``."""
    return trainer if evaluation == "overlap" else f"{trainer} {evaluation}"


def has_metric(summary: Path, metric: str) -> bool:
    return metric in json.loads(Path(summary).read_text())["foreground_mean"]


def foreground_mean(summary: Path, metric: str) -> float:
    return float(json.loads(Path(summary).read_text())["foreground_mean"][metric])


def per_case(summary: Path, metric: str) -> dict[str, float]:
    """{case: value} of the (only) foreground label."""
    values = load_summary(str(summary))
    return dict(values[next(iter(values))][metric])


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def p_value(stock: Path, other: Path, metric: str) -> float:
    """Paired two-sided Wilcoxon over the cases of the (only) foreground label."""
    return seed_mean_p_value([stock], [other], metric)


def seed_mean_p_value(stock: Sequence[Path], other: Sequence[Path], metric: str) -> float:
    """Paired two-sided Wilcoxon over the cases (of the only foreground label) of each case's mean over the seeds
    (one summary per seed on each side, in the same seed order); a case undefined in any seed is left out."""
    a = [per_case(summary, metric) for summary in stock]
    b = [per_case(summary, metric) for summary in other]
    cases = sorted(a[0])
    return paired_wilcoxon([statistics.mean(seed[c] for seed in a) for c in cases],
                           [statistics.mean(seed[c] for seed in b) for c in cases])


def direction(stock: Path, other: Path, metric: str) -> str:
    """``+`` when ``other``'s mean is above stock's, ``−`` when below, ``=`` when equal."""
    difference = foreground_mean(other, metric) - foreground_mean(stock, metric)
    return "+" if difference > 0 else "−" if difference < 0 else "="


def check_settings(file: Path, wanted: dict) -> None:
    """A workspace trained with another budget or network is refused, not mixed."""
    if file.is_file():
        previous = json.loads(file.read_text())
        if previous != wanted:
            raise StageError(f"{file.parent} holds runs with {previous}, not {wanted}; choose another --workspace "
                             f"(the converted dataset can stay: only the trained folders and {file.name} depend on "
                             f"this)")
    else:
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(json.dumps(wanted, indent=1))


def device(choice: str) -> str:
    if choice != "auto":
        return choice
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def marker_time(markers: Path, name: str) -> str:
    """When stage ``name`` of the markers folder ``markers`` last finished ("" when it has not): the key of a stage
    that depends on another workspace's stage, so that it restarts when that one ran again."""
    marker = Path(markers) / f"{name}.done"
    return str(json.loads(marker.read_text()).get("finished")) if marker.is_file() else ""


class CommandListing(Stages):
    """Stages that print what each stage would run -- its command line, or what its Python step makes -- and mark the
    stages already done, instead of running anything or removing any output."""

    def run(self, name: str, action: Sequence | Callable[[], str | None], describe: str,
            after: Sequence[str] = (), environment: dict | None = None, key: str = "",
            progress: Callable[[str], str | None] | None = None, verbose_note: str = "") -> bool:
        self.count += 1
        state = "done" if self.done(name, after, key) else "to run"
        what = f"(python) {describe}" if callable(action) else shlex.join(map(str, action))
        self.say(f"[{self.count}/{self.total}] {name} ({state}): {what}")
        return False

    def remove_stale(self, folder: Path) -> None:
        """Listing only: nothing is removed."""

    def say(self, text: str) -> None:
        print(text, flush=True)  # the current standard output (a listing is read, or captured, as it comes)
