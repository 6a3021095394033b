"""Folder the demo lists in ``nnUNet_extTrainer``: nnU-Net imports its modules by bare name."""
