"""Worker processes that die (out-of-memory killer, failed start) end the run within seconds, naming the case.

Faults are real: a worker kills itself with SIGKILL, or a worker's interpreter exits while starting
(``tests/fault_hooks/sitecustomize.py``, put on PYTHONPATH for the spawned workers only by these tests).
"""
from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

import pytest
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from helpers import TESTS, build_trainer, run_cli
from nnunet_blob.preprocessing import InstanceMapError, ensure_instance_maps
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice
from nnunet_blob.workers import RemoteTraceback, WorkerDied, Workers, run_jobs
from worker_jobs import power, square_or_die, square_or_raise

#: a run with a dead worker must end within this many seconds (spawning and importing included)
PROMPTLY = 60


def no_workers_left() -> bool:
    return not [p for p in multiprocessing.active_children() if p.name == "nnunet_blob-worker"]


def test_pool_returns_every_result():
    assert sorted(run_jobs(square_or_raise, [0, 1, 2, 4, 5], 2)) == [0, 1, 4, 16, 25]
    assert no_workers_left()


def test_one_pool_serves_several_passes_in_order_and_recovers_after_a_failed_one():
    with Workers(2) as workers:
        first = [p.pid for p in multiprocessing.active_children() if p.name == "nnunet_blob-worker"]
        assert workers.map(power, list(range(7)), (3,)) == [j ** 3 for j in range(7)]
        started = sorted(p.pid for p in multiprocessing.active_children() if p.name == "nnunet_blob-worker")
        assert workers.map(power, [5, 4, 3], (2,)) == [25, 16, 9]
        assert sorted(p.pid for p in multiprocessing.active_children() if p.name == "nnunet_blob-worker") == started
        with pytest.raises(ValueError, match="job 3 is bad"):
            workers.map(square_or_raise, list(range(6)))
        assert workers.map(power, [2, 3], (2,)) == [4, 9]
    assert not first and len(started) == 2 and no_workers_left()


def test_a_worker_killed_mid_job_ends_the_run_naming_the_job():
    start = time.monotonic()
    with pytest.raises(WorkerDied, match=r"the worker process computing job 7 died \(killed by SIGKILL\).*"
                                         r"out-of-memory killer.*fewer processes \(-np\)"):
        list(run_jobs(square_or_die, range(12), 2, describe=lambda job: f"job {job}"))
    assert time.monotonic() - start < PROMPTLY and no_workers_left()


def test_an_error_in_a_job_is_raised_with_the_workers_traceback():
    with pytest.raises(ValueError, match="job 3 is bad") as error:
        list(run_jobs(square_or_raise, range(8), 2))
    assert isinstance(error.value.__cause__, RemoteTraceback) and "square_or_raise" in str(error.value.__cause__)
    assert no_workers_left()


@pytest.fixture
def faulty_workers(monkeypatch):
    """``faulty_workers(fault)``: spawned worker processes of this test fail as ``fault`` says (see the hook)."""

    def set_fault(fault: str) -> dict:
        path = os.pathsep.join(p for p in (str(TESTS / "fault_hooks"), os.environ.get("PYTHONPATH")) if p)
        monkeypatch.setenv("PYTHONPATH", path)
        monkeypatch.setenv("NNUNET_BLOB_TEST_WORKER_FAULT", fault)
        return dict(os.environ)

    return set_fault


@pytest.fixture(scope="module")
def blobs(preprocessed):
    return preprocessed(621, num_train=6, name="WorkerFaults")


def cases_of(dataset: str) -> list[str]:
    folder = Path(os.environ["nnUNet_preprocessed"]) / dataset / "nnUNetPlans_3d_fullres"
    return sorted(nnUNetDatasetBlosc2.get_identifiers(str(folder)))


def test_preprocess_with_a_worker_killed_on_a_case_fails_naming_it(blobs, faulty_workers):
    victim = cases_of(blobs)[3]
    env = faulty_workers(f"kill-on:{victim}")
    start = time.monotonic()
    result = run_cli("nnunet_blob", "preprocess", "-d", 621, "-c", "3d_fullres", "-np", 2, "--overwrite", env=env,
                     timeout=300, check=False)
    assert time.monotonic() - start < PROMPTLY + 30, "the run did not end promptly"
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"the worker process computing case {victim} died (killed by SIGKILL)" in result.stderr, result.stderr
    assert "out-of-memory killer" in result.stderr


def test_preprocess_with_workers_that_die_at_start_up_fails(blobs, faulty_workers):
    env = faulty_workers("start")
    result = run_cli("nnunet_blob", "preprocess", "-d", 621, "-c", "3d_fullres", "-np", 2, "--overwrite", env=env,
                     timeout=300, check=False)
    assert result.returncode == 1, result.stderr
    assert "a worker process, while it was starting, died (exit code 3)" in result.stderr, result.stderr
    assert "It could not start" in result.stderr


def test_trainer_start_with_a_worker_killed_on_a_case_fails_naming_it(blobs, faulty_workers):
    ensure_instance_maps(621, configuration="3d_fullres", log=lambda *_: None)
    victim = cases_of(blobs)[1]
    store_folder = Path(os.environ["nnUNet_preprocessed"]) / blobs / "nnUNetPlans_3d_fullres_instances"
    for case in cases_of(blobs)[:3]:  # stale: the trainer computes them in nnU-Net's default number of processes
        (store_folder / f"{case}.json").unlink()
    faulty_workers(f"kill-on:{victim}")
    trainer = build_trainer(nnUNetTrainerBlobDice, blobs)
    start = time.monotonic()
    with pytest.raises(InstanceMapError, match=f"computing case {victim} died \\(killed by SIGKILL\\)"):
        trainer.get_tr_and_val_datasets()
    assert time.monotonic() - start < PROMPTLY and no_workers_left()


def test_evaluate_with_a_worker_killed_on_a_case_fails_naming_it(tmp_path, faulty_workers):
    """``nnunet_blob evaluate -np 2`` (the package's one worker pool, as the postprocessing decisions use it): a
    worker killed while it reads a case ends the command with an error naming the case, instead of a hang."""
    import numpy as np
    import SimpleITK as sitk

    for sub in ("gt", "pred"):
        (tmp_path / sub).mkdir()
        for i in range(4):
            seg = np.zeros((4, 8, 8), np.uint8)
            seg[1:3, 2:5, 2:5] = 1
            sitk.WriteImage(sitk.GetImageFromArray(seg), str(tmp_path / sub / f"case_{i}.nii.gz"))
    env = faulty_workers("kill-on-file:case_2.nii.gz")
    start = time.monotonic()
    result = run_cli("nnunet_blob", "evaluate", tmp_path / "gt", tmp_path / "pred", "-l", 1, "-np", 2, env=env,
                     timeout=PROMPTLY + 60, check=False)
    assert time.monotonic() - start < PROMPTLY, "the run did not end promptly"
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "nnunet_blob evaluate: error: the worker process computing case case_2 died (killed by SIGKILL)" in \
        result.stderr, result.stderr
    assert "out-of-memory killer" in result.stderr
