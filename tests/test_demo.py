"""``nnunet_blob demo`` as a newcomer types it: the smoke budget end to end, resuming, and its errors."""
from __future__ import annotations

import os
import re

import pytest

from conftest import run_cli


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One smoke-budget demo run; the user's own nnU-Net folders point elsewhere and must stay untouched."""
    root = tmp_path_factory.mktemp("demo")
    user = {f"nnUNet_{k}": str(root / f"user_{k}") for k in ("raw", "preprocessed", "results")}
    env = {**os.environ, **user}
    result = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", env=env, timeout=1500)
    return root, env, result


def table_rows(output: str) -> dict:
    rows = re.findall(r"^\| (nnUNetTrainer\w*) \| ([0-9.| nan]+) \|$", output, flags=re.MULTILINE)
    return {name: [float(v) for v in values.split("|")] for name, values in rows}


def test_smoke_demo_prints_the_table_and_pictures(demo):
    root, _, result = demo
    rows = table_rows(result.stdout)
    assert set(rows) == {"nnUNetTrainer", "nnUNetTrainerBlobDice"}, result.stdout[-3000:]
    assert all(len(values) == 5 and all(0 <= v <= 1 for v in values) for values in rows.values())
    for trainer in rows:
        assert list((root / "ws" / "evaluation" / trainer / "pictures").glob("*.png"))
    assert "reduced to 4 features" in result.stdout  # the output says the CPU network is not nnU-Net's own
    assert "Wilcoxon" in (root / "ws" / "logs" / "compare.log").read_text()
    assert not any((root / f"user_{k}").exists() for k in ("raw", "preprocessed", "results"))


def test_rerun_resumes_without_redoing_stages(demo):
    root, env, first = demo
    again = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", env=env)
    assert again.stdout.count("done before, skipped") == 11
    assert table_rows(again.stdout) == table_rows(first.stdout)


def test_interrupted_training_continues_with_c(demo):
    root, env, _ = demo
    (root / "ws" / ".stages" / "train_nnUNetTrainerBlobDice.done").unlink()  # as if killed after a checkpoint
    again = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", env=env)
    assert "nnUNetv2_train nnUNetTrainerBlobDice (resuming)" in again.stdout
    assert (root / "ws" / "logs" / "train_nnUNetTrainerBlobDice.log").read_text().splitlines()[0].endswith(" --c")
    assert again.stdout.count("done before, skipped") == 7  # its prediction, evaluation and the comparison rerun
    assert set(table_rows(again.stdout)) == {"nnUNetTrainer", "nnUNetTrainerBlobDice"}


def test_a_failing_stage_names_itself_and_its_log(demo):
    root, env, _ = demo
    for prediction in (root / "ws" / "predictions" / "nnUNetTrainer").glob("*.nii.gz"):
        prediction.unlink()
    (root / "ws" / ".stages" / "evaluate_nnUNetTrainer.done").unlink()
    failed = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", env=env, check=False)
    assert failed.returncode == 1
    assert "stage 'evaluate_nnUNetTrainer' failed" in failed.stderr
    assert str(root / "ws" / "logs" / "evaluate_nnUNetTrainer.log") in failed.stderr


@pytest.mark.parametrize("arguments,message", [
    (["--trainers", "nnUNetTrainerNope"], "unknown trainer(s) nnUNetTrainerNope"),
    (["--budget", "default"], "add --clean to start over"),
])
def test_bad_arguments_are_refused_clearly(demo, arguments, message):
    root, env, _ = demo
    refused = run_cli("nnunet_blob", "demo", "--workspace", root / "ws", *arguments, env=env, check=False)
    assert refused.returncode == 1 and message in refused.stderr


def test_clean_never_deletes_a_folder_the_demo_did_not_make(tmp_path):
    (tmp_path / "thesis.tex").write_text("precious")
    refused = run_cli("nnunet_blob", "demo", "--workspace", tmp_path, "--clean", check=False)
    assert refused.returncode == 1 and "holds no demo run" in refused.stderr
    assert (tmp_path / "thesis.tex").read_text() == "precious"
