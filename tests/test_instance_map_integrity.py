"""Instance-map files are trusted only as far as their records vouch for them; writers lock; checkers see whole sets.

Damaged, swapped and foreign files (truncated, garbage, another case's map, a map of another connectivity) are
stale, never accepted; a process that keeps using maps (a trainer) notices when they are rewritten under it; two
writers at once leave one consistent set; read-only maps that are up to date are used; leftovers of killed writers
are removed; a full disk names the case. All on data preprocessed by the real nnU-Net.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import BIN, build_trainer, run_cli
from map_writers import check_maps, write_maps
from nnunet_blob.instances.components import compute_instances
from nnunet_blob.preprocessing import InstanceMapError, InstanceMapStore, ensure_instance_maps
from nnunet_blob.preprocessing.store import file_stamp, map_identity
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice
from test_instance_maps import IGNORE, clone_dataset, data_folder, load_seg, quiet


@pytest.fixture(scope="module")
def source(preprocessed):
    """The dataset of tests/test_instance_maps.py (two classes and an ignore label), cloned by each test."""
    return preprocessed(611, configurations=("2d", "3d_fullres"), num_train=5, num_classes=2, ignore_label=True,
                        name="MultiIgnore")


def fresh_clone(source: str, name: str) -> InstanceMapStore:
    """``source``'s preprocessed data as dataset ``name``, with freshly computed maps (connectivity 26)."""
    clone_dataset(source, name)
    return ensure_instance_maps(name, configuration="3d_fullres", num_processes=1, log=quiet, progress=False)


def cases(store: InstanceMapStore) -> list[str]:
    return sorted(store.manifest["cases"])


def assert_right_maps(store: InstanceMapStore, name: str) -> None:
    """Every map holds the components of its own case's segmentation with the manifest's connectivity, and its
    record, its map's identity and the manifest agree on that connectivity."""
    for case in cases(store):
        seg = load_seg(data_folder(name), case)
        expected = compute_instances(seg, IGNORE, store.connectivity, case).instance_map
        assert np.array_equal(store.open(case)[:], expected), case
        identity = map_identity(store.map_path(case))
        assert identity is not None and identity["case"] == case
        assert store.record(case)["connectivity"] == identity["connectivity"] == store.connectivity


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))  # same size, new content


def swap(a: Path, b: Path) -> None:
    """Swap two files by renaming, as ``mv`` does: sizes and mtimes travel with the files."""
    aside = a.with_name("aside")
    a.rename(aside)
    b.rename(a)
    aside.rename(b)


DAMAGES = {
    "truncated map": lambda store, a, b: truncate(store.map_path(a)),
    "garbage map": lambda store, a, b: garbage(store.map_path(a)),
    "truncated table": lambda store, a, b: truncate(store.table_path(a)),
    "garbage table": lambda store, a, b: garbage(store.table_path(a)),
    "swapped maps": lambda store, a, b: swap(store.map_path(a), store.map_path(b)),
    "swapped tables": lambda store, a, b: swap(store.table_path(a), store.table_path(b)),
    "another case's map copied in": lambda store, a, b: shutil.copy2(store.map_path(b), store.map_path(a)),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_swapped_or_foreign_files_are_stale(source, damage):
    name = "Dataset622_Damaged"
    store = fresh_clone(source, name)
    a, b = cases(store)[1], cases(store)[3]
    DAMAGES[damage](store, a, b)
    damaged = [a, b] if damage.startswith("swapped") else [a]
    with pytest.raises(InstanceMapError, match=f"{len(damaged)} of 5 cases are missing or stale: {a} \\(its "):
        ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet)
    messages: list[str] = []
    store = ensure_instance_maps(name, configuration="3d_fullres", num_processes=1, log=messages.append,
                                 progress=False)
    assert f"computing instance maps of {len(damaged)} of 5 cases" in messages[0] and a in messages[0], messages
    assert_right_maps(store, name)
    ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet)


