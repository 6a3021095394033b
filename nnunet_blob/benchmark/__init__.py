"""``nnunet_blob benchmark``: the time and memory a trainer costs next to stock nnU-Net, on your dataset and device."""
