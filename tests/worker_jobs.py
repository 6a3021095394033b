"""Jobs for the worker-pool tests, in a module of their own: spawned workers import it quickly (no torch)."""
import os
import signal


def square_or_die(job: int) -> int:
    """``job ** 2``; job 7 kills its worker with SIGKILL, as the out-of-memory killer does."""
    if job == 7:
        os.kill(os.getpid(), signal.SIGKILL)
    return job * job


def square_or_raise(job: int) -> int:
    """``job ** 2``; job 3 raises."""
    if job == 3:
        raise ValueError(f"job {job} is bad")
    return job * job


def power(job: int, exponent: int) -> int:
    """``job ** exponent`` (a job with an extra argument)."""
    return job ** exponent
