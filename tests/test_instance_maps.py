"""`nnunet_blob preprocess` / ensure_instance_maps on datasets preprocessed by the real nnU-Net."""
from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import shutil
from pathlib import Path

import blosc2
import cc3d
import numpy as np
import pytest
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

from helpers import run_cli
from nnunet_blob.instances.components import compute_instances, instances_per_region
from nnunet_blob.preprocessing import InstanceMapError, InstanceMapStore, ensure_instance_maps
from nnunet_blob.preprocessing import store as store_module

IGNORE = 3  # two classes + ignore label


@pytest.fixture(scope="module")
def multiclass(preprocessed):
    return preprocessed(611, configurations=("2d", "3d_fullres"), num_train=5, num_classes=2, ignore_label=True,
                        name="MultiIgnore")


def data_folder(dataset, identifier="nnUNetPlans_3d_fullres") -> Path:
    return Path(os.environ["nnUNet_preprocessed"]) / dataset / identifier


def load_seg(folder: Path, case: str) -> np.ndarray:
    return nnUNetDatasetBlosc2(str(folder), [case]).load_case(case)[1][:]


def quiet(*_):
    pass


def clone_dataset(source: str, target: str, copy_data: bool = True) -> Path:
    """``source``'s preprocessed 3d_fullres data under another dataset name (no nnU-Net run); its data folder."""
    root = Path(os.environ["nnUNet_preprocessed"])
    shutil.rmtree(root / target, ignore_errors=True)
    folder = root / target / "nnUNetPlans_3d_fullres"
    if copy_data:
        shutil.copytree(data_folder(source), folder)
    else:
        folder.mkdir(parents=True)
    shutil.copy(root / source / "dataset.json", root / target / "dataset.json")
    (root / target / "nnUNetPlans.json").write_text((root / source / "nnUNetPlans.json").read_text()
                                                    .replace(source, target))
    return folder


@pytest.mark.parametrize("identifier,configuration", [("nnUNetPlans_3d_fullres", "3d_fullres"),
                                                      ("nnUNetPlans_2d", "2d")])
def test_command_matches_cc3d_per_class(multiclass, identifier, configuration):
    result = run_cli("nnunet_blob", "preprocess", "-d", 611, "-c", configuration, "-np", 2)
    assert "instances per case" in result.stdout and "volume median" in result.stdout
    folder = data_folder(multiclass, identifier)
    store = ensure_instance_maps(611, "nnUNetPlans", configuration, log=quiet)
    cases = sorted(nnUNetDatasetBlosc2.get_identifiers(str(folder)))
    assert sorted(store.manifest["cases"]) == cases
    for case in cases:
        seg = load_seg(folder, case)[0]
        ids = store.open(case)[:][0]
        assert ids.dtype == np.uint8 and ids.shape == seg.shape
        record = store.manifest["cases"][case]
        for label in (1, 2):
            expected = cc3d.connected_components(seg == label, connectivity=26).max()
            assert record["instances_per_class"].get(str(label), 0) == expected
            assert len(np.unique(ids[(seg == label) & (ids > 0)])) == expected
        assert not np.any(ids[(seg == 0) | (seg == IGNORE) | (seg < 0)])
        for i in np.unique(ids[ids > 0]):  # every id inside one class; ids unique within the case
            assert len(np.unique(seg[ids == i])) == 1
        assert np.array_equal(np.unique(ids[ids > 0]), np.arange(1, record["num_instances"] + 1))
        assert record["instance_sizes"] == [int((ids == i).sum()) for i in range(1, record["num_instances"] + 1)]
    # nnU-Net still sees exactly its own cases
    assert sorted(nnUNetDatasetBlosc2.get_identifiers(str(folder))) == cases


