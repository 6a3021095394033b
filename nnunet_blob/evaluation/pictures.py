"""Detection pictures as in Fig. 5 of F. Kofler et al., "blob loss: instance imbalance aware loss functions for
semantic segmentation" (journal version): maximum-intensity projections of the image with components coloured by
detection status - true positive green, false positive blue, false negative red.

One PNG per case, one row per label (or region): left the reference components (green detected, red missed),
right the predicted components (green touching the reference, blue false positive). 3D volumes are projected
along the first array axis (axial for nnU-Net's (z, y, x) arrays); 2D images are shown as they are. Without an
image the background is plain black. Size: ``PANEL_INCHES * DPI`` pixels per panel (2 panels wide).
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_blob.io import atomic_path  # noqa: E402

GREEN, BLUE, RED = (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 0.0, 0.0)
PANEL_INCHES, DPI = 4, 100


def _mip(arr: np.ndarray) -> np.ndarray:
    return arr.max(0) if arr.ndim == 3 else arr


def _background(image: np.ndarray | None, shape_2d) -> np.ndarray:
    if image is None:
        return np.zeros(shape_2d + (3,))
    mip = _mip(np.asarray(image, float))
    lo, hi = np.percentile(mip, [1, 99])
    grey = np.clip((mip - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(mip)
    return np.repeat(grey[..., None] * 0.8, 3, axis=-1)  # darker so the colours stand out


def _overlay(rgb: np.ndarray, labels: np.ndarray, good_ids, good, bad) -> np.ndarray:
    rgb = rgb.copy()
    is_good = np.isin(labels, good_ids) & (labels > 0)
    rgb[_mip(labels > 0)] = bad
    rgb[_mip(is_good)] = good  # a detected component drawn over a missed one behind it
    return rgb


def case_png(png_file: str, image, comps: dict, metrics: dict, title: str) -> str:
    """Write the picture of one case. ``comps``/``metrics`` map label -> ``Components``/metrics dict."""
    rows = len(comps)
    fig, axes = plt.subplots(rows, 2, figsize=(2 * PANEL_INCHES, PANEL_INCHES * rows), dpi=DPI, squeeze=False)
    scores = []
    for row, (label, c) in enumerate(comps.items()):
        background = _background(image, _mip(c.ref_labels).shape)
        m = metrics[label]
        panels = (
            (_overlay(background, c.ref_labels, c.ref_detected, GREEN, RED),
             f"reference, label {label}: {c.n_ref} lesions (missed: red)"),
            (_overlay(background, c.pred_labels, c.pred_true, GREEN, BLUE),
             f"prediction, label {label}: {c.n_pred} lesions (false positive: blue)"),
        )
        for ax, (rgb, text) in zip(axes[row], panels):
            ax.imshow(rgb, interpolation="nearest")
            ax.set_title(text, fontsize=9)
            ax.axis("off")
        scores.append(f"label {label}: F1 {m['F1']:.2f}  IS {m['IS']:.2f}  IP {m['IP']:.2f}")
    fig.suptitle(f"{title}\n" + " | ".join(scores), fontsize=10)
    fig.tight_layout()
    try:
        with atomic_path(png_file) as tmp:
            fig.savefig(tmp, dpi=DPI)
    finally:
        plt.close(fig)
    return png_file
