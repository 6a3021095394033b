"""Shared fixtures: an nnU-Net workspace in a temporary folder, synthetic datasets preprocessed once per session.

Everything runs the real nnU-Net command-line tools in subprocesses, as a user types them.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import TESTS, run_cli
from nnunet_blob.demo.plans import shrink_plans
from nnunet_blob.synthetic import make_dataset


@pytest.fixture(params=["host", "device"])
def loss_path(request, monkeypatch):
    """Run a loss test on both entry paths: "host" drops inert voxels first (CPU default), "device" keeps every
    voxel and masks (what an accelerator runs, without host synchronisation)."""
    import nnunet_blob.losses._common as common

    monkeypatch.setattr(common, "COMPACT_ON_HOST", request.param == "host")
    return request.param


@pytest.fixture(scope="session")
def nnunet_workspace(tmp_path_factory):
    """nnUNet_raw/_preprocessed/_results in a temporary folder, small worker pools, our test trainers listed."""
    root = tmp_path_factory.mktemp("nnunet")
    env = {
        "nnUNet_raw": str(root / "raw"), "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"), "nnUNet_def_n_proc": "2", "nnUNet_n_proc_DA": "2",
        "nnUNet_compile": "f", "OMP_NUM_THREADS": "2",
        # a user's own folder: our start-up hook must append its folder, not replace this one
        "nnUNet_extTrainer": str(TESTS / "ext_trainers"),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


_PREPROCESSED: dict = {}


@pytest.fixture(scope="session")
def preprocessed(nnunet_workspace):
    """Factory: a synthetic dataset, planned and preprocessed once per session, with tiny network plans.

    ``preprocessed(dataset_id, configurations=("3d_fullres",), **make_dataset_kwargs) -> dataset folder name``
    """

    def build(dataset_id: int, configurations=("3d_fullres",), **kwargs) -> str:
        key = (dataset_id, tuple(configurations), tuple(sorted(kwargs.items())))
        if key not in _PREPROCESSED:
            folder = make_dataset(os.environ["nnUNet_raw"], dataset_id, kwargs.pop("name", "Blobs"), **kwargs)
            run_cli("nnUNetv2_plan_and_preprocess", "-d", dataset_id, "-c", *configurations, "-np", 2, "-npfp", 2,
                    "--verify_dataset_integrity")
            shrink_plans(Path(os.environ["nnUNet_preprocessed"]) / folder.name / "nnUNetPlans.json")
            _PREPROCESSED[key] = folder.name
        return _PREPROCESSED[key]

    return build


@pytest.fixture
def single_process_loading(monkeypatch):
    """nnU-Net's SingleThreadedAugmenter: the loader runs in the test's process."""
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
