"""``nnunet_blob export``: nnU-Net's model export (``nnUNetv2_export_model_to_zip``) plus our files, and with
``--stock`` a model that plain nnU-Net predicts.

The zip holds what nnU-Net's ``export_pretrained_model`` puts in it (checkpoints, plans, dataset.json, fingerprint,
each fold's ``progress.png`` and ``validation/summary.json``, the cross-validation ``summary.json`` and
``postprocessing.pkl``, matching ensembles, ``inference_information.json``) and, where they exist:
``postprocessing_instances.json`` (models and their ensembles), each fold's ``validation/summary_instances.json``
and ``inference_instructions_instances.txt`` / ``inference_information_instances.json``.
``nnUNetv2_install_pretrained_model_from_zip`` unpacks it into ``nnUNet_results``.

**--stock**: the network of every nnunet_blob trainer is nnU-Net's own; only the loss differs, and the loss is not
part of a checkpoint. nnU-Net's predictor rebuilds the network with the class the checkpoint names
(:data:`~nnunet_blob.nnunet_internals.CHECKPOINT_TRAINER_KEY`), so the exported checkpoints name
``nnUNetTrainer`` and a machine with only ``pip install nnunetv2`` predicts the model (with
``nnUNetv2_predict -tr <the trainer's name>``: the folder keeps its name). The export refuses a trainer whose
network is not nnU-Net's.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

from nnunet_blob.files import atomic_path
from nnunet_blob.nnunet_internals import (
    CHECKPOINT_TRAINER_KEY,
    builds_nnunets_network,
    export_pretrained_model,
    find_trainer_class,
)
from nnunet_blob.postprocessing.cases import crossval_folder, model_folder, results_root
from nnunet_blob.postprocessing.selection import INFORMATION_FILE, INSTRUCTIONS_FILE
from nnunet_blob.postprocessing.settings import FILE_NAME, DecisionError
from nnunet_blob.preprocessing.locate import dataset_name

#: the trainer every checkpoint of a ``--stock`` export names
STOCK_TRAINER = "nnUNetTrainer"
#: a note in each exported model folder of a ``--stock`` export
STOCK_NOTE = "nnunet_blob_export.json"


def _check_stock(trainer: str) -> None:
    trainer_class = find_trainer_class(trainer)
    if trainer_class is None:
        raise DecisionError(f"nnU-Net cannot find the trainer {trainer} to check that its network is nnU-Net's; "
                            f"register the trainers (eval \"$(nnunet_blob trainers --export)\") or list your "
                            f"trainer's folder in nnUNet_extTrainer")
    if not builds_nnunets_network(trainer_class):
        raise DecisionError(f"{trainer} builds its own network (build_network_architecture), so a checkpoint naming "
                            f"{STOCK_TRAINER} would not rebuild it; export without --stock and install nnunet_blob "
                            f"(and the trainer) where you predict")


def stock_checkpoint(payload: bytes, source: str) -> bytes:
    """A checkpoint's bytes with :data:`~nnunet_blob.nnunet_internals.CHECKPOINT_TRAINER_KEY` set to
    ``nnUNetTrainer``."""
    import torch

    checkpoint = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)
    if CHECKPOINT_TRAINER_KEY not in checkpoint:
        raise DecisionError(f"{source} is not an nnU-Net checkpoint (no {CHECKPOINT_TRAINER_KEY!r})")
    _check_stock(checkpoint[CHECKPOINT_TRAINER_KEY])
    checkpoint[CHECKPOINT_TRAINER_KEY] = STOCK_TRAINER
    out = io.BytesIO()
    torch.save(checkpoint, out)
    return out.getvalue()


def our_files(dataset: str, configurations: Sequence[str], trainer: str, plans: str, folds) -> list[Path]:
    """The files of nnunet_blob that belong with the exported models (those that exist)."""
    root = results_root()
    name = dataset_name(dataset)
    files = []
    identifiers = set()
    for configuration in configurations:
        folder = model_folder(name, trainer, plans, configuration)
        if not folder.is_dir():
            continue
        identifiers.add(folder.name)
        files.append(crossval_folder(folder, folds) / FILE_NAME)
        files += [folder / ("fold_all" if f == "all" else f"fold_{f}") / "validation" / "summary_instances.json"
                  for f in folds]
    ensembles = root / name / "ensembles"
    if ensembles.is_dir():
        for ensemble in sorted(ensembles.iterdir()):
            _, *members, _ = ensemble.name.split("___")
            if members and all(m in identifiers for m in members):
                files.append(ensemble / FILE_NAME)
    files += [root / name / INSTRUCTIONS_FILE, root / name / INFORMATION_FILE]
    return [f for f in files if f.is_file()]


def export_model(dataset: str, output_file: str | Path, configurations: Sequence[str], trainer: str,
                 plans: str = "nnUNetPlans", folds=(0, 1, 2, 3, 4),
                 checkpoints: Sequence[str] = ("checkpoint_final.pth",), stock: bool = False,
                 log: Callable[[str], None] = print) -> Path:
    """Write the zip (module docstring); returns its path."""
    name = dataset_name(dataset)
    root = results_root()
    for configuration in configurations:
        _check_checkpoints(model_folder(name, trainer, plans, configuration), name, configuration, trainer, plans,
                           folds, checkpoints)
    if stock:
        _check_stock(trainer)
    output_file = Path(output_file)
    output_file.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output_file.parent, prefix=".tmp-export-") as scratch:
        nnunet_zip = Path(scratch) / "nnunet.zip"
        export_pretrained_model(name, str(nnunet_zip), tuple(configurations), trainer, plans, tuple(folds),
                                tuple(checkpoints))
        with atomic_path(output_file) as tmp, zipfile.ZipFile(nnunet_zip) as theirs, \
                zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as ours:
            names = _copy_nnunet_zip(theirs, ours, checkpoints if stock else ())
            for path in our_files(name, configurations, trainer, plans, folds):
                arcname = os.path.relpath(path, root)
                if arcname not in names:
                    ours.write(path, arcname)
                    log(f"added {arcname}")
            if stock:
                for configuration in configurations:
                    folder = model_folder(name, trainer, plans, configuration)
                    note = {"exported_by": "nnunet_blob export --stock", "trainer": trainer,
                            "checkpoints_name": STOCK_TRAINER,
                            "predict_with": f"nnUNetv2_predict -d {name} -c {configuration} -tr {trainer} -p {plans}"}
                    ours.writestr(os.path.relpath(folder / STOCK_NOTE, root), json.dumps(note, indent=1))
    kind = f"checkpoints naming {STOCK_TRAINER} (plain nnU-Net predicts them)" if stock else \
        f"checkpoints naming {trainer} (nnU-Net needs the trainer registered to predict)"
    log(f"written {output_file}: {kind}")
    return output_file


def _check_checkpoints(folder: Path, name: str, configuration: str, trainer: str, plans: str, folds,
                       checkpoints: Sequence[str]) -> None:
    """DecisionError naming the missing model or checkpoint and the command that trains it."""
    if not folder.is_dir():
        raise DecisionError(f"no trained model {folder.name} of {name} in {folder.parent}; check -tr, -p, -c")
    for fold in folds:
        for checkpoint in checkpoints:
            path = folder / ("fold_all" if fold == "all" else f"fold_{fold}") / checkpoint
            if not path.is_file():
                raise DecisionError(f"{path} does not exist; train fold {fold} (nnUNetv2_train {name} "
                                    f"{configuration} {fold} -tr {trainer} -p {plans}) or choose -chk")


def _copy_nnunet_zip(theirs: zipfile.ZipFile, ours: zipfile.ZipFile, stock_checkpoints: Sequence[str]) -> set[str]:
    """Copy nnU-Net's export into ours, the checkpoints named in ``stock_checkpoints`` made loadable by plain
    nnU-Net (:func:`stock_checkpoint`); the names written."""
    names = set()
    for info in theirs.infolist():
        payload = theirs.read(info)
        if os.path.basename(info.filename) in stock_checkpoints:
            payload = stock_checkpoint(payload, info.filename)
        ours.writestr(info.filename, payload)
        names.add(info.filename)
    return names
