"""DDP start-up: rank 0 prepares the instance maps while the other ranks wait past the default group timeout, and an
error (or the death) of rank 0 ends the wait on every rank instead of a hang. gloo, 2 processes (spawn)."""
from __future__ import annotations

import os
import shutil
import socket
import time
import traceback
from datetime import timedelta
from functools import partial
from pathlib import Path

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from helpers import build_trainer
from nnunet_blob.trainers.rank_zero import after_rank_zero
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice

WORLD = 2
#: the default group's timeout in these tests: rank 0 works longer than that
TIMEOUT_S = 2.0
WORK_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(port: int, rank: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=TIMEOUT_S))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _outcome(results, key: str, rank: int, work) -> None:
    """Run ``after_rank_zero(work, ...)``; record its error (or "no error") and how long it took."""
    start = time.monotonic()
    try:
        after_rank_zero(work, lambda: "checked", poll_seconds=0.1)
        results[key, rank] = "no error"
    except BaseException as e:  # noqa: BLE001 - reported to the test
        results[key, rank] = _describe(e)
    results[f"{key} seconds", rank] = time.monotonic() - start


def _slow_and_failing_rank_zero(rank: int, port: int, results) -> None:
    _join(port, rank)
    log = []

    def slow_work():
        time.sleep(WORK_S)
        return "computed"

    try:
        results["slow", rank] = after_rank_zero(slow_work, lambda: "checked", log=log.append, poll_seconds=0.1,
                                                report_seconds=1.0)
    except BaseException as e:  # noqa: BLE001 - reported to the test
        results["slow", rank] = _describe(e) + traceback.format_exc()
    results["log", rank] = log

    def failing_work():
        time.sleep(1.0)
        raise ValueError("the maps could not be written")

    _outcome(results, "failing", rank, failing_work)

    # what a plain barrier does with the same default timeout: the waiting rank crashes
    try:
        if rank == 0:
            time.sleep(WORK_S)
        dist.barrier()
        results["barrier", rank] = "passed"
    except BaseException as e:  # noqa: BLE001
        results["barrier", rank] = _describe(e)


def _dying_rank_zero(rank: int, port: int, results) -> None:
    _join(port, rank)

    def dying_work():
        time.sleep(1.0)
        os._exit(3)  # killed, out of memory, ...

    _outcome(results, "dying", rank, dying_work)


def run_ranks(target, timeout: float = 120.0) -> tuple[dict, list]:
    """Start WORLD spawned processes running ``target(rank, port, results)``; (results, exit codes). A rank still
    running after ``timeout`` seconds is killed and fails the test (a hang)."""
    context = mp.get_context("spawn")
    manager = context.Manager()
    results = manager.dict()
    port = free_port()
    processes = [context.Process(target=target, args=(rank, port, results)) for rank in range(WORLD)]
    for p in processes:
        p.start()
    deadline = time.monotonic() + timeout
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [rank for rank, p in enumerate(processes) if p.is_alive()]
    for p in processes:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} were still waiting after {timeout} s"
    return dict(results), [p.exitcode for p in processes]


@pytest.fixture(scope="module")
def slow_and_failing():
    return run_ranks(_slow_and_failing_rank_zero)[0]


def test_other_ranks_wait_for_rank_zero_past_the_default_timeout(slow_and_failing):
    assert slow_and_failing["slow", 0] == "computed"
    assert slow_and_failing["slow", 1] == "checked"
    waiting = slow_and_failing["log", 1]
    assert waiting and all("rank 1: waiting for rank 0 to prepare the instance maps" in line for line in waiting)
    assert slow_and_failing["log", 0] == []
    # a plain barrier with the same timeout fails on the rank that waits
    assert "Timed out" in slow_and_failing["barrier", 1]


def test_an_error_on_rank_zero_ends_the_wait_on_every_rank(slow_and_failing):
    assert slow_and_failing["failing", 0] == "ValueError: the maps could not be written"
    assert slow_and_failing["failing", 1].startswith("RuntimeError: rank 1: rank 0 failed while preparing the "
                                                     "instance maps")
    assert slow_and_failing["failing seconds", 1] < 30


def test_the_death_of_rank_zero_ends_the_wait():
    results, exit_codes = run_ranks(_dying_rank_zero)
    assert exit_codes[0] == 3
    assert results["dying", 1].startswith("RuntimeError: rank 1: lost rank 0 while it prepared the instance maps")
    assert results["dying seconds", 1] < 60


def test_without_a_process_group_the_work_runs_here():
    assert after_rank_zero(lambda: "computed", lambda: "checked") == "computed"


class RecordingBlobDice(nnUNetTrainerBlobDice):
    """Keeps what every rank logs (nnU-Net writes the log file on rank 0 only)."""

    def print_to_log_file(self, *args, **kwargs):
        self.lines = [*getattr(self, "lines", []), " ".join(map(str, args))]
        super().print_to_log_file(*args, **kwargs)


def _trainer_ranks(rank: int, port: int, results, dataset: str) -> None:
    _join(port, rank)
    try:
        trainer = build_trainer(RecordingBlobDice, dataset, initialize=False)
        store = trainer.instance_maps()
        results[rank] = (str(store.folder), store.connectivity, trainer.lines)
    except BaseException as e:  # noqa: BLE001
        results[rank] = _describe(e) + traceback.format_exc()


def test_trainer_ranks_compute_the_maps_once_and_only_check_them_elsewhere(preprocessed):
    dataset = preprocessed(601, configurations=("2d", "3d_fullres"), num_train=6, num_test=2)
    shutil.rmtree(Path(os.environ["nnUNet_preprocessed"]) / dataset / "nnUNetPlans_3d_fullres_instances",
                  ignore_errors=True)
    results, _ = run_ranks(partial(_trainer_ranks, dataset=dataset))
    assert all(isinstance(results[rank], tuple) for rank in range(WORLD)), results
    (folder_0, connectivity_0, log_0), (folder_1, connectivity_1, log_1) = results[0], results[1]
    assert folder_0 == folder_1 and connectivity_0 == connectivity_1 == 26
    assert any("computing instance maps of 6 of 6 cases" in line for line in log_0)
    assert not any("computing" in line for line in log_1)
    assert any("checked, not written" in line for line in log_1)
