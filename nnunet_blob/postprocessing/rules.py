"""What a postprocessing setting does to one prediction: the one definition that tuning and application share.

A setting belongs to one foreground class (or region) and has two parts:

* a **probability threshold** ``t`` (or ``None``: nnU-Net's own rule). For softmax outputs, every voxel keeps its
  best foreground class ``k = argmax_{c >= 1} p_c`` (the first on ties, as ``argmax``); nnU-Net labels it ``k`` where
  ``p_k > p_0`` (this is its ``argmax`` over all channels), a threshold ``t_k`` labels it ``k`` where ``p_k > t_k``
  instead. A class's threshold therefore only decides between that class and background on the voxels where that
  class is the best foreground class, and the classes do not interact. For region outputs (sigmoid), region ``r``
  is written where ``p_r > t_r`` (nnU-Net: ``> 0.5``) in the order of ``regions_class_order``, as nnU-Net's
  ``LabelManager.convert_probabilities_to_segmentation`` does.
* a **minimum component volume** ``v`` in mm³ (mm² for 2D images): the connected components of the class's (or
  region's) mask whose volume (voxels times the voxel volume of the image) is below ``v`` become background (0),
  as nnU-Net's own postprocessing removes components. ``v = 0`` removes nothing.

Order: the thresholds make the segmentation from the probabilities, then the minimum volumes are applied class by
class (region by region) in the dataset's order. A setting with ``t = None`` and ``v = 0`` changes nothing.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from nnunet_blob.evaluation.metrics import spatial_view
from nnunet_blob.instances.detection import label_components
from nnunet_blob.nnunet_internals import LabelLayout, label_or_region_mask, segmentation_like_nnunet


@dataclass(frozen=True)
class Setting:
    """The postprocessing of one foreground class (int) or region (tuple of labels)."""

    label_or_region: int | tuple[int, ...]
    min_volume_mm3: float = 0.0
    threshold: float | None = None

    @property
    def changes_nothing(self) -> bool:
        return self.min_volume_mm3 <= 0 and self.threshold is None

    def describe(self) -> str:
        parts = []
        if self.threshold is not None:
            parts.append(f"probability > {self.threshold:g}")
        if self.min_volume_mm3 > 0:
            parts.append(f"components >= {self.min_volume_mm3:g} mm³")
        return ", ".join(parts) or "no change"


def voxel_volume(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mm³ (area in mm² for 2D images), ``spacing`` of the spatial axes."""
    return float(np.prod([float(s) for s in spacing]))


def segmentation_from_probabilities(probabilities: np.ndarray, layout: LabelLayout,
                                    thresholds: Mapping | None = None) -> np.ndarray:
    """The segmentation of nnU-Net's probabilities ``(C, *shape)`` with the given per-class (per-region)
    thresholds (missing or None: nnU-Net's rule); see the module docstring."""
    thresholds = thresholds or {}
    expected = len(layout.labels_or_regions) + (0 if layout.has_regions else 1)
    if probabilities.shape[0] != expected:
        raise ValueError(f"probabilities have {probabilities.shape[0]} channels, the dataset's "
                         f"{'regions' if layout.has_regions else 'classes incl. background'} need {expected}")
    if all(thresholds.get(c) is None for c in layout.labels_or_regions):
        return segmentation_like_nnunet(probabilities, layout)
    seg = np.zeros(probabilities.shape[1:], dtype=layout.seg_dtype)
    if layout.has_regions:
        assert layout.regions_class_order is not None
        for channel, (region, label) in enumerate(zip(layout.labels_or_regions, layout.regions_class_order,
                                                      strict=True)):
            t = thresholds.get(region)
            seg[probabilities[channel] > (0.5 if t is None else t)] = label
        return seg
    best = probabilities[1:].argmax(0)  # index of the best foreground class
    p_best = np.take_along_axis(probabilities[1:], best[None], 0)[0]
    cut = np.empty(len(layout.labels_or_regions), dtype=np.float64)
    for index, c in enumerate(layout.labels_or_regions):
        t = thresholds.get(c)
        cut[index] = np.nan if t is None else t
    cut_of_voxel = cut[best]
    no_threshold = np.isnan(cut_of_voxel)
    keep = np.where(no_threshold, p_best > probabilities[0], p_best > np.where(no_threshold, 0.0, cut_of_voxel))
    labels = np.asarray(layout.labels_or_regions, dtype=layout.seg_dtype)
    seg[keep] = labels[best[keep]]
    return seg


def remove_small_components(seg: np.ndarray, label_or_region, min_volume_mm3: float, spacing: Sequence[float],
                            connectivity: int = 26) -> np.ndarray:
    """A copy of a spatial segmentation (2D or 3D, no channel axis) with the components of a class's (region's)
    mask below ``min_volume_mm3`` set to 0. ``spacing`` is the spacing of ``seg``'s axes in mm."""
    out = np.array(seg, copy=True)
    if min_volume_mm3 <= 0:
        return out
    mask = label_or_region_mask(out, label_or_region)
    if not mask.any():
        return out
    components, _ = label_components(mask, connectivity)
    sizes = np.bincount(components.ravel())
    small = sizes * voxel_volume(spacing) < min_volume_mm3
    small[0] = False
    out[small[components]] = 0
    return out


def postprocess(segmentation: np.ndarray | None, probabilities: np.ndarray | None, settings: Sequence[Setting],
                layout: LabelLayout, spacing: Sequence[float], connectivity: int = 26) -> np.ndarray:
    """One case, postprocessed: ``segmentation`` as nnU-Net's reader returns it without the channel axis
    (``(z, y, x)``, or ``(1, y, x)`` for 2D images) and/or ``probabilities`` ``(C, *that shape)``; ``spacing`` the
    image's spacing as nnU-Net's properties give it. Returns the segmentation nnU-Net's writer takes.

    The probabilities are needed when a setting has a threshold; without one, the segmentation is used when given.
    """
    if any(s.threshold is not None for s in settings) or segmentation is None:
        if probabilities is None:
            raise ValueError("a probability threshold needs the probabilities (.npz) of the prediction")
        seg = segmentation_from_probabilities(probabilities, layout,
                                              {s.label_or_region: s.threshold for s in settings})
    else:
        seg = np.asarray(segmentation).astype(layout.seg_dtype, copy=True)
    spatial, spatial_spacing = spatial_view(seg, spacing)
    for setting in settings:
        if setting.min_volume_mm3 > 0:
            spatial[...] = remove_small_components(spatial, setting.label_or_region, setting.min_volume_mm3,
                                                   spatial_spacing, connectivity)
    return seg
