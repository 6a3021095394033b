"""After `pip install`, nnU-Net's own `-tr` lookup finds our trainers with no extra step."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from nnunet_blob.registration import TRAINER_FOLDERS

USER_FOLDER = os.path.join(os.sep, "somewhere", "my_trainers")


def python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NNUNET_BLOB_NO_AUTOREGISTER"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_startup_hook_appends_our_folder_and_keeps_the_users():
    value = python("import os; print(os.environ['nnUNet_extTrainer'])", nnUNet_extTrainer=USER_FOLDER)
    assert value.split(os.pathsep) == [USER_FOLDER, *TRAINER_FOLDERS]


def test_nnunet_lookup_finds_the_real_class():
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find\n"
            "import pickle\n"
            "for name in ('nnUNetTrainerBlobDice', 'nnUNetTrainerTopKDice_k30', 'nnUNetTrainerTversky_noCE'):\n"
            "    cls = find(name)\n"
            "    assert pickle.loads(pickle.dumps(cls)) is cls\n"
            "    print('MODULE', cls.__module__)")
    output = python(code, nnUNet_extTrainer=USER_FOLDER).splitlines()
    modules = [line.split()[1] for line in output if line.startswith("MODULE ")]
    assert modules == ["nnunet_blob.trainers.variants"] * 3


def test_export_line_for_shells_where_the_hook_cannot_run():
    line = python("import sys; from nnunet_blob.cli import main; sys.exit(main(['trainers', '--export']))",
                  nnUNet_extTrainer=USER_FOLDER)
    assert line == f"export nnUNet_extTrainer={os.pathsep.join([USER_FOLDER, *TRAINER_FOLDERS])}"
    listing = python("import sys; from nnunet_blob.cli import main; sys.exit(main(['trainers']))")
    assert "nnUNetTrainerBlobDice " in listing and "lists" in listing


HOOK = Path(__file__).parents[1] / "nnunet_blob.pth"
# run the hook as the interpreter does at start-up (site.addsitedir executes the .pth line), then a child process
# that inherits the environment and runs it again
RUN_HOOK = ("import os, site, subprocess, sys; site.addsitedir(sys.argv[1]); "
            "print(os.environ.get('nnUNet_extTrainer')); sys.stdout.flush(); "
            "subprocess.run([sys.executable, '-c', 'import site, sys; site.addsitedir(sys.argv[1])', sys.argv[1]], "
            "check=True)")


def run_hook(tmp_path, **env) -> subprocess.CompletedProcess:
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    shutil.copy(HOOK, site_dir / HOOK.name)
    environ = {k: v for k, v in os.environ.items() if k not in ("NNUNET_BLOB_NO_AUTOREGISTER", "nnUNet_extTrainer")}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", RUN_HOOK, str(site_dir)], env=environ, capture_output=True,
                          text=True, check=True, cwd=tmp_path)  # not the checkout: its nnunet_blob would come first


def test_hook_registers_our_folder(tmp_path):
    result = run_hook(tmp_path, nnUNet_extTrainer=USER_FOLDER)
    assert result.stdout.split() == [os.pathsep.join([USER_FOLDER, *TRAINER_FOLDERS])] and not result.stderr
    result = run_hook(tmp_path, nnUNet_extTrainer=USER_FOLDER, NNUNET_BLOB_NO_AUTOREGISTER="1")
    assert result.stdout.split() == [USER_FOLDER] and not result.stderr


def test_broken_hook_warns_once_with_the_fix_and_never_raises(tmp_path):
    broken = tmp_path / "broken" / "nnunet_blob"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise RuntimeError('half-installed package')\n")
    result = run_hook(tmp_path, PYTHONPATH=str(broken.parent))
    assert result.stdout.split() == ["None"]  # the process went on, without our folder
    warnings = [line for line in result.stderr.splitlines() if line.startswith("nnunet_blob:")]
    assert len(warnings) == 1, result.stderr  # the child process, which failed the same way, stayed quiet
    assert "half-installed package" in warnings[0] and "Reinstall nnunet_blob" in warnings[0]
    assert "NNUNET_BLOB_NO_AUTOREGISTER=1" in warnings[0] and "nnunet_blob trainers --export" in warnings[0]