def test_a_record_vouching_for_a_foreign_map_is_caught_by_the_maps_identity(source):
    """Even when a record's size and date match the file, a map of another case or connectivity is not accepted."""
    name, other = "Dataset623_Foreign", "Dataset624_Connectivity6"
    store = fresh_clone(source, name)
    clone_dataset(source, other)
    run_cli("nnunet_blob", "preprocess", "-d", other, "-c", "3d_fullres", "--connectivity", 6, "-np", 1)
    six = InstanceMapStore(data_folder(other, "nnUNetPlans_3d_fullres_instances"))
    a, b, c = cases(store)[:3]
    shutil.copy2(store.map_path(b), store.map_path(a))  # another case's map
    shutil.copy2(six.map_path(c), store.map_path(c))  # this case's map, made with connectivity 6
    for case in (a, c):  # records that vouch for the new files' size, date and hash
        record = store.record(case)
        store.record_path(case).write_text(json.dumps({**record, "files": {**record["files"],
                                                                           "map": file_stamp(store.map_path(case))}}))
    with pytest.raises(InstanceMapError) as error:
        ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet)
    assert f"{a} (its map file {a}.b2nd holds the map of case '{b}')" in str(error.value)
    assert f"{c} (its map file {c}.b2nd was made with connectivity 6)" in str(error.value)
    store = ensure_instance_maps(name, configuration="3d_fullres", num_processes=1, log=quiet, progress=False)
    assert_right_maps(store, name)


def test_a_touched_file_is_hashed_once_and_kept(source):
    name = "Dataset625_Touched"
    store = fresh_clone(source, name)
    case = cases(store)[0]
    path = store.map_path(case)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10 ** 9))  # e.g. copied without -p
    before = store.record_path(case).read_text()
    ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet)  # same content: accepted
    assert store.record_path(case).read_text() == before  # and nothing written
    messages: list[str] = []
    store = ensure_instance_maps(name, configuration="3d_fullres", log=messages.append)
    assert "all 5 cases up to date" in messages[-1]
    assert store.record(case)["files"]["map"]["mtime_ns"] == path.stat().st_mtime_ns  # the next check is cheap


def test_trainer_does_not_train_on_another_cases_map(source):
    name = "Dataset626_TrainCopied"
    store = fresh_clone(source, name)
    a, b = cases(store)[0], cases(store)[2]
    shutil.copyfile(store.map_path(b), store.map_path(a))  # a valid map, of the wrong case
    trainer = build_trainer(nnUNetTrainerBlobDice, name)
    datasets = trainer.get_tr_and_val_datasets()
    log = Path(trainer.log_file).read_text()
    assert "computing instance maps of 1 of 5 cases" in log and a in log, log
    dataset = next(d for d in datasets if a in d.identifiers)
    with_instances = np.asarray(dataset.load_case(a)[1][:])
    expected = compute_instances(load_seg(data_folder(name), a), IGNORE, 26, a).instance_map
    assert np.array_equal(with_instances[-1:], expected)


def test_trainer_notices_maps_rewritten_under_it(source):
    name = "Dataset627_Rewritten"
    fresh_clone(source, name)
    trainer = build_trainer(nnUNetTrainerBlobDice, name)
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    case = dataset_tr.identifiers[0]
    dataset_tr.load_case(case)[1][:]  # reads fine
    run_cli("nnunet_blob", "preprocess", "-d", name, "-c", "3d_fullres", "--connectivity", 6, "-np", 1)
    with pytest.raises(InstanceMapError, match=f"case {case}: its instance map .* was made with connectivity 6, not "
                                               f"what was checked before. The maps changed after this process "
                                               f"checked them .* Restart the training"):
        dataset_tr.load_case(case)


def test_two_writers_at_once_leave_one_consistent_set_and_checkers_see_whole_sets(source):
    name = "Dataset628_Concurrent"
    fresh_clone(source, name)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=write_maps, args=(628, 6, barrier, results)),
                 context.Process(target=write_maps, args=(628, 18, barrier, results)),
                 context.Process(target=check_maps, args=(628, barrier, results, 8.0))]
    for process in processes:
        process.start()
    reports = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join(60)
    writers = [r for r in reports if r[0] == "writer"]
    assert all(error is None for *_, error in writers), writers
    seen = next(r[2] for r in reports if r[0] == "checker")
    assert seen and all(s in (26, 6, 18) for s in seen), [s for s in seen if s not in (26, 6, 18)][:3]
    store = ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet)
    assert store.connectivity in (6, 18)
    assert_right_maps(store, name)


