"""system.py: the scheduling policy of the agent's bookkeeping threads."""

from __future__ import annotations

import os
import threading
import time

from meshlens.system import run_when_idle


def test_run_when_idle_changes_the_calling_thread_only() -> None:
    seen: dict[str, int] = {}

    def worker() -> None:
        assert run_when_idle()
        seen["worker"] = os.sched_getscheduler(0)
        child = threading.Thread(target=lambda: seen.update(child=os.sched_getscheduler(0)))
        child.start()
        child.join()

    before = os.sched_getscheduler(0)
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": os.SCHED_IDLE, "child": os.SCHED_IDLE}  # children inherit it
    assert os.sched_getscheduler(0) == before != os.SCHED_IDLE


def test_pace_pauses_after_a_slice_of_work_only() -> None:
    from meshlens import pacing

    pacing.start()
    before = pacing.pauses()
    pacing.pace()  # no work since start(): no pause
    assert pacing.pauses() == before
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < 2 * pacing.PACE_SLICE:
        pass
    pacing.pace()
    assert pacing.pauses() == before + 1
    pacing.pace()  # the pause started a new slice
    assert pacing.pauses() == before + 1
