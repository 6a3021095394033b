"""Instance maps through nnU-Net's data loading: the same crop box as the segmentation, any number of instances.

nnU-Net's ``nnUNetDataLoader`` crops ``seg`` with ``crop_and_pad_nd`` (lazily for blosc2 files) and casts it to
int16. :class:`InstanceDataset` wraps nnU-Net's dataset so that ``load_case`` returns, in place of ``seg``, a lazy
:class:`SegWithInstances` whose crops carry the instance map as extra channels right after the segmentation
(before a cascade's previous-stage segmentation, which the loader appends). The first transform of the pipeline
(:class:`~nnunet_blob.trainers.instance_transforms.SplitInstances`) moves them out of the segmentation again, so
nnU-Net's own transforms see exactly what they expect.

**Id channels.** Ids are kept as stored (unique within a case). A dataset whose cases all have at most 32767
instances (:data:`INT16_IDS`) carries them in one int16 channel, at no extra cost. A dataset with more (dense,
cell-like data; decided per dataset from the manifest's largest instance count, :func:`id_channels_for`) carries
each id in two int16 channels, its low and high 15 bits (:func:`split_ids`, :func:`join_ids`): ids up to 2**30,
rejoined as int32 where the pipeline takes them out again.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nnunet_blob.nnunet_internals import LOADER_SEG_DTYPE, dataset_identifiers, load_case

#: the largest id one channel of nnU-Net's int16 segmentation crops carries
INT16_IDS = int(np.iinfo(LOADER_SEG_DTYPE).max)
#: base of the two-channel id encoding: an id is ``high * ID_RADIX + low`` with 15-bit halves
ID_RADIX = INT16_IDS + 1
#: ids must stay below this in a crop: the spatial transform resamples them in float32, exact up to 2**24
FLOAT32_EXACT_IDS = 1 << 24


def id_channels_for(max_instances: int) -> int:
    """int16 channels a dataset's ids need in the loader: 1 when no case has more than 32767 instances, else 2."""
    return 1 if max_instances <= INT16_IDS else 2


def split_ids(ids):
    """(low, high) 15-bit halves of non-negative ids below 2**30 (numpy arrays or torch tensors)."""
    return ids % ID_RADIX, ids // ID_RADIX


def join_ids(low, high):
    """The ids :func:`split_ids` split, from halves already cast to int32 (or wider); the loader's padding (-1 in
    both halves) joins to a negative value, which means "no instance" like -1."""
    return high * ID_RADIX + low


def renumber_instances(ids: np.ndarray) -> np.ndarray:
    """Map the ids present in ``ids`` to 1..n (order of the original ids), 0 stays 0; O(voxels + max id)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return ids.astype(np.int32)
    present = np.zeros(int(ids.max()) + 1, dtype=bool)
    present[ids.ravel()] = True
    present[0] = False
    lookup = np.cumsum(present, dtype=np.int64) * present
    return lookup[ids].astype(np.int32)


class SegWithInstances:
    """Lazy (C + k, *spatial) view of a segmentation (C, *spatial) and its instance map in ``k`` (= ``id_channels``)
    trailing channels.

    Only what ``crop_and_pad_nd`` needs: ``shape``, ``dtype`` and basic slicing, which reads just the requested
    crop of both arrays (blosc2 decompresses only the chunks it touches). With two id channels, a crop whose ids
    reach 2**24 is renumbered first (the ids stay distinct; the spatial transform resamples them in float32).
    """

    def __init__(self, seg, instances, case: str, id_channels: int = 1):
        if tuple(instances.shape[-3:]) != tuple(seg.shape[1:]):
            raise ValueError(f"case {case}: instance map shape {tuple(instances.shape)} does not match the "
                             f"segmentation {tuple(seg.shape)}; the maps are stale: run `nnunet_blob preprocess` "
                             f"with --overwrite")
        if id_channels == 1 and np.iinfo(instances.dtype).max > INT16_IDS:
            raise ValueError(f"case {case}: its instance map holds ids of type {instances.dtype}, wider than the one "
                             f"int16 channel this loader carries; the maps changed after the trainer read their "
                             f"manifest: restart the training")
        self.seg, self.instances, self.case, self.id_channels = seg, instances, case, id_channels
        self.shape = (seg.shape[0] + id_channels, *seg.shape[1:])
        self.dtype = LOADER_SEG_DTYPE
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        if not isinstance(index, tuple):
            index = (index,)
        channel_index, spatial = index[0], index[1:]
        if channel_index != slice(None):
            raise IndexError("SegWithInstances supports spatial crops of all channels only")
        seg = np.asarray(self.seg[(slice(None),) + tuple(spatial)])
        inst = np.asarray(self.instances[(Ellipsis,) + tuple(spatial)]).reshape(1, *seg.shape[1:])
        out = np.empty((seg.shape[0] + self.id_channels, *seg.shape[1:]), dtype=LOADER_SEG_DTYPE)
        out[: seg.shape[0]] = seg
        if self.id_channels == 1:
            out[-1:] = inst
            return out
        if inst.size and inst.max() >= FLOAT32_EXACT_IDS:
            inst = renumber_instances(inst)
            if inst.max() >= FLOAT32_EXACT_IDS:
                raise ValueError(f"case {self.case}: a crop holds {int(inst.max())} instances, more than the "
                                 f"{FLOAT32_EXACT_IDS - 1} the spatial transform resamples exactly; use a smaller "
                                 f"patch size")
        out[-2], out[-1] = split_ids(inst[0])
        return out


class InstanceDataset:
    """Wraps an nnU-Net dataset (``nnUNetDatasetBlosc2``/``nnUNetDatasetNumpy``); ``load_case`` adds instances.

    ``open_instances(identifier)`` returns the case's instance map (array-like, (1, *spatial) or (*spatial)), carried
    in ``id_channels`` int16 channels; None leaves the segmentation as it is (region-based datasets label their
    instances on each patch).
    With ``sampling_exponent`` set, ``open_table(identifier)`` gives the case's instance table and the case's
    ``class_locations`` are replaced by instance-balanced ones (:mod:`.instance_sampling`; ``groups`` as there).
    Everything else is delegated to the wrapped dataset. Picklable (nnU-Net's loader processes receive it pickled
    under the spawn start method) when the wrapped dataset and the callables are.
    """

    def __init__(self, dataset, open_instances: Callable[[str], object] | None, open_table: Callable | None = None,
                 sampling_exponent: float | None = None, groups: dict | None = None, id_channels: int = 1):
        if sampling_exponent is not None and open_table is None:
            raise ValueError("instance-balanced sampling needs the instance tables (open_table)")
        self._dataset = dataset
        self._open_instances, self._id_channels = open_instances, id_channels
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
            seg = SegWithInstances(seg, self._open_instances(identifier), identifier, self._id_channels)
        return data, seg, seg_prev, properties

    def _balanced_locations(self, identifier, properties) -> dict:
        """The case's instance-balanced ``class_locations``, built on its first load (tables are small)."""
        if identifier not in self._balanced:
            assert self._open_table is not None and self._sampling_exponent is not None
            from nnunet_blob.trainers.instance_sampling import balanced_class_locations

            self._balanced[identifier] = balanced_class_locations(
                properties["class_locations"], self._open_table(identifier), self._sampling_exponent, self._groups)
        return self._balanced[identifier]
