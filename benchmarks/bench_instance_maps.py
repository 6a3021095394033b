"""Wall time of `nnunet_blob preprocess` vs `nnUNetv2_preprocess` on the same dataset, configuration and -np.

Prints both wall times and their ratio. Also timed: ``ensure_instance_maps`` called
in-process (what the trainers run), i.e. the command without the interpreter's and imports' start-up.

With ``--annotated`` the maps come from annotated instances (``instancesTr/``, here the connected components of each
raw label written as the annotation) and every other case gets a 1.2 mm spacing, so nnU-Net resamples every case
and the annotation's nearest-neighbour resampling disagrees with nnU-Net's linear one at object borders: reading the
raw files, the geometry and the reconciliation are all timed.

    python benchmarks/bench_instance_maps.py [--cases 20] [--shape 96 96 96] [--blobs 150 250] [-np 2] [--annotated]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from _workspace import plan, timed, workspace


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--blobs", type=int, nargs=2, default=[150, 250], help="range of small objects per case")
    parser.add_argument("-np", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--annotated", action="store_true", help="maps from instancesTr/ (see above)")
    args = parser.parse_args()

    root = workspace("nnunet_blob_bench_maps_")
    from nnunet_blob.synthetic import make_dataset

    make_dataset(root / "raw", 701, "BenchMaps", num_train=args.cases, shape=args.shape,
                 small_objects=tuple(args.blobs))
    if args.annotated:
        annotate(root / "raw" / "Dataset701_BenchMaps")
    plan(701, args.np)
    from nnunet_blob.preprocessing import ensure_instance_maps

    nnunet, ours, in_process = [], [], []
    for _ in range(args.repeats):
        nnunet.append(timed("nnUNetv2_preprocess", "-d", 701, "-c", "3d_fullres", "-np", args.np))
        ours.append(timed("nnunet_blob", "preprocess", "-d", 701, "-c", "3d_fullres", "-np", args.np, "--overwrite"))
        start = time.perf_counter()
        ensure_instance_maps(701, configuration="3d_fullres", num_processes=args.np, overwrite=True,
                             log=lambda _: None, progress=False)
        in_process.append(time.perf_counter() - start)
    manifest = json.loads((root / "preprocessed" / "Dataset701_BenchMaps" / "nnUNetPlans_3d_fullres_instances"
                           / "manifest.json").read_text())
    instances = [r["num_instances"] for r in manifest["cases"].values()]
    source = "annotated instances, every case resampled" if args.annotated else "connected components"
    print(f"# bench_instance_maps: {args.cases} cases of {tuple(args.shape)}, {min(instances)}-{max(instances)} "
          f"instances per case, {source}, -np {args.np}, {platform.machine()}, best of {args.repeats}")
    print("| step | wall time s | ratio |")
    print("|---|---|---|")
    print(f"| nnUNetv2_preprocess -c 3d_fullres | {min(nnunet):.1f} | 1.00 |")
    print(f"| nnunet_blob preprocess -c 3d_fullres --overwrite | {min(ours):.1f} | {min(ours) / min(nnunet):.2f} |")
    print(f"| ensure_instance_maps(..., overwrite=True) in-process | {min(in_process):.1f} | "
          f"{min(in_process) / min(nnunet):.2f} |")


def annotate(raw: Path) -> None:
    """instancesTr/: the components of each case's labels as its annotation; odd cases get a 1.2 mm spacing."""
    import cc3d
    import numpy as np
    import SimpleITK as sitk

    (raw / "instancesTr").mkdir(exist_ok=True)
    for i, label_file in enumerate(sorted((raw / "labelsTr").glob("*.nii.gz"))):
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(label_file)))
        ids = cc3d.connected_components(labels, connectivity=26).astype(np.int32)
        spacing = (1.2,) * 3 if i % 2 else (1.0,) * 3
        files = [(labels, label_file), (ids, raw / "instancesTr" / label_file.name)]
        files += [(sitk.GetArrayFromImage(sitk.ReadImage(str(f))), f)
                  for f in (raw / "imagesTr").glob(label_file.name.replace(".nii.gz", "_*.nii.gz"))]
        for array, path in files:
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(spacing)
            sitk.WriteImage(image, str(path))


if __name__ == "__main__":
    main()