def test_idempotent_and_stale_after_a_segmentation_changes(multiclass):
    folder = data_folder(multiclass)
    store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    case = sorted(store.manifest["cases"])[0]
    stamps = {c: store.map_path(c).stat().st_mtime_ns for c in store.manifest["cases"]}
    messages = []
    ensure_instance_maps(611, configuration="3d_fullres", log=messages.append)
    assert "up to date" in messages[-1]
    assert stamps == {c: store.map_path(c).stat().st_mtime_ns for c in store.manifest["cases"]}

    # same labels rewritten (new mtime): the record is refreshed, the map is not recomputed
    seg_file = folder / f"{case}_seg.b2nd"
    os.utime(seg_file, ns=(seg_file.stat().st_atime_ns, seg_file.stat().st_mtime_ns + 10 ** 9))
    ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    assert store.map_path(case).stat().st_mtime_ns == stamps[case]

    # changed labels: recomputed, and only that case
    seg = load_seg(folder, case)
    seg[0, :4] = 0
    seg[0, 0, 0, 0] = 1
    array = blosc2.open(str(seg_file), mode="a")
    array[:] = seg
    del array
    store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    assert store.map_path(case).stat().st_mtime_ns != stamps[case]
    others = [c for c in stamps if c != case]
    assert all(store.map_path(c).stat().st_mtime_ns == stamps[c] for c in others)
    assert np.array_equal(store.open(case)[:][0] > 0, (seg[0] > 0) & (seg[0] != IGNORE))


def test_interrupted_write_is_never_accepted(multiclass, monkeypatch):
    store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    case = sorted(store.manifest["cases"])[1]
    real_replace = os.replace

    def crash_on_map(src, dst):
        if str(dst).endswith(f"{case}.b2nd"):
            raise KeyboardInterrupt("power cut while writing the map")
        return real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", crash_on_map)
    with pytest.raises(KeyboardInterrupt):
        ensure_instance_maps(611, configuration="3d_fullres", overwrite=True, num_processes=1, log=quiet,
                             progress=False)
    monkeypatch.undo()
    assert store.record(case) is None  # the old record no longer vouches for the files
    assert not list(store.folder.glob(".tmp-*"))  # no temporary left behind
    messages = []
    ensure_instance_maps(611, configuration="3d_fullres", log=messages.append, progress=False)
    assert "computing instance maps of" in messages[0] and store.record(case) is not None


def test_cases_that_appear_or_vanish(multiclass):
    folder = data_folder(multiclass)
    source = sorted(nnUNetDatasetBlosc2.get_identifiers(str(folder)))[0]
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
        shutil.copy(folder / f"{source}{suffix}", folder / f"extra_case{suffix}")
    try:
        store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
        assert "extra_case" in store.manifest["cases"] and store.map_path("extra_case").is_file()
    finally:
        for suffix in (".b2nd", "_seg.b2nd", ".pkl"):
            (folder / f"extra_case{suffix}").unlink()
    store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    assert "extra_case" not in store.manifest["cases"] and not store.map_path("extra_case").exists()


def test_npz_input_gives_the_same_maps(multiclass, tmp_path):
    """nnU-Net's legacy numpy format (case.npz with data and seg) is read like blosc2."""
    target = clone_dataset(multiclass, "Dataset612_Npz", copy_data=False)
    blosc_folder = data_folder(multiclass)
    for case in nnUNetDatasetBlosc2.get_identifiers(str(blosc_folder)):
        data, seg, _, properties = nnUNetDatasetBlosc2(str(blosc_folder), [case]).load_case(case)
        np.savez_compressed(target / f"{case}.npz", data=data[:], seg=seg[:])
        with open(target / f"{case}.pkl", "wb") as f:
            pickle.dump(properties, f)
    npz = ensure_instance_maps("Dataset612_Npz", configuration="3d_fullres", log=quiet)
    reference = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    for case, record in reference.manifest["cases"].items():
        assert npz.manifest["cases"][case]["instances_per_class"] == record["instances_per_class"]
        assert np.array_equal(npz.open(case)[:], reference.open(case)[:])


@pytest.mark.parametrize("args,message", [
    ((699, "nnUNetPlans", "3d_fullres"), "nnUNetv2_plan_and_preprocess -d 699"),
    ((611, "nnUNetPlans", "3d_lowres"), "configuration '3d_lowres' is not in"),
    ((611, "nnUNetResEncUNetMPlans", "3d_fullres"), "Run nnUNetv2_plan_and_preprocess"),
])
def test_missing_input_says_what_to_run(multiclass, args, message):
    with pytest.raises(InstanceMapError, match=message):
        ensure_instance_maps(*args, log=quiet)


