"""Cost of the instance-map freshness check that every trainer start runs (``ensure_instance_maps`` with the maps up to
date), for a dataset of many cases.

One synthetic case is preprocessed by nnU-Net and copied under ``--cases`` names in nnU-Net's data folder (the check
does not care that they are alike), the maps are computed once, then timed: the check as a trainer runs it (may
write, nothing to do), a check-only call (``write=False``, what DDP ranks other than 0 run), and the same after every
map and table file was touched (new mtime, same content: every file is hashed once; the first call records the new
mtimes, so it is timed check-only, which records nothing).

    python benchmarks/bench_map_check.py [--cases 500] [--shape 96 96 96] [--blobs 150 250] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import time

from _workspace import plan, timed, workspace


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=500)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--blobs", type=int, nargs=2, default=[150, 250])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("-np", type=int, default=2)
    args = parser.parse_args()

    root = workspace("nnunet_blob_bench_check_")
    from nnunet_blob.preprocessing import ensure_instance_maps
    from nnunet_blob.synthetic import make_dataset

    make_dataset(root / "raw", 703, "BenchCheck", num_train=1, shape=args.shape, small_objects=tuple(args.blobs))
    plan(703, 1)
    timed("nnUNetv2_preprocess", "-d", 703, "-c", "3d_fullres", "-np", 1)
    data = root / "preprocessed" / "Dataset703_BenchCheck" / "nnUNetPlans_3d_fullres"
    for i in range(1, args.cases):
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
            shutil.copy2(data / f"case_000{suffix}", data / f"copy_{i:04d}{suffix}")
    quiet = lambda _: None  # noqa: E731
    store = ensure_instance_maps(703, configuration="3d_fullres", num_processes=args.np, log=quiet, progress=False)

    def median_seconds(**kwargs) -> float:
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            ensure_instance_maps(703, configuration="3d_fullres", log=quiet, progress=False, **kwargs)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows = {"trainer start (may write; all up to date)": median_seconds(),
            "check only (write=False)": median_seconds(write=False)}
    for case in store.manifest["cases"]:
        for path in (store.map_path(case), store.table_path(case)):
            os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))
    rows["check only, every file touched (all hashed)"] = median_seconds(write=False)
    size = sum(p.stat().st_size for p in store.folder.iterdir()) / 2 ** 20
    instances = next(iter(store.manifest["cases"].values()))["num_instances"]
    print(f"# bench_map_check: {args.cases} cases of {tuple(args.shape)}, {instances} instances per case, "
          f"{size:.0f} MiB of maps, tables and records, {platform.machine()}, median of {args.repeats}")
    print("| call | seconds | per case ms |")
    print("|---|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {seconds:.2f} | {1000 * seconds / args.cases:.2f} |")


if __name__ == "__main__":
    main()
