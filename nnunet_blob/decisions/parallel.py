"""One function over many cases, in nnU-Net's way: a ``spawn`` pool (the start method the loader must work with)
and a progress bar. A :class:`Workers` pool is started once and serves every pass over the cases (starting a spawn
worker imports torch and nnU-Net again, which costs seconds)."""
from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


def _call(args):
    function, job, *rest = args
    return function(job, *rest)


class Workers:
    """``with Workers(n) as workers: workers.map(function, jobs, extra, desc)``; ``n <= 1`` runs in this process.
    ``function`` must be importable by name (a module-level function)."""

    def __init__(self, num_processes: int):
        self.num_processes = num_processes
        self._pool: Any = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.terminate() if exc[0] is not None else self._pool.close()
            self._pool.join()
            self._pool = None

    def map(self, function: Callable, jobs: Sequence, extra: tuple = (), desc: str = "") -> list:
        """``[function(job, *extra) for job in jobs]``, in order."""
        from tqdm import tqdm

        arguments = [(function, job, *extra) for job in jobs]
        if self.num_processes <= 1 or len(jobs) <= 1:
            return [_call(a) for a in tqdm(arguments, desc=desc, disable=None)]
        if self._pool is None:
            self._pool = multiprocessing.get_context("spawn").Pool(self.num_processes)
        return list(tqdm(self._pool.imap(_call, arguments), total=len(jobs), desc=desc, disable=None))


def run_cases(function: Callable, jobs: Sequence, extra: tuple, num_processes: int, desc: str) -> list:
    """One pass: ``[function(job, *extra) for job in jobs]`` with ``num_processes`` workers."""
    with Workers(min(num_processes, len(jobs))) as workers:
        return workers.map(function, jobs, extra, desc)
