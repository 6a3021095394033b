"""Shared plumbing of the loss functions: fp32 arithmetic, input validation, the soft overlap scores.

Sign convention of every loss in :mod:`nnunet_blob.losses`: ``1 - score`` (0 is perfect, lower is better).
nnU-Net's own Dice losses return ``-Dice``; where a trainer reuses nnU-Net's ``DC_and_CE_loss`` as the global
term, that term keeps nnU-Net's convention. The two differ by a constant, which changes no gradient.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch

#: log(p) is clamped at this value, as ``torch.nn.functional.binary_cross_entropy`` does.
LOG_CLAMP = -100.0
#: denominator floor of the log's derivative, as in torch's binary_cross_entropy backward.
LOG_GRAD_EPS = 1e-12


class _ClampedLog(torch.autograd.Function):
    """max(log x, -100) with derivative 1 / max(x, 1e-12): torch's BCE conventions, finite at x = 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.log(x).clamp_min(LOG_CLAMP)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / x.clamp_min(LOG_GRAD_EPS)


def clamped_log(x: torch.Tensor) -> torch.Tensor:
    """Logarithm for cross-entropy terms: value clamped at -100, gradient finite for x = 0 (see torch's BCE)."""
    return _ClampedLog.apply(x)


#: the device types ``torch.autocast`` accepts (others are handled as the CPU)
AUTOCAST_DEVICE_TYPES = ("cuda", "cpu", "xpu", "mps")


def autocast_disabled(tensor: torch.Tensor) -> torch.autocast:
    """A context with autocast off on ``tensor``'s device type: the loss arithmetic in the inputs' precision."""
    device_type = tensor.device.type if tensor.device.type in AUTOCAST_DEVICE_TYPES else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


def ddp_active(ddp: bool = True) -> bool:
    """True when ``ddp`` is asked for and a ``torch.distributed`` process group is running (nnU-Net's DDP)."""
    return ddp and torch.distributed.is_available() and torch.distributed.is_initialized()


def float32_math(fn: Callable) -> Callable:
    """Run a loss with autocast disabled and half-precision probabilities promoted to float32.

    float64 inputs stay float64 (the exactness tests use them).
    """

    @functools.wraps(fn)
    def wrapper(probs: torch.Tensor, *args, **kwargs):
        with autocast_disabled(probs):
            if probs.dtype in (torch.float16, torch.bfloat16):
                probs = probs.float()
            return fn(probs, *args, **kwargs)

    return wrapper


#: Where the host can read a tensor without waiting for a device (CPU tensors), the losses first drop the voxels that
#: cannot contribute to a term (``nonzero``); on an accelerator they keep every voxel and mask, so that a training
#: step never waits for the device. Both give the same result; tests set this to False to run the accelerator's path
#: on the CPU (e.g. to count host synchronisations).
COMPACT_ON_HOST = True


def entry_positions(selected: torch.Tensor) -> torch.Tensor | None:
    """Flat positions of the ``True`` entries of ``selected`` where listing them costs no device synchronisation
    (see :data:`COMPACT_ON_HOST`), else None: the caller then keeps every entry and masks."""
    if host_reads_are_free(selected):
        return selected.reshape(-1).nonzero()[:, 0]
    return None


def host_reads_are_free(tensor: torch.Tensor) -> bool:
    """Whether ops whose output size depends on the data may be used on ``tensor`` (see :data:`COMPACT_ON_HOST`)."""
    return COMPACT_ON_HOST and tensor.device.type == "cpu"


def accumulation_dtype(tensor: torch.Tensor) -> torch.dtype:
    """dtype of the sums over voxels: float64, so that a sum of millions of float32 values added one after the other
    into one slot (``index_add``), and the difference of two such sums, keep float32 precision; float32 on Apple's
    MPS, which has no float64."""
    return torch.float32 if tensor.device.type == "mps" and tensor.dtype != torch.float64 else torch.float64


#: most entries an accumulating scatter (``index_add``) may add into one slot on an accelerator: atomic additions
#: into one address serialise, so a slot that collects millions of voxels costs milliseconds
MAX_PILE = 1 << 16


def spread_factor(entries_per_slot: int, tensor: torch.Tensor) -> int:
    """Sub-slots per slot of a segment-sum table so that at most :data:`MAX_PILE` of ``entries_per_slot`` entries
    land in one address (a power of two; see :func:`spread_keys`). 1 where the host path runs
    (:func:`host_reads_are_free`: a CPU adds one entry after the other anyway)."""
    if host_reads_are_free(tensor) or entries_per_slot <= MAX_PILE:
        return 1
    return 1 << math.ceil(math.log2(entries_per_slot / MAX_PILE))


