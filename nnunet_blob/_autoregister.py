"""Run at interpreter start-up by ``nnunet_blob.pth``: make nnU-Net find our trainers with no extra step.

Lists our trainer folder in ``nnUNet_extTrainer`` (keeping what the user set), see
:func:`nnunet_blob.io.register_trainer_folder`. Must stay tiny: no torch, no nnU-Net imports.
"""
from nnunet_blob.io import register_trainer_folder

register_trainer_folder()
