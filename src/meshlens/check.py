"""`meshlens check`: which hooks and features work on this kernel, and why not.

Each check is tri-state — ok, not supported (with the reason), or error — so a
test can turn "not supported here" into a skip with the reason."""

from __future__ import annotations

import enum
import json
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass

from .system import BTF_PATH, btf_available, missing_capabilities


class State(enum.Enum):
    OK = "ok"
    UNSUPPORTED = "no"
    ERROR = "error"


@dataclass
class Result:
    name: str
    state: State
    detail: str
    required: bool


def _kernel_config() -> dict[str, str]:
    import gzip

    for path in ("/proc/config.gz", f"/boot/config-{platform.release()}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as f:
                out = {}
                for line in f:
                    if line.startswith("CONFIG_"):
                        k, _, v = line.strip().partition("=")
                        out[k] = v
                return out
        except OSError:
            continue
    return {}


_btf_cache: object = None


def _vmlinux_has(name: str) -> bool:
    global _btf_cache
    from .btf import Btf

    if _btf_cache is None:
        _btf_cache = Btf.from_file(BTF_PATH)
    return bool(_btf_cache.find(name))  # type: ignore[attr-defined]


def _tracepoint(name: str) -> Callable[[], tuple[State, str]]:
    def check() -> tuple[State, str]:
        if _vmlinux_has(f"btf_trace_{name}"):
            return State.OK, "raw tracepoint present"
        return State.UNSUPPORTED, "this kernel has no such tracepoint"

    return check


def _probe_classes() -> dict[str, type]:
    """Every probe in meshlens.probes, by name."""
    import importlib
    import pkgutil

    from . import probes
    from .probes.base import Probe

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(probes.__path__):
        mod = importlib.import_module(f"{probes.__name__}.{info.name}")
        for obj in vars(mod).values():
            if isinstance(obj, type) and issubclass(obj, Probe) and obj.name:
                found.setdefault(obj.name, obj)
    return found


def _probe_loads(name: str) -> Callable[[], tuple[State, str]]:
    def check() -> tuple[State, str]:
        probe = _probe_classes()[name]()
        try:
            probe.start()
        except Exception as exc:
            return State.ERROR, str(exc).splitlines()[
                0
            ] + " (see `meshlens run` for the verifier log)"
        finally:
            probe.close()
        return State.OK, f"loaded and attached in {probe.status.load_seconds * 1000:.0f} ms"

    return check


def _kconfig(option: str, why_missing: str) -> Callable[[], tuple[State, str]]:
    def check() -> tuple[State, str]:
        cfg = _kernel_config()
        if not cfg:
            return State.ERROR, "kernel config not readable"
        if cfg.get(option) == "y":
            return State.OK, f"{option}=y"
        return State.UNSUPPORTED, f"{option} is not set: {why_missing}"

    return check


def _caps() -> tuple[State, str]:
    missing = missing_capabilities()
    return (
        (State.OK, "all needed")
        if not missing
        else (State.UNSUPPORTED, "missing " + ", ".join(missing))
    )


def _btf() -> tuple[State, str]:
    if btf_available():
        return State.OK, BTF_PATH
    return State.UNSUPPORTED, f"{BTF_PATH} missing: CO-RE objects cannot be relocated"


def _cgroup2() -> tuple[State, str]:
    from .probes.base import cgroup2_root

    try:
        return State.OK, f"cgroup v2 at {cgroup2_root()}"
    except FileNotFoundError as exc:
        return State.UNSUPPORTED, str(exc)


def _bpf_stats() -> tuple[State, str]:
    from . import _libbpf

    fd = _libbpf.enable_run_time_stats()
    if fd is None:
        return State.UNSUPPORTED, "BPF_ENABLE_STATS refused"
    os.close(fd)
    return State.OK, "per-program run time and count"


CHECKS: list[tuple[str, Callable[[], tuple[State, str]], bool]] = [
    ("privileges", _caps, True),
    ("btf", _btf, True),
    ("cgroup-v2", _cgroup2, False),
    ("raw_tp sock_send_length", _tracepoint("sock_send_length"), True),
    ("raw_tp sock_recv_length", _tracepoint("sock_recv_length"), True),
    ("raw_tp inet_sock_set_state", _tracepoint("inet_sock_set_state"), True),
    ("raw_tp tcp_retransmit_skb", _tracepoint("tcp_retransmit_skb"), False),
    ("raw_tp kfree_skb", _tracepoint("kfree_skb"), False),
    ("bpf run-time stats", _bpf_stats, False),
    ("kprobes (not used)", _kconfig("CONFIG_KPROBES", "meshlens uses tracepoints instead"), False),
    ("raw_tp tcp_send_reset", _tracepoint("tcp_send_reset"), False),
]


def _all_checks() -> list[tuple[str, Callable[[], tuple[State, str]], bool]]:
    probes = [
        (f"probe {name}", _probe_loads(name), name == "tcpflow")
        for name in sorted(_probe_classes())
    ]
    return CHECKS + probes


def run_checks() -> list[Result]:
    results = []
    for name, fn, required in _all_checks():
        try:
            state, detail = fn()
        except Exception as exc:  # a check must report, never crash the command
            state, detail = State.ERROR, f"{type(exc).__name__}: {exc}"
        results.append(Result(name, state, detail, required))
    return results


def run_check(json_out: bool = False) -> int:
    results = run_checks()
    if json_out:
        print(json.dumps([{**r.__dict__, "state": r.state.value} for r in results], indent=1))
    else:
        for r in results:
            print(f"{r.state.value:5} {r.name:28} {r.detail}")
    return 0 if all(r.state is State.OK for r in results if r.required) else 1
