"""nnU-Net trainers with blob loss, Tversky and TopK-Dice (see :mod:`nnunet_blob.trainers.variants`)."""
from nnunet_blob.io import TRAINER_FOLDER

#: the folder to list in ``nnUNet_extTrainer`` (done automatically at interpreter start-up after ``pip install``)
EXT_TRAINER_FOLDER = TRAINER_FOLDER
