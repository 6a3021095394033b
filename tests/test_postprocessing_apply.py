"""apply-postprocessing refuses what it cannot apply, naming the case and the fix (the command itself runs on
nnU-Net's predictions in tests/test_postprocessing_e2e.py)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from nnunet_blob.postprocessing.apply import apply_case, apply_jobs, apply_to_folder
from nnunet_blob.postprocessing.rules import LabelLayout, Setting
from nnunet_blob.postprocessing.settings import DecisionError, PostprocessingFile


def pp_file(threshold=None) -> PostprocessingFile:
    return PostprocessingFile((Setting(1, 3.0, threshold),), LabelLayout((1,)), ".nii.gz", "SimpleITKIO")


def test_probabilities_of_another_model_are_refused_with_the_case(tmp_path):
    np.savez_compressed(tmp_path / "case_7.npz", probabilities=np.zeros((3, 2, 4, 4), np.float32))
    (tmp_path / "case_7.pkl").write_bytes(pickle.dumps({"spacing": (1.0, 1.0, 1.0)}))
    (job,) = apply_jobs(tmp_path, tmp_path / "out", pp_file(0.5))
    with pytest.raises(DecisionError, match="case case_7: cannot apply .* 3 channels"):
        apply_case(job)


def test_probabilities_without_properties_and_empty_folders(tmp_path):
    np.savez_compressed(tmp_path / "case_1.npz", probabilities=np.zeros((2, 2, 4, 4), np.float32))
    with pytest.raises(DecisionError, match=r"case case_1: case_1.npz has no case_1.pkl"):
        apply_jobs(tmp_path, tmp_path / "out", pp_file(0.5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DecisionError, match="no predictions"):
        apply_jobs(tmp_path / "empty", tmp_path / "out", pp_file())
    with pytest.raises(DecisionError, match="does not exist"):
        apply_jobs(tmp_path / "missing", tmp_path / "out", pp_file())
    with pytest.raises(DecisionError, match="does not exist; make it"):
        apply_to_folder(tmp_path, tmp_path / "out", tmp_path / "no_such.json")
