"""Instance maps through nnU-Net's data loading: the same crop box as the segmentation, ids renumbered per patch.

nnU-Net's ``nnUNetDataLoader`` crops ``seg`` with ``crop_and_pad_nd`` (lazily for blosc2 files) and casts it to
int16. Instance ids are kept as stored (small per case) and renumbered inside the patch only when they would not
fit int16. :class:`InstanceDataset` wraps nnU-Net's dataset so that ``load_case`` returns, in place of ``seg``, a lazy
:class:`SegWithInstances` whose crops carry the instance map as one extra channel right after the segmentation
(before a cascade's previous-stage segmentation, which the loader appends). The first transform of the pipeline
(:class:`~nnunet_blob.trainers.instance_transforms.SplitInstances`) moves that channel out of the segmentation
again, so nnU-Net's own transforms see exactly what they expect.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nnunet_blob.nnunet_internals import LOADER_SEG_DTYPE, dataset_identifiers, load_case

#: ids must fit the type the loader casts segmentation crops to (int16)
MAX_INSTANCES_PER_PATCH = int(np.iinfo(LOADER_SEG_DTYPE).max)


def renumber_instances(ids: np.ndarray) -> np.ndarray:
    """Map the ids present in ``ids`` to 1..n (order of the original ids), 0 stays 0; O(voxels + max id)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return ids.astype(np.int32)
    present = np.zeros(int(ids.max()) + 1, dtype=bool)
    present[ids.ravel()] = True
    present[0] = False
    lookup = np.cumsum(present, dtype=np.int64) * present
    if lookup.max() > MAX_INSTANCES_PER_PATCH:
        raise ValueError(f"a patch holds {int(lookup.max())} instances, more than the {MAX_INSTANCES_PER_PATCH} "
                         f"nnU-Net's {LOADER_SEG_DTYPE} segmentation crops can carry; use a smaller patch size")
    return lookup[ids].astype(np.int32)


class SegWithInstances:
    """Lazy (C + 1, *spatial) view of a segmentation (C, *spatial) and its instance map stacked as last channel.

    Only what ``crop_and_pad_nd`` needs: ``shape``, ``dtype`` and basic slicing, which reads just the requested
    crop of both arrays (blosc2 decompresses only the chunks it touches); ids beyond int16 are renumbered.
    """

    def __init__(self, seg, instances, case: str):
        if tuple(instances.shape[-3:]) != tuple(seg.shape[1:]):
            raise ValueError(f"case {case}: instance map shape {tuple(instances.shape)} does not match the "
                             f"segmentation {tuple(seg.shape)}; the maps are stale: run `nnunet_blob preprocess` "
                             f"with --overwrite")
        self.seg, self.instances, self.case = seg, instances, case
        self.shape = (seg.shape[0] + 1, *seg.shape[1:])
        self.dtype = LOADER_SEG_DTYPE
        self.ndim = len(self.shape)
        self._may_exceed_int16 = np.iinfo(instances.dtype).max > MAX_INSTANCES_PER_PATCH

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        channel_index, spatial = index[0], index[1:]
        if channel_index != slice(None):
            raise IndexError("SegWithInstances supports spatial crops of all channels only")
        seg = np.asarray(self.seg[(slice(None),) + tuple(spatial)])
        inst = np.asarray(self.instances[(Ellipsis,) + tuple(spatial)]).reshape(1, *seg.shape[1:])
        if self._may_exceed_int16 and inst.size and inst.max() > MAX_INSTANCES_PER_PATCH:  # must survive int16
            inst = renumber_instances(inst)
        out = np.empty((seg.shape[0] + 1, *seg.shape[1:]), dtype=LOADER_SEG_DTYPE)
        out[:-1], out[-1:] = seg, inst
        return out


class InstanceDataset:
    """Wraps an nnU-Net dataset (``nnUNetDatasetBlosc2``/``nnUNetDatasetNumpy``); ``load_case`` adds instances.

    ``open_instances(identifier)`` returns the case's instance map (array-like, (1, *spatial) or (*spatial)); None
    leaves the segmentation as it is (region-based datasets label their instances on each patch).
    With ``sampling_exponent`` set, ``open_table(identifier)`` gives the case's instance table and the case's
    ``class_locations`` are replaced by instance-balanced ones (:mod:`.instance_sampling`; ``groups`` as there).
    Everything else is delegated to the wrapped dataset. Picklable (nnU-Net's loader processes receive it pickled
    under the spawn start method) when the wrapped dataset and the callables are.
    """

    def __init__(self, dataset, open_instances: Callable[[str], object] | None, open_table: Callable | None = None,
                 sampling_exponent: float | None = None, groups: dict | None = None):
        if sampling_exponent is not None and open_table is None:
            raise ValueError("instance-balanced sampling needs the instance tables (open_table)")
        self._dataset = dataset
        self._open_instances = open_instances
        self._open_table, self._sampling_exponent, self._groups = open_table, sampling_exponent, groups
        self._balanced: dict = {}

    def __getattr__(self, name):
        # only reached for attributes this object lacks; while unpickling (before __dict__ is restored) there is
        # no _dataset yet, and looking it up here again would recurse
        dataset = self.__dict__.get("_dataset")
        if dataset is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(dataset, name)

    def __getitem__(self, identifier):
        return self.load_case(identifier)

    def __len__(self):
        return len(dataset_identifiers(self._dataset))

    def load_case(self, identifier):
        data, seg, seg_prev, properties = load_case(self._dataset, identifier)
        if self._sampling_exponent is not None:
            properties = {**properties, "class_locations": self._balanced_locations(identifier, properties)}
        if self._open_instances is not None:
            seg = SegWithInstances(seg, self._open_instances(identifier), identifier)
        return data, seg, seg_prev, properties

    def _balanced_locations(self, identifier, properties) -> dict:
        """The case's instance-balanced ``class_locations``, built on its first load (tables are small)."""
        if identifier not in self._balanced:
            assert self._open_table is not None and self._sampling_exponent is not None
            from nnunet_blob.trainers.instance_sampling import balanced_class_locations

            self._balanced[identifier] = balanced_class_locations(
                properties["class_locations"], self._open_table(identifier), self._sampling_exponent, self._groups)
        return self._balanced[identifier]
