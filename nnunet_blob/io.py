"""Writing files so that readers never see half of one, advisory locks between processes, registering our trainers
with nnU-Net, and reporting a command's errors.

Atomic writes: the payload goes to a temporary file in the target's folder (same file system), which is then
renamed over the target with ``os.replace``; on any error the temporary file is removed and the target keeps its
old content. Temporary names start with ``.tmp-`` and end with the target's name (blosc2 and matplotlib choose the
format by the ending).

Locks: :class:`file_lock` is an advisory lock on a lock file (``flock``; ``msvcrt.locking`` on Windows, where it is
always exclusive), shared between readers and exclusive for one writer. The operating system releases it when its
holder closes the file or dies, so a killed process never leaves a stale lock behind.

Trainer registration: nnU-Net's ``-tr`` lookup also scans the folders listed in ``nnUNet_extTrainer``
(``nnunetv2/utilities/find_objects.py``); :data:`TRAINER_FOLDERS` are ours: the trainers, and the demo's
``<trainer>_demo`` classes so that a model the demo trained is found from any shell. The start-up hook
(``nnunet_blob.pth``, :mod:`nnunet_blob._autoregister`) registers them in every Python process, so this module is
imported at interpreter start-up: it imports nothing but ``os`` there (the rest on first use). Listing a folder
imports nothing: nnU-Net imports its modules only when a ``-tr`` name is not one of its own.
"""
import os

TEMPORARY_PREFIX = ".tmp-"
#: nnU-Net's variable listing folders of external trainers (``os.pathsep``-separated)
EXT_TRAINER_VARIABLE = "nnUNet_extTrainer"
#: the folder of our trainers that nnU-Net's lookup scans
TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers", "nnunet_ext")
#: the folder of the demo's budget trainers (``<trainer>_demo``)
DEMO_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo", "trainers")
#: every folder registered in ``nnUNet_extTrainer``, in this order
TRAINER_FOLDERS = (TRAINER_FOLDER, DEMO_TRAINER_FOLDER)


# ---------------------------------------------------------------------------------------------- atomic writes
def temporary_path(path: str | os.PathLike):
    """A fresh temporary name (``pathlib.Path``) beside ``path``; the random part keeps concurrent writers apart."""
    from pathlib import Path

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
    import json

    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())


# ------------------------------------------------------------------------------------------------------ locks
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
        import time

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
        import socket
        import sys

        assert self.fd is not None
        text = f"pid {os.getpid()} on {socket.gethostname()}: {' '.join(sys.argv)[:300]}\n".encode()
        try:
            os.ftruncate(self.fd, 0)
            if hasattr(os, "pwrite"):
                os.pwrite(self.fd, text, 0)
        except OSError:  # the description is only for messages
            pass


def _try_lock(fd: int, exclusive: bool) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: one byte, always exclusive
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
            return True
        except OSError:
            return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------- trainer registration
def ext_trainer_value(environ=os.environ, folders=TRAINER_FOLDERS) -> str:
    """``nnUNet_extTrainer`` of ``environ`` with ``folders`` (one path or several) listed: each appended after the
    folders already listed (the user's come first and stay), unless it is there already."""
    if isinstance(folders, (str, os.PathLike)):
        folders = (folders,)
    current = [p for p in environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep) if p]
    return os.pathsep.join(current + [f for f in dict.fromkeys(map(os.fspath, folders)) if f not in current])


def register_trainer_folder(environ=os.environ) -> str:
    """List :data:`TRAINER_FOLDERS` in ``environ['nnUNet_extTrainer']`` (once, keeping the user's folders);
    returns the new value."""
    environ[EXT_TRAINER_VARIABLE] = ext_trainer_value(environ)
    return environ[EXT_TRAINER_VARIABLE]


def is_registered(environ=os.environ) -> bool:
    """Whether ``environ['nnUNet_extTrainer']`` lists every folder of :data:`TRAINER_FOLDERS`."""
    listed = environ.get(EXT_TRAINER_VARIABLE, "").split(os.pathsep)
    return all(folder in listed for folder in TRAINER_FOLDERS)


def export_line(environ=os.environ) -> str:
    """The shell line ``nnunet_blob trainers --export`` prints: registers our folder in a shell where the start-up
    hook cannot run (``eval "$(nnunet_blob trainers --export)"``)."""
    import shlex

    return f"export {EXT_TRAINER_VARIABLE}={shlex.quote(ext_trainer_value(environ))}"


# ---------------------------------------------------------------------------------------- command-line errors
def axis_order(values, file_reader: str | None = None, versus: tuple[str, object] | None = None) -> str:
    """A spacing or shape of nnU-Net's arrays, saying its axis order: ``(2.0, 1.0, 1.0) in nnU-Net's axis order
    (z, y, x)``; with ``file_reader`` (e.g. "SimpleITK", whose images nnU-Net's readers turn around to z, y, x) also
    as that reader reports it: ``; (1.0, 1.0, 2.0) as SimpleITK reports it (x, y, z)``. ``versus = (whose, other)``
    puts another spacing or shape beside it: ``A vs the reference's B in nnU-Net's axis order ...``."""
    def show(v) -> tuple:
        return tuple(round(float(x), 6) if isinstance(x, float) else int(x) for x in v)

    shown = [show(values)] + ([show(versus[1])] if versus else [])
    n = len(shown[0])
    names = ("z", "y", "x")[-n:] if n <= 3 else tuple(f"axis {i}" for i in range(n))

    def pair(tuples, whose: str) -> str:
        return f"{tuples[0]} vs {whose}{tuples[1]}" if versus else f"{tuples[0]}"

    text = f"{pair(shown, versus[0] + ' ' if versus else '')} in nnU-Net's axis order ({', '.join(names)})"
    if file_reader is not None:
        them = "them" if versus else "it"
        text += f"; {pair([t[::-1] for t in shown], '')} as {file_reader} reports {them} ({', '.join(names[::-1])})"
    return text


def file_reader(properties: dict) -> str | None:
    """The reader whose axis order is the reverse of nnU-Net's, from the properties nnU-Net's reader returned."""
    if properties.get("sitk_stuff"):
        return "SimpleITK"
    if properties.get("nibabel_stuff"):
        return "nibabel"
    return None


def reports(*errors: type[BaseException], command: str):
    """Sub-command decorator: ``errors`` (a user's input or environment, not a bug) end the command with
    ``nnunet_blob COMMAND: error: ...`` on stderr and exit code 1 instead of a traceback."""
    import functools
    import sys

    def decorate(func):
        @functools.wraps(func)
        def run(args):
            try:
                return func(args)
            except errors as e:
                end_progress_bars(e)
                print(f"nnunet_blob {command}: error: {e}", file=sys.stderr)
                return 1

        return run

    return decorate


def end_progress_bars(error: BaseException | None = None) -> None:
    """Close the progress bars a failing command left open, so that its error comes on its own, last line.

    A bar over a generator that stopped at an error closes only when the generator is finalized, and the error's
    traceback keeps it alive until after the message is printed (the bar would be redrawn below the error):
    clearing the traceback's frames finalizes those generators now; any tqdm bar still open is closed."""
    import sys
    import traceback

    if error is not None and error.__traceback__ is not None:
        traceback.clear_frames(error.__traceback__)
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()
