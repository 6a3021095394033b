"""Count what in a block of torch code would make the host wait for an accelerator (a "host sync").

On a CPU every such read is free, so nothing shows it; this counter sees the operations themselves, on any device:
reading a value (``item``, ``bool``, ``int``, ``float``, ``tolist``, ``numpy``) and every op whose output size
depends on the data (``nonzero``, boolean-mask indexing, ``masked_select``, ``bincount``, ``unique``,
``repeat_interleave`` without ``output_size``), or whose result is a host value (``equal``, ``is_nonzero``,
``allclose``). ``torch._assert_async`` is not one: it checks on the device.

    with HostSyncCounter() as syncs:
        loss(output, target).backward()
    assert syncs.total == 0, syncs.counts
"""
from __future__ import annotations

import collections

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

#: aten ops whose output size or value the host must read from the device
SYNCING_OPS = frozenset({
    "_local_scalar_dense", "nonzero", "nonzero_numpy", "masked_select", "bincount", "_unique", "_unique2",
    "unique_dim", "unique_consecutive", "unique_dim_consecutive", "equal", "is_nonzero", "allclose", "histc",
    "repeat_interleave", "masked_scatter_",
})
#: indexing ops that sync when an index is a boolean mask (it is turned into positions with nonzero)
INDEXING_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})
#: Tensor methods that read values on the host without an aten op the dispatch mode would see
SYNCING_METHODS = frozenset({"tolist", "numpy", "__array__"})


class _CountDispatch(TorchDispatchMode):
    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNCING_OPS:
            if not (name == "repeat_interleave" and kwargs.get("output_size") is not None):
                self.counts[name] += 1
        elif name in INDEXING_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
                self.counts[f"{name} with a boolean mask"] += 1
        return func(*args, **kwargs)


class _CountMethods(TorchFunctionMode):
    def __init__(self, counts: collections.Counter):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in SYNCING_METHODS:
            self.counts[f"Tensor.{name}"] += 1
        return func(*args, **(kwargs or {}))


class HostSyncCounter:
    """Context manager; ``counts`` (a Counter by op) and ``total`` after the block."""

    def __enter__(self) -> HostSyncCounter:
        self.counts: collections.Counter = collections.Counter()
        self._modes = [_CountMethods(self.counts), _CountDispatch(self.counts)]
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
