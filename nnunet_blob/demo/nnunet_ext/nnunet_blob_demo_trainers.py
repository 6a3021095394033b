"""A folder of ``nnUNet_extTrainer`` (:data:`nnunet_blob.registration.TRAINER_FOLDERS`): the demo's
``<trainer>_demo`` classes.

nnU-Net imports every module here under its bare name and forgets it afterwards, so this module only re-exports
the classes of :mod:`nnunet_blob.demo.budget_trainers` with an absolute import: the classes nnU-Net finds are the
package's own (picklable, defined once).
"""
from nnunet_blob.demo.budget_trainers import *  # noqa: F401,F403
