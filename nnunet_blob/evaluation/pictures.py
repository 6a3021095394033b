"""Detection pictures as in Fig. 5 of F. Kofler et al., "blob loss: instance imbalance aware loss functions for
semantic segmentation" (journal version): maximum-intensity projections of the image with the objects coloured by
detection status - found green, missed red, false positive blue.

One PNG per case, one row per label (or region), one panel per array axis for 3D volumes (the projection along
axis 0, 1 and 2; for nnU-Net's (z, y, x) arrays axis 0 is z, so the first panel looks along the slices) and a
single panel for 2D images. Each panel shows:

* green: a reference object found (the prediction overlaps it by at least one voxel),
* red: a reference object missed (no predicted voxel on it),
* blue: a predicted object overlapping no reference object (a false positive),

each object as a translucent fill and an opaque outline of its own projection, outlines drawn over all fills (red
last), so an object behind another one in the projection stays visible; the other panels show it apart. Voxels are
drawn square. Without an image the background is plain black. A legend under the panels explains the colours, the
axes and the outlines; the PNG's text chunks carry the same (``Description``) and, as JSON (``nnunet_blob``), the
legend, each panel's axis and pixel box and the objects drawn. Size: ``3 * PANEL_INCHES * DPI`` pixels wide,
``PANEL_INCHES * DPI`` per label plus ``LEGEND_INCHES * DPI`` for the legend high.
"""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from nnunet_blob.files import atomic_path  # noqa: E402

GREEN, BLUE, RED = (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)
PANEL_INCHES, LEGEND_INCHES, DPI = 3, 1, 100
FILL_OPACITY = 0.35
#: colour name -> (colour, what it marks); outlines are drawn in this order, so red ends on top
LEGEND = {
    "green": (GREEN, "found: reference object the prediction overlaps (>= 1 voxel)"),
    "blue": (BLUE, "false positive: predicted object overlapping no reference object"),
    "red": (RED, "missed: reference object with no predicted voxel"),
}
HOW_TO_READ = ("3D: maximum-intensity projections along each array axis (axis 0 is z for nnU-Net's (z, y, x) arrays).\n"
               "Each object: translucent fill and an opaque outline of its own projection, so objects behind others "
               "stay visible;\nthe other axes show them apart.")


def _mip(arr: np.ndarray, axis: int) -> np.ndarray:
    return arr.max(axis) if arr.ndim == 3 else arr


