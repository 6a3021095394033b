"""Instance maps: connected components per class of nnU-Net's preprocessed segmentations.

    from nnunet_blob.preprocessing import ensure_instance_maps
    store = ensure_instance_maps("Dataset501_Lesions", "nnUNetPlans", "3d_fullres")
    crop = store.open("case_001")[:, 10:74, 0:64, 0:64]     # lazily decompressed blosc2 crop
    store.manifest["cases"]["case_001"]["instances_per_class"]   # also "labels", "regions", per-instance sizes

What an instance is (connected components per class or per region mask, the sampling tables, detection) is
defined in :mod:`nnunet_blob.instances`; this package finds nnU-Net's data, computes the maps of every case and
keeps them fresh. A raw dataset with ``instancesTr/`` gives annotated instances instead (:mod:`.annotated`). See
:mod:`.store` for the on-disk layout and :mod:`.runner` for freshness rules.
"""
from nnunet_blob.preprocessing.errors import InstanceMapError
from nnunet_blob.preprocessing.runner import ensure_instance_maps
from nnunet_blob.preprocessing.store import InstanceMapStore

__all__ = ["ensure_instance_maps", "InstanceMapStore", "InstanceMapError"]
