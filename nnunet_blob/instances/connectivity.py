"""Voxel connectivity of connected components: one rule for 3D volumes and 2D images.

Connectivities are given as 3D neighbourhoods (6: faces, 18: faces and edges, 26: faces, edges and corners, the
blob loss paper's choice). A 2D image has no third axis: 6 becomes 4 (edges of a pixel) and 18 or 26 become 8
(edges and corners), the neighbourhoods connected-components-3d (``cc3d``) accepts for 2D arrays.
"""
from __future__ import annotations

from typing import Literal

#: the 3D neighbourhoods a connectivity is given as
CONNECTIVITIES = (6, 18, 26)
#: what ``cc3d.connected_components`` accepts
CC3DConnectivity = Literal[4, 6, 8, 18, 26]


def cc3d_connectivity(ndim: int, connectivity: int) -> CC3DConnectivity:
    """The ``cc3d`` connectivity for an ``ndim``-dimensional array: 6/18/26 in 3D; in 2D 6 -> 4, 18/26 -> 8.

    Raises ValueError for a connectivity other than 6, 18 or 26, or an array that is neither 2D nor 3D.
    """
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES} (3D neighbourhoods), got {connectivity!r}")
    if ndim == 3:
        return 6 if connectivity == 6 else 18 if connectivity == 18 else 26
    if ndim == 2:
        return 4 if connectivity == 6 else 8
    raise ValueError(f"connected components need a 2D or 3D array, got {ndim} dimensions")
