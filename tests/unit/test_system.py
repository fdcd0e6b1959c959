"""system.py: the scheduling policy of the agent's bookkeeping threads."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable

import pytest

from meshlens.agent import Pressure
from meshlens.system import normal_priority_if, run_when_idle


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


def test_pace_pauses_after_a_slice_of_work_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshlens import pacing

    now = [1000.0]  # a fake clock: a preemption between two calls cannot add a pause
    slept: list[float] = []
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(time, "sleep", slept.append)
    pacing.start()
    before = pacing.pauses()
    pacing.pace()  # no work since start(): no pause
    assert pacing.pauses() == before
    now[0] += pacing.PACE_SLICE * 0.6
    pacing.pace()
    assert pacing.pauses() == before
    now[0] += pacing.PACE_SLICE * 0.6
    pacing.pace()
    assert pacing.pauses() == before + 1 and slept == [pacing.PACE_PAUSE]
    pacing.pace()  # the pause started a new slice
    assert pacing.pauses() == before + 1


def _in_thread(fn: Callable[[], None]) -> None:
    err: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # re-raised on the test's thread
            err.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if err:
        raise err[0]


def test_normal_priority_if_urgent_for_the_block_only() -> None:
    def idle_thread() -> None:
        assert run_when_idle()
        with normal_priority_if(True):
            assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert os.sched_getscheduler(0) == os.SCHED_IDLE
        with normal_priority_if(False):
            assert os.sched_getscheduler(0) == os.SCHED_IDLE
        with pytest.raises(RuntimeError), normal_priority_if(True):
            raise RuntimeError  # idle again after an exception too
        assert os.sched_getscheduler(0) == os.SCHED_IDLE

    if os.geteuid() != 0 and resource.getrlimit(resource.RLIMIT_NICE)[0] < 20:
        pytest.skip("leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE")
    _in_thread(idle_thread)
    before = os.sched_getscheduler(0)
    with normal_priority_if(True):  # a normal thread stays as it is
        assert os.sched_getscheduler(0) == before


def test_pressure_is_two_wakeups_within_the_window() -> None:
    p = Pressure(window=1.0, hold=5.0)
    p.woken(100.0)
    assert not p.active(100.0)  # one wake-up: a ring filled once, however slowly
    p.woken(101.5)
    assert not p.active(101.5)  # 1.5 s apart
    p.woken(102.0)
    assert p.active(102.0) and p.active(106.9)
    assert not p.active(107.0)  # held 5 s after the last pair
    p.woken(110.0)
    assert not p.active(110.0)
