"""Work that rank 0 of a DDP run does while the other ranks wait, for as long as it takes.

Computing the instance maps of a large dataset takes longer than the default timeout of a NCCL or gloo barrier (10
minutes in torch), after which the waiting ranks crash. :func:`after_rank_zero` lets rank 0 do the work while the
other ranks wait on a gloo group of their own, created with a timeout of :data:`WAIT_LIMIT`, polling it and
reporting progress; rank 0 then tells them whether it succeeded, so an error on rank 0 ends the wait with an error
on every rank instead of a hang. Outside DDP it just does the work.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar, cast

import torch
import torch.distributed as dist

T = TypeVar("T")

#: how long the other ranks wait for rank 0 at most (the group's timeout; effectively no limit)
WAIT_LIMIT = timedelta(days=7)

_OK, _FAILED = 0, 1


def after_rank_zero(work: Callable[[], T], check: Callable[[], T], *, what: str = "the instance maps",
                    log: Callable[[str], None] = print, poll_seconds: float = 1.0,
                    report_seconds: float = 60.0) -> T:
    """``work()`` on rank 0, then ``check()`` on every other rank once rank 0 is done; the result of either.

    Collective: every rank of the default group must call it. Waiting ranks print ``waiting for rank 0 to
    prepare {what}`` every ``report_seconds``. If ``work`` raises on rank 0, it re-raises there and every other rank
    raises a RuntimeError naming rank 0; if rank 0's process dies, gloo's connection errors end the wait.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return work()
    group = cast(dist.ProcessGroup, dist.new_group(backend="gloo", timeout=WAIT_LIMIT))  # every rank is a member
    status = torch.tensor([_OK], dtype=torch.int64)
    try:
        if dist.get_rank() == 0:
            try:
                result = work()
            except BaseException:
                status[0] = _FAILED
                dist.broadcast(status, src=0, group=group)
                raise
            dist.broadcast(status, src=0, group=group)
            return result
        request = dist.broadcast(status, src=0, group=group, async_op=True)
        _wait(request, what, log, poll_seconds, report_seconds)
    finally:
        dist.destroy_process_group(group)
    if int(status[0]) != _OK:
        raise RuntimeError(f"rank {dist.get_rank()}: rank 0 failed while preparing {what}; its error is in its "
                           f"output above (and in the training log)")
    return check()


def _wait(request, what: str, log: Callable[[str], None], poll_seconds: float, report_seconds: float) -> None:
    start = last_report = time.monotonic()
    while not request.is_completed():
        time.sleep(poll_seconds)
        now = time.monotonic()
        if now - last_report >= report_seconds:
            log(f"rank {dist.get_rank()}: waiting for rank 0 to prepare {what} ({now - start:.0f} s)")
            last_report = now
    try:
        request.wait()
    except RuntimeError as e:  # gloo: the connection to rank 0 broke (its process died)
        raise RuntimeError(f"rank {dist.get_rank()}: lost rank 0 while it prepared {what} ({e})") from e
