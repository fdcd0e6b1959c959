"""Struct mirrors against the built BPF objects (no root needed), and the
bpf_prog_info prefix the libbpf binding reads against the running kernel's BTF."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from meshlens import _libbpf
from meshlens.btf import Btf
from meshlens.layout import Layout
from meshlens.probes import dns, http, tcpflow, tcphealth, udpflow
from meshlens.probes.base import Probe, objects_dir

VMLINUX = Path("/sys/kernel/btf/vmlinux")
PROBES = [
    (tcpflow, tcpflow.TcpFlowProbe),
    (udpflow, udpflow.UdpFlowProbe),
    (tcphealth, tcphealth.TcpHealthProbe),
    (dns, dns.DnsProbe),
    (http, http.HttpProbe),
]


@pytest.mark.parametrize(("module", "probe"), PROBES, ids=[p.name for _, p in PROBES])
def test_every_layout_matches_the_object(module: object, probe: type[Probe]) -> None:
    obj = objects_dir() / f"{probe.name}.bpf.o"
    if not obj.is_file():
        pytest.skip(f"{obj.name} not built (make build)")
    btf = Btf.from_file(obj)
    layouts = [v for v in vars(module).values() if isinstance(v, Layout)]
    assert layouts
    assert set(probe.layouts) == set(layouts)  # the probe checks every one at load
    for lay in layouts:
        lay.check(btf)
        assert btf.struct(lay.c_name).size == lay.size, lay.c_name


@pytest.mark.skipif(not VMLINUX.is_file(), reason="this kernel exposes no BTF")
def test_prog_info_offsets_match_the_running_kernel() -> None:
    info = Btf.from_file(VMLINUX).struct("bpf_prog_info")
    members = {m.name: m.offset for m in info.members}
    assert {"id", "name", "run_time_ns", "run_cnt"} <= set(_libbpf.PROG_INFO_OFFSETS)
    assert {k: members[k] for k in _libbpf.PROG_INFO_OFFSETS} == _libbpf.PROG_INFO_OFFSETS
    # every other named field of the ctypes mirror sits where the kernel has it
    mirror = _libbpf._ProgInfo
    for name, _ in mirror._fields_:
        if name in members:
            assert getattr(mirror, name).offset == members[name], name
    assert ctypes.sizeof(mirror) <= info.size  # a prefix: the kernel fills what we ask


@pytest.mark.parametrize(("module", "probe"), PROBES, ids=[p.name for _, p in PROBES])
def test_stat_indexes_match_the_object(module: object, probe: type[Probe]) -> None:
    """Each probe's Stat mirrors its <probe>_stat enum: a slot read under the
    wrong name would be a wrong number in /metrics, not an error."""
    obj = objects_dir() / f"{probe.name}.bpf.o"
    if not obj.is_file():
        pytest.skip(f"{obj.name} not built (make build)")
    stat = vars(module)["Stat"]
    prefix = f"{probe.name.upper()}_STAT_"
    enum = Btf.from_file(obj).enum(f"{probe.name}_stat")
    assert {k: v for k, v in enum.items() if not k.endswith("_MAX")} == {
        prefix + s.name: s.value for s in stat
    }
    assert enum[prefix + "MAX"] == len(stat)
