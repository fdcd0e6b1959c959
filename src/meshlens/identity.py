"""Name the workload behind a socket: netns name, container id, systemd unit, or comm.

Kernel programs report (tgid, comm, netns inode, cgroup v2 id); this module turns those
numbers into names by reading /proc, /run/netns and the cgroup v2 tree. Every root
directory and the `ip` runner are constructor parameters so tests run on fake trees.
Lookups never raise on bad or vanished input; they fall back to the next rule.
"""

from __future__ import annotations

import ipaddress
import json
import math
import os
import re
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["IdentityResolver", "container_id", "run_command", "systemd_unit"]

_HEX64 = re.compile(r"[0-9a-f]{64}")
# Scopes created by container runtimes under the systemd cgroup driver.
# "crio-conmon-<id>.scope" / "libpod-conmon-<id>.scope" (the monitor) do not match.
_CONTAINER_SCOPE = re.compile(r"(?:docker|cri-containerd|crio|libpod)-([0-9a-f]{64})\.scope")
_PROC_CGROUP_MAX = 64 * 1024  # a real /proc/<pid>/cgroup is well under 1 KiB
_MIN_RESCAN = 0.1  # seconds between rescans for a namespace never seen before


def container_id(cgroup_path: str) -> str | None:
    """Short (12 hex) container id found in a cgroup path, else None.

    Knows "<runtime>-<64hex>.scope" (docker, cri-containerd, crio, libpod) and the
    cgroupfs-driver layouts "/docker/<64hex>" and "/kubepods/.../<64hex>". When
    containers nest, the innermost (last) id wins: that is where the process runs.
    """
    parts = [p for p in cgroup_path.split("/") if p]
    found: str | None = None
    for i, part in enumerate(parts):
        m = _CONTAINER_SCOPE.fullmatch(part)
        if m:
            found = m.group(1)
        elif _HEX64.fullmatch(part) and any(
            p == "docker" or p.startswith("kubepods") for p in parts[:i]
        ):
            found = part
    return found[:12] if found else None


def systemd_unit(cgroup_path: str) -> str | None:
    """Name of the innermost systemd service or (non-container) scope, without suffix."""
    for part in reversed(cgroup_path.split("/")):
        for suffix in (".service", ".scope"):
            if part.endswith(suffix) and len(part) > len(suffix):
                if suffix == ".scope" and _CONTAINER_SCOPE.fullmatch(part):
                    break
                return part[: -len(suffix)]
    return None


def run_command(cmd: list[str]) -> str:
    """Default runner: stdout of cmd; raises on a non-zero exit, timeout or missing binary."""
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=10).stdout


def _clean_comm(comm: str | bytes) -> str:
    # The kernel's task name is a NUL-padded 16-byte C string.
    if isinstance(comm, bytes):
        comm = comm.decode("utf-8", "replace")
    return comm.split("\0", 1)[0].strip()


