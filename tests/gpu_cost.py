"""Count what a block of torch code would cost an accelerator, on any device (the CPU included).

Three machine-independent numbers, seen by a ``TorchDispatchMode`` (every aten op that reaches a kernel):

* ``kernels``: aten ops dispatched, leaving out views and metadata-only ops, which launch no kernel: every op
  whose schema says it returns a view of an input (``OpOverload.is_view``: ``view``, ``expand``, ``as_strided``,
  ``slice``, ``select``, ``unsqueeze``, ``squeeze``, ``permute``, ``transpose``, ``alias``, ``unbind``, ``split``,
  ...) and :data:`METADATA_OPS` (``detach``, ``_unsafe_view``, dtype queries, allocations without a fill such as
  ``empty``/``empty_strided``/``empty_like``, ``lift_fresh``, size and stride queries). Each other op counts as
  one kernel launch (a fused op is one kernel, a composite op that decomposes shows its parts).
* ``bytes``: for each counted op, the bytes of every tensor it reads (its tensor inputs) plus every tensor it
  writes (its tensor outputs); a tensor's bytes are those of the memory it addresses (a broadcast input, stride 0,
  counts once along the broadcast axis). An in-place op counts its destination as read and written; the
  :data:`FACTORY_OPS` (``new_zeros``, ``zeros_like``, ...) read nothing, their tensor argument only gives a
  shape. This is the memory traffic an eager GPU pays when every kernel streams its operands once.
* ``pile``: for every accumulating scatter (``index_add``, ``scatter_add``, ``scatter_reduce``,
  ``index_put``/``_index_put_impl_`` with ``accumulate=True``, ``put_`` with ``accumulate=True``,
  ``bincount``), the histogram of the destination slots its entries land in (from the index tensor, with the
  other coordinates of a multi-dimensional scatter); ``pile`` is the largest count, i.e. the longest chain of
  atomic additions into one address, which a GPU serialises. ``piles`` lists (op, largest, entries) per call.

    with GpuCostCounter() as cost:
        loss(output, target).backward()
    print(cost.kernels, cost.bytes, cost.pile)
"""
from __future__ import annotations

import collections
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

#: ops that launch no kernel although their schema does not mark them as views
METADATA_OPS = frozenset({
    "detach", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "lift_fresh",
    "lift_fresh_copy", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size",
    "_has_compatible_shallow_copy_type", "set_", "resize_", "_local_scalar_dense", "_unsafe_view",
    "promote_types", "result_type", "can_cast",
})
#: ops whose tensor argument only gives the shape, dtype and device of what they write
FACTORY_OPS = frozenset({
    "new_zeros", "new_ones", "new_full", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
    "randint_like",
})
#: accumulating scatters whose same-slot piles are counted (see the module docstring)
ACCUMULATING_OPS = frozenset({
    "index_add", "index_add_", "scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_", "index_put",
    "index_put_", "_index_put_impl_", "put", "put_", "bincount",
})


def addressed_bytes(t: torch.Tensor) -> int:
    """Bytes of the memory a tensor addresses: broadcast (stride 0) axes count once."""
    numel = math.prod(size for size, stride in zip(t.shape, t.stride(), strict=True) if stride != 0)
    return numel * t.element_size()


def _largest_pile(keys: torch.Tensor) -> tuple[int, int]:
    """(largest number of equal keys, number of keys)."""
    keys = keys.reshape(-1).long().cpu()
    if keys.numel() == 0:
        return 0, 0
    low, high = keys.aminmax()
    if high - low < 1 << 27:
        return int(torch.bincount(keys - low).max()), keys.numel()
    return int(torch.unique(keys, return_counts=True)[1].max()), keys.numel()


def _scatter_slots(self_shape, dim: int, index: torch.Tensor) -> torch.Tensor:
    """Flat destination slot of each entry of ``scatter_*(self, dim, index, src)``."""
    dim = dim % max(len(self_shape), 1)
    coords = torch.meshgrid(*[torch.arange(n) for n in index.shape], indexing="ij") if index.ndim else []
    slot = torch.zeros(index.shape, dtype=torch.int64)
    for axis in range(index.ndim):
        coordinate = index.long().cpu() if axis == dim else coords[axis]
        slot = slot * self_shape[axis] + coordinate
    return slot


