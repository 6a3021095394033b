"""Atomic writes and locks (nnunet_blob.files), the nnUNet_extTrainer registration (nnunet_blob.registration)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nnunet_blob.demo
import nnunet_blob.trainers
from nnunet_blob.files import (
    atomic_path,
    atomic_path_and_companions,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    remove_temporaries,
    temporary_path,
)
from nnunet_blob.registration import (
    FOLDER_NAME,
    TRAINER_FOLDERS,
    export_line,
    ext_trainer_value,
    register_trainer_folders,
)

TRAINER_FOLDER = str(Path(nnunet_blob.trainers.__file__).parent / FOLDER_NAME)
DEMO_TRAINER_FOLDER = str(Path(nnunet_blob.demo.__file__).parent / FOLDER_NAME)


def test_atomic_writes_replace_the_target(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"b": 1, "a": [1.5, None]})
    assert json.loads(target.read_text()) == {"a": [1.5, None], "b": 1}
    atomic_write_bytes(str(target), b"new")
    assert target.read_bytes() == b"new" and os.listdir(tmp_path) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "case.b2nd"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith("case.b2nd")
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["case.b2nd"]
    with pytest.raises(TypeError):
        atomic_write_json(target, {"not json": object()})
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["case.b2nd"]


def test_a_writer_with_companion_files_is_atomic_and_a_killed_writers_temporaries_are_removed(tmp_path):
    """nnU-Net's TIFF writer puts ``<case>.json`` beside ``<case>.tif``: both land, or neither."""
    import numpy as np
    from nnunetv2.imageio.tif_reader_writer import Tiff3DIO

    target = tmp_path / "case.tif"
    with atomic_path_and_companions(target) as tmp:
        Tiff3DIO().write_seg(np.ones((2, 3, 4), np.uint8), str(tmp), {"spacing": (2.0, 1.0, 1.0)})
        assert sorted(os.listdir(tmp.parent)) == ["case.json", "case.tif"] and not target.exists()
    assert sorted(os.listdir(tmp_path)) == ["case.json", "case.tif"]
    assert json.loads((tmp_path / "case.json").read_text()) == {"spacing": [2.0, 1.0, 1.0]}
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path_and_companions(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["case.json", "case.tif"]
    # what writers killed before their rename leave behind: a temporary file, a temporary folder
    temporary_path(target).write_bytes(b"half")
    temporary_path(target).mkdir()
    (tmp_path / ".tmp-0123abcd-other.tif").write_bytes(b"another case's")
    remove_temporaries(target)
    assert sorted(os.listdir(tmp_path)) == [".tmp-0123abcd-other.tif", "case.json", "case.tif"]


def test_registration_appends_once_and_keeps_the_users_folders():
    environ = {"nnUNet_extTrainer": os.pathsep.join(["/a", "", "/b"])}
    assert TRAINER_FOLDERS == (TRAINER_FOLDER, DEMO_TRAINER_FOLDER)  # every part's nnunet_ext folder, ours first
    assert register_trainer_folders(environ) == os.pathsep.join(["/a", "/b", TRAINER_FOLDER, DEMO_TRAINER_FOLDER])
    assert register_trainer_folders(environ) == os.pathsep.join(["/a", "/b", TRAINER_FOLDER, DEMO_TRAINER_FOLDER])
    assert register_trainer_folders({}) == os.pathsep.join(TRAINER_FOLDERS)
    only_ours = {"nnUNet_extTrainer": os.pathsep.join([DEMO_TRAINER_FOLDER, "/a"])}
    assert register_trainer_folders(only_ours) == os.pathsep.join([DEMO_TRAINER_FOLDER, "/a", TRAINER_FOLDER])
    assert ext_trainer_value({}, Path("/demo")) == "/demo"
    assert Path(TRAINER_FOLDER, "nnunet_blob_trainers.py").is_file()
    assert Path(DEMO_TRAINER_FOLDER, "nnunet_blob_demo_trainers.py").is_file()


def test_export_line_evaluates_in_a_shell_with_spaces_in_paths():
    user = os.path.join(os.sep, "my trainers", "it's here")
    line = export_line({"nnUNet_extTrainer": user})
    shell = subprocess.run(["bash", "-c", 'eval "$(cat)"; printf %s "$nnUNet_extTrainer"'], input=line,
                           capture_output=True, text=True, check=True)
    assert shell.stdout.split(os.pathsep) == [user, *TRAINER_FOLDERS]


def test_the_start_up_module_imports_only_os():
    code = ("import os, sys; before = set(sys.modules); import nnunet_blob._autoregister; "
            "print(sorted(m for m in set(sys.modules) - before if not m.startswith('nnunet_blob')))")
    new = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}).stdout
    assert new.strip() == "[]"


HOLD_LOCK = """
import sys, time
from nnunet_blob.files import file_lock
with file_lock(sys.argv[1], exclusive=sys.argv[2] == "exclusive") as locked:
    print("locked" if locked else "not locked", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def hold_lock(path, mode: str, seconds: float) -> subprocess.Popen:
    """Another process holding ``path``'s lock for ``seconds`` (returns once it holds it)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), mode, str(seconds)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_file_lock_excludes_writers_and_shares_readers(tmp_path):
    lock = tmp_path / ".lock"
    with file_lock(tmp_path / "missing", exclusive=False) as locked:
        assert not locked and not (tmp_path / "missing").exists()  # a reader creates nothing
    holder = hold_lock(lock, "exclusive", 2.0)
    waited: list[str] = []
    start = time.monotonic()
    with file_lock(lock, exclusive=False, on_wait=waited.append) as locked:  # a reader waits for the writer
        assert locked and time.monotonic() - start > 1.0
    assert waited == [f"pid {holder.pid} on {socket.gethostname()}: -c {lock} exclusive 2.0"]
    holder.wait()
    reader = hold_lock(lock, "shared", 2.0)
    start = time.monotonic()
    with file_lock(lock, exclusive=False) as locked:  # readers share
        assert locked and time.monotonic() - start < 1.0
    waited = []
    with file_lock(lock, exclusive=True, on_wait=waited.append) as locked:  # a writer waits for the reader
        assert locked and waited == ["another process"]  # readers write no description
    reader.wait()
