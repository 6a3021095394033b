"""``nnunet_blob preprocess``: instance maps for an nnU-Net dataset, after nnUNetv2_plan_and_preprocess."""
from __future__ import annotations

import numpy as np

from nnunet_blob.cli_errors import reports
from nnunet_blob.instances.connectivity import CONNECTIVITIES
from nnunet_blob.preprocessing.errors import InstanceMapError


@reports(InstanceMapError, command="preprocess")
def run(args) -> int:
    from nnunet_blob.preprocessing.locate import locate, preprocessed_configurations
    from nnunet_blob.preprocessing.runner import ensure_instance_maps
    from nnunet_blob.preprocessing.summary import describe_manifest

    configurations = args.c or preprocessed_configurations(args.d, args.p)
    for configuration in configurations:
        store = ensure_instance_maps(args.d, args.p, configuration, connectivity=args.connectivity,
                                     num_processes=args.np, overwrite=args.overwrite)
        spacing = locate(args.d, args.p, configuration).configuration_dict["spacing"]
        print(describe_manifest(store.manifest, float(np.prod(spacing))))
    return 0


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "preprocess", help="compute instance maps (connected components per class, or the annotated instances of "
                           "instancesTr/) after nnUNetv2_preprocess",
        description="Connected components per class of every preprocessed training case, stored beside nnU-Net's "
                    "data in <data_identifier>_instances/ with a manifest. When the raw dataset has instancesTr/ "
                    "(<case><file_ending> beside labelsTr/), its annotated instances instead, pushed through "
                    "nnU-Net's crop and resampling and reconciled with its segmentation. Up-to-date cases are "
                    "skipped.")
    parser.add_argument("-d", required=True, help="dataset id or name, as for nnU-Net")
    parser.add_argument("-c", nargs="+", default=None,
                        help="configurations (default: all of the plans that have preprocessed data)")
    parser.add_argument("-p", "-plans_name", default="nnUNetPlans", help="plans identifier (default nnUNetPlans)")
    parser.add_argument("-np", type=int, default=None,
                        help="worker processes (default: nnU-Net's, nnUNet_def_n_proc or 8)")
    parser.add_argument("--connectivity", type=int, choices=CONNECTIVITIES, default=None,
                        help="voxel connectivity of the components (default: that of the existing maps, else 26 as "
                             "in the blob loss paper); the trainers use the maps' connectivity")
    parser.add_argument("--overwrite", action="store_true", help="recompute every case")
    parser.set_defaults(func=run)