def _index_put_slots(self_shape, indices) -> torch.Tensor | None:
    """The flat destination slot of each entry of ``index_put(self, indices, ...)`` over the indexed axes (None
    where no axis is indexed); boolean masks count as the indices of their true entries."""
    slot = None
    for axis, index in enumerate(indices):
        if index is None:
            continue
        if index.dtype in (torch.bool, torch.uint8):
            index = index.nonzero()[:, 0]
        slot = index.long().cpu() if slot is None else slot * self_shape[axis] + index.long().cpu()
    return slot


def _pile(name: str, args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """(largest number of entries one accumulating call adds into one destination slot, entries); None where the
    call does not accumulate."""
    def arg(i, key, default=None):
        return args[i] if len(args) > i else kwargs.get(key, default)

    if name in ("index_add", "index_add_"):
        # entry i adds a whole slice of the source into slice index[i]: every slot of a slice gets the same pile
        return _largest_pile(arg(2, "index"))
    if name in ("scatter_add", "scatter_add_", "scatter_reduce", "scatter_reduce_"):
        return _largest_pile(_scatter_slots(arg(0, "self").shape, arg(1, "dim"), arg(2, "index")))
    if name in ("index_put", "index_put_", "_index_put_impl_"):
        if not arg(3, "accumulate", False):
            return None
        slot = _index_put_slots(arg(0, "self").shape, arg(1, "indices"))
        return None if slot is None else _largest_pile(slot)
    if name in ("put", "put_"):
        return _largest_pile(arg(1, "index")) if arg(3, "accumulate", False) else None
    if name == "bincount":
        return _largest_pile(arg(0, "self"))
    return None


class _CostMode(TorchDispatchMode):
    def __init__(self, counter: GpuCostCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if func.is_view or name in METADATA_OPS:
            return out
        inputs = [] if name in FACTORY_OPS else tree_flatten((args, kwargs))[0]
        tensors = [t for t in inputs + tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        c = self.counter
        c.kernels += 1
        c.ops[name] += 1
        moved = sum(addressed_bytes(t) for t in tensors)
        c.bytes += moved
        c.bytes_by_op[name] += moved
        if name in ACCUMULATING_OPS:
            pile = _pile(name, args, kwargs)
            if pile is not None:
                c.piles.append((name, *pile))
        return out


class GpuCostCounter:
    """Context manager; after the block: ``kernels``, ``bytes``, ``pile`` (see the module docstring), ``ops`` and
    ``bytes_by_op`` (Counters by aten op name) and ``piles`` ((op, largest pile, entries) per accumulating call)."""

    def __enter__(self) -> GpuCostCounter:
        self.kernels = 0
        self.bytes = 0
        self.ops: collections.Counter = collections.Counter()
        self.bytes_by_op: collections.Counter = collections.Counter()
        self.piles: list[tuple[str, int, int]] = []
        self._mode = _CostMode(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    @property
    def pile(self) -> int:
        """Largest number of atomic additions into one slot by any accumulating call of the block (0: none)."""
        return max((p for _, p, _ in self.piles), default=0)


# ------------------------------------------------------------------------ the training-step loss that is counted
#: nnU-Net's deep-supervision scales of a 3D U-Net with five poolings: full resolution and four halvings
NUM_SCALES = 5


#: small lesions per sample of :func:`lesion_batch`
LESIONS = 20


def lesion_batch(classes: int, size: int, batch: int = 2, lesions: int = LESIONS, seed: int = 0):
    """(target, instances) int16 (B, 1, S, S, S): per sample one large ball (radius 0.3 S, centred at
    (0.35 S, 0.35 S, 0.35 S), class 1, instance 1) and ``lesions`` small boxes of 2 to 4 voxels a side towards the
    far corner, classes drawn from 1..C-1, each its own instance."""
    import numpy as np

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(size)] * 3, indexing="ij"))
    target = np.zeros((batch, 1, size, size, size), dtype=np.int16)
    instances = np.zeros_like(target)
    for b in range(batch):
        ball = ((grid - 0.35 * size) ** 2).sum(0) <= (0.3 * size) ** 2
        target[b, 0][ball], instances[b, 0][ball] = 1, 1
        for n in range(2, lesions + 2):
            lo = rng.integers(int(size * 0.7), size - 4, size=3)
            box = (b, 0, *[slice(a, a + w) for a, w in zip(lo, rng.integers(2, 5, size=3), strict=True)])
            target[box], instances[box] = rng.integers(1, classes), n
    return torch.from_numpy(target), torch.from_numpy(instances)


def deep_supervision_inputs(classes: int, size: int, seed: int = 0):
    """Per scale: random logits (B, C, s, s, s) with gradients, the target, the instance ids and the Voronoi cells
    (int16, as the trainers' loader delivers them), targets and maps downsampled by nearest neighbour."""
    from nnunet_blob.instances.voronoi import voronoi_cells

    target, instances = lesion_batch(classes, size, seed=seed)
    g = torch.Generator().manual_seed(seed)
    scales = []
    for s in range(NUM_SCALES):
        step = 2 ** s
        t, i = target[..., ::step, ::step, ::step], instances[..., ::step, ::step, ::step]
        logits = torch.randn(t.shape[0], classes, *t.shape[2:], generator=g).requires_grad_()
        scales.append((logits, t.contiguous(), i.contiguous(), voronoi_cells(t, classes).to(torch.int16)))
    return scales


def training_step_losses(classes: int) -> dict:
    """The per-scale loss of each trainer, wrapped in nnU-Net's ``DeepSupervisionWrapper`` with nnU-Net's weights,
    and whether it reads instance ids ("instances"), Voronoi cells ("cells") or neither (None)."""
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunet_blob.losses import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss, TverskyLoss
    from nnunet_blob.trainers.cells import DEFAULT_MAX_CELLS

    def stock(tversky=False):
        loss = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                              weight_ce=1, weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)
        if tversky:
            loss.dc = TverskyLoss(apply_nonlin=loss.dc.apply_nonlin, batch_dice=False, do_bg=False, smooth=1e-5,
                                  ddp=False)
        return loss

    weights = np.array([1 / 2 ** i for i in range(NUM_SCALES)])
    weights[-1] = 0
    weights = weights / weights.sum()
    # as the trainers build them: the loader checks the maps on the CPU, the instance tables hold the largest
    # instance count of any case (here the 21 instances of a sample), the cell tables what a grid can hold, at most
    # the CC trainers' cap
    blob = {"check_values": False, "max_id": LESIONS + 1}
    cells = {"check_values": False, "max_cells": DEFAULT_MAX_CELLS, "connectivity": 26}
    losses = {
        "stock DC_and_CE_loss": (stock(), None),
        "BlobCompoundLoss (blob Dice)": (BlobCompoundLoss(stock(), 2.0, 1.0, "dice", **blob), "instances"),
        "BlobCompoundLoss (blob Tversky)": (BlobCompoundLoss(stock(tversky=True), 2.0, 1.0, "tversky", **blob),
                                            "instances"),
        "CE + TopK-Dice (k 30)": (TopKDiceAndCELoss(k=30), None),
        "CCDiceCELoss": (CCDiceCELoss(stock(), **cells), "cells"),
    }
    return {name: (DeepSupervisionWrapper(loss, weights), maps) for name, (loss, maps) in losses.items()}


def count_training_step(loss, maps, scales) -> GpuCostCounter:
    """Cost of one forward + backward of a deep-supervision loss over ``scales`` (see
    :func:`deep_supervision_inputs`), on the accelerator's path of the losses (nothing compacted on the host), in
    a training step after the first (the constant per-shape tables the losses cache,
    :func:`nnunet_blob.losses._common.sample_bases`, exist)."""
    import nnunet_blob.losses._common as common

    outputs = [s[0] for s in scales]
    args = [outputs, [s[1] for s in scales]]
    if maps is not None:
        args.append([s[2] if maps == "instances" else s[3] for s in scales])
    saved, common.COMPACT_ON_HOST = common.COMPACT_ON_HOST, False
    try:
        with torch.no_grad():  # a step after the first: the constant tables made once per shape exist
            loss(*args)
        with GpuCostCounter() as cost:
            loss(*args).backward()
    finally:
        common.COMPACT_ON_HOST = saved
    for o in outputs:
        o.grad = None
    return cost
