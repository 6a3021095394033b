"""benchmarks/bench_gpu.py --smoke: the GPU benchmark's whole path (dataset, nnU-Net's planning and preprocessing,
instance maps, four trainers with nnU-Net's loader processes, interleaved measurements, tables) on the CPU."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"


def test_bench_gpu_smoke_reports_every_trainer_and_density():
    env = {**os.environ, "nnUNet_n_proc_DA": "2"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--processes", "2"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for stage in ("stage 1/4", "stage 2/4", "stage 3/4", "stage 4/4", "machine: ", "done"):
        assert stage in out, stage
    tables = re.findall(r"### about (\d+) instances per patch", out)
    assert tables == ["1", "10", "40"]
    for trainer in ("nnUNetTrainerBlobDice", "nnUNetTrainerBlobTversky", "nnUNetTrainerTopKDice"):
        rows = re.findall(rf"^\| {trainer} \| ([0-9.]+) \(([0-9.]+)x\) \| ([0-9.]+) \(([0-9.]+)x\) \|", out, re.M)
        assert len(rows) == 3, (trainer, out[-3000:])
        assert all(float(value) > 0 and float(ratio) > 0 for row in rows for value, ratio in (row[:2], row[2:]))
    assert "failed" not in out
