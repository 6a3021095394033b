"""nnunet_blob: instance-imbalance aware losses, instance maps and lesion-wise evaluation for nnU-Net v2.

Layout, from the bottom up (a module imports only from the lines above it; ``tests/test_code_quality.py`` checks):

* :mod:`nnunet_blob.files` (atomic file writes, locks), :mod:`nnunet_blob.registration` (the ``nnUNet_extTrainer``
  registration), :mod:`nnunet_blob.cli_errors` (a command's errors as one line), :mod:`nnunet_blob.axes` (axis
  orders in messages); :mod:`nnunet_blob.io` gathers them under one name;
* :mod:`nnunet_blob.workers`: the one pool of worker processes of every parallel command;
* :mod:`nnunet_blob.instances`: what an instance is (connectivity, components per class or region, the sampling
  tables and their file, detection counts and instance sensitivity/precision/F1);
* :mod:`nnunet_blob.losses`: blob loss, TopK-Dice and Tversky, on their own;
* :mod:`nnunet_blob.preprocessing`: the instance maps beside nnU-Net's preprocessed data (``nnunet_blob preprocess``);
* :mod:`nnunet_blob.evaluation`: lesion-wise evaluation of folders and comparison (``nnunet_blob evaluate``,
  ``nnunet_blob compare``);
* :mod:`nnunet_blob.trainers`: the nnU-Net trainers that nnU-Net's ``-tr`` finds (``nnunet_blob trainers``);
* :mod:`nnunet_blob.benchmark`: time and memory of trainers next to stock nnU-Net (``nnunet_blob benchmark``);
* :mod:`nnunet_blob.demo`: the whole pipeline on synthetic data (``nnunet_blob demo``).

:mod:`nnunet_blob.cli` is the ``nnunet_blob`` command, :mod:`nnunet_blob._autoregister` the start-up hook that lists
the trainers for nnU-Net, :mod:`nnunet_blob.synthetic` the synthetic datasets of the tests and the demo.
"""

__version__ = "0.1.0"
