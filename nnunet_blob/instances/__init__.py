"""What an instance is: connected components, their tables and how they are detected.

* :mod:`.connectivity`: the 6/18/26 neighbourhoods and their 2D equivalents (``cc3d_connectivity``);
* :mod:`.components`: a case's instance map, connected components per class (``compute_instances``) or per region
  mask (``instances_per_region``);
* :mod:`.tables`: the per-case instance table for instance-balanced sampling and its ``.npz`` file
  (``InstanceLocations``, ``write_table``, ``read_table``);
* :mod:`.detection`: detection counts and instance sensitivity, precision and F1, one definition for per-case
  evaluation, pooled summaries and the trainers' online score;
* :mod:`.matching`: the overlap table of two component maps and their one-to-one matching (panoptic quality,
  PI-CAI detection).

This package imports nothing else of nnunet_blob but :mod:`nnunet_blob.files`; preprocessing, evaluation and the
trainers build on it.
"""
