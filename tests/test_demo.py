"""``nnunet_blob demo`` as a newcomer types it: the smoke budget end to end, its console output, resuming, its
errors, and its model used from a new shell."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

import nnunet_blob.demo
from helpers import BIN, run_cli
from nnunet_blob.registration import FOLDER_NAME

LOOKUP_LINE = "not found in nnunetv2.training.nnUNetTrainer"

#: the folder of the demo's ``<trainer>_demo`` classes that nnU-Net's lookup scans
DEMO_TRAINER_FOLDER = str(Path(nnunet_blob.demo.__file__).parent / FOLDER_NAME)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One smoke-budget demo run with ``--clean`` over an older demo workspace; the user's own nnU-Net folders
    point elsewhere and must stay untouched."""
    root = tmp_path_factory.mktemp("demo")
    user = {f"nnUNet_{k}": str(root / f"user_{k}") for k in ("raw", "preprocessed", "results")}
    env = {**os.environ, **user}
    (root / "ws" / "logs").mkdir(parents=True)  # an older run: its settings and a log
    (root / "ws" / "demo.json").write_text(json.dumps({"budget": "default", "seed": 3, "reduced_network": 8}))
    (root / "ws" / "logs" / "old.log").write_text("x" * 1000)
    result = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", "--clean", env=env,
                     timeout=1500)
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


def test_console_shows_our_lines_and_one_line_per_epoch(demo):
    root, _, result = demo
    lines = result.stdout.splitlines()
    assert [int(k) for k in re.findall(r"^\[(\d+)/11\] ", result.stdout, flags=re.MULTILINE)] == list(range(1, 12))
    epochs = [line.strip() for line in lines if line.strip().startswith("epoch ")]
    assert len(epochs) == 2 and all(re.match(r"epoch 1/1: train loss -?[\d.]+, val loss -?[\d.]+, pseudo Dice "
                                             r"[\d.]+(, instance F1 ([\d.]+|nan))?, [\d.]+ s$", e) for e in epochs)
    assert "instance F1" in epochs[1]  # the blob trainer's online score
    # nnU-Net's own output stays in the logs (its trainer lookup line included), not on the console
    assert LOOKUP_LINE not in result.stdout and "Current learning rate" not in result.stdout
    assert LOOKUP_LINE in (root / "ws" / "logs" / "train_nnUNetTrainerBlobDice.log").read_text()
    assert len(lines) < 80, result.stdout


def test_clean_says_what_it_removed(demo):
    root, _, result = demo
    assert (f"--clean: removed the demo workspace {root / 'ws'} (budget default, seed 3): 2 files"
            in result.stdout.splitlines()[0])
    assert not (root / "ws" / "logs" / "old.log").exists()


def test_smoke_numbers_are_flagged_as_meaningless(demo):
    root, _, result = demo
    header, table = result.stdout.split("[1/11]")[0], result.stdout.split("| trainer |")[0].splitlines()[-5:]
    assert "numbers are meaningless" in header and any("numbers are meaningless" in line for line in table)
    assert "numbers are meaningless" in (root / "ws" / "results.md").read_text()


