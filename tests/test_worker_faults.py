"""Worker processes that die (out-of-memory killer, failed start) end the run within seconds, naming the case; every
parallel command ends so, and on Ctrl-C, with no worker left running and no half-written output.

Faults are real: a worker kills itself with SIGKILL, stops on a case, or its interpreter exits while starting
(``tests/fault_hooks/sitecustomize.py``, put on PYTHONPATH for the spawned workers only by these tests); Ctrl-C is
a real SIGINT.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from helpers import BIN, TESTS, build_trainer, run_cli
from nnunet_blob.border_core.representation import border_core_labels
from nnunet_blob.cli import main
from nnunet_blob.postprocessing.rules import LabelLayout, Setting
from nnunet_blob.postprocessing.settings import PostprocessingFile
from nnunet_blob.preprocessing import InstanceMapError, ensure_instance_maps
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice
from nnunet_blob.workers import RemoteTraceback, WorkerDied, Workers, run_jobs
from test_border_core import LAYOUT_3D, touching_nuclei
from test_postprocessing_crossval import planted_model
from test_postprocessing_tuning import write
from worker_jobs import power, square_or_die, square_or_raise

#: a run with a dead worker must end within this many seconds (spawning and importing included)
PROMPTLY = 60
#: a command must end within this many seconds of its worker's death, or of Ctrl-C
SECONDS_AFTER_FAULT = 15


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
                                         r"out-of-memory killer.*fewer processes \(-np, down to -np 1\)"):
        list(run_jobs(square_or_die, range(12), 2, describe=lambda job: f"job {job}"))
    assert time.monotonic() - start < PROMPTLY and no_workers_left()


def test_an_error_in_a_job_is_raised_with_the_workers_traceback():
    with pytest.raises(ValueError, match="job 3 is bad") as error:
        list(run_jobs(square_or_raise, range(8), 2))
    assert isinstance(error.value.__cause__, RemoteTraceback) and "square_or_raise" in str(error.value.__cause__)
    assert no_workers_left()


@pytest.fixture
def faulty_workers(monkeypatch, tmp_path):
    """``faulty_workers(fault)``: spawned worker processes of this test fail as ``fault`` says (see the hook); a
    worker writes the time of its fault to ``tmp_path / "fault"`` and its process id into ``tmp_path / "pids"``."""
    (tmp_path / "pids").mkdir()

    def set_fault(fault: str) -> dict:
        path = os.pathsep.join(p for p in (str(TESTS / "fault_hooks"), os.environ.get("PYTHONPATH")) if p)
        monkeypatch.setenv("PYTHONPATH", path)
        monkeypatch.setenv("NNUNET_BLOB_TEST_WORKER_FAULT", fault)
        monkeypatch.setenv("NNUNET_BLOB_TEST_FAULT_STAMP", str(tmp_path / "fault"))
        monkeypatch.setenv("NNUNET_BLOB_TEST_WORKER_PIDS", str(tmp_path / "pids"))
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
    start = time.monotonic()
    with pytest.raises(InstanceMapError, match=f"computing case {victim} died \\(killed by SIGKILL\\)"):
        build_trainer(nnUNetTrainerBlobDice, blobs)  # the start-up step (initialize) finds the stale maps
    assert time.monotonic() - start < PROMPTLY and no_workers_left()


DATASET = "Dataset994_Faults"
NUCLEI = "Dataset993_Nuclei"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Tiny inputs of every parallel command: a trained model's cross-validation predictions, planted (folds 0 and
    1; tune-postprocessing, find-best; fold 0's for evaluate and apply-postprocessing), a postprocessing file, a raw
    dataset of touching nuclei (border-core-dataset) and border-core segmentations (instances-from-border-core)."""
    root = tmp_path_factory.mktemp("commands")
    _, preprocessed = planted_model(root, DATASET, [0, 1] * 3)
    (preprocessed / DATASET / "nnUNetPlans.json").write_text(json.dumps({"configurations": {"3d_fullres": {}}}))
    PostprocessingFile((Setting(1, 3.0),), LabelLayout((1,)), ".nii.gz", "SimpleITKIO").write(root / "pp.json")
    nuclei, segmentations = root / "raw" / NUCLEI, root / "border_core"
    for folder in (nuclei / "imagesTr", nuclei / "labelsTr", segmentations):
        folder.mkdir(parents=True)
    for i in range(3):
        ids = touching_nuclei(**LAYOUT_3D)
        write(nuclei / "imagesTr" / f"c{i}_0000.nii.gz", ids.astype(np.float32))
        write(nuclei / "labelsTr" / f"c{i}.nii.gz", ids)
        write(segmentations / f"c{i}.nii.gz", border_core_labels(ids, (2.0, 1.0, 1.0))[0])
    (nuclei / "dataset.json").write_text(json.dumps({"channel_names": {"0": "x"}, "labels": {"background": 0,
                                                     "cell": 1}, "numTraining": 3, "file_ending": ".nii.gz"}))
    return root


def validation(root: Path, fold: int = 0) -> Path:
    return root / "results" / DATASET / "Planted__nnUNetPlans__3d_fullres" / f"fold_{fold}" / "validation"


