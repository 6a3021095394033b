"""Run at interpreter start-up by ``nnunet_blob.pth``: make nnU-Net find our trainers with no extra step.

Appends our trainer folder to ``nnUNet_extTrainer`` (keeping what the user set). Must stay tiny: no torch, no
nnU-Net imports, never raise.
"""
import os

_VARIABLE = "nnUNet_extTrainer"


def register(environ=os.environ) -> str:
    """Add the trainer folder to ``environ['nnUNet_extTrainer']`` once; returns the new value."""
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "trainers", "nnunet_ext")
    current = [p for p in environ.get(_VARIABLE, "").split(os.pathsep) if p]
    if folder not in current:
        environ[_VARIABLE] = os.pathsep.join(current + [folder])
    return environ[_VARIABLE]


register()
