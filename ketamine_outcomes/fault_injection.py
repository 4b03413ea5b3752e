"""Crash points for the reliability tests (tests/test_reliability_crash.py).

``maybe_crash(point)`` does nothing unless the environment variable ``OUTCOMES_FAULT_INJECT``
names that point; then the process kills itself with SIGKILL (no cleanup, no ``finally``, no
atexit: what a power cut or the OOM killer does to a run). ``<point>@<n>`` crashes at the n-th
time the point is reached in this process (e.g. ``ingest.write.end@2``: the second export's
write transaction, just before COMMIT). Never set in production.
"""

from __future__ import annotations

import os
import signal

ENV = "OUTCOMES_FAULT_INJECT"
_hits: dict[str, int] = {}


def maybe_crash(point: str) -> None:
    """SIGKILL this process if ``OUTCOMES_FAULT_INJECT`` names ``point`` (see module doc)."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition("@")
    if name != point:
        return
    _hits[point] = _hits.get(point, 0) + 1
    if _hits[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
