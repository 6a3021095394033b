"""Helpers the tests share (fixtures live in conftest.py): the installed command-line tools, trainers of the
session's preprocessed datasets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from nnunet_blob.nnunet_internals import trainer_plans

TESTS = Path(__file__).parent
BIN = Path(sys.executable).parent


def run_cli(*args, env=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    """Run an installed command line tool (nnUNetv2_*, nnunet_blob) of this environment; output captured."""
    result = subprocess.run([str(BIN / args[0]), *map(str, args[1:])], env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n"
                             f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def build_trainer(trainer_class, dataset: str, configuration: str = "3d_fullres", initialize: bool = True):
    """A trainer of a preprocessed dataset of the workspace on the CPU, as ``nnUNetv2_train`` builds it (fold 0)."""
    import torch

    base = Path(os.environ["nnUNet_preprocessed"]) / dataset
    plans = trainer_plans(json.loads((base / "nnUNetPlans.json").read_text()))
    trainer = trainer_class(plans, configuration, 0, json.loads((base / "dataset.json").read_text()),
                            torch.device("cpu"))
    if initialize:
        trainer.initialize()
    return trainer


def line_with(text: str, *facts) -> str:
    """The first line of ``text`` that holds every one of ``facts`` (the key facts of one message: the case, the
    values, the option or command that fixes it), not its wording; AssertionError showing ``text`` when none does."""
    wanted = [str(f) for f in facts]
    for line in text.splitlines():
        if all(f in line for f in wanted):
            return line
    raise AssertionError(f"no line holds all of {wanted}:\n{text}")
