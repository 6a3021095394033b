"""Touching objects (nuclei, cells) as semantic labels: the border-core representation, and back to instances.

A semantic network cannot tell two touching nuclei apart when both are one class. nnU-Net's route (its Cell Tracking
Challenge conversions) trains on three classes instead, background / core / border: each nucleus' voxels within
a given physical distance of its outside are its *border*, the rest its *core*, so the cores of touching nuclei are
separated by border and each core is one nucleus again.

* :mod:`.representation`: the two directions on arrays: :func:`~.representation.border_core_labels` (instances ->
  0/1/2 labels and each nucleus' core) and :func:`~.representation.instances_from_border_core` (labels ->
  instances), and the round-trip comparison :func:`~.representation.compare_instances`;
* :mod:`.dataset`: an instance-labelled nnU-Net raw dataset -> a border-core raw dataset that keeps the instances
  (``nnunet_blob border-core-dataset``);
* :mod:`.folder`: a folder of predicted border-core segmentations -> instance maps
  (``nnunet_blob instances-from-border-core``).

nnU-Net v2 ships no helper for this representation (nnU-Net v1's dataset conversions had
``generate_border_as_suggested_by_twollmann`` and ``convert_to_instance_seg``); the definitions here follow them with
exact distances (see :mod:`.representation`).
"""
from nnunet_blob.border_core.representation import (
    BorderCoreError,
    border_core_labels,
    compare_instances,
    default_border_thickness,
    instances_from_border_core,
)

__all__ = ["BorderCoreError", "border_core_labels", "compare_instances", "default_border_thickness",
           "instances_from_border_core"]
