"""Listening TCP sockets that existed before the agent, read from /proc, so the
kernel's listener table can be seeded and accepted connections get their owner.
Takes the /proc and cgroup roots as parameters so it runs on fake trees in tests."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column


@dataclass(frozen=True)
class Listener:
    netns: int
    port: int
    tgid: int
    comm: str
    cgroup_id: int


def _pids(proc: Path) -> list[int]:
    try:
        return sorted(int(p) for p in os.listdir(proc) if p.isdigit())
    except OSError:
        return []


def _listening(table: Path) -> dict[int, int]:
    """socket inode -> local port of LISTEN sockets in one /proc/<pid>/net/tcp{,6}."""
    out: dict[int, int] = {}
    try:
        lines = table.read_text().splitlines()[1:]
    except OSError:
        return out
    for line in lines:
        parts = line.split()
        if len(parts) < 10 or parts[3] != LISTEN:
            continue
        try:
            port = int(parts[1].rsplit(":", 1)[1], 16)
            inode = int(parts[9])
        except (ValueError, IndexError):
            continue
        if inode:
            out[inode] = port
    return out


def _socket_inodes(proc: Path, pid: int) -> set[int]:
    found: set[int] = set()
    fd_dir = proc / str(pid) / "fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
        except OSError:
            continue
        if target.startswith("socket:[") and target.endswith("]"):
            found.add(int(target[8:-1]))
    return found


def _cgroup_id(proc: Path, pid: int, cgroup_root: Path) -> int:
    try:
        for line in (proc / str(pid) / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return os.stat(cgroup_root / line[3:].lstrip("/")).st_ino
    except (OSError, ValueError):
        pass
    return 0


def listening_sockets(
    proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup/unified"
) -> list[Listener]:
    proc, cg = Path(proc_root), Path(cgroup_root)
    netns_of: dict[int, int] = {}
    tables: dict[int, dict[int, int]] = {}  # netns -> {inode: port}
    for pid in _pids(proc):
        try:
            ns = os.stat(proc / str(pid) / "ns" / "net").st_ino
        except OSError:
            continue
        netns_of[pid] = ns
        if ns not in tables:  # one process per namespace shows its tables
            merged: dict[int, int] = {}
            for name in ("tcp", "tcp6"):
                merged.update(_listening(proc / str(pid) / "net" / name))
            tables[ns] = merged
    out: list[Listener] = []
    seen: set[tuple[int, int]] = set()
    for pid, ns in netns_of.items():
        table = tables.get(ns) or {}
        if not table:
            continue
        for inode in _socket_inodes(proc, pid) & table.keys():
            key = (ns, table[inode])
            if key in seen:
                continue
            seen.add(key)
            try:
                comm = (proc / str(pid) / "comm").read_text().strip()
            except OSError:
                comm = ""
            out.append(Listener(ns, table[inode], pid, comm, _cgroup_id(proc, pid, cg)))
    return out
