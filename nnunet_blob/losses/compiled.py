"""``torch.compile`` for the loss terms of this package, where nnU-Net compiles its network.

:func:`compile_loss_terms` is the one place that decides. It compiles, inside a loss module tree (nnU-Net's
``DeepSupervisionWrapper`` and its children):

* the instance terms of every :class:`~.compound.InstanceTermCompoundLoss` -- the blob term
  (:class:`~.compound.BlobCompoundLoss`) and the CC-DiceCE term (:class:`~.compound.CCDiceCELoss`): their
  ``per_sample``, probabilities to per-sample terms (the reduction over DDP workers stays outside);
* :class:`~.compound.TopKDiceAndCELoss` as a whole (softmax, TopK-Dice's selection and sums, cross-entropy).

Each is compiled with ``dynamic=False``: one static graph per input shape, i.e. per deep-supervision scale. The
number of instances of a batch changes no traced shape and no value a graph specialises on: the segment-sum tables
have a slot for every id the id dtype can hold (32768 per class and sample for the loaders' int16 ids), and nothing
is read back from the device. Inductor fuses the elementwise work around the segment sums (probabilities, logs,
the masks, the per-slot arithmetic and the backward's gather).

A compiled term runs eagerly where a static graph cannot be had or would not pay:

* on the CPU's compacting path (:func:`~._common.host_reads_are_free`: inert voxels are dropped with ``nonzero``,
  so shapes depend on the data) -- nnU-Net compiles only on CUDA anyway;
* for ids wider than int16 (more than 32767 instances in a case): their table size is read from the data;
* without gradients (nnU-Net's validation steps): this keeps one graph per scale and term, within torch's limit of
  8 graphs per function (``torch._dynamo.config.recompile_limit``);
* TopK-Dice with batch Dice under DDP: its sums are all-gathered across workers.

Switch: the environment variable :data:`COMPILE_ENV` (``nnUNet_blob_compile=f``) keeps these terms eager even where
nnU-Net compiles; unset or true, they follow nnU-Net's own setting (``nnUNet_compile``, CUDA only).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn

from nnunet_blob.losses._common import ID_SPACE, host_reads_are_free
from nnunet_blob.losses.compound import BlobCompoundLoss, CCDiceCELoss, TopKDiceAndCELoss

#: environment variable that turns the compilation of this package's loss terms off (``f``/``false``/``0``)
COMPILE_ENV = "nnUNet_blob_compile"
_FALSE = ("f", "false", "0", "no", "off")


def blob_compile_switch() -> bool:
    """Whether :data:`COMPILE_ENV` lets this package compile its loss terms (default: yes)."""
    return os.environ.get(COMPILE_ENV, "t").strip().lower() not in _FALSE


class CompiledTerm:
    """A loss term's callable and its ``torch.compile``'d form (``dynamic=False``); each call runs the compiled form
    unless :meth:`runs_eager` says otherwise (see the module docstring).

    ``ids_argument``: position of the instance-id (or cell) map among the call's arguments, None when there is none.
    """

    def __init__(self, eager: Callable, name: str, ids_argument: int | None = None,
                 backend: str | Callable = "inductor"):
        self.eager, self.name, self.ids_argument = eager, name, ids_argument
        self.compiled = torch.compile(eager, dynamic=False, backend=backend)

    def runs_eager(self, *args: torch.Tensor) -> bool:
        """Whether this call runs the eager form (CPU compacting path, wide ids, no gradient)."""
        if not torch.is_grad_enabled() or host_reads_are_free(args[0]):
            return True
        return self.ids_argument is not None and args[self.ids_argument].dtype not in ID_SPACE

    def __call__(self, *args, **kwargs):
        return (self.eager if self.runs_eager(*args) else self.compiled)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"CompiledTerm({self.name})"


#: the attribute of each loss class that is compiled, its name in the training log, the position of its id map
_COMPILED_ATTRIBUTE: dict[type, tuple[str, str, int | None]] = {
    BlobCompoundLoss: ("per_sample", "blob term", 2),
    CCDiceCELoss: ("per_sample", "CC-DiceCE term", 2),
    TopKDiceAndCELoss: ("forward", "TopK-Dice + CE", None),
}


def _compiled_attribute(module: nn.Module) -> tuple[str, str, int | None] | None:
    for kind, entry in _COMPILED_ATTRIBUTE.items():
        if isinstance(module, kind):
            return entry
    return None


def compile_loss_terms(loss: nn.Module, enabled: bool, backend: str | Callable = "inductor") -> list[str]:
    """Compile the loss terms of this package found in ``loss`` (any module tree, e.g. nnU-Net's
    ``DeepSupervisionWrapper``) when ``enabled`` (nnU-Net's compile setting, :func:`~nnunet_blob.nnunet_internals.
    compile_enabled`) and :func:`blob_compile_switch` allow; in place. Returns the names of the terms compiled.

    ``backend``: torch.compile's backend (inductor, as nnU-Net; tests may count graphs with another).
    """
    if not (enabled and blob_compile_switch()):
        return []
    names = []
    for module in loss.modules():
        entry = _compiled_attribute(module)
        if entry is None or isinstance(module.__dict__.get(entry[0]), CompiledTerm):
            continue
        attribute, name, ids_argument = entry
        if isinstance(module, TopKDiceAndCELoss) and module.topk_kwargs["ddp"] and module.topk_kwargs["batch_dice"]:
            continue  # its batch sums are all-gathered across workers
        setattr(module, attribute, CompiledTerm(getattr(module, attribute), name, ids_argument, backend))
        names.append(name)
    return names


def compiled_terms(loss: nn.Module) -> list[CompiledTerm]:
    """The :class:`CompiledTerm` s inside ``loss`` (empty when nothing was compiled)."""
    found = []
    for module in loss.modules():
        entry = _compiled_attribute(module)
        term = None if entry is None else module.__dict__.get(entry[0])
        if isinstance(term, CompiledTerm):
            found.append(term)
    return found


__all__ = ["COMPILE_ENV", "CompiledTerm", "blob_compile_switch", "compile_loss_terms", "compiled_terms"]
