"""meshlens.bench.measure on fake /proc trees and captured tool output (no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlens.bench.measure import (
    CLK_TCK,
    TcpInfo,
    cpu_seconds,
    dechunk,
    machine_cpu,
    memory,
    parse_envoy_stats,
    parse_exposition,
    parse_ss,
)

SS = """\
0      0      198.18.7.2:41234 198.18.7.3:3550
\t cubic wscale:7,7 rto:204 rtt:0.1/0.05 mss:1448 bytes_sent:900 bytes_acked:901 bytes_received:4321
0      0      [::ffff:198.18.7.2]:41236 [::ffff:198.18.7.4]:7000
\t bbr wscale:10,10 bytes_acked:24 bytes_received:7 lastsnd:5
0      0      127.0.0.1:15000 127.0.0.1:50000
\t cubic rto:204
"""


def test_parse_ss_pairs_socket_and_info_lines() -> None:
    got = parse_ss(SS)
    assert got == [
        TcpInfo(("198.18.7.2", 41234), ("198.18.7.3", 3550), 901, 4321),
        TcpInfo(("198.18.7.2", 41236), ("198.18.7.4", 7000), 24, 7),  # v4-mapped unwrapped
        TcpInfo(("127.0.0.1", 15000), ("127.0.0.1", 50000), 0, 0),
    ]
    assert got[0].sent_if_active == 900  # the SYN counts once in bytes_acked
    assert got[2].sent_if_active == 0


def _fake_proc(
    tmp_path: Path, pid: int, comm: str, utime: int, stime: int, children: int = 0
) -> Path:
    d = tmp_path / str(pid)
    d.mkdir(parents=True)
    rest = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", str(utime), str(stime)]
    rest += [str(children), "0"] + ["0"] * 28
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
    (d / "smaps_rollup").write_text(
        "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:   2048 kB\nPss:   1024 kB\n"
    )
    return tmp_path


def test_cpu_seconds_survives_odd_comm_and_counts_children(tmp_path: Path) -> None:
    root = _fake_proc(tmp_path, 42, "we) ird (name", 3 * CLK_TCK, CLK_TCK, children=CLK_TCK // 2)
    assert cpu_seconds(42, str(root)) == pytest.approx(4.5)


def test_memory_reads_rss_and_pss(tmp_path: Path) -> None:
    root = _fake_proc(tmp_path, 7, "envoy", 0, 0)
    m = memory(7, str(root))
    assert (m.rss_kb, m.pss_kb) == (2048, 1024)
    assert memory(8, str(root)).rss_kb == 0  # gone: zeros, no exception


def test_machine_cpu(tmp_path: Path) -> None:
    t = CLK_TCK
    (tmp_path / "stat").write_text(f"cpu  {t} 0 {t} {6 * t} {t} 0 {t} 0 0 0\ncpu0 1 2 3\n")
    busy, total = machine_cpu(str(tmp_path))
    assert (busy, total) == pytest.approx((3.0, 10.0))


def test_envoy_stats_and_exposition() -> None:
    stats = parse_envoy_stats(
        "cluster.outbound|7000||currency.upstream_rq_total: 23\n"
        "http.inbound|8080||.downstream_rq_total: 5\n"
        "cluster.x.upstream_rq_time: P0(nan,1) P25(nan,2)\n"
    )
    assert stats == {
        "cluster.outbound|7000||currency.upstream_rq_total": 23,
        "http.inbound|8080||.downstream_rq_total": 5,
    }
    samples = parse_exposition(
        "# TYPE istio_tcp_sent_bytes_total counter\n"
        'istio_tcp_sent_bytes_total{reporter="source",source_workload="a"} 29.0\n'
    )
    assert samples == [
        ("istio_tcp_sent_bytes_total", {"reporter": "source", "source_workload": "a"}, 29.0)
    ]


def test_dechunk() -> None:
    assert dechunk(b"5\r\nLIVE\n\r\n3;x=y\r\nabc\r\n0\r\n\r\n") == b"LIVE\nabc"
    with pytest.raises(OSError):
        dechunk(b"5\r\nLI")
