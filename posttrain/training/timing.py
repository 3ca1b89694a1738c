"""Wall-time and memory measurements a recipe logs (``time/*_s``, ``memory/peak_rss_mb``)."""

from __future__ import annotations

import contextlib
import resource
import time


@contextlib.contextmanager
def timed(timings: dict[str, float] | None, key: str):
    """Add the block's wall time to ``timings[key]`` (seconds); nothing when ``timings`` is None."""
    t0 = time.perf_counter()
    yield
    if timings is not None:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
