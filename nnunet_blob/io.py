"""Writing files so that readers never see half of one, and registering our trainers with nnU-Net.

Atomic writes: the payload goes to a temporary file in the target's folder (same file system), which is then
renamed over the target with ``os.replace``; on any error the temporary file is removed and the target keeps its
old content. Temporary names start with ``.tmp-`` and end with the target's name (blosc2 and matplotlib choose the
format by the ending).
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

TEMPORARY_PREFIX = ".tmp-"


def temporary_path(path: str | os.PathLike) -> Path:
    """A fresh temporary name beside ``path`` (a random part keeps concurrent writers apart)."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{uuid.uuid4().hex[:8]}-{path.name}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_path(target) as tmp: write(tmp)``: ``tmp`` replaces ``target`` when the block succeeds; it is
    removed when the block raises (the target is left as it was)."""
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(payload)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as JSON (sorted keys, indented) to ``path`` atomically."""
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True).encode())
