"""``<trainer>_demo``: every nnunet_blob trainer (and stock ``nnUNetTrainer``) with the demo's budget.

The demo puts this folder on ``nnUNet_extTrainer`` so the real ``nnUNetv2_train``/``nnUNetv2_predict`` find these
classes; the budget comes from ``NNUNET_BLOB_EPOCHS``/``_ITERATIONS``/``_VAL_ITERATIONS``/``_SEED``
(:func:`nnunet_blob.demo.budgets.with_budget`).
"""
from nnunet_blob.demo.budgets import DEMO_SUFFIX, demo_trainer_bases, with_budget

for _base in demo_trainer_bases().values():
    globals()[_base.__name__ + DEMO_SUFFIX] = with_budget(_base, DEMO_SUFFIX)
