"""Where nnU-Net keeps a dataset's preprocessed data, and where its instance maps go (beside it, never inside).

``nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>/``            nnU-Net's data (untouched)
``nnUNet_preprocessed/DatasetXXX_Name/<data_identifier>_instances/``  our maps, tables, manifest.json
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from nnunet_blob.nnunet_internals import LabelLayout, nnunet_dataset_name, plans_configuration
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
    def labels(self) -> LabelLayout:
        """The dataset's labels or regions and ignore label, as nnU-Net's ``PlansManager.get_label_manager`` reads
        them (imports torch; the instance-map workers do not need them)."""
        return LabelLayout.of_dataset(self.dataset_json, self.plans)

    @property
    def configuration_dict(self) -> dict:
        """This configuration of the plans, ``inherits_from`` resolved (patch_size, spacing, ...)."""
        return resolved_configuration(self.plans, self.configuration)


def resolved_configuration(plans: dict, name: str) -> dict:
    """A configuration of a plans dict as nnU-Net reads it; InstanceMapError when nnU-Net cannot."""
    try:
        return plans_configuration(plans, name)
    except (RuntimeError, ValueError, KeyError) as e:
        raise InstanceMapError(f"nnU-Net cannot read configuration {name!r} of the plans {plans.get('plans_name')!r} "
                               f"({type(e).__name__}: {e}); fix the plans file or plan again with "
                               f"nnUNetv2_plan_and_preprocess") from e


def preprocessed_root() -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise InstanceMapError("nnUNet_preprocessed is not set. Set it as for nnU-Net (see nnU-Net's "
                               "documentation/setting_up_paths.md) and run nnUNetv2_plan_and_preprocess first.")
    return Path(root)


def dataset_name(dataset: str | int) -> str:
    """'501', 501 or 'Dataset501_Name' -> 'Dataset501_Name', like nnU-Net's ``-d``."""
    if isinstance(dataset, str) and not dataset.startswith("Dataset") and not dataset.strip().isdigit():
        raise InstanceMapError(f"{dataset!r} is neither a dataset id (e.g. 501) nor a dataset name (e.g. "
                               f"Dataset501_Lesions); give -d as for nnU-Net's commands")
    try:
        return nnunet_dataset_name(dataset)
    except (RuntimeError, ValueError) as e:
        raise InstanceMapError(f"dataset {dataset!r} not found in nnUNet_preprocessed ({preprocessed_root()}) or "
                               f"nnUNet_raw. Run nnUNetv2_plan_and_preprocess -d {dataset} first. ({e})") from e


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
    data_identifier = resolved_configuration(plans, configuration)["data_identifier"]
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
    plans = json.loads(plans_file.read_text())
    found, folders = [], set()
    for configuration in plans["configurations"]:
        folder = base / resolved_configuration(plans, configuration)["data_identifier"]
        if folder.is_dir() and any(folder.iterdir()) and folder not in folders:  # cascade shares fullres data
            found.append(configuration)
            folders.add(folder)
    if not found:
        raise InstanceMapError(f"no configuration of {name} ({plans_identifier}) is preprocessed. Run "
                               f"nnUNetv2_preprocess -d {dataset} -c 3d_fullres (or the configurations you train).")
    return found
