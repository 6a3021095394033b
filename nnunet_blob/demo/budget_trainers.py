"""``<trainer>_demo``: every nnunet_blob trainer (and stock ``nnUNetTrainer``) with the demo's budget.

Defined here, once, so that the classes are the package's own (picklable by name); the folder
``nnunet_blob/demo/nnunet_ext`` that the start-up hook lists in ``nnUNet_extTrainer`` re-exports them, so
``nnUNetv2_train``/``nnUNetv2_predict -tr <trainer>_demo`` find them from any shell. The budget comes from
``NNUNET_BLOB_EPOCHS``/``_ITERATIONS``/``_VAL_ITERATIONS``/``_SEED`` (:func:`nnunet_blob.demo.budgets.with_budget`);
prediction does not use it.
"""
from __future__ import annotations

from nnunet_blob.demo.budgets import DEMO_SUFFIX, demo_trainer_bases, with_budget

__all__: list[str] = []
for _base in demo_trainer_bases().values():
    _trainer = with_budget(_base, DEMO_SUFFIX)
    _trainer.__module__ = __name__
    globals()[_trainer.__name__] = _trainer
    __all__.append(_trainer.__name__)
