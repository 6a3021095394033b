"""A module of the folder nnU-Net's ``nnUNet_extTrainer`` lookup scans: the benchmark trainers
(``<trainer>_benchmark``, ``<trainer>_benchmark_noDataLoading``), re-exported from the installed package with an
absolute import like the trainers beside it."""
from nnunet_blob.trainers.benchmarking import *  # noqa: F401,F403
