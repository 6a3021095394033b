"""Reduced nnU-Net plans for CPU runs (demo, tests)."""
from __future__ import annotations

import json
from pathlib import Path


def shrink_plans(plans_file: Path, base_features: int = 4, batch_size: int = 2) -> None:
    """Fewer features per stage (``base_features * 2**stage``, at most 8x) and a small batch; patch size, stages
    and data are unchanged, so the preprocessed data stays valid."""
    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    for configuration in plans["configurations"].values():
        arch = configuration.get("architecture", {}).get("arch_kwargs")
        if arch:
            arch["features_per_stage"] = [min(base_features * 2 ** i, 8 * base_features)
                                          for i in range(arch["n_stages"])]
        if "batch_size" in configuration:
            configuration["batch_size"] = batch_size
    tmp = plans_file.with_name(plans_file.name + ".tmp")
    tmp.write_text(json.dumps(plans, indent=1))
    tmp.replace(plans_file)
