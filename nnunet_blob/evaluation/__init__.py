"""Lesion-wise evaluation: ``metrics`` (per case and label), ``folder`` (nnU-Net folders, and
``evaluate_validation_folder`` for the trainers' final validation), ``compare`` (Wilcoxon, rank score),
``pictures`` (detection MIPs) and ``cli`` (``nnunet_blob evaluate`` / ``nnunet_blob compare``)."""
