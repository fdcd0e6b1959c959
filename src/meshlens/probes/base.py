"""What every probe shares: find its object, check the struct mirrors against the
object's BTF, set read-only globals, load, attach, report health, detach."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar

from .. import _libbpf as libbpf
from ..btf import Btf
from ..layout import Layout

if TYPE_CHECKING:
    from .sockchain import Seat

log = logging.getLogger(__name__)

CGROUP2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def objects_dir() -> Path:
    env = os.environ.get("MESHLENS_BPF_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "bpf_objects"


def cgroup2_root() -> str:
    """The mount point of the cgroup v2 hierarchy (hybrid hosts: .../unified)."""
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    for root in CGROUP2_ROOTS:
        if any(m[1] == root and m[2] == "cgroup2" for m in mounts if len(m) > 2):
            return root
    raise FileNotFoundError("no cgroup v2 hierarchy is mounted")


@dataclass
class ProbeStatus:
    name: str
    loaded: bool = False
    error: str = ""
    attached: list[str] = field(default_factory=list)
    load_seconds: float = 0.0


class Probe:
    """Base class; subclasses set `name` and `layouts`, and override configure()."""

    name = ""
    layouts: Sequence[Layout] = ()

    def __init__(self) -> None:
        self.obj: libbpf.BpfObject | None = None
        self.btf: Btf | None = None
        self.status = ProbeStatus(self.name)
        self.chain_targets: list[str] = []

    @property
    def path(self) -> Path:
        return objects_dir() / f"{self.name}.bpf.o"

    def open(self) -> libbpf.BpfObject:
        path = self.path
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `make build`")
        self.btf = Btf.from_file(path)
        for lay in self.layouts:
            lay.check(self.btf)  # a drifted mirror must fail here, not decode garbage
        self.obj = libbpf.BpfObject(str(path))
        return self.obj

    def set_global(self, name: str, value: int) -> None:
        """Set a `const volatile` global before load."""
        assert self.obj and self.btf
        offset, size = self.btf.datasec(".rodata")[name]
        self.obj.write_rodata(offset, value.to_bytes(size, "little", signed=value < 0))

    def configure(self) -> None:
        """Set globals and map sizes between open and load."""

    def loaded(self) -> None:
        """Between load and attach: fill maps the programs read from the start."""

    def attach(self) -> None:
        """Programs with a slot in the socket chain join it; cgroup programs attach
        to the cgroup-v2 root; "syscall" programs are the loader's to run; the rest
        attach by section name."""
        assert self.obj
        root = None
        seated = self._take_seat()
        for prog in self.obj.programs.values():
            if not prog.autoload or prog.section == "syscall" or prog.name in seated:
                continue
            if prog.section.startswith("cgroup"):
                root = root or cgroup2_root()
                self.obj.links.append(prog.attach_cgroup(root))
            else:
                self.obj.links.append(prog.attach())
        self.chain_targets = self.seat.fill(self) if self.seat else []

    def adopt(self, program: str, what: str) -> int:
        """Run a "syscall" program that finds, in a kernel socket hash, the `what`
        older than the probe; call it after attach, so none falls in between. A
        kernel whose hash it cannot reach degrades the probe (what is new is
        still seen) and its status says what is missing."""
        assert self.obj
        found = self.obj.programs[program].run()
        if found < 0:
            self.status.error = f"degraded: {what} older than the agent not found"
            log.warning("%s: no socket hash found; %s older than the agent are missed",
                        self.name, what)  # fmt: skip
        return found

    def _take_seat(self) -> set[str]:
        """Names of the programs that run behind the socket chain (none when the
        probe has no slot there, or another probe of this process holds it)."""
        if self.sockchain_slot is None or not self.chain_member:
            return set()
        if self.seat is None:
            from .sockchain import Seat

            self.seat = Seat.take(self)
        return set(self.seat.programs.values()) if self.seat else set()

    def detach(self) -> None:
        """Stop running without unloading (attach() again resumes)."""
        assert self.obj
        for link in self.obj.links:
            link.destroy()
        self.obj.links.clear()
        if self.seat:
            self.seat.suspend()

    # A probe with a sockchain_slot runs behind the process's socket chain; the
    # chain itself, and a probe attached elsewhere on purpose, do not.
    chain_member = True
    # A probe that accounts one protocol's send()/recv() calls runs behind the
    # process's socket chain at this slot (bpf/sockchain.h, docs/sockchain.md).
    sockchain_slot: int | tuple[int, ...] | None = None
    seat: Seat | None = None

    # Programs the probe can run without, on kernels that refuse them (e.g. the
    # BTF-typed tracing type): a failed load is retried once without them.
    optional_programs: tuple[str, ...] = ()

    def _start_once(self, skip: tuple[str, ...]) -> None:
        self.open()
        self.configure()
        assert self.obj
        for name in skip:
            self.obj.programs[name].set_autoload(False)
        if self._take_seat() and self.seat:
            self.seat.share_arrays(self)
        self.obj.load()
        self.loaded()
        self.attach()

    def start(self) -> None:
        t0 = time.monotonic()
        try:
            try:
                self._start_once(())
            except Exception as first:
                if not self.optional_programs:
                    raise
                self.close()
                log.warning(
                    "%s: retrying without %s: %s",
                    self.name,
                    ", ".join(self.optional_programs),
                    first,
                )
                self._start_once(self.optional_programs)
                self.status.error = f"degraded, without {', '.join(self.optional_programs)}"
        except Exception as exc:
            self.close()
            self.status.error = str(exc)
            raise
        assert self.obj
        self.status.loaded = True
        self.status.attached = [link.target for link in self.obj.links] + self.chain_targets
        self.status.load_seconds = time.monotonic() - t0

    def map(self, name: str) -> libbpf.Map:
        assert self.obj, f"{self.name} is not loaded"
        return self.obj.maps[name]

    def program_stats(self) -> dict[str, libbpf.ProgStats]:
        """Run time and count per program; chain members have none of their own
        (a tail call skips the kernel's accounting): the chain's programs count them."""
        if not self.obj:
            return {}
        members = set(self.seat.programs.values()) if self.seat else set()
        return {name: p.stats() for name, p in self.obj.programs.items() if name not in members}

    def close(self) -> None:
        self.chain_targets = []
        if self.seat:
            self.seat.leave()
            self.seat = None
        if self.obj:
            self.obj.close()
            self.obj = None
        self.status.loaded = False


P = TypeVar("P", bound=Probe)


class PerProcess(Generic[P]):
    """One loaded instance of a probe per process, which other probes run behind;
    loaded and attached on first use, closed when its last holder lets go."""

    def __init__(self, make: Callable[[], P]) -> None:
        self._make = make
        self._it: P | None = None
        self._holders = 0
        self._lock = threading.Lock()

    def current(self) -> P | None:
        return self._it

    def acquire(self) -> P:
        with self._lock:
            if self._it is None:
                it = self._make()
                it.start()
                self._it = it
            self._holders += 1
            return self._it

    def release(self, it: P) -> None:
        with self._lock:
            if it is not self._it:
                return
            self._holders -= 1
            if self._holders <= 0:
                it.close()
                self._it = None
                self._holders = 0
