"""IdentityResolver on fake /proc, /run/netns and cgroup trees (no root needed)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlens import identity
from meshlens.identity import IdentityResolver, container_id, systemd_unit

HEX = "0123456789abcdef" * 4  # 64 hex chars
SHORT = HEX[:12]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeIp:
    """Canned `ip -j` answers keyed by the command line; an Exception value is raised."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, ...], str | Exception] = {}
        self.calls: list[list[str]] = []

    def set(self, netns: str | None, value: object) -> None:
        cmd = (
            ("ip", "-j", "addr", "show")
            if netns is None
            else ("ip", "-j", "-n", netns, "addr", "show")
        )
        self.answers[cmd] = value if isinstance(value, str | Exception) else json.dumps(value)

    def __call__(self, cmd: list[str]) -> str:
        self.calls.append(cmd)
        answer = self.answers.get(tuple(cmd), "[]")
        if isinstance(answer, Exception):
            raise answer
        return answer


def ip_json(*addrs: str) -> list[dict[str, object]]:
    return [
        {"ifname": f"if{i}", "addr_info": [{"local": a, "prefixlen": 24}]}
        for i, a in enumerate(addrs)
    ]


class Tree:
    def __init__(self, root: Path) -> None:
        self.proc = root / "proc"
        self.netns = root / "netns"
        self.cgroup = root / "cgroup"
        for d in (self.proc / "1" / "ns", self.netns, self.cgroup):
            d.mkdir(parents=True)
        (self.proc / "1" / "ns" / "net").write_text("")
        self.host = os.stat(self.proc / "1" / "ns" / "net").st_ino
        self.clock = FakeClock()
        self.ip = FakeIp()

    def add_netns(self, name: str) -> int:
        path = self.netns / name
        path.write_text("")
        return os.stat(path).st_ino

    def add_cgroup(self, rel: str) -> int:
        path = self.cgroup / rel.strip("/")
        path.mkdir(parents=True, exist_ok=True)
        return os.stat(path).st_ino

    def add_proc(self, tgid: int, cgroup_text: str) -> None:
        (self.proc / str(tgid)).mkdir(exist_ok=True)
        (self.proc / str(tgid) / "cgroup").write_text(cgroup_text)

    def resolver(self, **kw: object) -> IdentityResolver:
        args: dict[str, object] = dict(
            proc_root=str(self.proc),
            netns_dir=str(self.netns),
            cgroup_root=str(self.cgroup),
            run_cmd=self.ip,
            refresh_interval=5.0,
            clock=self.clock,
        )
        args.update(kw)
        return IdentityResolver(**args)  # type: ignore[arg-type]


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


# -- pure functions ------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/system.slice/docker-{HEX}.scope",
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podx.slice/cri-containerd-{HEX}.scope",
        f"/kubepods.slice/kubepods-podx.slice/crio-{HEX}.scope",
        f"/machine.slice/libpod-{HEX}.scope/container",
        f"/docker/{HEX}",
        f"/kubepods/burstable/pod1234-5678/{HEX}",
        f"/kubepods/pod1234/{HEX}/",
    ],
)
def test_container_id_styles(path: str) -> None:
    assert container_id(path) == SHORT


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "",
        "/system.slice/nginx.service",
        f"/{HEX}",  # bare id outside docker/kubepods
        f"/system.slice/foo/{HEX}",
        f"/system.slice/docker-{HEX[:63]}.scope",  # too short
        f"/system.slice/docker-{HEX.upper()}.scope",
        f"/kubepods.slice/crio-conmon-{HEX}.scope",  # the monitor, not the container
        f"/machine.slice/libpod-conmon-{HEX}.scope",
        f"/system.slice/docker-{HEX}.scope.bak",
    ],
)
def test_container_id_negatives(path: str) -> None:
    assert container_id(path) is None


def test_container_id_nested_takes_innermost() -> None:
    inner = "f" * 64
    assert container_id(f"/docker/{HEX}/docker/{inner}") == inner[:12]


