"""Host prerequisites: privileges, BTF, and the pseudo file systems BPF needs."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

# Capability bits (linux/capability.h).
CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39

_NEEDED = (
    (CAP_BPF, "CAP_BPF", "load BPF programs and maps"),
    (CAP_PERFMON, "CAP_PERFMON", "attach to tracepoints and read kernel memory"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN", "attach cgroup socket programs"),
)

BTF_PATH = "/sys/kernel/btf/vmlinux"


def effective_caps(proc_root: str = "/proc") -> int:
    try:
        for line in Path(proc_root, "self", "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def missing_capabilities(caps: int | None = None) -> list[str]:
    """Names of the capabilities the agent needs and lacks, with what each is for.
    CAP_SYS_ADMIN covers all of them on kernels before 5.8."""
    caps = effective_caps() if caps is None else caps
    if caps & (1 << CAP_SYS_ADMIN):
        return []
    return [f"{name} (to {why})" for bit, name, why in _NEEDED if not caps & (1 << bit)]


def btf_available(path: str = BTF_PATH) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def _mounted(point: str, fstype: str, mounts: str = "/proc/self/mounts") -> bool:
    try:
        with open(mounts) as f:
            return any(
                parts[1] == point and parts[2] == fstype for parts in (line.split() for line in f)
            )
    except OSError:
        return False


def ensure_mounted() -> list[str]:
    """Mount bpffs and tracefs where missing; returns what was mounted."""
    done = []
    for point, fstype in (("/sys/fs/bpf", "bpf"), ("/sys/kernel/tracing", "tracefs")):
        if _mounted(point, fstype) or not os.path.isdir(point):
            continue
        r = subprocess.run(["mount", "-t", fstype, fstype, point], capture_output=True, check=False)
        if r.returncode == 0:
            done.append(point)
    return done


def run_when_idle() -> bool:
    """Put the calling thread (and the threads it starts) under SCHED_IDLE: it
    runs only on CPU time no other task wants, and any task that wakes
    preempts it at once. False where the kernel refuses."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (OSError, AttributeError):
        return False
    return True


@contextlib.contextmanager
def normal_priority_if(urgent: bool) -> Iterator[None]:
    """Run the block at normal priority if `urgent` and the calling thread is
    SCHED_IDLE, then go back to SCHED_IDLE.

    Why: the agent's threads share one interpreter lock. A SCHED_IDLE thread
    preempted while it holds the lock, on a host whose CPUs are all busy, gets a
    CPU back only in the scraps the workloads leave, and the normal-priority
    thread that drains the ring buffers waits for the lock behind it while the
    rings fill. At normal priority the holder gets its CPU back within a few
    scheduler slices and hands the lock over (docs/benchmarks.md, §3)."""
    boosted = False
    if urgent and os.sched_getscheduler(0) == os.SCHED_IDLE:
        try:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            boosted = True
        except OSError:
            pass  # not permitted (RLIMIT_NICE): stays idle
    try:
        yield
    finally:
        if boosted:
            with contextlib.suppress(OSError):
                os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
