"""Where nnU-Net keeps a dataset's preprocessed data, and where its instance maps go (beside it, never inside).

``nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>/``            nnU-Net's data (untouched)
``nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>_instances/``  our maps, tables, manifest.json
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nnunet_blob.preprocessing.errors import InstanceMapError

INSTANCE_FOLDER_SUFFIX = "_instances"


@dataclass(frozen=True)
class ConfigurationLocation:
    """One (dataset, plans, configuration): nnU-Net's data folder and our instance-map folder."""

    dataset_name: str
    plans_identifier: str
    configuration: str
    data_identifier: str
    data_folder: Path
    instance_folder: Path
    dataset_json: dict
    plans: dict

    @property
    def ignore_label(self):
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        return PlansManager(self.plans).get_label_manager(self.dataset_json).ignore_label


def preprocessed_root() -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise InstanceMapError("nnUNet_preprocessed is not set. Set it as for nnU-Net (see nnU-Net's "
                               "documentation/setting_up_paths.md) and run nnUNetv2_plan_and_preprocess first.")
    return Path(root)


def dataset_name(dataset: str | int) -> str:
    """'501', 501 or 'Dataset501_Name' -> 'Dataset501_Name', like nnU-Net's ``-d``."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise InstanceMapError(f"dataset {dataset!r} not found in nnUNet_preprocessed ({preprocessed_root()}) or "
                               f"nnUNet_raw. Run nnUNetv2_plan_and_preprocess -d {dataset} first. ({e})") from None


def locate(dataset: str | int, plans_identifier: str, configuration: str) -> ConfigurationLocation:
    """Resolve one configuration; clear errors saying which nnU-Net command to run when something is missing."""
    import json

    name = dataset_name(dataset)
    base = preprocessed_root() / name
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise InstanceMapError(f"{plans_file} does not exist. Run nnUNetv2_plan_and_preprocess -d {dataset} "
                               f"(plans {plans_identifier}) first.")
    plans = json.loads(plans_file.read_text())
    dataset_json = json.loads((base / "dataset.json").read_text())
    if configuration not in plans["configurations"]:
        raise InstanceMapError(f"configuration {configuration!r} is not in {plans_file.name}; it has "
                               f"{sorted(plans['configurations'])}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    data_folder = base / data_identifier
    if not data_folder.is_dir() or not any(data_folder.iterdir()):
        raise InstanceMapError(f"configuration {configuration} of {name} is not preprocessed ({data_folder} is "
                               f"missing or empty). Run nnUNetv2_preprocess -d {dataset} -c {configuration} "
                               f"-plans_name {plans_identifier}.")
    return ConfigurationLocation(name, plans_identifier, configuration, data_identifier, data_folder,
                                 base / (data_identifier + INSTANCE_FOLDER_SUFFIX), dataset_json, plans)


def preprocessed_configurations(dataset: str | int, plans_identifier: str) -> list[str]:
    """The configurations of a plans file whose data folder exists and is not empty."""
    import json

    name = dataset_name(dataset)
    base = preprocessed_root() / name
    plans_file = base / f"{plans_identifier}.json"
    if not plans_file.is_file():
        raise InstanceMapError(f"{plans_file} does not exist. Run nnUNetv2_plan_and_preprocess -d {dataset} first.")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(json.loads(plans_file.read_text()))
    found, folders = [], set()
    for configuration in plans_manager.available_configurations:
        folder = base / plans_manager.get_configuration(configuration).data_identifier
        if folder.is_dir() and any(folder.iterdir()) and folder not in folders:  # cascade shares fullres data
            found.append(configuration)
            folders.add(folder)
    if not found:
        raise InstanceMapError(f"no configuration of {name} ({plans_identifier}) is preprocessed. Run "
                               f"nnUNetv2_preprocess -d {dataset} -c 3d_fullres (or the configurations you train).")
    return found
