"""The loss swap: nnU-Net builds its own loss, the trainer replaces the loss of one output scale inside it.

nnU-Net's ``_build_loss`` (reached through :class:`~nnunet_blob.nnunet_internals.BuildLossHook`) builds its
compound loss with its batch Dice, ignore label, regions and compile settings and wraps it in its
``DeepSupervisionWrapper`` with its deep-supervision weights. :class:`LossSwapTrainer` keeps all of that and
swaps only the per-scale loss for ``build_inner_loss(nnunet_loss)``: nothing of nnU-Net's body is repeated. Where
nnU-Net compiles (its ``_do_i_compile``), the loss terms of this package are compiled too
(:func:`~nnunet_blob.losses.compiled.compile_loss_terms`, switch ``nnUNet_blob_compile``).
"""
from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch import nn

from nnunet_blob.losses.compiled import COMPILE_ENV, compile_loss_terms
from nnunet_blob.nnunet_internals import BuildLossHook, compile_enabled, replace_inner_loss


class LossSwapTrainer(BuildLossHook, nnUNetTrainer):
    """nnU-Net's trainer with the loss inside nnU-Net's deep-supervision wrapper replaced."""

    def build_inner_loss(self, nnunet_loss: nn.Module) -> nn.Module:
        """The loss for one output scale, given the one nnU-Net built (``DC_and_CE_loss``/``DC_and_BCE_loss``)."""
        return nnunet_loss

    def adapt_nnunet_loss(self, loss: nn.Module) -> nn.Module:
        loss = replace_inner_loss(loss, self.build_inner_loss)
        compiled = compile_loss_terms(loss, compile_enabled(self))
        if compiled:
            self.print_to_log_file(f"nnunet_blob: compiling the {', '.join(compiled)} (static shapes, one graph per "
                                   f"deep-supervision scale; {COMPILE_ENV}=f keeps them eager)")
        return loss