def slot_dtype(num_slots: int) -> torch.dtype:
    """int32 slot keys where the table fits (half the bytes of int64 to read), else int64."""
    return torch.int32 if num_slots < 2 ** 31 else torch.int64


#: the cached :func:`sample_bases` tables, by (batch, stride, voxels, spread, dtype, device)
_SAMPLE_BASES: dict[tuple, torch.Tensor] = {}


def sample_bases(batch: int, sample_stride: int, num_voxels: int, spread: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
    """(B, 1, N) first sub-slot of each entry of a spread segment-sum table whose samples are ``sample_stride``
    slots apart: ``b * sample_stride * spread + (n % spread)`` (see :func:`spread_keys`); ``(B, 1, 1)`` without
    spreading. Constant for a shape, so it is made once per shape and device and kept (one table per
    deep-supervision scale), not rebuilt by every call (under ``torch.compile`` it is built in the graph)."""
    def build() -> torch.Tensor:
        samples = torch.arange(batch, device=device, dtype=dtype).mul_(sample_stride * spread).reshape(batch, 1, 1)
        if spread == 1:
            return samples
        phase = torch.arange(num_voxels, device=device, dtype=dtype).bitwise_and_(spread - 1)
        return torch.add(samples, phase.reshape(1, 1, -1))

    if torch.compiler.is_compiling():
        return build()
    key = (batch, sample_stride, num_voxels, spread, dtype, device)
    if key not in _SAMPLE_BASES:
        if len(_SAMPLE_BASES) >= 32:  # shapes change only between configurations: keep a few
            _SAMPLE_BASES.clear()
        with torch.inference_mode(False):  # usable by later calls with gradients
            _SAMPLE_BASES[key] = build()
    return _SAMPLE_BASES[key]


def spread_keys(slot: torch.Tensor, spread: int) -> torch.Tensor:
    """``slot * spread + (i % spread)`` with i the position along the last axis: the entries of one slot go to
    ``spread`` sub-slots in turn, so a slot of n entries gets n / spread additions per address. Add the sub-slots up
    with :func:`spread_sum`."""
    if spread == 1:
        return slot
    phase = torch.arange(slot.shape[-1], device=slot.device, dtype=slot.dtype).bitwise_and_(spread - 1)
    return torch.add(phase, slot, alpha=spread)


def spread_sum(table: torch.Tensor, spread: int) -> torch.Tensor:
    """(S * spread, ...) table of sub-slots -> (S, ...) sums (see :func:`spread_keys`)."""
    return table if spread == 1 else table.reshape(-1, spread, *table.shape[1:]).sum(1)


def segment_sums(keys: torch.Tensor, spread: int, num_slots: int, source: torch.Tensor) -> torch.Tensor:
    """(num_slots,) sums of ``source`` over the entries of each slot, in :func:`accumulation_dtype` (int32 stays
    int32): ``index_add`` of the flattened ``source`` into ``num_slots * spread`` sub-slots (flat ``keys`` from
    :func:`spread_keys`), then added up."""
    dtype = source.dtype if source.dtype == torch.int32 else accumulation_dtype(source)
    table = source.new_zeros(num_slots * spread, dtype=dtype).index_add_(0, keys, source.to(dtype).reshape(-1))
    return spread_sum(table, spread)


#: voxels per float32 partial sum in :func:`dense_sum`
DENSE_SUM_BLOCK = 4096


def dense_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over the last axis in :func:`accumulation_dtype`, without a float64 copy of ``x``: float32 sums of blocks
    of :data:`DENSE_SUM_BLOCK` values (each accurate to a few float32 ulps of the block), then the block sums in
    float64. A plain float32 total of millions of values is only accurate to ~1e-7 of the total, too coarse where a
    small sum is formed as the total minus a labelled part; ``sum(dtype=float64)`` would copy ``x`` to float64."""
    accumulate = accumulation_dtype(x)
    length = x.shape[-1]
    blocks = length // DENSE_SUM_BLOCK
    if x.dtype == accumulate or blocks < 2:
        return x.sum(-1).to(accumulate)
    if x.stride(-1) != 1:
        x = x.contiguous()
    head = x.as_strided((*x.shape[:-1], blocks, DENSE_SUM_BLOCK), (*x.stride()[:-1], DENSE_SUM_BLOCK, 1))
    total = head.sum(-1).to(accumulate).sum(-1)
    return total + x[..., blocks * DENSE_SUM_BLOCK:].sum(-1).to(accumulate)


#: id slots of a segment-sum table per group for each id dtype: every id the dtype can hold
ID_SPACE = {torch.bool: 2, torch.uint8: 256, torch.int8: 128, torch.int16: 32768}


def numbered_ids(ids: torch.Tensor, dtype: torch.dtype, max_id: int | None, num_groups: int,
                 name: str = "instances", check_values: bool = True) -> tuple[torch.Tensor, int]:
    """Ids for a segment-sum table (:func:`segment_sums`) and the number of id slots per group: ``max_id + 1``
    (checked with :func:`require` unless ``check_values`` is False, i.e. the caller guarantees it); else every id
    ``dtype`` can hold (uint8, int16: nothing is read from the device); else the largest id present + 1, read from
    the data (one wait for the device), with very sparse ids first numbered densely (``unique``, 0 stays 0)."""
    if max_id is not None:
        if check_values:
            require((ids <= max_id).all(), f"{name} hold ids above the given maximum {max_id}")
        return ids, int(max_id) + 1
    if dtype in ID_SPACE:
        return ids, ID_SPACE[dtype]
    space = int(ids.max()) + 1 if ids.numel() else 1
    if num_groups * space > 4 * ids.numel() + (1 << 16):
        ids = torch.unique(torch.cat((ids.new_zeros(1), ids)), return_inverse=True)[1][1:]
        space = int(ids.max()) + 1 if ids.numel() else 1
    return ids, space


def require(condition: torch.Tensor, message: str) -> None:
    """Check a value condition without a host synchronisation.

    On an accelerator this is a device-side assertion (``torch._assert_async``): a violation stops the program at
    the next synchronisation with ``message``. On the CPU it raises ``ValueError(message)`` at once.

    Raises:
        ValueError: on the CPU, when ``condition`` is False.
    """
    try:
        torch._assert_async(condition, message)
    except RuntimeError:
        raise ValueError(message) from None


def as_label_map(name: str, x: torch.Tensor, probs: torch.Tensor, channels: int = 1,
                 to_long: bool = True) -> torch.Tensor:
    """Check that ``x`` is (B, channels, *spatial) (or (B, *spatial) when channels == 1) and integer-valued.

    Returns it as int64 (``to_long=False``: in its own dtype, for callers that only compare it with labels).

    Raises:
        ValueError: wrong shape or dtype (at once), non-integer float values (see :func:`require`).
    """
    spatial = tuple(probs.shape[2:])
    if x.ndim == probs.ndim - 1 and channels == 1:
        x = x.unsqueeze(1)
    if x.ndim != probs.ndim or x.shape[0] != probs.shape[0] or x.shape[1] != channels or tuple(x.shape[2:]) != spatial:
        raise ValueError(
            f"{name} must have shape (B, {channels}, *spatial) = {(probs.shape[0], channels, *spatial)} to match "
            f"probs {tuple(probs.shape)}, got {tuple(x.shape)}"
        )
    if x.is_floating_point():
        require((x == torch.round(x)).all(), f"{name} must hold integer values, got non-integer floats")
    elif x.dtype == torch.bool:
        pass
    elif not (x.dtype.is_signed or x.dtype == torch.uint8) or x.is_complex():
        raise ValueError(f"{name} must be an integer tensor, got {x.dtype}")
    return x.long() if to_long else x


def as_mask(loss_mask: torch.Tensor | None, probs: torch.Tensor) -> torch.Tensor | None:
    """Validate an optional loss mask (B, 1, *spatial); nonzero = voxel takes part in the loss."""
    if loss_mask is None:
        return None
    return as_label_map("loss_mask", loss_mask, probs, to_long=False).bool()


def check_probs(probs: torch.Tensor, min_channels: int) -> None:
    if not probs.is_floating_point():
        raise ValueError(f"probs must be a floating point tensor of probabilities, got {probs.dtype}")
    if probs.ndim < 3:
        raise ValueError(f"probs must have shape (B, C, *spatial) with 1 to 3 spatial axes, got {tuple(probs.shape)}")
    if probs.shape[1] < min_channels:
        raise ValueError(f"probs needs at least {min_channels} channels, got {probs.shape[1]}")


def check_nonnegative_ids(ids: torch.Tensor, message: str) -> None:
    """Ids (instances, cells) must be >= 0 (see :func:`require`); one reduction, nothing to check for unsigned ids."""
    if ids.numel() and (ids.dtype.is_signed or ids.is_floating_point()):
        require(ids.amin() >= 0, message)


def check_label_range(target: torch.Tensor, num_classes: int, valid: torch.Tensor | None) -> None:
    """Class labels must lie in [0, num_classes) wherever the loss looks at them (see :func:`require`)."""
    if valid is None:  # one reduction instead of three passes
        lowest, highest = target.aminmax() if target.numel() else (target.new_zeros(()), target.new_zeros(()))
        inside = (lowest >= 0) & (highest < num_classes)
    else:
        inside = (((target >= 0) & (target < num_classes)) | ~valid).all()
    require(inside, f"target holds a class outside [0, {num_classes}) for probs with {num_classes} channels; "
                          f"mark ignored voxels with loss_mask")


#: floor of the overlap scores' denominators (as nnU-Net's Dice). The denominators are sums of nonnegative terms plus
#: ``smooth``, so with ``smooth`` >= the floor it never applies and is not computed
DENOMINATOR_FLOOR = 1e-8


def floored_denominator(denominator: torch.Tensor, smooth: float) -> torch.Tensor:
    """``max(denominator, DENOMINATOR_FLOOR)``, where the floor can apply (``smooth`` below it); as it is otherwise."""
    return denominator if smooth >= DENOMINATOR_FLOOR else denominator.clamp_min(DENOMINATOR_FLOOR)


def soft_dice_score(tp: torch.Tensor, sum_gt: torch.Tensor, sum_pred: torch.Tensor, smooth: float) -> torch.Tensor:
    """nnU-Net's smoothed soft Dice: ``(2 TP + s) / max(sum_gt + sum_pred + s, 1e-8)``.

    With ``sum_pred`` = sum of p this is the non-squared form (2TP + FP + FN = sum_gt + sum_pred); with
    ``sum_pred`` = sum of p^2 (and sum_gt = sum of g^2 = sum of g) it is the squared-denominator form.
    """
    return (2 * tp + smooth) / floored_denominator(sum_gt + sum_pred + smooth, smooth)


def check_tversky_weights(alpha: float, beta: float, smooth: float) -> None:
    """Validate the Tversky index's weights (:func:`tversky_score`).

    Raises:
        ValueError: ``alpha`` or ``beta`` negative or not finite, both zero (the index would ignore every error), or
            ``smooth`` negative or not finite.
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("smooth", smooth)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"Tversky {name} must be a finite number >= 0, got {value}")
    if alpha == 0 and beta == 0:
        raise ValueError("Tversky alpha (weight of false positives) and beta (weight of false negatives) are both 0: "
                         "the index would be 1 whatever the prediction; e.g. alpha=0.3, beta=0.7 (Salehi et al.) or "
                         "0.5/0.5 (Dice)")


