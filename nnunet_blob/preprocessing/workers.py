"""A pool of worker processes that notices when one dies, and says which case it held and why.

``multiprocessing.Pool`` replaces a worker that dies (the out-of-memory killer, a crash in native code, a failure
while the interpreter starts) and loses its task: the caller then waits forever for a result that never comes.
:func:`run_jobs` gives each worker one job at a time over its own pipe and waits on the pipes and on the
processes' exit sentinels together, so a worker's death is seen at once: the run stops, the other workers are
ended, and :class:`WorkerDied` names the job the worker held and the likely cause (as nnU-Net's preprocessing
reports its dead workers). An exception raised by a job is re-raised in the caller with the worker's traceback
attached as its ``__cause__``, as ``multiprocessing.Pool`` does.

Workers are started with the ``spawn`` method (nnU-Net's data readers are not fork-safe) and, on Linux, are killed
by the kernel when the process that started them dies, so a killed run leaves no orphan writing files.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from nnunet_blob.preprocessing.errors import InstanceMapError

#: seconds given to a worker to end after it was asked to (then it is killed)
STOP_SECONDS = 5.0


class WorkerDied(InstanceMapError):
    """A worker process ended without reporting the result of the job it held."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker (attached as ``__cause__``)."""

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


def run_jobs(function: Callable[[Any], Any], jobs: Iterable, num_processes: int,
             describe: Callable[[Any], str] = str) -> Iterator:
    """``function(job)`` for every job in ``num_processes`` spawned worker processes; results as they come.

    ``function`` must be picklable (a module-level function); ``describe(job)`` names a job in error messages
    (e.g. ``"case X"``). With one process or one job everything runs in this process.

    Raises:
        WorkerDied: a worker ended (killed by a signal, or exited) before reporting the job it held, or while
            starting; the message names the job, the exit code or signal and the likely cause.
        Exception: the exception a job raised, with the worker's traceback as ``__cause__``.
    """
    jobs = list(jobs)
    if num_processes <= 1 or len(jobs) <= 1:
        yield from map(function, jobs)
        return
    yield from _Pool(function, jobs, min(num_processes, len(jobs)), describe).results()


class _Pool:
    def __init__(self, function, jobs: list, num_processes: int, describe):
        import multiprocessing

        self.context = multiprocessing.get_context("spawn")
        self.function, self.describe = function, describe
        self.pending = list(enumerate(jobs))[::-1]  # popped from the end: in order
        self.num_processes = num_processes
        self.workers: list[_Worker] = []

    def results(self) -> Iterator:
        from multiprocessing.connection import wait

        try:
            for _ in range(self.num_processes):
                self.workers.append(_Worker(self.context, self.function))
            while any(w.busy or not w.ready for w in self.workers if not w.stopped):
                live = [w for w in self.workers if not w.stopped]
                ready = wait([w.connection for w in live] + [w.process.sentinel for w in live])
                for worker in live:
                    if worker.connection in ready or worker.connection.poll():
                        yield from self._receive(worker)
                    elif worker.process.sentinel in ready:
                        self._died(worker)
        finally:
            for worker in self.workers:
                worker.stop()

    def _receive(self, worker: _Worker) -> Iterator:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):  # the pipe closed: the worker is gone
            worker.process.join(STOP_SECONDS)
            self._died(worker)
            return
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "result":
            worker.busy = None
            yield message[1]
        else:  # "error"
            _, payload, text = message
            raise _unpickled(payload, text)
        self._assign(worker)

    def _assign(self, worker: _Worker) -> None:
        if self.pending:
            worker.busy = self.pending.pop()
            worker.connection.send(worker.busy[1])
        else:
            worker.finish()

    def _died(self, worker: _Worker) -> None:
        worker.process.join(STOP_SECONDS)
        code = worker.process.exitcode
        if worker.busy is None and worker.ready:
            if code == 0:  # ended after it was told that there is no more work
                worker.stopped = True
                return
        what = (f"the worker process computing {self.describe(worker.busy[1])}" if worker.busy is not None
                else "a worker process, while it was starting,")
        raise WorkerDied(f"{what} died ({_cause(code)}); the run is stopped. {_hint(code, worker.ready)}")


class _Worker:
    """One spawned process and its pipe; ``busy`` is the (index, job) it holds."""

    def __init__(self, context, function):
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(child, function), daemon=True,
                                       name="nnunet_blob-worker")
        self.process.start()
        child.close()
        self.busy: tuple | None = None
        self.ready = False
        self.stopped = False

    def finish(self) -> None:
        """No more jobs: the worker is asked to end."""
        try:
            self.connection.send(None)
        except OSError:
            pass

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_SECONDS)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.connection.close()
        self.stopped = True


def _cause(exitcode: int | None) -> str:
    if exitcode is None:
        return "it stopped answering"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"killed by {name}"
    return f"exit code {exitcode}"


def _hint(exitcode: int | None, started: bool) -> str:
    if exitcode is not None and -exitcode == getattr(signal, "SIGKILL", 9):
        return ("A process killed by SIGKILL was most likely ended by the operating system's out-of-memory killer "
                "(see `dmesg` or your job scheduler's log): run with fewer processes (-np) or on a machine with more "
                "memory.")
    if not started:
        return ("It could not start: its own error, if it printed one, is above (e.g. a working directory or "
                "Python environment this user cannot read, or too little memory for a new process).")
    return "Its own error, if it printed one, is above; otherwise run with -np 1 to see the failure in this process."


def _unpickled(payload: bytes | None, text: str) -> BaseException:
    error: BaseException
    try:
        error = pickle.loads(payload) if payload is not None else RuntimeError(text)
    except Exception:
        error = RuntimeError(text)
    error.__cause__ = RemoteTraceback(text)
    return error


def _serve(connection, function) -> None:
    """The worker's loop: a job in, its result (or its exception) out, until told to stop or orphaned."""
    _die_with_parent()
    parent = os.getppid()
    connection.send(("ready",))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if job is None or os.getppid() != parent:
            return
        try:
            message: tuple = ("result", function(job))
        except BaseException as e:  # reported to the caller, which stops the run
            text = traceback.format_exc()
            try:
                payload: bytes | None = pickle.dumps(e)
            except Exception:
                payload = None
            message = ("error", payload, text)
        try:
            connection.send(message)
        except (OSError, KeyboardInterrupt):
            return
        if message[0] == "error":
            return


def _die_with_parent() -> None:
    """Linux: ask the kernel to kill this process when its parent dies (``PR_SET_PDEATHSIG``)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
