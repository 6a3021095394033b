"""After `pip install`, nnU-Net's own `-tr` lookup finds our trainers with no extra step."""
from __future__ import annotations

import os
import subprocess
import sys

from nnunet_blob.trainers import EXT_TRAINER_FOLDER

USER_FOLDER = os.path.join(os.sep, "somewhere", "my_trainers")


def python(code: str, **env) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "NNUNET_BLOB_NO_AUTOREGISTER"}
    environ.update(env)
    return subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_startup_hook_appends_our_folder_and_keeps_the_users():
    value = python("import os; print(os.environ['nnUNet_extTrainer'])", nnUNet_extTrainer=USER_FOLDER)
    assert value.split(os.pathsep) == [USER_FOLDER, EXT_TRAINER_FOLDER]


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
    assert line == f"export nnUNet_extTrainer={USER_FOLDER}{os.pathsep}{EXT_TRAINER_FOLDER}"
    listing = python("import sys; from nnunet_blob.cli import main; sys.exit(main(['trainers']))")
    assert "nnUNetTrainerBlobDice " in listing and "lists" in listing
