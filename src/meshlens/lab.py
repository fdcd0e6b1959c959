"""Network test lab: hosts in network namespaces joined by one bridge.

Topology: a "switch" netns holds a Linux bridge ``br0``; each host netns has ``eth0``, one end
of a veth pair whose other end (``p<i>``) is a port of that bridge. Nothing is created in the
root netns. Hosts get 198.18.<k>.<i+1>/24 (and optionally fd00:198:18:<k>::<i+1>/64), where
the subnet index k differs between labs alive at the same time. Needs root, iproute2 (and
nftables for :meth:`Lab.nft`).

Netns names are ``<prefix><k>-sw`` and ``<prefix><k>-h<i>`` with prefix ``mlab-<pid>-`` by
default, so :func:`cleanup_stale` can find the leftovers of crashed runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

_LOCK_PATH = "/run/meshlens-lab.lock"
_NAME_RE = re.compile(r"-(\d+)-(?:sw|h\d+)$")


def _ip(*args: str, input: bytes | None = None, check: bool = True) -> str:
    """Run ``ip ARGS`` in the root netns; raise with ip's stderr on failure."""
    p = subprocess.run(["ip", *args], input=input, capture_output=True, timeout=30, check=False)
    if check and p.returncode != 0:
        msg = p.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"ip {' '.join(args)}: {msg}")
    return p.stdout.decode(errors="replace")


def list_netns() -> list[str]:
    """Names of all named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _kill_netns_pids(ns: str) -> None:
    for pid in _ip("netns", "pids", ns, check=False).split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(prefix: str = "mlab-") -> int:
    """Delete netns named ``<prefix><pid>-...`` whose pid is dead; return how many."""
    count = 0
    for ns in list_netns():
        pid = ns[len(prefix) :].split("-")[0] if ns.startswith(prefix) else ""
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        _kill_netns_pids(ns)
        _ip("netns", "del", ns, check=False)
        count += 1
    return count


@dataclass
class Host:
    name: str  # the `ip netns` name
    addr: str  # IPv4 address in 198.18.0.0/15
    addr6: str | None = None  # IPv6 ULA address in fd00:198:18::/48, if the lab has IPv6
    ifname: str = "eth0"
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False, compare=False)

    def _argv(self, cmd: tuple[str, ...]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *cmd]

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 30, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run cmd inside this netns, capturing stdout and stderr (bytes)."""
        return subprocess.run(
            self._argv(cmd), check=check, timeout=timeout, input=input, capture_output=True
        )

    def popen(self, *cmd: str, **kw: Any) -> subprocess.Popen[Any]:
        """Start cmd inside this netns; the lab kills it on exit if it is still running."""
        proc = subprocess.Popen(self._argv(cmd), **kw)
        self._procs.append(proc)
        return proc

    def python(self, *args: str) -> list[str]:
        """argv running this interpreter with args inside this netns (for subprocess)."""
        return self._argv((sys.executable, *args))


class Lab:
    """Context manager building n_hosts namespace hosts on one bridge; torn down on exit."""

    def __init__(
        self,
        n_hosts: int = 2,
        prefix: str | None = None,
        ipv6: bool = False,
        subnet_index: int | None = None,
    ) -> None:
        if not 1 <= n_hosts <= 250:
            raise ValueError("n_hosts must be in 1..250")
        if subnet_index is not None and not 0 <= subnet_index <= 255:
            raise ValueError("subnet_index must be in 0..255")
        self.n_hosts = n_hosts
        self.prefix = prefix if prefix is not None else f"mlab-{os.getpid()}-"
        self.ipv6 = ipv6
        self.subnet_index = subnet_index
        self.switch = ""
        self.hosts: list[Host] = []
        self._netns: list[str] = []

    def __enter__(self) -> Lab:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._netns.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def _claim_subnet(self) -> int:
        """Pick a subnet index unused by live labs and create the switch netns (under a lock)."""
        with open(_LOCK_PATH, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            k = self.subnet_index
            if k is None:
                used = {int(m.group(1)) for ns in list_netns() if (m := _NAME_RE.search(ns))}
                free = [(os.getpid() + j) % 256 for j in range(256)]
                k = next((c for c in free if c not in used), None)
                if k is None:
                    raise RuntimeError("no free lab subnet in 198.18.0.0/16")
            self.switch = f"{self.prefix}{k}-sw"
            self._add_netns(self.switch)
            return k

    def _setup(self) -> None:
        k = self.subnet_index = self._claim_subnet()
        sw = self.switch
        # The switch only forwards frames: keep it silent at layer 3.
        for conf in ("all", "default"):
            _ip("netns", "exec", sw, "sysctl", "-qw", f"net.ipv6.conf.{conf}.disable_ipv6=1")
        _ip("-n", sw, "link", "add", "br0", "type", "bridge", "stp_state", "0")
        _ip("-n", sw, "link", "set", "br0", "type", "bridge", "mcast_snooping", "0")
        _ip("-n", sw, "link", "set", "br0", "up")
        for i in range(self.n_hosts):
            name = f"{self.prefix}{k}-h{i}"
            host = Host(
                name, f"198.18.{k}.{i + 1}", f"fd00:198:18:{k}::{i + 1}" if self.ipv6 else None
            )
            self._add_netns(name)
            self.hosts.append(host)
            port = f"p{i}"
            _ip(
                "link",
                "add",
                "eth0",
                "netns",
                name,
                "type",
                "veth",
                "peer",
                "name",
                port,
                "netns",
                sw,
            )
            _ip("-n", sw, "link", "set", port, "master", "br0")
            _ip("-n", sw, "link", "set", port, "up")
            _ip("-n", name, "addr", "add", f"{host.addr}/24", "dev", "eth0")
            if host.addr6:
                _ip("-n", name, "addr", "add", f"{host.addr6}/64", "dev", "eth0", "nodad")
            _ip("-n", name, "link", "set", "eth0", "up")
        self._wait_up()

    def _wait_up(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            while True:
                info = json.loads(_ip("-n", host.name, "-j", "link", "show", "dev", "eth0"))
                if info and info[0].get("operstate") == "UP":
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host.name}: eth0 not up after {timeout}s")
                time.sleep(0.02)

    def nft(self, host: Host, rules: str) -> None:
        """Load an nftables ruleset (``nft -f -`` syntax) into the host's netns."""
        p = host.run("nft", "-f", "-", input=rules.encode(), check=False)
        if p.returncode != 0:
            raise RuntimeError(f"nft in {host.name}: {p.stderr.decode(errors='replace').strip()}")

    def close(self) -> None:
        """Kill processes started in the lab, then delete every netns (idempotent)."""
        for host in self.hosts:
            for proc in host._procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in host._procs:
                try:
                    proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=2)
            host._procs.clear()
        for ns in reversed(self._netns):
            _kill_netns_pids(ns)
            _ip("netns", "del", ns, check=False)
        self._netns.clear()
