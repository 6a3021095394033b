"""Reduced nnU-Net plans for CPU runs (demo, tests)."""
from __future__ import annotations

import json
import math
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


def set_patch_size(plans_file: Path, configuration: str, patch_size: list[int]) -> str:
    """A smaller training patch for ``configuration`` (cheaper iterations on a CPU); the network, the spacing and the
    preprocessed data are unchanged, and nnU-Net's sliding window predicts with the same patch.

    Each axis must be a multiple of the network's total downsampling along it (the product of the stages'
    strides), as nnU-Net's planner makes its own patches. nnU-Net's own patch stays in the configuration as
    ``planned_patch_size`` (see :func:`planned_patch_size`), so that setting the patch again starts from it.

    Raises:
        ValueError: unknown configuration, wrong number of axes, or an axis that the strides do not divide.
    """
    plans_file = Path(plans_file)
    plans = json.loads(plans_file.read_text())
    if configuration not in plans["configurations"]:
        raise ValueError(f"{plans_file} has no configuration {configuration!r}; it has "
                         f"{', '.join(plans['configurations'])}")
    config = plans["configurations"][configuration]
    before = planned_patch_size(plans, configuration)
    patch = [int(p) for p in patch_size]
    if len(patch) != len(before):
        raise ValueError(f"patch size {patch} has {len(patch)} axes; {configuration} has {len(before)} "
                         f"(planned {before})")
    strides = config["architecture"]["arch_kwargs"]["strides"]
    downsampling = [math.prod(s[axis] for s in strides) for axis in range(len(before))]
    bad = [axis for axis, (p, d) in enumerate(zip(patch, downsampling, strict=True)) if p <= 0 or p % d]
    if bad:
        raise ValueError(f"patch size {patch} is not a positive multiple of the network's downsampling "
                         f"{downsampling} along {'axis' if len(bad) == 1 else 'axes'} {', '.join(map(str, bad))}; "
                         f"choose multiples of it (planned {before})")
    config["planned_patch_size"], config["patch_size"] = before, patch
    atomic_write_bytes(plans_file, json.dumps(plans, indent=1).encode())
    return f"{configuration}: patch size {before} -> {patch}"


def planned_patch_size(plans: dict, configuration: str) -> list[int]:
    """nnU-Net's own patch of ``configuration`` in ``plans`` (the loaded plans file), also after
    :func:`set_patch_size`."""
    config = plans["configurations"][configuration]
    return list(config.get("planned_patch_size", config["patch_size"]))
