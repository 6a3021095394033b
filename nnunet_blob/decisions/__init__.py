"""The former name of :mod:`nnunet_blob.postprocessing`, kept so that imports written for it keep working:
``nnunet_blob.decisions.<module>`` is the same module object as ``nnunet_blob.postprocessing.<module>``."""
import importlib
import sys

from nnunet_blob.postprocessing import *  # noqa: F403

#: the modules of :mod:`nnunet_blob.postprocessing`, each importable under the former name too
MODULES = ("apply", "cases", "cli", "export", "rules", "selection", "settings", "significance", "tables", "tuning")

for _name in MODULES:
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"nnunet_blob.postprocessing.{_name}")
