"""nnunet_blob: instance-imbalance aware losses, instance maps and lesion-wise evaluation for nnU-Net v2."""

__version__ = "0.1.0"
