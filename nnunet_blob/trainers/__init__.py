"""nnU-Net trainers with blob loss, Tversky and TopK-Dice (see :mod:`nnunet_blob.trainers.variants`)."""
import os

#: the folder to list in ``nnUNet_extTrainer`` (done automatically at interpreter start-up after ``pip install``)
EXT_TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nnunet_ext")
