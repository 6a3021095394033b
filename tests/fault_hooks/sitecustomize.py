"""Faults of an unlucky cluster, for tests only: this folder is put on PYTHONPATH by the tests that need it.

In a process started by multiprocessing's ``spawn`` method (a worker), ``NNUNET_BLOB_TEST_WORKER_FAULT`` says how
it fails:

* ``start``: it exits with code 3 while starting, before it can take any work;
* ``kill-on:<case>``: it kills itself with SIGKILL (as the out-of-memory killer does) when it opens the properties
  file ``<case>.pkl`` that nnU-Net's dataset classes read with every case;
* ``kill-on-file:<name>``: as ``kill-on``, when it opens a file named ``<name>`` (e.g. a case's ``.nii.gz``).
"""
import os
import signal
import sys

_FAULT = os.environ.get("NNUNET_BLOB_TEST_WORKER_FAULT", "")

if "--multiprocessing-fork" in sys.argv and _FAULT == "start":
    os._exit(3)

if "--multiprocessing-fork" in sys.argv and _FAULT.startswith(("kill-on:", "kill-on-file:")):
    _VICTIM = _FAULT.split(":", 1)[1] + (".pkl" if _FAULT.startswith("kill-on:") else "")

    def _kill_on_open(event, args):
        if event == "open" and os.path.basename(str(args[0])) == _VICTIM:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(_kill_on_open)
