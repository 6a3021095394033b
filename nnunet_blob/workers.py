"""The package's one pool of worker processes: it notices when a worker dies, and says which case it held and why.

``multiprocessing.Pool`` replaces a worker that dies (the out-of-memory killer, a crash in native code, a failure
while the interpreter starts) and loses its task: the caller then waits forever for a result that never comes.
:class:`Workers` gives each worker one job at a time over its own pipe and waits on the pipes and on the
processes' exit sentinels together, so a worker's death is seen at once: the run stops, the other workers are
ended, and :class:`WorkerDied` names the job the worker held and the likely cause (as nnU-Net's preprocessing
reports its dead workers). An exception raised by a job is re-raised in the caller with the worker's traceback
attached as its ``__cause__``, as ``multiprocessing.Pool`` does.

Jobs that write files name them (``outputs``); they write them atomically (:mod:`nnunet_blob.files`), so a
worker killed while writing leaves its temporary file, never half an output: a failed pass removes the
temporaries of the jobs it did not finish. Ctrl-C (``KeyboardInterrupt`` in the caller) is such a failure: the
workers are ended and their temporaries removed before it goes on.

Workers are started with the ``spawn`` method (nnU-Net's data readers are not fork-safe; the start method the
loader must work with) and, on Linux, are killed by the kernel when the process that started them dies, so a
killed run leaves no orphan writing files. A :class:`Workers` pool is started once and serves every pass over the
cases (starting a spawn worker imports the job's modules again, nnU-Net's readers and SciPy, torch where a job
needs it, which costs seconds).

Users: every parallel command: ``nnunet_blob preprocess`` and the trainers' instance maps
(:mod:`nnunet_blob.preprocessing`), ``evaluate`` (:mod:`nnunet_blob.evaluation.folder`), ``tune-postprocessing``,
``apply-postprocessing`` and ``find-best`` (:mod:`nnunet_blob.postprocessing`), ``border-core-dataset`` and
``instances-from-border-core`` (:mod:`nnunet_blob.border_core`); the demo runs these commands.
"""
from __future__ import annotations

import os
import pickle
import signal
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from nnunet_blob.files import remove_temporaries

#: seconds given to a worker to end after it was asked to (then it is killed)
STOP_SECONDS = 5.0

#: ``outputs(job)``: the files a job writes atomically
Outputs = Callable[[Any], Iterable[str | os.PathLike]]


class WorkerDied(RuntimeError):
    """A worker process ended without reporting the result of the job it held."""


class RemoteTraceback(Exception):
    """The formatted traceback of an exception raised in a worker (attached as ``__cause__``)."""

    def __str__(self) -> str:
        return f"\n\"\"\"\n{self.args[0]}\"\"\""


def default_num_processes() -> int:
    """nnU-Net's default number of worker processes (``nnUNet_def_n_proc``, else 8; ``nnunetv2.configuration``)."""
    from nnunetv2.configuration import default_num_processes as nnunet_default

    return int(nnunet_default)


def run_jobs(function: Callable[[Any], Any], jobs: Iterable, num_processes: int,
             describe: Callable[[Any], str] = str, outputs: Outputs | None = None) -> Iterator:
    """``function(job)`` for every job in ``num_processes`` spawned worker processes; results as they come (not
    in the jobs' order).

    ``function`` must be picklable (a module-level function); ``describe(job)`` names a job in error messages
    (e.g. ``"case X"``); ``outputs(job)`` are the files it writes atomically (their temporaries are removed when
    the run fails). With one process or one job everything runs in this process.

    Raises:
        WorkerDied: a worker ended (killed by a signal, or exited) before reporting the job it held, or while
            starting; the message names the job, the exit code or signal and the likely cause.
        Exception: the exception a job raised, with the worker's traceback as ``__cause__``.
    """
    jobs = list(jobs)
    with Workers(min(num_processes, len(jobs))) as workers:
        for _, result in workers.unordered(function, jobs, (), describe, outputs):
            yield result


def run_cases(function: Callable, jobs: Sequence, extra: tuple, num_processes: int, desc: str,
              describe: Callable[[Any], str] = str, outputs: Outputs | None = None) -> list:
    """One pass: ``[function(job, *extra) for job in jobs]`` (in order, with a progress bar) in ``num_processes``
    workers; errors and ``outputs`` as :func:`run_jobs`."""
    with Workers(min(num_processes, len(jobs))) as workers:
        return workers.map(function, jobs, extra, desc, describe, outputs)


