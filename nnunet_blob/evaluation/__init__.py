"""Lesion-wise evaluation: ``options`` (what is computed), ``checks`` (reading a pair safely), ``metrics`` (per case
and label), ``surface`` (surface Dice, HD95), ``lesions`` (panoptic quality, cell scores, size bins, CC-Dice, empty
cases), ``metric_facts`` (direction, defaults and columns of every metric),
``brats`` (BraTS lesion-wise Dice/HD95), ``confidence`` (FROC, AP), ``folder`` (nnU-Net folders, and
``evaluate_validation_folder`` for the trainers' final validation), ``report`` (the command's closing summary),
``compare`` (Wilcoxon, rank score), ``pictures`` (detection MIPs) and ``cli`` (``nnunet_blob evaluate`` /
``nnunet_blob compare``)."""
