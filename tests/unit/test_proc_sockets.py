"""Seeding listeners from a fake /proc tree."""

from __future__ import annotations

import os
from pathlib import Path

from meshlens.proc_sockets import listening_sockets

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt uid inode\n"


def row(port: int, state: str, inode: int) -> str:
    return (
        f"   0: 0100007F:{port:04X} 00000000:0000 {state} 00000000:00000000 00:00000000 "
        f"00000000     0        0 {inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def make_proc(
    tmp: Path, pid: int, netns_file: Path, tcp: str, sockets: list[int], comm: str
) -> None:
    d = tmp / "proc" / str(pid)
    (d / "ns").mkdir(parents=True)
    os.link(netns_file, d / "ns" / "net")  # same inode = same namespace
    (d / "net").mkdir()
    (d / "net" / "tcp").write_text(HEADER + tcp)
    (d / "net" / "tcp6").write_text(HEADER)
    (d / "fd").mkdir()
    for i, inode in enumerate(sockets):
        os.symlink(f"socket:[{inode}]", d / "fd" / str(i + 3))
    os.symlink("/dev/null", d / "fd" / "0")
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text("0::/system.slice/web.service\n")


def test_listeners_with_owner_netns_and_cgroup(tmp_path: Path) -> None:
    cg = tmp_path / "cg" / "system.slice" / "web.service"
    cg.mkdir(parents=True)
    ns1, ns2 = tmp_path / "ns1", tmp_path / "ns2"
    ns1.write_text("")
    ns2.write_text("")
    table1 = row(80, "0A", 111) + row(5555, "01", 222)  # LISTEN, ESTABLISHED
    make_proc(tmp_path, 10, ns1, table1, [111, 222], "nginx")
    make_proc(tmp_path, 11, ns1, table1, [], "bash")  # same netns, no sockets
    make_proc(tmp_path, 20, ns2, row(6379, "0A", 333), [333], "redis-server")
    got = listening_sockets(str(tmp_path / "proc"), str(tmp_path / "cg"))
    by_port = {x.port: x for x in got}
    assert set(by_port) == {80, 6379}
    assert by_port[80].tgid == 10 and by_port[80].comm == "nginx"
    assert by_port[80].netns == os.stat(ns1).st_ino
    assert by_port[6379].netns == os.stat(ns2).st_ino
    assert by_port[80].cgroup_id == os.stat(cg).st_ino


def test_garbage_and_missing_files_are_skipped(tmp_path: Path) -> None:
    ns = tmp_path / "ns"
    ns.write_text("")
    make_proc(tmp_path, 5, ns, "garbage line\n0: zz:zz 00 0A\n", [1], "x")
    (tmp_path / "proc" / "notapid").mkdir()
    assert listening_sockets(str(tmp_path / "proc"), str(tmp_path / "cg")) == []
    assert listening_sockets(str(tmp_path / "nope")) == []
