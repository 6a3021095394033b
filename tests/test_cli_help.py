"""``--help`` of the commands a newcomer meets first says what each does and how long it takes."""
from __future__ import annotations

import os

from helpers import TESTS, run_cli
from nnunet_blob.demo.budgets import MEASURED_CPU_SECONDS


def test_trainers_help_describes_the_command_and_registration():
    text = " ".join(run_cli("nnunet_blob", "trainers", "--help").stdout.split())
    assert "List the nnU-Net trainers of nnunet_blob" in text
    assert "nnUNet_extTrainer" in text and "<trainer>_demo" in text
    assert 'eval "$(nnunet_blob trainers --export)"' in text


def test_demo_help_gives_the_measured_cost_and_the_output_options():
    wide = {**os.environ, "COLUMNS": "10000"}  # argparse wraps at hyphens too: "CPU-" / "seconds"
    text = " ".join(run_cli("nnunet_blob", "demo", "--help", env=wide).stdout.split())
    # the cost it states is the one measured, as the README's budget table gives it
    readme = (TESTS.parent / "README.md").read_text().splitlines()
    for budget, cpu_seconds in MEASURED_CPU_SECONDS.items():
        assert f"{cpu_seconds} CPU-seconds" in text, budget
        row = next(line for line in readme if line.startswith(f"| `{budget}` |"))
        assert f"| {cpu_seconds} CPU-seconds |" in row, row
        if budget == "default":  # the least wall time on an idle 2-core CPU: CPU-seconds / 2 cores
            minutes = f"{cpu_seconds / 2 / 60:.1f} minutes"
            assert f"at least {minutes}" in text and f"| {minutes} |" in row, row
    assert "meaningless" in text  # the smoke budget's numbers
    for option in ("--verbose", "--clean", "--budget"):
        assert option in text


def test_benchmark_help_says_what_runs_what_it_measures_and_what_it_costs():
    text = " ".join(run_cli("nnunet_blob", "benchmark", "--help").stdout.split())
    assert "nnUNetTrainerBenchmark_5epochs" in text and "<trainer>_benchmark_noDataLoading" in text
    assert "torch.cuda.max_memory_allocated" in text and "ratio to stock" in text
    assert "nnUNetv2_plan_and_preprocess" in text and "2 x (1 + trainers) runs" in text


def test_trainers_lists_every_trainer_in_order_with_its_whole_description_and_the_default_marked(capsys):
    from nnunet_blob.cli import main
    from nnunet_blob.trainers import variants
    from nnunet_blob.trainers.cli import LISTING_ORDER, RECOMMENDED

    assert main(["trainers"]) == 0  # in this process: the trainers are imported once
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line[2:].startswith("nnUNetTrainer")]
    assert [row[2:].split()[0] for row in rows] == list(LISTING_ORDER)
    assert sorted(LISTING_ORDER) == sorted(variants.__all__)
    assert [row[2:].split()[0] for row in rows if row.startswith("*")] == [RECOMMENDED]
    assert any(line.startswith("* the recommended default") for line in lines)
    for row in rows:
        name, description = row[2:].split(maxsplit=1)
        doc = " ".join(getattr(variants, name).__doc__.strip().split("\n\n")[0].split())
        assert description == doc and description.endswith("."), row  # the whole first paragraph, a sentence
        assert len(row) <= 120, row