def test_unreadable_segmentation_names_the_case(multiclass):
    folder = clone_dataset(multiclass, "Dataset613_Corrupt")
    victim = sorted(nnUNetDatasetBlosc2.get_identifiers(str(folder)))[2]
    (folder / f"{victim}_seg.b2nd").write_bytes(b"not a blosc2 file")
    with pytest.raises(InstanceMapError, match=f"case {victim}: cannot read its preprocessed segmentation") as error:
        ensure_instance_maps(613, configuration="3d_fullres", num_processes=1, log=quiet, progress=False)
    assert isinstance(error.value.__cause__, Exception)  # the reader's own error stays attached for debugging
    result = run_cli("nnunet_blob", "preprocess", "-d", 613, "-np", 2, check=False)
    assert result.returncode == 1 and victim in result.stderr and "nnUNetv2_preprocess" in result.stderr


def test_unwritable_instance_folder(multiclass):
    blocker = clone_dataset(multiclass, "Dataset614_ReadOnly").with_name("nnUNetPlans_3d_fullres_instances")
    blocker.write_text("a file where the folder should be")
    try:
        with pytest.raises(InstanceMapError, match="cannot write instance maps to"):
            ensure_instance_maps(614, configuration="3d_fullres", log=quiet)
    finally:
        blocker.unlink()


@pytest.mark.parametrize("seg,message", [
    (np.full((1, 4, 4, 4), 0.5, dtype=np.float32), "non-integer labels"),
    (np.zeros((2, 4, 4, 4), dtype=np.int16), "single-channel"),
])
def test_bad_segmentations(seg, message):
    with pytest.raises(ValueError, match=message):
        compute_instances(seg, case="bad_case")


@pytest.mark.parametrize("connectivity,expected", [(6, 3), (18, 2), (26, 1)])
def test_connectivity(connectivity, expected):
    seg = np.zeros((1, 5, 5, 5), dtype=np.int16)
    seg[0, 1, 1, 1] = seg[0, 2, 2, 1] = seg[0, 3, 3, 2] = 1  # edge-adjacent, then corner-adjacent
    assert compute_instances(seg, connectivity=connectivity).num_instances == expected


def test_region_dataset_records_labels_and_regions(preprocessed):
    """BraTS-style data: maps per stored label; instances_per_region gives the components of each region mask."""
    dataset = preprocessed(603, num_train=5, num_classes=2, regions=True, name="Regions")  # shared with trainer tests
    store = ensure_instance_maps(603, configuration="3d_fullres", log=quiet)
    assert store.manifest["labels"] == [1, 2] and store.manifest["regions"] == [[1, 2], [2]]
    folder = data_folder(dataset)
    for case in sorted(store.manifest["cases"]):
        seg = load_seg(folder, case)
        ids = instances_per_region(seg, store.manifest["regions"])
        assert ids.shape == (2, *seg.shape[1:])
        for channel, region in zip(ids, store.manifest["regions"], strict=True):
            mask = np.isin(seg[0], region)
            expected = cc3d.connected_components(mask, connectivity=26)
            assert np.array_equal(channel > 0, mask) and channel.max() == expected.max()
            assert np.array_equal(channel, expected)
        per_label = store.open(case)[:][0]  # the stored map: per label, so the region (1, 2) splits at label borders
        assert sum(store.manifest["cases"][case]["instances_per_class"].values()) >= ids[0].max()
        assert not np.any(per_label[seg[0] == 0])
        regions = store.region_table(case)  # for instance-balanced sampling: components of each region mask
        for r, channel in enumerate(ids):
            members = regions.of_class(r + 1)
            assert sorted(regions.sizes[members]) == sorted(np.bincount(channel.ravel())[1:])


def test_maps_of_an_older_format_are_recomputed(multiclass):
    store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    case = sorted(store.manifest["cases"])[0]
    record = json.loads(store.record_path(case).read_text())
    del record["format"]  # as written by nnunet_blob before format 2
    store.record_path(case).write_text(json.dumps(record))
    messages = []
    ensure_instance_maps(611, configuration="3d_fullres", log=messages.append)
    assert "computing instance maps of 1 of" in messages[0]
    assert json.loads(store.record_path(case).read_text())["format"] == store_module.FORMAT_VERSION