@pytest.mark.parametrize(
    ("path", "unit"),
    [
        ("/system.slice/nginx.service", "nginx"),
        ("/system.slice/getty@tty1.service", "getty@tty1"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3"),
        ("/user.slice/user-1000.slice/user@1000.service/app.slice/app-x.scope", "app-x"),
        ("/system.slice/redis.service/extra", "redis"),
        (f"/system.slice/docker-{HEX}.scope", None),
        (f"/system.slice/containerd.service/cri-containerd-{HEX}.scope", "containerd"),
        ("/system.slice", None),
        ("/", None),
        ("/.service", None),
    ],
)
def test_systemd_unit(path: str, unit: str | None) -> None:
    assert systemd_unit(path) == unit


@settings(max_examples=300)
@given(st.text())
def test_pure_functions_never_raise(path: str) -> None:
    cid = container_id(path)
    assert cid is None or len(cid) == 12
    systemd_unit(path)


# -- netns ---------------------------------------------------------------------------


def test_netns_name_found_host_and_unknown(tree: Tree) -> None:
    red = tree.add_netns("red")
    os.link(tree.proc / "1" / "ns" / "net", tree.netns / "host")  # `ip netns attach host 1`
    r = tree.resolver()
    assert r.host_netns_inum() == tree.host
    assert r.netns_name(red) == "red"
    assert r.netns_name(tree.host) is None
    assert r.netns_name(123456789) is None


def test_netns_rescan_is_rate_limited(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    scans: list[str] = []
    real_listdir = os.listdir

    def counting_listdir(path: str) -> list[str]:
        scans.append(path)
        return real_listdir(path)

    monkeypatch.setattr(identity.os, "listdir", counting_listdir)
    r = tree.resolver()
    assert r.netns_name(999_999_999) is None
    blue = tree.add_netns("blue")
    assert r.netns_name(blue) is None  # second miss within the interval: no rescan
    for n in range(1000):  # a flood of unknown numbers costs nothing
        r.netns_name(10**9 + n)
    assert len(scans) == 1
    tree.clock.now += 5.0
    assert r.netns_name(blue) == "blue"
    assert len(scans) == 2
    assert r.netns_name(blue) == "blue"  # hit: no scan
    assert len(scans) == 2


def test_netns_missing_dir(tree: Tree) -> None:
    r = tree.resolver(netns_dir=str(tree.netns / "absent"))
    assert r.netns_name(42) is None


def test_host_netns_falls_back_to_self(tree: Tree) -> None:
    (tree.proc / "1" / "ns" / "net").unlink()
    (tree.proc / "self" / "ns").mkdir(parents=True)
    (tree.proc / "self" / "ns" / "net").write_text("")
    r = tree.resolver()
    assert r.host_netns_inum() == os.stat(tree.proc / "self" / "ns" / "net").st_ino


def test_host_netns_unknowable_is_zero(tmp_path: Path) -> None:
    assert IdentityResolver(proc_root=str(tmp_path / "none")).host_netns_inum() == 0


def test_real_host_netns() -> None:
    self_inum = os.stat("/proc/self/ns/net").st_ino
    try:
        init_inum = os.stat("/proc/1/ns/net").st_ino
    except OSError:
        init_inum = None  # unprivileged: the resolver falls back to our own netns
    if init_inum is not None and init_inum != self_inum:
        pytest.skip("test process is not in the host network namespace")
    assert IdentityResolver().host_netns_inum() == self_inum


# -- cgroups -------------------------------------------------------------------------


def test_cgroup_path_walks_tree(tree: Tree, tmp_path: Path) -> None:
    nginx = tree.add_cgroup("system.slice/nginx.service")
    slice_ = os.stat(tree.cgroup / "system.slice").st_ino
    (tree.cgroup / "cgroup.procs").write_text("1\n")  # files are not cgroups
    outside = tmp_path / "outside"
    outside.mkdir()
    (tree.cgroup / "link").symlink_to(outside)
    r = tree.resolver()
    assert r.cgroup_path(nginx) == "/system.slice/nginx.service"
    assert r.cgroup_path(slice_) == "/system.slice"
    assert r.cgroup_path(os.stat(tree.cgroup).st_ino) == "/"
    assert r.cgroup_path(os.stat(outside).st_ino) is None  # symlinks not followed
    assert r.cgroup_path(os.stat(tree.cgroup / "cgroup.procs").st_ino) is None


def test_cgroup_rescan_is_rate_limited(tree: Tree) -> None:
    r = tree.resolver()
    assert r.cgroup_path(1) is None
    new = tree.add_cgroup("system.slice/late.service")
    assert r.cgroup_path(new) is None
    tree.clock.now += 5.0
    assert r.cgroup_path(new) == "/system.slice/late.service"


def test_cgroup_missing_root(tree: Tree) -> None:
    r = tree.resolver(cgroup_root=str(tree.cgroup / "absent"))
    assert r.cgroup_path(1) is None
    assert r.workload(1, "bash", tree.host, 1) == "bash"


# -- workload precedence -------------------------------------------------------------


def test_named_netns_beats_container(tree: Tree) -> None:
    red = tree.add_netns("red")
    cg = tree.add_cgroup(f"system.slice/docker-{HEX}.scope")
    assert tree.resolver().workload(10, "nginx", red, cg) == "red"


def test_container_beats_unit_and_comm(tree: Tree) -> None:
    cg = tree.add_cgroup(f"system.slice/containerd.service/cri-containerd-{HEX}.scope")
    assert tree.resolver().workload(10, "nginx", tree.host, cg) == SHORT


def test_container_in_unnamed_netns(tree: Tree) -> None:
    cg = tree.add_cgroup(f"docker/{HEX}")
    assert tree.resolver().workload(10, "redis", 4026532999, cg) == SHORT


def test_unit_beats_comm(tree: Tree) -> None:
    cg = tree.add_cgroup("system.slice/nginx.service")
    assert tree.resolver().workload(10, "nginx: worker", tree.host, cg) == "nginx"


def test_hybrid_v1_name_systemd(tree: Tree) -> None:
    root = os.stat(tree.cgroup).st_ino
    tree.add_proc(
        77,
        "12:memory:/\n1:name=systemd:/system.slice/redis-server.service\n0::/\n",
    )
    assert tree.resolver().workload(77, "redis-server", tree.host, root) == "redis-server"


def test_unified_line_from_proc_when_id_unknown(tree: Tree) -> None:
    tree.add_proc(78, "0::/system.slice/dnsmasq.service\n")
    assert tree.resolver().workload(78, "dnsmasq", tree.host, 987654321) == "dnsmasq"


def test_hybrid_container_under_runtime_service(tree: Tree) -> None:
    # cgroupfs-driver docker on a hybrid host: v2 shows only dockerd's unit.
    cg = tree.add_cgroup("system.slice/docker.service")
    tree.add_proc(
        79,
        f"4:memory:/docker/{HEX}\n1:name=systemd:/docker/{HEX}\n0::/system.slice/docker.service\n",
    )
    assert tree.resolver().workload(79, "python", tree.host, cg) == SHORT


@pytest.mark.parametrize(
    ("comm", "expected"),
    [
        ("curl\0\0\0\0\0\0\0\0\0\0\0\0", "curl"),
        (b"wrk\0\0\0\0\0\0\0\0\0\0\0\0\0", "wrk"),
        ("  sh \0junk", "sh"),
        ("\0" * 16, "unknown"),
        ("", "unknown"),
        ("   ", "unknown"),
    ],
)
def test_comm_and_unknown(tree: Tree, comm: str | bytes, expected: str) -> None:
    root = os.stat(tree.cgroup).st_ino
    assert tree.resolver().workload(5, comm, tree.host, root) == expected


def test_bad_proc_inputs_never_raise(tree: Tree) -> None:
    r = tree.resolver()
    (tree.proc / "60" / "cgroup").mkdir(parents=True)  # unreadable: a directory
    (tree.proc / "61").mkdir()
    (tree.proc / "61" / "cgroup").write_bytes(b"\xff\xfe\x00garbage:::\n::\n\n" + os.urandom(256))
    (tree.proc / "62").mkdir()
    (tree.proc / "62" / "cgroup").write_text("no colons here\n1:cpu:relative/path\n")
    for tgid in (60, 61, 62, 63, 0, -1):  # 63 does not exist
        assert r.workload(tgid, "app", tree.host, 5555) == "app"


@settings(max_examples=100, deadline=None)
@given(
    tgid=st.integers(-(2**31), 2**31),
    comm=st.one_of(st.text(max_size=20), st.binary(max_size=16)),
    netns=st.integers(0, 2**64 - 1),
    cg=st.integers(0, 2**64 - 1),
)
def test_workload_never_raises(tgid: int, comm: str | bytes, netns: int, cg: int) -> None:
    r = IdentityResolver(
        proc_root="/nonexistent", netns_dir="/nonexistent", cgroup_root="/nonexistent"
    )
    name = r.workload(tgid, comm, netns, cg)
    assert isinstance(name, str) and name


# -- workload cache ------------------------------------------------------------------


def test_workload_cached(tree: Tree) -> None:
    tree.add_proc(80, "1:name=systemd:/system.slice/api.service\n")
    r = tree.resolver()
    assert r.workload(80, "api", tree.host, 1) == "api"
    (tree.proc / "80" / "cgroup").unlink()
    tree.clock.now += 100.0
    assert r.workload(80, "api", tree.host, 1) == "api"  # settled answer never re-read


def test_fallback_answer_expires(tree: Tree) -> None:
    r = tree.resolver()
    ns = 4026533000
    assert r.workload(81, "app", ns, 1) == "app"
    late = tree.add_netns("late")
    assert r.workload(81, "app", late, 1) == "app"  # scan not due yet
    tree.clock.now += 5.0
    assert r.workload(81, "app", late, 1) == "late"
    assert r.workload(81, "app", ns, 1) == "app"


def test_cache_is_bounded_lru(tree: Tree) -> None:
    cg = tree.add_cgroup("system.slice/svc.service")
    r = tree.resolver(cache_size=3)
    for tgid in range(100, 120):
        r.workload(tgid, "svc", tree.host, cg)
        assert len(r._cache) <= 3
        r.workload(100, "svc", tree.host, cg)  # keep 100 hot
    assert (100, tree.host, cg, "svc") in r._cache
    assert (101, tree.host, cg, "svc") not in r._cache


def test_cache_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        IdentityResolver(cache_size=0)


# -- addresses -----------------------------------------------------------------------


def test_addresses_and_owner(tree: Tree) -> None:
    red = tree.add_netns("red")
    blue = tree.add_netns("blue")
    tree.ip.set(None, ip_json("127.0.0.1", "::1", "10.0.0.1", "2001:db8:0:0::1", "fe80::1"))
    tree.ip.set("red", ip_json("127.0.0.1", "198.18.0.2", "2001:DB8::2"))
    tree.ip.set(
        "blue", [{"ifname": "veth0", "addr_info": [{"local": "198.18.1.2"}, {"local": "10.0.0.1"}]}]
    )
    r = tree.resolver()
    assert r.addresses() == {
        "10.0.0.1": tree.host,
        "2001:db8::1": tree.host,
        "fe80::1": tree.host,
        "198.18.0.2": red,
        "2001:db8::2": red,
        "198.18.1.2": blue,
    }
    assert r.owner_of("198.18.0.2") == "red"
    assert r.owner_of("2001:db8:0::2") == "red"
    assert r.owner_of("198.18.1.2") == "blue"
    assert r.owner_of("10.0.0.1") is None  # host wins a duplicate
    assert r.owner_of("127.0.0.1") is None
    assert r.owner_of("8.8.8.8") is None
    assert r.owner_of("not an ip") is None
    assert r.errors == 0


def test_addresses_rate_limited_and_forced(tree: Tree) -> None:
    tree.ip.set(None, ip_json("10.0.0.1"))
    r = tree.resolver()
    r.addresses()
    r.addresses()
    r.owner_of("10.0.0.1")
    assert len(tree.ip.calls) == 1
    tree.add_netns("green")
    tree.ip.set("green", ip_json("198.18.2.2"))
    assert r.owner_of("198.18.2.2") is None  # not refreshed yet
    assert "198.18.2.2" in r.addresses(force=True)
    assert r.owner_of("198.18.2.2") == "green"
    calls = len(tree.ip.calls)
    tree.clock.now += 5.0
    r.addresses()
    assert len(tree.ip.calls) == calls + 2


@pytest.mark.parametrize(
    "bad",
    [
        subprocess.CalledProcessError(1, ["ip"], stderr="Cannot open network namespace"),
        FileNotFoundError("ip"),
        subprocess.TimeoutExpired(["ip"], 10),
        "not json",
        "",
        '{"addr_info": []}',
        "null",
    ],
)
def test_failing_ip_tolerated_and_counted(tree: Tree, bad: str | Exception) -> None:
    tree.add_netns("red")
    tree.ip.set(None, ip_json("10.0.0.1"))
    tree.ip.set("red", bad)
    r = tree.resolver()
    assert r.addresses() == {"10.0.0.1": tree.host}
    assert r.errors == 1
    r.addresses(force=True)
    assert r.errors == 2


def test_odd_but_valid_json_is_skipped_quietly(tree: Tree) -> None:
    tree.ip.set(
        None,
        [
            {},
            "x",
            {"addr_info": "nope"},
            {"addr_info": [None, {"local": 5}, {"local": "999.1.1.1"}, {"prefixlen": 8}]},
            {"addr_info": [{"local": "192.0.2.7"}]},
        ],
    )
    r = tree.resolver()
    assert r.addresses() == {"192.0.2.7": tree.host}
    assert r.errors == 0


def test_default_runner_missing_ip_binary(tree: Tree, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tree.proc))  # no `ip` here
    r = tree.resolver(run_cmd=None)
    assert r.addresses() == {}
    assert r.errors == 1


def test_run_command_returns_stdout() -> None:
    run: Callable[[list[str]], str] = identity.run_command
    assert run(["echo", "hi"]) == "hi\n"
    with pytest.raises(subprocess.CalledProcessError):
        run(["false"])


def test_new_netns_found_at_first_miss_after_a_short_pause(tree: Tree) -> None:
    r = tree.resolver()
    assert r.netns_name(999_999_999) is None  # scans
    fresh = tree.add_netns("fresh")
    tree.clock.now += 0.2  # well inside the 5 s interval
    assert r.netns_name(fresh) == "fresh"  # a namespace never seen: rescanned at once


def test_addresses_are_reread_only_on_a_miss(tree: Tree) -> None:
    calls: list[list[str]] = []

    def run(cmd: list[str]) -> str:
        calls.append(cmd)
        return json.dumps([{"addr_info": [{"local": "198.18.5.1"}]}])

    r = tree.resolver(run_cmd=run)
    host = r.host_netns_inum()
    assert r.netns_of("198.18.5.1") == host
    n = len(calls)
    for _ in range(50):  # hits, and misses inside the interval, cost nothing
        r.netns_of("198.18.5.1")
        r.netns_of("203.0.113.9")
    assert len(calls) == n
    tree.clock.now += 31.0
    assert r.netns_of("203.0.113.9") is None  # a miss after the interval re-reads
    assert len(calls) > n
