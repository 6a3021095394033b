"""One import path for the package's file, registration and command-line helpers; each lives in its own module:
:mod:`nnunet_blob.files` (atomic writes, locks), :mod:`nnunet_blob.registration` (``nnUNet_extTrainer``),
:mod:`nnunet_blob.cli_errors` (a command's errors) and :mod:`nnunet_blob.axes` (axis orders in messages)."""
from nnunet_blob.axes import axis_order, file_reader
from nnunet_blob.cli_errors import end_progress_bars, reports
from nnunet_blob.files import (
    TEMPORARY_PREFIX,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    remove_temporaries,
    temporary_path,
)
from nnunet_blob.registration import (
    EXT_TRAINER_VARIABLE,
    TRAINER_FOLDERS,
    export_line,
    ext_trainer_value,
    is_registered,
    register_trainer_folders,
)

__all__ = ["EXT_TRAINER_VARIABLE", "TEMPORARY_PREFIX", "TRAINER_FOLDERS", "atomic_path", "atomic_write_bytes",
           "atomic_write_json", "axis_order", "end_progress_bars", "export_line", "ext_trainer_value", "file_lock",
           "file_reader", "is_registered", "register_trainer_folders", "remove_temporaries", "reports",
           "temporary_path"]
