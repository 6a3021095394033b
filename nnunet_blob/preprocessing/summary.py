"""Dataset summary like the blob loss paper's Fig. 4: instances per case and instance volumes per class."""
from __future__ import annotations

import numpy as np


def describe_manifest(manifest: dict, voxel_volume_mm3: float = 1.0) -> str:
    """Text table: instances per case (mean ± sd, min, max) and instance volume (median, 5th/95th pct.) per class."""
    cases = manifest.get("cases", {})
    if not cases:
        return "no cases"
    classes = sorted({c for r in cases.values() for c in r["instances_per_class"]}, key=int)
    lines = [f"{manifest['dataset']} {manifest['configuration']}: {len(cases)} cases, connectivity "
             f"{manifest['connectivity']}",
             f"{'class':>7} | {'instances per case: mean ± sd':>30} | {'min':>5} | {'max':>5} | "
             f"{'volume median':>13} | {'p5':>8} | {'p95':>8}  (voxels; mm³ = voxels × {voxel_volume_mm3:g})"]
    for label in classes + ["all"]:
        per_case = np.array([r["num_instances"] if label == "all" else r["instances_per_class"].get(label, 0)
                             for r in cases.values()])
        sizes = np.array([s for r in cases.values()
                          for s, c in zip(r["instance_sizes"], r["instance_classes"], strict=True)
                          if label == "all" or str(c) == label])
        volume = (f"{np.median(sizes):13.1f} | {np.percentile(sizes, 5):8.1f} | {np.percentile(sizes, 95):8.1f}"
                  if sizes.size else f"{'-':>13} | {'-':>8} | {'-':>8}")
        lines.append(f"{label:>7} | {per_case.mean():19.2f} ± {per_case.std():8.2f} | {per_case.min():5d} | "
                     f"{per_case.max():5d} | {volume}")
    return "\n".join(lines)