#: (command line, the worker's fault, the case named, the outputs that must not exist after the failed run); case_002
#: is in fold 0, c1 a nucleus case; "replace" faults kill the worker after it wrote a whole output, before its rename
COMMANDS = {
    "evaluate": (lambda r: ["evaluate", r / "preprocessed" / DATASET / "gt_segmentations", validation(r), "-l", "1",
                            "--chill", "-o", r / "evaluated.json"],
                 "kill-on-file:case_002.nii.gz", "case_002", lambda r: [r / "evaluated.json"]),
    "tune-postprocessing": (lambda r: ["tune-postprocessing", "-d", DATASET, "-c", "3d_fullres", "-tr", "Planted",
                                       "-f", "0", "1"],
                            "kill-on-file:case_001.npz", "case_001",
                            lambda r: list((r / "results").rglob("postprocessing_instances.json"))),
    "find-best": (lambda r: ["find-best", "-d", DATASET, "-c", "3d_fullres", "-tr", "Planted", "-f", "0", "1"],
                  "kill-on-file:case_001.npz", "case_001",
                  lambda r: [*(r / "results").rglob("postprocessing_instances.json"),
                             *(r / "results" / DATASET).glob("inference_*")]),
    "apply-postprocessing": (lambda r: ["apply-postprocessing", "-i", validation(r), "-o", r / "applied", "-pp",
                                        r / "pp.json"],
                             "kill-on-replace:case_002.nii.gz", "case_002",
                             lambda r: [r / "applied" / "case_002.nii.gz"]),
    "border-core-dataset": (lambda r: ["border-core-dataset", "-i", NUCLEI, "-o", "992"],
                            "kill-on-replace:c1.nii.gz", "c1", lambda r: [r / "raw" / "Dataset992_NucleiBorderCore"]),
    "instances-from-border-core": (lambda r: ["instances-from-border-core", "-i", r / "border_core", "-o",
                                              r / "decoded"],
                                   "kill-on-replace:c1.nii.gz", "c1", lambda r: [r / "decoded" / "c1.nii.gz"]),
}


@pytest.fixture
def workspace(inputs, monkeypatch):
    for variable, folder in (("nnUNet_raw", "raw"), ("nnUNet_preprocessed", "preprocessed"),
                             ("nnUNet_results", "results")):
        monkeypatch.setenv(variable, str(inputs / folder))
    return inputs


def partial_files(root: Path) -> list[Path]:
    """Temporaries of atomic writes (files or folders) anywhere under ``root``."""
    return sorted(root.rglob(".tmp-*"))


def fault_time(tmp_path: Path) -> float:
    return float((tmp_path / "fault").read_text().split()[0])


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie that its new parent has not reaped yet counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("command", COMMANDS)
def test_a_worker_killed_ends_every_parallel_command_naming_the_case(workspace, faulty_workers, tmp_path, capsys,
                                                                     command):
    """Each parallel command with ``-np 2`` (the package's one worker pool): a worker killed on a case (SIGKILL, as
    the out-of-memory killer does) ends the command within seconds with an error naming the case and the fix, and no
    output of the unfinished cases is left, whole or half-written."""
    argv, fault, case, outputs = COMMANDS[command]
    faulty_workers(fault)
    code = main([str(a) for a in [*argv(workspace), "-np", "2"]])
    ended = time.time()
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert f"nnunet_blob {command}: error: the worker process computing case {case} died (killed by SIGKILL)" in err
    assert "out-of-memory killer" in err and "-np 1" in err, err
    assert ended - fault_time(tmp_path) < SECONDS_AFTER_FAULT, "the command did not end promptly"
    assert no_workers_left()
    assert not partial_files(workspace) and not [p for p in outputs(workspace) if p.exists()]


#: (command, where its worker stops on the case, who gets the SIGINT): the parent only, or the whole process group
#: as a terminal sends it
INTERRUPTED = [("evaluate", "kill-on-file", "parent"), ("apply-postprocessing", "kill-on-replace", "group")]


@pytest.mark.parametrize("command,fault,to", INTERRUPTED)
def test_ctrl_c_leaves_no_worker_and_no_partial_output(workspace, faulty_workers, tmp_path, command, fault, to):
    """Ctrl-C while a worker is on a case (the "replace" fault: its output written, not yet renamed): the command
    ends within seconds, says it was interrupted, and leaves no worker process and no output of that case."""
    argv, _, case, outputs = COMMANDS[command]
    env = faulty_workers(fault.replace("kill", "pause") + ":" + f"{case}.nii.gz")
    # as a terminal's foreground command: SIGINT at its default (a shell without job control starts background
    # commands, e.g. a test run launched with `&`, with SIGINT ignored, and the command inherits that)
    process = subprocess.Popen([str(BIN / "nnunet_blob"), *map(str, argv(workspace)), "-np", "2"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while not (tmp_path / "fault").exists():
            assert process.poll() is None and time.monotonic() < deadline, "no worker reached the case"
            time.sleep(0.1)
        (os.kill if to == "parent" else os.killpg)(process.pid, signal.SIGINT)
        interrupted = time.monotonic()
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - interrupted < SECONDS_AFTER_FAULT, "the command did not end promptly"
    assert process.returncode == 130 and err.strip().endswith(f"nnunet_blob {command}: interrupted"), err
    assert "Traceback" not in err, err
    workers = [int(p.name) for p in (tmp_path / "pids").iterdir()]
    assert len(workers) == 2 and all(gone(pid) for pid in workers), "a worker process outlived the command"
    assert not partial_files(workspace) and not [p for p in outputs(workspace) if p.exists()]
