"""Bookkeeping in short slices: a refresh or a scrape pauses every PACE_SLICE
seconds of running, so no workload waits long for the CPU behind it.

The kernel here is not preemptible (PREEMPT_NONE), and under EEVDF even a
SCHED_IDLE thread, once picked, runs until the next tick (4 ms) unless a task
wakes on its CPU: a busy task that was only preempted (by a softirq) does not
get its CPU back before that. A thread that sleeps for a moment every few
hundred microseconds hands it back itself (docs/bench/http.md)."""

from __future__ import annotations

import threading
import time

PACE_SLICE = 0.0002  # s of work between pauses
PACE_PAUSE = 0.00005  # s asked for; timer slack makes it ~0.1 ms

_state = threading.local()


def start() -> None:
    """A new piece of bookkeeping starts: its first slice starts now."""
    _state.since = time.perf_counter()


def pace() -> None:
    """Pause if this thread has worked for PACE_SLICE since its last pause (or
    since start())."""
    now = time.perf_counter()
    since = getattr(_state, "since", None)
    if since is None:
        _state.since = now
    elif now - since >= PACE_SLICE:
        time.sleep(PACE_PAUSE)
        _state.since = time.perf_counter()
        _state.pauses = getattr(_state, "pauses", 0) + 1


def pauses() -> int:
    """Pauses this thread has taken (for tests)."""
    return int(getattr(_state, "pauses", 0))