def _background(image: np.ndarray | None, axis: int, shape_2d: tuple) -> np.ndarray:
    if image is None:
        return np.zeros(shape_2d + (3,))
    mip = _mip(np.asarray(image, float), axis)
    lo, hi = np.percentile(mip, [1, 99])
    grey = np.clip((mip - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(mip)
    return np.repeat(grey[..., None] * 0.8, 3, axis=-1)  # darker so the colours stand out


def _projections(labels: np.ndarray, ids, axis: int):
    """(projection of each object ``ids`` of ``labels`` along ``axis``, as a 2D mask of the panel) per object;
    each object is cut out by its bounding box, so the cost grows with the objects' size, not their number."""
    boxes = ndimage.find_objects(labels)
    shape_2d = _mip(labels, axis).shape
    for i in ids:
        box = boxes[i - 1] if i - 1 < len(boxes) else None
        if box is None:
            continue
        own = labels[box] == i
        mask = np.zeros(shape_2d, bool)
        if labels.ndim == 3:
            mask[tuple(b for d, b in enumerate(box) if d != axis)] = own.any(axis)
        else:
            mask[box] = own
        yield mask


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _panel(background: np.ndarray, groups: dict, axis: int) -> np.ndarray:
    """``background`` with each group's objects (colour name -> (labels, ids)) filled and outlined."""
    rgb = background.copy()
    outlines = {}
    for name, (labels, ids) in groups.items():
        colour = np.asarray(LEGEND[name][0])
        masks = list(_projections(labels, ids, axis))
        if masks:
            filled = np.logical_or.reduce(masks)
            rgb[filled] = (1 - FILL_OPACITY) * rgb[filled] + FILL_OPACITY * colour
        outlines[name] = [_outline(m) for m in masks]
    for name in LEGEND:  # outlines over every fill, red last
        for edge in outlines.get(name, []):
            rgb[edge] = LEGEND[name][0]
    return rgb


def case_png(png_file: str, image, comps: dict, metrics: dict, title: str) -> str:
    """Write the picture of one case. ``comps``/``metrics`` map label -> ``Components``/metrics dict."""
    first = next(iter(comps.values()))
    axes_shown = (0, 1, 2) if first.ref_labels.ndim == 3 else (None,)
    rows, columns = len(comps), len(axes_shown)
    fig, axes = plt.subplots(rows, columns, figsize=(3 * PANEL_INCHES, rows * PANEL_INCHES + LEGEND_INCHES),
                             dpi=DPI, squeeze=False)  # three panels wide: room for the legend in 2D too
    scores, panels = [], []
    for row, (label, c) in enumerate(comps.items()):
        missed = np.setdiff1d(np.arange(1, c.n_ref + 1), c.ref_detected)
        false_positive = np.setdiff1d(np.arange(1, c.n_pred + 1), c.pred_true)
        groups = {"green": (c.ref_labels, c.ref_detected), "blue": (c.pred_labels, false_positive),
                  "red": (c.ref_labels, missed)}
        counts = {"green": int(c.ref_detected.size), "blue": int(false_positive.size), "red": int(missed.size)}
        for ax, axis in zip(axes[row], axes_shown, strict=True):
            projected = 0 if axis is None else axis
            rgb = _panel(_background(image, projected, _mip(c.ref_labels, projected).shape), groups, projected)
            ax.imshow(rgb, interpolation="nearest")
            if axis is None:
                ax.set_title(f"label {label}", fontsize=8)
                rows_axis, columns_axis = 0, 1
            else:
                ax.set_title(f"label {label}: projection along axis {axis}", fontsize=8)
                rows_axis, columns_axis = [a for a in range(3) if a != axis]
            ax.set_xlabel(f"axis {columns_axis}", fontsize=7)
            ax.set_ylabel(f"axis {rows_axis}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            panels.append({"ax": ax, "label": str(label), "axis": axis, "rows_axis": rows_axis,
                           "columns_axis": columns_axis, "objects": counts})
        m = metrics[label]
        scores.append(f"label {label}: {c.n_ref} reference, {c.n_pred} predicted objects; F1 {m['F1']:.2f} "
                      f"IS {m['IS']:.2f} IP {m['IP']:.2f}")
    fig.suptitle(f"{title}\n" + "\n".join(scores), fontsize=9)
    handles = [Patch(facecolor=colour, edgecolor=colour, label=f"{name}: {text}")
               for name, (colour, text) in LEGEND.items()]
    fig.legend(handles=handles, loc="lower center", ncol=1, fontsize=7, frameon=False, title=HOW_TO_READ,
               title_fontsize=6)
    fig.tight_layout(rect=(0, LEGEND_INCHES / (rows * PANEL_INCHES + LEGEND_INCHES), 1, 1))
    fig.canvas.draw()
    height = fig.bbox.height
    for p in panels:
        box = p.pop("ax").get_window_extent()
        p["box"] = [round(box.x0), round(height - box.y1), round(box.x1), round(height - box.y0)]
    legend = {name: text for name, (_, text) in LEGEND.items()}
    how_to_read = HOW_TO_READ.replace("\n", " ")
    description = "; ".join(f"{name}: {text}" for name, text in legend.items()) + ". " + how_to_read
    metadata = {"Title": title, "Description": description,
                "nnunet_blob": json.dumps({"legend": legend, "how_to_read": how_to_read, "panels": panels})}
    try:
        with atomic_path(png_file) as tmp:
            fig.savefig(tmp, dpi=DPI, metadata=metadata)
    finally:
        plt.close(fig)
    return png_file
