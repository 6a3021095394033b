"""Reduced nnU-Net plans for CPU runs (demo, tests)."""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_blob.files import atomic_write_bytes


def shrink_plans(plans_file: Path, base_features: int = 4, batch_size: int = 2) -> str:
    """Fewer features per stage (``base_features * 2**stage``, at most 8x) and a small batch; patch size, stages
    and data are unchanged, so the preprocessed data stays valid. Returns what changed, one line per
    configuration."""
    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    changes = []
    for name, configuration in plans["configurations"].items():
        arch = configuration.get("architecture", {}).get("arch_kwargs")
        if arch:
            before = list(arch["features_per_stage"])
            arch["features_per_stage"] = [min(base_features * 2 ** i, 8 * base_features)
                                          for i in range(arch["n_stages"])]
            changes.append(f"{name}: features per stage {before} -> {arch['features_per_stage']}")
        if configuration.get("batch_size", batch_size) != batch_size:
            changes.append(f"{name}: batch size {configuration['batch_size']} -> {batch_size}")
            configuration["batch_size"] = batch_size
    atomic_write_bytes(plans_file, json.dumps(plans, indent=1).encode())
    return "\n".join(changes)