class IdentityResolver:
    """Resolves kernel-reported identities to workload names. Not thread-safe."""

    def __init__(
        self,
        proc_root: str = "/proc",
        netns_dir: str = "/run/netns",
        cgroup_root: str = "/sys/fs/cgroup/unified",
        run_cmd: Callable[[list[str]], str] | None = None,
        refresh_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        cache_size: int = 65536,
    ) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be at least 1")
        self._proc_root = proc_root
        self._netns_dir = netns_dir
        self._cgroup_root = cgroup_root
        self._run = run_cmd if run_cmd is not None else run_command
        self._interval = refresh_interval
        self._clock = clock
        self._cache_size = cache_size
        self.errors = 0  # failed `ip` runs; exported as a self-metric
        self._host_inum: int | None = None
        self._netns: dict[int, str] = {}
        self._netns_at: float | None = None
        self._cgroups: dict[int, str] = {}
        self._cgroups_at: float | None = None
        self._addrs: dict[str, int] = {}
        self._missed: set[int] = set()  # netns inodes we rescanned for once
        self._miss_interval = max(refresh_interval, 30.0)
        self._addrs_at: float | None = None
        # key -> (name, expiry); fallback answers expire so late-found names win.
        self._cache: OrderedDict[tuple[int, int, int, str | bytes], tuple[str, float]] = (
            OrderedDict()
        )

    def _due(self, last: float | None) -> bool:
        return last is None or self._clock() - last >= self._interval

    # -- network namespaces -------------------------------------------------------

    def host_netns_inum(self) -> int:
        """Inode of the host netns (that of pid 1); 0 if unknowable."""
        if self._host_inum is None:
            self._host_inum = 0
            # Reading pid 1's ns link needs privilege; the agent runs with host
            # networking, so its own netns is the next best answer.
            for pid in ("1", "self"):
                try:
                    self._host_inum = os.stat(
                        os.path.join(self._proc_root, pid, "ns", "net")
                    ).st_ino
                    break
                except OSError:
                    continue
        return self._host_inum

    def _scan_netns(self) -> None:
        self._netns_at = self._clock()
        found: dict[int, str] = {}
        try:
            names = sorted(os.listdir(self._netns_dir))
        except OSError:
            names = []
        for name in names:
            try:
                # os.stat, not the dirent inode: the bind mount hides the file's own inode.
                inum = os.stat(os.path.join(self._netns_dir, name)).st_ino
            except OSError:
                continue
            found.setdefault(inum, name)  # several names for one netns: first sorted wins
        if found.keys() - self._netns.keys():
            self._addrs_at = None  # a new namespace: its addresses are news too
        self._netns = found

    def _still(self, name: str, inum: int) -> bool:
        try:
            return os.stat(os.path.join(self._netns_dir, name)).st_ino == inum
        except OSError:
            return False

    def netns_name(self, netns_inum: int) -> str | None:
        """`ip netns` name of a namespace; None for the host's or an unnamed one."""
        if netns_inum == self.host_netns_inum():
            return None
        name = self._netns.get(netns_inum)
        if name is not None and not self._still(name, netns_inum):
            # deleted since, and its inode number reused by a newer namespace
            self._scan_netns()
            name = self._netns.get(netns_inum)
        # A namespace not seen before is rescanned for at once (it may have been
        # named a moment ago); one already missed waits for the interval.
        first_miss = (
            name is None
            and netns_inum not in self._missed
            and (self._netns_at is None or self._clock() - self._netns_at >= _MIN_RESCAN)
        )
        if name is None and (first_miss or self._due(self._netns_at)):
            if first_miss:
                if len(self._missed) > 4096:
                    self._missed.clear()
                self._missed.add(netns_inum)
            self._scan_netns()
            name = self._netns.get(netns_inum)
        return name

    # -- cgroups ------------------------------------------------------------------

    def _scan_cgroups(self) -> None:
        self._cgroups_at = self._clock()
        found: dict[int, str] = {}
        try:
            found[os.stat(self._cgroup_root).st_ino] = "/"
        except OSError:
            self._cgroups = found
            return
        stack = [(self._cgroup_root, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        try:
                            if not entry.is_dir(follow_symlinks=False):
                                continue
                            inum = entry.stat(follow_symlinks=False).st_ino
                        except OSError:
                            continue  # removed while walking
                        path = f"{rel}/{entry.name}"
                        found[inum] = path
                        stack.append((entry.path, path))
            except OSError:
                continue
        self._cgroups = found

    def cgroup_path(self, cgroup_id: int) -> str | None:
        """Path ("/system.slice/x.service") of a cgroup v2 id, relative to cgroup_root."""
        path = self._cgroups.get(cgroup_id)
        if path is None and self._due(self._cgroups_at):
            self._scan_cgroups()
            path = self._cgroups.get(cgroup_id)
        return path

    def _proc_cgroup_paths(self, tgid: int) -> list[str]:
        """Paths from /proc/<tgid>/cgroup, unified and name=systemd lines first."""
        if tgid <= 0:
            return []
        try:
            with open(
                os.path.join(self._proc_root, str(tgid), "cgroup"),
                encoding="utf-8",
                errors="replace",
            ) as f:
                text = f.read(_PROC_CGROUP_MAX)
        except (OSError, ValueError):
            return []  # exited, unreadable, or not a file
        ranked: list[tuple[bool, str]] = []
        for line in text.splitlines():
            parts = line.split(":", 2)
            if len(parts) == 3 and parts[2].startswith("/"):
                ranked.append((parts[1] not in ("", "name=systemd"), parts[2]))
        ranked.sort(key=lambda r: r[0])  # stable: keeps file order within each group
        return [path for _, path in ranked]

    # -- workloads ----------------------------------------------------------------

    def workload(self, tgid: int, comm: str | bytes, netns_inum: int, cgroup_id: int) -> str:
        """Best name for a process: netns name, container id, systemd unit, comm, "unknown"."""
        key = (tgid, netns_inum, cgroup_id, comm)
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now:
            self._cache.move_to_end(key)
            return hit[0]
        name, final = self._resolve(tgid, comm, netns_inum, cgroup_id)
        self._cache[key] = (name, math.inf if final else now + self._interval)
        self._cache.move_to_end(key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return name

    def _resolve(
        self, tgid: int, comm: str | bytes, netns_inum: int, cgroup_id: int
    ) -> tuple[str, bool]:
        """(name, final). Not final when a later rescan could still name it better."""
        name = self.netns_name(netns_inum)
        if name:
            return name, True
        # An unnamed non-host netns may be named (`ip netns attach`) after this call.
        settled = netns_inum == self.host_netns_inum()
        paths = []
        v2_path = self.cgroup_path(cgroup_id)
        if v2_path is not None:
            paths.append(v2_path)
        if v2_path is None or container_id(v2_path) is None:
            # Hybrid hosts: systemd and (cgroupfs-driver) containers live in v1, and a
            # container's v2 cgroup may just be its runtime's service.
            paths.extend(self._proc_cgroup_paths(tgid))
        for rule in (container_id, systemd_unit):
            for path in paths:
                found = rule(path)
                if found:
                    return found, settled
        return _clean_comm(comm) or "unknown", False

    # -- addresses ----------------------------------------------------------------

    def _ip_addrs(self, cmd: list[str]) -> list[str]:
        try:
            data = json.loads(self._run(cmd))
        except Exception:  # any runner failure or bad JSON: that netns contributes nothing
            self.errors += 1
            return []
        if not isinstance(data, list):
            self.errors += 1
            return []
        out = []
        for iface in data:
            infos = iface.get("addr_info") if isinstance(iface, dict) else None
            for info in infos if isinstance(infos, list) else []:
                local = info.get("local") if isinstance(info, dict) else None
                if not isinstance(local, str):
                    continue
                try:
                    ip = ipaddress.ip_address(local)
                except ValueError:
                    continue
                if not ip.is_loopback:  # every netns has 127/8 and ::1
                    out.append(str(ip))
        return out

    def _refresh_addresses(self) -> None:
        self._scan_netns()
        self._addrs_at = self._clock()
        host = self.host_netns_inum()
        jobs = [(["ip", "-j", "addr", "show"], host)]
        for inum, name in sorted(self._netns.items(), key=lambda kv: kv[1]):
            if inum != host:
                jobs.append((["ip", "-j", "-n", name, "addr", "show"], inum))
        found: dict[str, int] = {}
        for cmd, inum in jobs:
            for ip in self._ip_addrs(cmd):
                found.setdefault(ip, inum)  # duplicates: host first, then by netns name
        self._addrs = found

    def addresses(self, force: bool = False) -> dict[str, int]:
        """Local non-loopback IP (text) -> inode of the netns owning it."""
        if force or self._due(self._addrs_at):
            self._refresh_addresses()
        return self._addrs  # read-only for callers: copying per lookup is too slow

    def netns_of(self, ip: str) -> int | None:
        """Inode of the netns that owns ip, or None (not local, or invalid).

        Addresses are read again only on a miss, at most every miss_interval
        seconds, or at once when a new namespace appeared: each read runs `ip`
        once per namespace, too dear to do on a timer with many namespaces."""
        inum = self._addrs.get(ip)  # text from inet_ntop is already canonical
        if inum is not None:
            return inum
        if ip.startswith("127.") or ip == "::1":
            return None  # every netns has loopback: never in the table
        try:
            text = str(ipaddress.ip_address(ip))
        except ValueError:
            return None
        inum = self._addrs.get(text)
        if inum is None and (
            self._addrs_at is None or self._clock() - self._addrs_at >= self._miss_interval
        ):
            self._refresh_addresses()
            inum = self._addrs.get(text)
        return inum

    def owner_of(self, ip: str) -> str | None:
        """Name of the named netns holding ip, else None (host, foreign or invalid)."""
        inum = self.netns_of(ip)
        if inum is None or inum == self.host_netns_inum():
            return None
        return self._netns.get(inum)
