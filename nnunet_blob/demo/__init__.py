"""``nnunet_blob demo``: the whole pipeline on a synthetic instance-imbalanced dataset, in one command."""