def tversky_score(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, alpha: float, beta: float,
                  smooth: float) -> torch.Tensor:
    """Tversky index (Salehi et al. 2017): ``(TP + s) / max(TP + alpha FP + beta FN + s, 1e-8)``.

    ``alpha`` weighs false positives and ``beta`` false negatives (0.3 / 0.7 in the paper).
    """
    numerator = tp + smooth
    denominator = torch.add(numerator, fp, alpha=alpha).add_(fn, alpha=beta)
    return numerator / floored_denominator(denominator, smooth)


def zero_with_graph(probs: torch.Tensor) -> torch.Tensor:
    """A zero loss that still depends on ``probs`` (so ``backward`` works and gives zero gradients)."""
    return probs.sum() * 0.0


def mean_over_present(values: torch.Tensor, present: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``values`` over the entries where ``present``; returns (mean, any_present) along ``dim``."""
    n = present.sum(dim)
    total = torch.where(present, values, torch.zeros_like(values)).sum(dim)
    return total / n.clamp_min(1), n > 0


def mean_over_finite_present(values: torch.Tensor, present: torch.Tensor, dim: int
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mean_over_present` for ``values`` that are finite everywhere (absent entries included): the absent
    entries are multiplied by 0 instead of being selected away (one kernel less each way)."""
    n = present.sum(dim)
    return (values * present).sum(dim) / n.clamp_min(1), n > 0


def mean_over_samples(sample_losses: torch.Tensor, sample_has: torch.Tensor) -> torch.Tensor:
    """Mean over the samples that have a term (0, with a graph, when none has)."""
    return mean_over_present(sample_losses, sample_has, dim=0)[0]
