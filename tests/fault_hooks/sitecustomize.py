"""Faults of an unlucky cluster, for tests only: this folder is put on PYTHONPATH by the tests that need it.

In a process started by multiprocessing's ``spawn`` method (a worker), ``NNUNET_BLOB_TEST_WORKER_FAULT`` says how
it fails:

* ``start``: it exits with code 3 while starting, before it can take any work;
* ``kill-on:<case>``: it kills itself with SIGKILL (as the out-of-memory killer does) when it opens the properties
  file ``<case>.pkl`` that nnU-Net's dataset classes read with every case;
* ``kill-on-file:<name>``: as ``kill-on``, when it opens a file named ``<name>`` (e.g. a case's ``.nii.gz``);
* ``kill-on-replace:<name>``: as ``kill-on``, when it renames a file onto a path named ``<name>`` (the last step
  of an atomic write: the complete file is written, under its temporary name);
* ``pause-on-file:<name>``, ``pause-on-replace:<name>``: instead of killing itself it stops (sleeps), as a worker on
  a long case does.

``NNUNET_BLOB_TEST_FAULT_STAMP``: a file where the worker writes ``<time.time()> <pid>`` just before its fault
(the time of the kill, or of the pause). ``NNUNET_BLOB_TEST_WORKER_PIDS``: a folder where every worker leaves a file
named by its process id when it starts.
"""
import os
import signal
import sys
import time

_FAULT = os.environ.get("NNUNET_BLOB_TEST_WORKER_FAULT", "")
_WORKER = "--multiprocessing-fork" in sys.argv

if _WORKER and os.environ.get("NNUNET_BLOB_TEST_WORKER_PIDS"):
    open(os.path.join(os.environ["NNUNET_BLOB_TEST_WORKER_PIDS"], str(os.getpid())), "w").close()

if _WORKER and _FAULT == "start":
    os._exit(3)


def _stamp() -> None:
    path = os.environ.get("NNUNET_BLOB_TEST_FAULT_STAMP")
    if path:
        with open(path + ".part", "w") as f:
            f.write(f"{time.time()} {os.getpid()}")
        os.replace(path + ".part", path)


if _WORKER and ":" in _FAULT:
    _KIND, _VICTIM = _FAULT.split(":", 1)
    if _KIND == "kill-on":
        _KIND, _VICTIM = "kill-on-file", _VICTIM + ".pkl"
    _ACTION, _ON = _KIND.split("-on-")  # kill or pause, on file (open) or replace (rename)
    _EVENT = {"file": "open", "replace": "os.rename"}[_ON]  # os.replace raises the os.rename event

    def _fault(event, args):
        if event != _EVENT:
            return
        path = args[1] if _EVENT == "os.rename" else args[0]
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.basename(os.fsdecode(path)) == _VICTIM:
            _stamp()
            if _ACTION == "pause":
                time.sleep(600)
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(_fault)
