"""Folder listed in ``nnUNet_extTrainer`` for the demo's ``<trainer>_demo`` classes: nnU-Net imports its modules by
bare name."""
