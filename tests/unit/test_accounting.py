"""Live-plus-closed accounting: totals only grow, every byte counts once."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from meshlens.accounting import (
    OVERFLOW,
    Edge,
    EdgeTable,
    Flow,
    FlowBook,
    LiveRows,
    Namer,
    Record,
    Sock,
    Totals,
    ip_text,
    service_name,
)


class FakeIdentity:
    def __init__(self) -> None:
        self.names = {1: "frontend", 2: "cart"}  # netns -> name

    def workload(self, tgid: int, comm: str, netns: int, cgroup_id: int) -> str:
        return self.names.get(netns, comm or "unknown")

    def netns_name(self, netns: int) -> str | None:
        return self.names.get(netns)

    def owner_of(self, ip: str) -> str | None:
        return {"198.18.0.1": "frontend", "198.18.0.2": "cart"}.get(ip)

    def netns_of(self, ip: str) -> int | None:
        return {"198.18.0.1": 1, "198.18.0.2": 2}.get(ip)


def client(lport: int = 40000, tgid: int = 10) -> Sock:
    return Sock(tgid, "curl", 1, 0, 2, "198.18.0.1", lport, "198.18.0.2", 80, False)


def server(rport: int = 40000, tgid: int = 20) -> Sock:
    return Sock(tgid, "nginx", 2, 0, 2, "198.18.0.2", 80, "198.18.0.1", rport, True)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def book() -> FlowBook:
    return FlowBook(Namer(FakeIdentity()), EdgeTable(), "tcp", clock=Clock())


SRC = Edge("source", "frontend", "cart", "cart:80", "tcp")
DST = Edge("destination", "frontend", "cart", "cart:80", "tcp")


def live(sid: Any, sock: Sock, flow: Flow, opened: bool = True, closing: bool = False) -> Any:
    return (sid, lambda: sock, flow, opened, closing)


def rec(sid: Any, sock: Sock, flow: Flow, final: bool = True, opened: bool = True) -> Any:
    return Record(sid, sid[0], lambda: sock, flow, opened, "close" if final else "late")


def test_edges_and_istio_directions(book: FlowBook) -> None:
    book.update(
        [
            live((1, 5), client(), Flow(7919, 104729, 2, 30)),
            live((2, 6), server(), Flow(104729, 7919, 30, 2)),
        ],
        [],
    )
    t = book.table.totals()
    assert set(t) == {SRC, DST}
    for edge in (SRC, DST):
        assert (t[edge].request_bytes, t[edge].response_bytes) == (7919, 104729)
        assert t[edge].opened == 1 and t[edge].closed == 0


def test_close_record_replaces_live_entry_without_double_count(book: FlowBook) -> None:
    book.update([live((1, 5), client(), Flow(100, 10, 1, 1))], [])
    # The same refresh sees the entry (stale) and its final record: counted once.
    book.update(
        [live((1, 5), client(), Flow(100, 10, 1, 1))], [rec((1, 5), client(), Flow(150, 20, 2, 2))]
    )
    t = book.table.totals()[SRC]
    assert (t.request_bytes, t.response_bytes, t.opened, t.closed) == (150, 20, 1, 1)
    book.update([], [])  # gone from the map: nothing changes
    t2 = book.table.totals()[SRC]
    assert (t2.request_bytes, t2.closed) == (150, 1)


def test_totals_never_decrease_across_close(book: FlowBook) -> None:
    steps = [
        ([live((1, 5), client(), Flow(10, 0, 1, 0))], []),
        ([live((1, 5), client(), Flow(20, 5, 2, 1))], []),
        # counters being taken by the close handler, record not drained yet
        ([live((1, 5), client(), Flow(0, 0, 0, 0), closing=True)], []),
        ([], [rec((1, 5), client(), Flow(23, 7, 3, 2))]),
        ([], [rec((1, 5), client(), Flow(2, 0, 1, 0), final=False)]),  # late bytes
    ]
    sums = []
    for lv, rc in steps:
        book.update(lv, rc)
        t = book.table.totals()[SRC]
        sums.append(t.request_bytes + t.response_bytes)
    assert sums == [10, 25, 25, 30, 32]


def test_late_record_before_close_never_double_counts(book: FlowBook) -> None:
    book.update([live((1, 5), client(), Flow(100, 0, 1, 0))], [])
    # an adder raced the close: it took everything (110) as a late record
    late = Record((1, 5), 1, lambda: client(), Flow(110, 0, 2, 0), True, "late")
    book.update([live((1, 5), client(), Flow(0, 0, 0, 0), closing=True)], [late])
    assert book.table.totals()[SRC].request_bytes == 110
    book.update([], [rec((1, 5), client(), Flow(0, 0, 0, 0))])
    t = book.table.totals()[SRC]
    assert (t.request_bytes, t.closed, t.opened) == (110, 1, 1)


def test_lost_record_keeps_counted_bytes(book: FlowBook) -> None:
    book.update([live((1, 5), client(), Flow(40, 2, 1, 1))], [])
    book.update([], [])  # entry deleted, its record not (yet) readable
    t = book.table.totals()[SRC]
    assert (t.request_bytes, t.response_bytes) == (40, 2)
    assert book.vanished == 0 and len(book.missing) == 1
    book.clock.t += book.lost_after + 1  # type: ignore[attr-defined]
    book.update([], [])  # no record ever: lost to a full ring buffer
    t = book.table.totals()[SRC]
    assert (t.request_bytes, t.response_bytes) == (40, 2)
    assert book.vanished == 1 and not book.missing


def test_exported_counters_never_decrease() -> None:
    table = EdgeTable()
    table.live = {SRC: Totals(10, 5, health=np.array([3, 4]))}
    assert table.totals()[SRC].request_bytes == 10
    table.live = {SRC: Totals(8, 5, health=np.array([2, 9]))}
    t = table.totals()[SRC]
    assert t.request_bytes == 10 and t.health.tolist() == [3, 9]


def test_short_connection_seen_only_in_record(book: FlowBook) -> None:
    book.update([], [rec((9, 1), client(), Flow(5, 3, 1, 1))])
    t = book.table.totals()[SRC]
    assert (t.opened, t.closed, t.request_bytes, t.response_bytes) == (1, 1, 5, 3)


def test_idle_old_connection_close_counts_closed_not_opened(book: FlowBook) -> None:
    book.update([], [rec((9, 0), client(), Flow(0, 0, 0, 0), opened=False)])
    t = book.table.totals()[SRC]
    assert (t.opened, t.closed) == (0, 1)


def test_binding_is_fixed_for_a_sockets_life(book: FlowBook) -> None:
    book.update([live((1, 5), client(), Flow(1, 0, 1, 0))], [])
    renamed = client()._replace(netns=99, comm="other")
    book.update([live((1, 5), renamed, Flow(2, 0, 2, 0))], [])
    assert book.table.totals()[SRC].request_bytes == 2


def test_unowned_socket_waits_then_binds() -> None:
    clock = Clock()
    ident = FakeIdentity()
    book = FlowBook(Namer(ident), EdgeTable(), "tcp", clock=clock, bind_after=2.0)
    orphan = Sock(0, "", 77, 0, 2, "10.9.9.9", 80, "198.18.0.1", 5555, True)
    book.update([live((3, 1), orphan, Flow(0, 4, 0, 1))], [])
    assert book.table.totals() == {}
    clock.t = 3.0
    book.update([live((3, 1), orphan, Flow(0, 4, 0, 1))], [])
    (edge,) = book.table.totals()
    assert edge.reporter == "destination" and edge.source_workload == "frontend"


def test_series_cap_folds_into_overflow() -> None:
    table = EdgeTable(max_series=2)
    book = FlowBook(Namer(FakeIdentity()), table, "tcp", clock=Clock())
    socks = [
        Sock(1, "c", 0, 0, 2, "10.0.0.1", 1000 + i, f"10.0.1.{i}", 80, False) for i in range(5)
    ]
    book.update([live((i, 1), s, Flow(1, 0, 1, 0)) for i, s in enumerate(socks)], [])
    totals = table.totals()
    assert len(totals) == 3
    over = [e for e in totals if e.source_workload == OVERFLOW]
    assert over and totals[over[0]].request_bytes == 3
    assert table.overflowed == 3


def test_late_record_goes_to_recently_closed_edge(book: FlowBook) -> None:
    book.update([], [rec((1, 5), client(), Flow(10, 0, 1, 0))])
    # A late record carries no start time (entry gone): matched by socket.
    stray = client()._replace(netns=55, comm="x")
    book.update([], [Record((1, 0), 1, lambda: stray, Flow(4, 0, 1, 0), False, "late")])
    assert book.table.totals()[SRC].request_bytes == 14


def test_udp_book_keeps_tcp_live_totals() -> None:
    table = EdgeTable()
    ident = FakeIdentity()
    tcp = FlowBook(Namer(ident), table, "tcp", clock=Clock())
    udp = FlowBook(Namer(ident), table, "udp", clock=Clock())
    tcp.update([live((1, 5), client(), Flow(10, 0, 1, 0))], [])
    udp.update([live((2, 5), client(), Flow(3, 0, 1, 0))], [])
    protos = {e.protocol for e in table.totals()}
    assert protos == {"tcp", "udp"}


def test_text_helpers() -> None:
    assert ip_text(2, bytes([127, 0, 0, 1]) + bytes(12)) == "127.0.0.1"
    v6 = bytes(15) + b"\x01"
    assert ip_text(10, v6) == "::1"
    mapped = bytes(10) + b"\xff\xff" + bytes([10, 1, 2, 3])
    assert ip_text(10, mapped) == "10.1.2.3"
    assert service_name("unknown", "::1", 80) == "[::1]:80"
    assert service_name("cart", "1.2.3.4", 80) == "cart:80"


def test_peer_names_name_off_host_services() -> None:
    namer = Namer(FakeIdentity())
    namer.peer_names.append(lambda ip: {"93.184.216.34": "example.com"}.get(ip))
    ext = Sock(10, "curl", 1, 0, 2, "198.18.0.1", 40000, "93.184.216.34", 443, False)
    edge = namer.edge(ext, "tcp")
    assert edge.destination_service == "example.com:443"
    assert edge.destination_workload == "unknown"
    other = ext._replace(raddr="93.184.216.35")
    assert namer.edge(other, "tcp").destination_service == "93.184.216.35:443"


def test_record_hidden_behind_a_pending_reservation_is_waited_for(book: FlowBook) -> None:
    book.update([live((1, 5), client(), Flow(40, 2, 1, 1))], [])
    # gone from the map; its record only shows on the second drain
    calls = []

    def redrain() -> list[Record]:
        calls.append(1)
        return [rec((1, 5), client(), Flow(41, 2, 2, 1))]

    book.update([], [], redrain=redrain)
    t = book.table.totals()[SRC]
    assert calls == [1]
    assert (t.request_bytes, t.closed, t.opened) == (41, 1, 1)
    assert book.vanished == 0


def test_redrained_record_of_a_socket_counted_live_waits_a_refresh(book: FlowBook) -> None:
    other = client(lport=40001)
    book.update(
        [live((1, 5), client(), Flow(40, 0, 1, 0)), live((2, 6), other, Flow(1, 0, 1, 0))], []
    )

    def redrain() -> list[Record]:
        # (1, 5) vanished; the drain brings its record and (2, 6)'s, which was live
        return [rec((1, 5), client(), Flow(40, 0, 1, 0)), rec((2, 6), other, Flow(9, 0, 2, 0))]

    book.update([live((2, 6), other, Flow(1, 0, 1, 0))], [], redrain=redrain)
    t = book.table.totals()[SRC]
    assert (t.request_bytes, t.closed) == (41, 1)  # (2, 6) still counted live, once
    book.update([], [])
    t = book.table.totals()[SRC]
    assert (t.request_bytes, t.closed) == (49, 2)
    assert book.vanished == 0


def test_endpoint_directory_forgets_old_entries() -> None:
    clock = Clock()
    namer = Namer(FakeIdentity())
    namer.clock = clock
    for port in range(100):
        namer.learn(client(lport=port), "frontend")
    clock.t = 50.0
    namer.learn(client(lport=7), "frontend")  # learned again: kept
    clock.t = 130.0
    namer.forget_older_than(120.0)
    assert list(namer.endpoints) == [(0, "198.18.0.1", 7)]


def test_endpoint_directory_keeps_the_newest_past_its_cap() -> None:
    clock = Clock()
    namer = Namer(FakeIdentity())
    namer.clock = clock
    namer.max_endpoints = 10
    for port in range(100):
        clock.t = port / 100
        namer.learn(client(lport=port), "frontend")
    namer.learn(client(lport=3), "frontend")  # learned again: newest
    namer.forget_older_than(120.0)
    assert sorted(p for _, _, p in namer.endpoints) == [3, *range(91, 100)]


def test_live_rows_count_like_tuples() -> None:
    flows = [Flow(7919, 104729, 2, 30), Flow(104729, 7919, 30, 2)]
    socks = [client(), server()]
    by_tuple = FlowBook(Namer(FakeIdentity()), EdgeTable(), "tcp", clock=Clock())
    by_tuple.update([live(7, socks[0], flows[0]), live(8, socks[1], flows[1])], [])
    by_cols = FlowBook(Namer(FakeIdentity()), EdgeTable(), "tcp", clock=Clock())
    made: list[int] = []
    by_cols.update(
        LiveRows(
            [7, 8],
            flows,
            [True, True],
            [False, False],
            lambda idx: made.append(idx) or [socks[i] for i in idx],
        ),
        [],
    )
    assert made == [[0, 1]]  # each socket decoded once, when first bound, in one call
    assert by_cols.table.totals() == by_tuple.table.totals()
    assert by_cols.table.totals()[SRC].opened == 1
    by_cols.update(
        LiveRows([7, 8], flows, [True, True], [False, False], lambda idx: [socks[i] for i in idx]),
        [],
    )
    assert made == [[0, 1]] and by_cols.table.totals()[SRC].opened == 1  # bound: not again


def test_recently_closed_sockets_are_capped(book: FlowBook) -> None:
    book.max_recent = 5
    book.update([], [rec((i, 1), client(lport=1000 + i), Flow(1, 1, 1, 1)) for i in range(20)])
    assert list(book.recent) == [15, 16, 17, 18, 19]
    assert book.table.totals()[SRC].closed == 20


def test_edges_are_shared_by_their_sockets(book: FlowBook) -> None:
    book.update([live(i, client(lport=1000 + i), Flow(1, 1, 1, 1)) for i in range(3)], [])
    edges = {id(entry[0]) for entry in book.bound.values()}
    assert len(edges) == 1
