"""Spacings and shapes in messages, saying their axis order: nnU-Net's (z, y, x) and, where it differs, the order
of the file reader the user knows (SimpleITK and nibabel report x, y, z)."""
from __future__ import annotations


def axis_order(values, file_reader: str | None = None, versus: tuple[str, object] | None = None) -> str:
    """A spacing or shape of nnU-Net's arrays, saying its axis order: ``(2.0, 1.0, 1.0) in nnU-Net's axis order
    (z, y, x)``; with ``file_reader`` (e.g. "SimpleITK", whose images nnU-Net's readers turn around to z, y, x) also
    as that reader reports it: ``; (1.0, 1.0, 2.0) as SimpleITK reports it (x, y, z)``. ``versus = (whose, other)``
    puts another spacing or shape beside it: ``A vs the reference's B in nnU-Net's axis order ...``."""
    def show(v) -> tuple:
        return tuple(round(float(x), 6) if isinstance(x, float) else int(x) for x in v)

    shown = [show(values)] + ([show(versus[1])] if versus else [])
    n = len(shown[0])
    names = ("z", "y", "x")[-n:] if n <= 3 else tuple(f"axis {i}" for i in range(n))

    def pair(tuples, whose: str) -> str:
        return f"{tuples[0]} vs {whose}{tuples[1]}" if versus else f"{tuples[0]}"

    text = f"{pair(shown, versus[0] + ' ' if versus else '')} in nnU-Net's axis order ({', '.join(names)})"
    if file_reader is not None:
        them = "them" if versus else "it"
        text += f"; {pair([t[::-1] for t in shown], '')} as {file_reader} reports {them} ({', '.join(names[::-1])})"
    return text


def file_reader(properties: dict) -> str | None:
    """The reader whose axis order is the reverse of nnU-Net's, from the properties nnU-Net's reader returned."""
    if properties.get("sitk_stuff"):
        return "SimpleITK"
    if properties.get("nibabel_stuff"):
        return "nibabel"
    return None
