"""``--help`` of the commands a newcomer meets first says what each does and how long it takes."""
from __future__ import annotations

from conftest import run_cli


def test_trainers_help_describes_the_command_and_registration():
    text = " ".join(run_cli("nnunet_blob", "trainers", "--help").stdout.split())
    assert "List the nnU-Net trainers of nnunet_blob" in text
    assert "nnUNet_extTrainer" in text and "<trainer>_demo" in text
    assert 'eval "$(nnunet_blob trainers --export)"' in text


def test_demo_help_gives_the_measured_cost_and_the_output_options():
    text = " ".join(run_cli("nnunet_blob", "demo", "--help").stdout.split())
    assert "about 900 CPU-seconds" in text and "meaningless numbers" in text
    assert "--verbose" in text and "one line per stage and per training epoch" in text
    assert "says what it removed" in text


def test_benchmark_help_says_what_runs_what_it_measures_and_what_it_costs():
    text = " ".join(run_cli("nnunet_blob", "benchmark", "--help").stdout.split())
    assert "nnUNetTrainerBenchmark_5epochs" in text and "<trainer>_benchmark_noDataLoading" in text
    assert "torch.cuda.max_memory_allocated" in text and "ratio to stock" in text
    assert "nnUNetv2_plan_and_preprocess" in text and "2 x (1 + trainers) runs" in text