def test_a_writer_waits_for_the_lock_and_names_its_holder(source):
    name = "Dataset629_Waiting"
    store = fresh_clone(source, name)
    with store.lock(exclusive=True) as locked:
        assert locked
        writer = subprocess.Popen([str(BIN / "nnunet_blob"), "preprocess", "-d", name, "-c", "3d_fullres", "-np", "1",
                                   "--connectivity", "18"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(8)
        assert writer.poll() is None  # still waiting
    out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    assert f"waiting for pid {os.getpid()} on " in out and "which is using the instance maps" in out, out
    assert ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet).connectivity == 18


def test_leftovers_of_killed_writers_are_removed(source):
    name = "Dataset630_Leftovers"
    store = fresh_clone(source, name)
    leftover = store.folder / f".tmp-0badf00d-{cases(store)[0]}.b2nd"
    leftover.write_bytes(b"half a map")
    ensure_instance_maps(name, configuration="3d_fullres", write=False, log=quiet)
    assert leftover.exists()  # a checker writes nothing
    ensure_instance_maps(name, configuration="3d_fullres", log=quiet)
    assert not leftover.exists()


def test_a_full_disk_names_the_case(source):
    """A file-size limit (RLIMIT_FSIZE) makes writes fail as on a full disk, in the command and its workers."""
    name = "Dataset631_FullDisk"
    fresh_clone(source, name)
    limited = ("import resource, signal, sys\n"
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))\n"
               "from nnunet_blob.cli import main\n"
               "sys.exit(main(sys.argv[1:]))\n")
    for processes in (1, 2):
        result = subprocess.run([sys.executable, "-c", limited, "preprocess", "-d", name, "-c", "3d_fullres",
                                 "-np", str(processes), "--overwrite"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "cannot write its instance map files in" in result.stderr and "Free disk space" in result.stderr
        assert "nnunet_blob preprocess: error: case case_00" in result.stderr, result.stderr
    store = ensure_instance_maps(name, configuration="3d_fullres", num_processes=1, log=quiet, progress=False)
    assert_right_maps(store, name)


def test_a_dataset_that_is_not_an_id_or_a_name():
    result = run_cli("nnunet_blob", "preprocess", "-d", "abc", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'abc' is neither a dataset id" in result.stderr


def make_read_only(folder: Path, read_only: bool = True) -> None:
    for root, _dirs, files in os.walk(folder):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444 if read_only else 0o644)
        os.chmod(root, 0o555 if read_only else 0o755)


def without_write_permission() -> dict:
    """subprocess arguments that run a command subject to file permissions: as root, without the capabilities that
    override them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), else as this user."""
    if os.geteuid() != 0:
        return {}

    def drop_overrides():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        for capability in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
            if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
                raise OSError(ctypes.get_errno(), "cannot drop a capability")

    return {"preexec_fn": drop_overrides}


TRAIN_FROM_SHARED = """
import json, sys, torch
from nnunet_blob.nnunet_internals import trainer_plans
from nnunet_blob.trainers.variants import nnUNetTrainerBlobDice
base = sys.argv[1]
plans = trainer_plans(json.load(open(base + '/nnUNetPlans.json')))
trainer = nnUNetTrainerBlobDice(plans, '3d_fullres', 0, json.load(open(base + '/dataset.json')), torch.device('cpu'))
trainer.initialize()
dataset_tr, _ = trainer.get_tr_and_val_datasets()
print('instances', int(dataset_tr.load_case(dataset_tr.identifiers[0])[1][:][-1].max()))
"""


def test_read_only_maps_that_are_up_to_date_are_trained_on(source):
    name = "Dataset632_Shared"
    fresh_clone(source, name)
    build_trainer(nnUNetTrainerBlobDice, name).get_tr_and_val_datasets()  # splits_final.json, as nnU-Net writes it
    shared = Path(os.environ["nnUNet_preprocessed"]) / name
    instances = shared / "nnUNetPlans_3d_fullres_instances"
    options = without_write_permission()
    make_read_only(shared)
    try:
        command = subprocess.run([str(BIN / "nnunet_blob"), "preprocess", "-d", name, "-c", "3d_fullres"],
                                 capture_output=True, text=True, timeout=300, **options)
        assert command.returncode == 0, command.stderr
        assert "all 5 cases up to date" in command.stdout and "which this process cannot write" in command.stdout
        trained = subprocess.run([sys.executable, "-c", TRAIN_FROM_SHARED, str(shared)], capture_output=True,
                                 text=True, timeout=600, **options)
        assert trained.returncode == 0, trained.stderr[-3000:]
        assert "instances " in trained.stdout and "instances 0" not in trained.stdout

        os.chmod(instances, 0o755)
        (instances / "case_001.json").unlink()  # a stale case
        os.chmod(instances, 0o555)
        command = subprocess.run([str(BIN / "nnunet_blob"), "preprocess", "-d", name, "-c", "3d_fullres"],
                                 capture_output=True, text=True, timeout=300, **options)
        assert command.returncode == 1 and "case_001 (no record)" in command.stderr, command.stderr
        assert "cannot write instance maps to that folder" in command.stderr
    finally:
        make_read_only(shared, False)