class Workers:
    """``with Workers(n) as workers: workers.map(function, jobs, extra, desc, describe)``, as many passes as
    needed over one set of ``n`` spawned processes; ``n <= 1`` (or a single job) runs in this process.

    A pass that fails (a job raised, a worker died, the caller stopped reading) ends every worker; a later pass
    starts new ones.
    """

    def __init__(self, num_processes: int):
        self.num_processes = num_processes
        self._workers: list[_Worker] = []

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        self.close(graceful=exc[0] is None)

    def close(self, graceful: bool = True) -> None:
        """End the workers: asked to finish (``graceful``) or terminated."""
        if graceful:
            for worker in self._workers:
                worker.finish()
        for worker in self._workers:
            worker.stop(STOP_SECONDS if graceful else 0.0)
        self._workers = []

    def map(self, function: Callable, jobs: Sequence, extra: tuple = (), desc: str = "",
            describe: Callable[[Any], str] = str, outputs: Outputs | None = None) -> list:
        """``[function(job, *extra) for job in jobs]``, in order, with a progress bar titled ``desc``."""
        from tqdm import tqdm

        results: list = [None] * len(jobs)
        for index, result in tqdm(self.unordered(function, jobs, extra, describe, outputs), total=len(jobs),
                                  desc=desc, disable=None):
            results[index] = result
        return results

    def unordered(self, function: Callable, jobs: Sequence, extra: tuple = (),
                  describe: Callable[[Any], str] = str, outputs: Outputs | None = None) -> Iterator[tuple[int, Any]]:
        """``(index, function(jobs[index], *extra))`` as the results come; ``outputs`` as :func:`run_jobs`."""
        jobs = list(jobs)
        if self.num_processes <= 1 or len(jobs) <= 1:  # atomic writes clean up after themselves in this process
            for index, job in enumerate(jobs):
                yield index, function(job, *extra)
            return
        yield from _Pass(self, function, jobs, extra, describe, outputs).results()

    def _started(self, n: int) -> list[_Worker]:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        while len(self._workers) < n:
            self._workers.append(_Worker(context))
        return self._workers


class _Pass:
    """One pass of a function over jobs on a :class:`Workers` pool."""

    def __init__(self, pool: Workers, function: Callable, jobs: list, extra: tuple, describe: Callable,
                 outputs: Outputs | None):
        self.pool, self.function, self.extra, self.describe, self.outputs = pool, function, extra, describe, outputs
        self.jobs = jobs
        self.pending = list(range(len(jobs)))[::-1]  # popped from the end: in order
        self.finished: set[int] = set()

    def results(self) -> Iterator[tuple[int, Any]]:
        from multiprocessing.connection import wait

        completed = False
        try:
            workers = self.pool._started(min(self.pool.num_processes, len(self.jobs)))
            for worker in workers:
                if worker.ready and worker.busy is None:
                    self._assign(worker)
            done = 0
            while done < len(self.jobs):
                ready = wait([w.connection for w in workers] + [w.process.sentinel for w in workers])
                for worker in workers:
                    if worker.connection in ready or worker.connection.poll():
                        for item in self._receive(worker):
                            done += 1
                            self.finished.add(item[0])
                            yield item
                    elif worker.process.sentinel in ready:
                        self._died(worker)
            completed = True
        finally:
            if not completed:
                self.pool.close(graceful=False)  # no worker writes any more
                self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        if self.outputs is None:
            return
        for index, job in enumerate(self.jobs):
            if index not in self.finished:
                for path in self.outputs(job):
                    remove_temporaries(path)

    def _receive(self, worker: _Worker) -> Iterator[tuple[int, Any]]:
        try:
            message = worker.connection.recv()
        except (EOFError, OSError):  # the pipe closed: the worker is gone
            self._died(worker)
            return
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "result":
            index, worker.busy = worker.busy, None
            if index is None:
                raise RuntimeError("a worker process reported a result it was not asked for")
            yield index, message[1]
        else:  # "error"
            _, payload, text = message
            raise _unpickled(payload, text)
        self._assign(worker)

    def _assign(self, worker: _Worker) -> None:
        if self.pending:
            worker.busy = self.pending.pop()
            worker.connection.send((self.function, self.jobs[worker.busy], self.extra))

    def _died(self, worker: _Worker) -> None:
        worker.process.join(STOP_SECONDS)
        code = worker.process.exitcode
        if worker.busy is not None:
            what = f"the worker process computing {self.describe(self.jobs[worker.busy])}"
        else:
            what = "an idle worker process" if worker.ready else "a worker process, while it was starting,"
        raise WorkerDied(f"{what} died ({_cause(code)}); the run is stopped. {_hint(code, worker.ready)}")


class _Worker:
    """One spawned process and its pipe; ``busy`` is the index of the job it holds."""

    def __init__(self, context):
        self.connection, child = context.Pipe(duplex=True)
        self.process = context.Process(target=_serve, args=(child,), daemon=True, name="nnunet_blob-worker")
        self.process.start()
        child.close()
        self.busy: int | None = None
        self.ready = False

    def finish(self) -> None:
        """No more jobs: the worker is asked to end."""
        try:
            self.connection.send(None)
        except OSError:
            pass

    def stop(self, wait_seconds: float) -> None:
        """Wait up to ``wait_seconds`` for the process to end, then terminate (and kill) it."""
        if wait_seconds > 0:
            self.process.join(wait_seconds)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(STOP_SECONDS)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()
        self.connection.close()


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
                "(see `dmesg` or your job scheduler's log): run with fewer processes (-np, down to -np 1) or on a "
                "machine with more memory.")
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


def _serve(connection) -> None:
    """The worker's loop: ``(function, job, extra)`` in, its result (or its exception) out, until told to stop or
    orphaned."""
    _die_with_parent()
    parent = os.getppid()
    connection.send(("ready",))
    while True:
        try:
            task = connection.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if task is None or os.getppid() != parent:
            return
        try:
            function, job, extra = task
            message: tuple = ("result", function(job, *extra))
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
