"""Run at interpreter start-up by ``nnunet_blob.pth``: make nnU-Net find our trainers with no extra step.

Lists our trainer folders in ``nnUNet_extTrainer`` (keeping what the user set), see
:func:`nnunet_blob.registration.register_trainer_folders`. Must stay tiny: no torch, no nnU-Net imports.
"""
from nnunet_blob.registration import register_trainer_folders

register_trainer_folders()
