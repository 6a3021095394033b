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
    def ignore_label(self) -> int | None:
        """dataset.json's ``ignore`` label, as nnU-Net's LabelManager reads it."""
        return self.dataset_json["labels"].get("ignore")

    @property
    def regions(self) -> list[tuple[int, ...]] | None:
        """Foreground regions of a region-based dataset (label lists in dataset.json), else None.

        Read from dataset.json as nnU-Net's LabelManager does, without importing torch (which it needs).
        """
        values = [v for k, v in self.dataset_json["labels"].items() if k not in ("background", "ignore")]
        if not any(isinstance(v, (list, tuple)) and len(v) > 1 for v in values):
            return None
        return [tuple(int(x) for x in (v if isinstance(v, (list, tuple)) else [v])) for v in values]

    @property
    def foreground_labels(self) -> list[int]:
        """The labels whose components are instances (all foreground labels; region datasets store labels)."""
        labels: set[int] = set()
        for name, value in self.dataset_json["labels"].items():
            if name != "ignore":
                labels.update(int(x) for x in (value if isinstance(value, (list, tuple)) else [value]))
        return sorted(labels - {0})

    @property
    def configuration_dict(self) -> dict:
        """This configuration of the plans, ``inherits_from`` resolved (patch_size, spacing, ...)."""
        return resolve_configuration(self.plans, self.configuration)


def resolve_configuration(plans: dict, name: str, visited: tuple = ()) -> dict:
    """A configuration of a plans dict with ``inherits_from`` resolved, as nnU-Net's PlansManager does.

    Reading the JSON directly keeps torch (which nnU-Net's PlansManager imports) out of this step.
    """
    if name in visited:
        raise InstanceMapError(f"circular 'inherits_from' in the plans: {visited + (name,)}")
    configuration = dict(plans["configurations"][name])
    parent = configuration.pop("inherits_from", None)
    if parent is None:
        return configuration
    return {**resolve_configuration(plans, parent, visited + (name,)), **configuration}


def preprocessed_root() -> Path:
    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise InstanceMapError("nnUNet_preprocessed is not set. Set it as for nnU-Net (see nnU-Net's "
                               "documentation/setting_up_paths.md) and run nnUNetv2_plan_and_preprocess first.")
    return Path(root)


def dataset_name(dataset: str | int) -> str:
    """'501', 501 or 'Dataset501_Name' -> 'Dataset501_Name', like nnU-Net's ``-d``."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    if isinstance(dataset, str) and not dataset.startswith("Dataset") and not dataset.strip().isdigit():
        raise InstanceMapError(f"{dataset!r} is neither a dataset id (e.g. 501) nor a dataset name (e.g. "
                               f"Dataset501_Lesions); give -d as for nnU-Net's commands")
    try:
        return maybe_convert_to_dataset_name(dataset)
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
    data_identifier = resolve_configuration(plans, configuration)["data_identifier"]
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
        folder = base / resolve_configuration(plans, configuration)["data_identifier"]
        if folder.is_dir() and any(folder.iterdir()) and folder not in folders:  # cascade shares fullres data
            found.append(configuration)
            folders.add(folder)
    if not found:
        raise InstanceMapError(f"no configuration of {name} ({plans_identifier}) is preprocessed. Run "
                               f"nnUNetv2_preprocess -d {dataset} -c 3d_fullres (or the configurations you train).")
    return found
