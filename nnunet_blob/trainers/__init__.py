"""nnU-Net trainers with blob loss, Tversky and TopK-Dice (see :mod:`nnunet_blob.trainers.variants`).

``nnunet_ext/`` is the folder that nnU-Net's ``-tr`` lookup scans (:mod:`nnunet_blob.registration`).
"""