def _rank(rank: int, barrier, errors) -> None:
    """A DDP worker checking the maps at the same moment as the others: every worker that writes a file in the
    instance folder waits there until all have written theirs, then goes on (the interleaving of real ranks)."""
    from pathlib import Path as _Path

    real_touch = _Path.touch

    def touch_then_wait(self, *args, **kwargs):
        real_touch(self, *args, **kwargs)
        if self.parent.name.endswith("_instances"):
            barrier.wait(timeout=120)

    _Path.touch = touch_then_wait
    try:
        ensure_instance_maps(611, configuration="3d_fullres", num_processes=1, log=quiet, progress=False)
    except Exception as e:  # reported to the test
        errors.put(f"rank {rank}: {type(e).__name__}: {e}")


def test_ranks_checking_at_once_do_not_remove_each_others_files(multiclass):
    ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    context = multiprocessing.get_context("spawn")
    barrier, errors = context.Barrier(3), context.Queue()
    ranks = [context.Process(target=_rank, args=(rank, barrier, errors)) for rank in range(3)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(300)
    reported = [errors.get() for _ in range(errors.qsize())] if not errors.empty() else []
    assert not reported and all(p.exitcode == 0 for p in ranks), reported


def folder_state(folder: Path) -> dict:
    """Size and mtime of every file of a folder but the lock file (a writer's run writes its name there)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.name != ".lock"}


def test_check_only_writes_nothing_and_names_stale_cases(multiclass, monkeypatch):
    ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    store = ensure_instance_maps(611, configuration="3d_fullres", log=quiet)
    before = folder_state(store.folder)

    def no_writes(*args, **kwargs):
        raise AssertionError(f"write=False wrote: {args}")

    for name in ("touch", "mkdir", "unlink", "write_bytes", "write_text"):
        monkeypatch.setattr(Path, name, no_writes)
    monkeypatch.setattr(os, "replace", no_writes)
    messages = []
    checked = ensure_instance_maps(611, configuration="3d_fullres", write=False, log=messages.append)
    assert checked.connectivity == 26 and "up to date" in messages[-1] and "checked" in messages[-1]
    monkeypatch.undo()
    assert folder_state(store.folder) == before

    case = sorted(store.manifest["cases"])[2]
    store.map_path(case).rename(store.folder / "aside.b2nd")  # a map missing, as if rank 0 had not finished
    try:
        before = folder_state(store.folder)
        with pytest.raises(InstanceMapError, match=f"{case}.*nnunet_blob preprocess -d {multiclass} "
                                                   f"-p nnUNetPlans -c 3d_fullres --connectivity 26"):
            ensure_instance_maps(611, configuration="3d_fullres", write=False, log=quiet)
        assert folder_state(store.folder) == before
    finally:
        (store.folder / "aside.b2nd").rename(store.map_path(case))


def test_check_only_without_any_maps(multiclass):
    clone_dataset(multiclass, "Dataset616_NoMaps")
    with pytest.raises(InstanceMapError, match="5 of 5 cases are missing or stale"):
        ensure_instance_maps(616, configuration="3d_fullres", write=False, log=quiet)
    assert not data_folder("Dataset616_NoMaps", "nnUNetPlans_3d_fullres_instances").exists()


def test_maps_keep_the_connectivity_they_were_made_with(multiclass):
    clone_dataset(multiclass, "Dataset615_Connectivity")
    run_cli("nnunet_blob", "preprocess", "-d", 615, "-c", "3d_fullres", "--connectivity", 18, "-np", 1)
    store = InstanceMapStore(data_folder("Dataset615_Connectivity", "nnUNetPlans_3d_fullres_instances"))
    stamps = folder_state(store.folder)
    messages = []
    store = ensure_instance_maps(615, configuration="3d_fullres", log=messages.append)  # as the trainers call it
    assert store.connectivity == 18 and folder_state(store.folder) == stamps  # nothing recomputed
    assert "connectivity 18: that of the existing maps" in messages[-1] and "up to date" in messages[-1]
    messages = []
    store = ensure_instance_maps(615, configuration="3d_fullres", connectivity=26, log=messages.append,
                                 num_processes=1, progress=False)
    assert store.connectivity == 26
    assert "computing instance maps of 5 of 5 cases" in messages[0]
    assert "the existing maps have connectivity 18 and are recomputed" in messages[0]
    messages = []
    assert ensure_instance_maps(615, configuration="3d_fullres", log=messages.append).connectivity == 26
    assert "connectivity 26: that of the existing maps" in messages[-1]
