"""Processes that use one dataset's instance maps at the same time (the lock tests); a module of their own, so that
spawned processes import it quickly (no torch)."""
from __future__ import annotations

import time


def write_maps(dataset: int, connectivity: int, barrier, results) -> None:
    """Compute the maps with ``connectivity`` once every process is at the barrier; report the log lines."""
    from nnunet_blob.preprocessing import ensure_instance_maps

    lines: list[str] = []
    barrier.wait(timeout=300)
    try:
        ensure_instance_maps(dataset, configuration="3d_fullres", connectivity=connectivity, num_processes=1,
                             log=lines.append, progress=False)
        results.put(("writer", connectivity, lines, None))
    except Exception as e:  # reported to the test
        results.put(("writer", connectivity, lines, f"{type(e).__name__}: {e}"))


def check_maps(dataset: int, barrier, results, seconds: float) -> None:
    """Check the maps (write=False) again and again for ``seconds`` after the barrier; report what each check saw:
    the connectivity of a complete set, or the error."""
    from nnunet_blob.preprocessing import ensure_instance_maps

    seen = []
    barrier.wait(timeout=300)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            store = ensure_instance_maps(dataset, configuration="3d_fullres", write=False, log=lambda *_: None)
            seen.append(store.connectivity)
        except Exception as e:  # reported to the test
            seen.append(f"{type(e).__name__}: {e}")
        time.sleep(0.05)  # a pause between checks, as between trainers starting, in which writers get the lock
    results.put(("checker", None, seen, None))