def test_the_demo_model_predicts_from_a_new_shell(demo, tmp_path):
    """The command the demo prints, run in a new environment that knows nothing of the demo: no nnUNet_* or
    budget variables, only the installed package (its start-up hook; in an editable install the export line
    the README gives for it)."""
    root, _, result = demo
    command = next(line.strip() for line in result.stdout.splitlines() if "nnUNetv2_predict -i YOUR_IMAGES" in line)
    assert "-tr nnUNetTrainerBlobDice_demo -device cpu" in command
    mine = tmp_path / "my_images"
    mine.mkdir()
    shutil.copy(next((root / "ws" / "nnUNet_raw").glob("*/imagesTs/test_000_0000.nii.gz")), mine / "mri_0000.nii.gz")
    command = command.replace("YOUR_IMAGES", shlex.quote(str(mine))).replace("YOUR_OUTPUT",
                                                                             shlex.quote(str(tmp_path / "out")))
    fresh = {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": os.environ.get("HOME", str(tmp_path))}
    hook = subprocess.run([str(BIN / "python"), "-c", "import os; print(os.environ.get('nnUNet_extTrainer', ''))"],
                          env=fresh, capture_output=True, text=True, check=True).stdout
    if DEMO_TRAINER_FOLDER not in hook.split(os.pathsep):  # editable install: no start-up hook
        command = f'eval "$(nnunet_blob trainers --export)" && {command}'
    done = subprocess.run(["bash", "-c", command], env=fresh, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"Using trainer 'nnUNetTrainerBlobDice_demo' from: {DEMO_TRAINER_FOLDER}" in done.stdout
    assert (tmp_path / "out" / "mri.nii.gz").is_file()


def test_rerun_resumes_without_redoing_stages(demo):
    root, env, first = demo
    again = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", env=env)
    assert again.stdout.count("done before, skipped") == 11 and "[11/11] " in again.stdout
    assert table_rows(again.stdout) == table_rows(first.stdout)


def test_interrupted_training_continues_with_c(demo):
    root, env, _ = demo
    (root / "ws" / ".stages" / "train_nnUNetTrainerBlobDice.done").unlink()  # as if killed after a checkpoint
    again = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", root / "ws", "--verbose", env=env)
    assert "nnUNetv2_train nnUNetTrainerBlobDice (resuming)" in again.stdout
    # --verbose streams nnU-Net's own output, its trainer lookup line after ours that says it is expected
    expected = again.stdout.index("\"Trainer 'nnUNetTrainerBlobDice_demo' not found in nnunetv2.training."
                                  "nnUNetTrainer\" below is expected")
    assert expected < again.stdout.index("Trainer 'nnUNetTrainerBlobDice_demo' not found in nnunetv2.training."
                                         "nnUNetTrainer.\n")
    assert "Using trainer 'nnUNetTrainerBlobDice_demo'" in again.stdout
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


def test_tune_trains_five_folds_and_reports_raw_and_tuned_rows(tmp_path):
    """``--tune``: five folds with probabilities, tune-postprocessing on their validation predictions, the test
    split's five-fold ensemble evaluated raw and with the chosen file applied; a workspace of one mode is not reused
    by the other."""
    workspace = tmp_path / "ws"
    result = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", workspace, "--trainers",
                     "nnUNetTrainerBlobDice", "--tune", timeout=1500)
    rows = dict(re.findall(r"^\| (nnUNetTrainerBlobDice(?: tuned)?) \| ([0-9.| nan]+) \|$", result.stdout,
                           flags=re.MULTILINE))
    assert set(rows) == {"nnUNetTrainerBlobDice", "nnUNetTrainerBlobDice tuned"}, result.stdout[-3000:]
    model = workspace / "nnUNet_results" / "Dataset991_BlobDemo" / "nnUNetTrainerBlobDice_demo__nnUNetPlans__3d_fullres"
    for fold in range(5):
        assert list((model / f"fold_{fold}" / "validation").glob("*.npz")), fold  # trained with --npz
    settings = json.loads((model / "crossval_results_folds_0_1_2_3_4" / "postprocessing_instances.json").read_text())
    assert settings  # the file the tuned row applied
    raw = sorted(p.name for p in (workspace / "predictions" / "nnUNetTrainerBlobDice").glob("*.nii.gz"))
    tuned = sorted(p.name for p in (workspace / "predictions_tuned" / "nnUNetTrainerBlobDice").glob("*.nii.gz"))
    assert raw and tuned == raw
    summary = json.loads((workspace / "evaluation" / "nnUNetTrainerBlobDice_tuned" / "summary_instances.json")
                         .read_text())
    assert len(summary["metric_per_case"]) == len(raw)
    assert "-f 0 1 2 3 4" in result.stdout  # the reuse command predicts with the ensemble
    refused = run_cli("nnunet_blob", "demo", "--budget", "smoke", "--workspace", workspace, "--trainers",
                      "nnUNetTrainerBlobDice", check=False)
    assert refused.returncode == 1 and "'tune': True" in refused.stderr and "--clean" in refused.stderr


CHILD = """
import signal, sys, time
def stop(*_):
    time.sleep(0.3)  # ends its workers, removes its temporaries
    open(sys.argv[1], "w").close()
    sys.exit(130)
signal.signal(signal.SIGINT, stop if sys.argv[2] == "ends" else signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("child", ["ends", "ignores"])
def test_a_stage_tool_gets_time_to_end_after_ctrl_c_then_is_killed(tmp_path, monkeypatch, child):
    """Ctrl-C reaches the stage's tool too (one process group): it may end on its own (and clean up); one that does
    not is killed after a few seconds."""
    import signal
    import time

    from nnunet_blob.demo import stages

    monkeypatch.setattr(stages, "STOP_SECONDS", 2.0)
    cleaned = tmp_path / "cleaned"
    process = subprocess.Popen([str(BIN / "python"), "-c", CHILD, str(cleaned), child], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    start = time.monotonic()
    stages._end(process)
    assert process.returncode == (130 if child == "ends" else -signal.SIGKILL)
    assert cleaned.exists() == (child == "ends") and time.monotonic() - start < 10
