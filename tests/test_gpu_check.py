"""benchmarks/gpu_check.sh, the one-shot check for a machine with a GPU: its syntax, and its --dry-run (the tools
it needs are found, the plan of its steps is printed and written, nothing runs) on any machine."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_parses_and_its_dry_run_lists_every_step(tmp_path):
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    env = {**os.environ, "PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}  # this Python's tools, not PATH's
    done = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path / "out")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary == done.stdout and "missing" not in summary
    assert "CUDA tests: tests/test_benchmark_command.py" in summary
    steps = [line.split()[2] for line in summary.splitlines() if line.startswith("would run ")]
    assert steps == ["machine", "benchmark_command", "cuda_tests", "bench_gpu"]
    assert not (tmp_path / "out" / "nnunet").exists()


def test_gpu_check_without_the_tools_stops_before_running_anything(tmp_path):
    env = {**os.environ, "PYTHON": "/bin/true", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "missing: nnunet_blob" in done.stdout and "gpu_check: missing tools, nothing run" in done.stdout
