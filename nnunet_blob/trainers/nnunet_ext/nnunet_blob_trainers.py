"""The folder nnU-Net's ``nnUNet_extTrainer`` lookup scans (see ``nnunetv2/utilities/find_objects.py``).

nnU-Net imports every module here under its bare name and forgets it afterwards, so this module only re-exports
the trainers from the installed package with an absolute import: the classes nnU-Net finds are the package's own
(picklable, defined once).
"""
from nnunet_blob.trainers.variants import *  # noqa: F401,F403
