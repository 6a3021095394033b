"""Files that readers never see half-written, and advisory locks between processes.

Atomic writes: the payload goes to a temporary file in the target's folder (same file system), which is then
renamed over the target with ``os.replace``; on any error the temporary file is removed and the target keeps its
old content. Temporary names start with ``.tmp-`` and end with the target's name (blosc2 and matplotlib choose the
format by the ending); :class:`atomic_path_and_companions` does the same for writers that put files of their
own beside their file. A writer killed before its rename leaves only its temporary, which
:func:`remove_temporaries` clears (the worker pool does, for the cases of a failed run).

Locks: :class:`file_lock` is an advisory lock on a lock file (``flock``; ``msvcrt.locking`` on Windows, where it is
always exclusive), shared between readers and exclusive for one writer. The operating system releases it when its
holder closes the file or dies, so a killed process never leaves a stale lock behind.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl

TEMPORARY_PREFIX = ".tmp-"


def temporary_path(path: str | os.PathLike):
    """A fresh temporary name (``pathlib.Path``) beside ``path``; the random part keeps concurrent writers apart."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{os.urandom(4).hex()}-{path.name}")


class atomic_path:
    """``with atomic_path(target) as tmp: write(tmp)``: ``tmp`` replaces ``target`` when the block succeeds; it is
    removed when the block raises (the target is left as it was)."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.tmp = path, temporary_path(path)

    def __enter__(self):
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON (sorted keys, indented) to ``path`` atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


class atomic_path_and_companions:
    """``with atomic_path_and_companions(target) as tmp: write(tmp)`` for writers that may put files of their own
    beside their file (nnU-Net's TIFF writer adds ``<case>.json``): ``tmp`` has ``target``'s name, in a temporary
    folder beside ``target``. When the block succeeds the companions, then the file itself replace theirs (each
    rename is atomic; the file comes last, so where it is, its companions are too); the folder is removed either
    way."""

    def __init__(self, path: str | os.PathLike):
        self.path, self.folder = Path(path), temporary_path(path)

    def __enter__(self) -> Path:
        self.folder.mkdir()
        return self.folder / self.path.name

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                written = sorted(os.listdir(self.folder), key=lambda name: name == self.path.name)
                for name in written:
                    os.replace(self.folder / name, self.path.parent / name)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


def remove_temporaries(path: str | os.PathLike) -> None:
    """Remove the temporaries of ``path`` that a writer left behind (one killed before its rename): the files and
    folders beside ``path`` named as :func:`temporary_path` names them."""
    path = Path(path)
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if name.startswith(TEMPORARY_PREFIX) and name.endswith(f"-{path.name}") and \
                len(name) == len(TEMPORARY_PREFIX) + 9 + len(path.name):
            temporary = path.parent / name
            if temporary.is_dir() and not temporary.is_symlink():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)


class file_lock:
    """``with file_lock(path, exclusive) as locked:`` holds an advisory lock on the file ``path`` for the block.

    ``exclusive``: one writer (the lock file is created if missing and names its holder, for the messages of
    processes waiting on it); else a shared lock of readers, which writes nothing: taken where the lock file
    exists (readers go on unlocked where no writer ever made one).
    ``locked`` says whether the lock is held (not where the file system has no locks). A process that has to wait
    calls ``on_wait(holder)`` at once and then every ``report_seconds``; ``holder`` describes the process holding
    the lock as it wrote itself down (``"pid 123 on host: command"``, or ``"another process"``).

    Raises:
        OSError: the lock file cannot be created for an exclusive lock.
    """

    def __init__(self, path: str | os.PathLike, exclusive: bool, on_wait=None, report_seconds: float = 60.0,
                 poll_seconds: float = 0.2):
        self.path, self.exclusive, self.on_wait = os.fspath(path), exclusive, on_wait
        self.report_seconds, self.poll_seconds = report_seconds, poll_seconds
        self.fd: int | None = None

    def __enter__(self) -> bool:
        self.fd = self._open()
        if self.fd is None:
            return False
        try:
            self._acquire()
        except BaseException as e:
            os.close(self.fd)
            self.fd = None
            if isinstance(e, OSError):  # the file system has no locks (some network file systems): go on unlocked
                return False
            raise
        if self.exclusive:
            self._write_holder()
        return True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.fd is not None:
            try:
                if self.exclusive:  # the description goes with the holder (readers never write one)
                    try:
                        os.ftruncate(self.fd, 0)
                    except OSError:
                        pass
                _unlock(self.fd)
            finally:
                os.close(self.fd)
                self.fd = None

    def _open(self) -> int | None:
        if self.exclusive:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            except PermissionError:  # another user's lock file: locking needs no write access to it
                return os.open(self.path, os.O_RDONLY)
            try:
                os.fchmod(fd, 0o666)  # other users who may write the folder may lock it too (umask aside)
            except (OSError, AttributeError):
                pass
            return fd
        try:
            return os.open(self.path, os.O_RDONLY)
        except OSError:
            return None

    def _acquire(self) -> None:
        assert self.fd is not None
        if _try_lock(self.fd, self.exclusive):
            return
        last_report = None
        while not _try_lock(self.fd, self.exclusive):
            now = time.monotonic()
            if self.on_wait is not None and (last_report is None or now - last_report >= self.report_seconds):
                self.on_wait(self._holder())
                last_report = now
            time.sleep(self.poll_seconds)

    def _holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as f:
                return f.read(500).strip() or "another process"
        except OSError:
            return "another process"

    def _write_holder(self) -> None:
        assert self.fd is not None
        text = f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:300]}\n".encode()
        try:
            os.ftruncate(self.fd, 0)
            if hasattr(os, "pwrite"):
                os.pwrite(self.fd, text, 0)
        except OSError:  # the description is only for messages
            pass


def _try_lock(fd: int, exclusive: bool) -> bool:
    if sys.platform == "win32":  # one byte, always exclusive
        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)
