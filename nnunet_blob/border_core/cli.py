"""``nnunet_blob border-core-dataset`` and ``nnunet_blob instances-from-border-core``: touching nuclei as
background/core/border labels for nnU-Net, and predictions back to instances."""
from __future__ import annotations

from nnunet_blob.border_core.representation import BorderCoreError
from nnunet_blob.cli_errors import reports
from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.workers import WorkerDied, default_num_processes


def _processes(value: int | None) -> int:
    return default_num_processes() if value is None else value


@reports(BorderCoreError, WorkerDied, command="border-core-dataset")
def run_dataset(args) -> int:
    from nnunet_blob.border_core.dataset import convert_dataset

    summary = convert_dataset(args.i, args.o, args.border_thickness, _processes(args.np), args.overwrite,
                              args.connectivity)
    print("\n".join(summary.lines()))
    return 0


@reports(BorderCoreError, WorkerDied, command="instances-from-border-core")
def run_instances(args) -> int:
    from nnunet_blob.border_core.folder import decode_folder

    written = decode_folder(args.i, args.o, args.core_label, args.border_label, args.min_core_size,
                            args.connectivity, _processes(args.np))
    print(f"{len(written)} instance maps written to {args.o}")
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "border-core-dataset", help="convert an instance-labelled raw dataset to background/core/border labels",
        description="Write a new nnU-Net raw dataset whose labels are 0 background, 1 core, 2 border: a nucleus' "
                    "voxels within --border-thickness of its outside (background or another nucleus) are border, "
                    "so touching nuclei get separate cores. Nuclei come from instancesTr/ beside labelsTr (same "
                    "names and format), else from labelsTr itself (values 1..N). The new dataset links (or copies) "
                    "the images and keeps instancesTr/ with each nucleus' id on its core voxels only (0 on "
                    "border), so blob loss sees every nucleus as one instance of the core class. Prints how many "
                    "nuclei instances-from-border-core recovers exactly from the new labels.")
    parser.add_argument("-i", required=True, help="source raw dataset: folder, or id or name in nnUNet_raw")
    parser.add_argument("-o", required=True,
                        help="new dataset: id (named <source name>BorderCore) or name DatasetXXX_Name, in nnUNet_raw")
    parser.add_argument("--border-thickness", type=float, default=None, metavar="T",
                        help="border thickness in the images' spacing units (mm, µm), as nnU-Net's cell tracking "
                             "conversions (default: each case's voxel diagonal, which keeps the cores of touching "
                             "nuclei apart)")
    parser.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, default=26,
                        help="connectivity of the round-trip check's cores (default 26; 8 in 2D)")
    parser.add_argument("-np", type=int, default=None, help="worker processes (default: nnUNet_def_n_proc or 8)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the new dataset's folder if this command wrote it before")
    parser.set_defaults(func=run_dataset)

    parser = subparsers.add_parser(
        "instances-from-border-core", help="turn predicted background/core/border segmentations into instance maps",
        description="Each connected core is one instance; every border voxel (and core too small to seed) goes to "
                    "the nearest core of its foreground component, nearest in physical distance (the file's "
                    "spacing); a foreground component without a core is one instance. Writes instance maps with "
                    "the same names, geometry and file format, for nnunet_blob evaluate --instance-inputs.")
    parser.add_argument("-i", required=True, help="folder of border-core segmentations (nnUNetv2_predict output)")
    parser.add_argument("-o", required=True, help="output folder of instance maps")
    parser.add_argument("--core-label", type=int, default=1, help="label of the cores (default 1)")
    parser.add_argument("--border-label", type=int, default=2, help="label of the borders (default 2)")
    parser.add_argument("--min-core-size", type=int, default=0, metavar="VOXELS",
                        help="cores with fewer voxels seed no instance and are treated as border (default 0: "
                             "every core seeds)")
    parser.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, default=26,
                        help="connectivity of cores and foreground components (default 26; 8 in 2D)")
    parser.add_argument("-np", type=int, default=None, help="worker processes (default: nnUNet_def_n_proc or 8)")
    parser.set_defaults(func=run_instances)
