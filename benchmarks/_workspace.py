"""A scratch nnU-Net workspace with a synthetic dataset, shared by the benchmark scripts."""
from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def workspace(prefix: str) -> Path:
    """Point nnU-Net's folders at a new temporary workspace (before nnU-Net reads them); removed at exit unless
    NNUNET_BLOB_KEEP_BENCH=1."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.environ.get("NNUNET_BLOB_KEEP_BENCH") != "1":
        atexit.register(shutil.rmtree, root, ignore_errors=True)
    for name in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{name}"] = str(root / name)
    return root


def timed(*command) -> float:
    """Wall time of a command line tool of this environment (fails loudly)."""
    start = time.perf_counter()
    subprocess.run([str(BIN / command[0]), *map(str, command[1:])], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def plan(dataset_id: int, num_processes: int) -> None:
    """Fingerprint and plans only (the preprocessing itself is what the benchmarks time)."""
    timed("nnUNetv2_extract_fingerprint", "-d", dataset_id, "-np", num_processes)
    timed("nnUNetv2_plan_experiment", "-d", dataset_id)
