"""TCP flow accounting (bpf/tcpflow.bpf.c): per-socket bytes read from each
socket's own sequence numbers at every refresh and at close (no program per send
or recv), lifecycle from inet_sock_set_state, final records through a ring
buffer. See docs/tcpflow.md."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._libbpf import BPF_NOEXIST
from ..layout import Layout, layout
from ..pacing import pace
from .base import Probe

FLOWS_MAP = "tcpflow_flows"
POLLED_MAP = "tcpflow_polled"
LISTENERS_MAP = "tcpflow_listeners"
EVENTS_MAP = "tcpflow_events"
STATS_MAP = "tcpflow_stats"
POLL_PROG = "tcpflow_poll"
ADOPT_PROG = "tcpflow_adopt"


RTT_SLOTS = 24  # TCPFLOW_RTT_SLOTS: slot i = smoothed RTT in [2^i, 2^(i+1)) us
RETRANS_TYPES = 4
RETRANS_NAMES = ("timeout", "fast", "syn", "other")  # enum tcpflow_retrans order


# Per-socket network health; the rest of tcpflow is bytes and lifecycle. The RTT
# histogram has no program of its own (sampled by the poll and at close): the
# `rtt_samples` global turns it off with these.
HEALTH_PROGRAMS = (
    "tcpflow_retransmit",
    "tcpflow_reset_sent",
    "tcpflow_reset_received",
)


class Dir(enum.IntEnum):
    UNKNOWN = 0
    ACTIVE = 1
    PASSIVE = 2


class Flag(enum.IntFlag):
    OPENED = 1
    CLOSING = 2
    COUNTING = 4
    FIN_SENT = 8


class EventType(enum.IntEnum):
    CLOSE = 1
    LATE = 2
    CONNECT = 3
    ACCEPT = 4
    CONNECT_FAILED = 5


class Stat(enum.IntEnum):
    FLOWS_FULL = 0
    LISTENERS_FULL = 1
    EVENTS_LOST = 2
    BYTES_LOST = 3
    LATE = 4
    LIVE = 5
    STALE = 6
    INSERTS = 7


VALUE = layout(
    "tcpflow_value",
    ("bytes_sent", "u64"),
    ("bytes_received", "u64"),
    ("sent_base", "u64"),
    ("received_base", "u64"),
    ("write_base", "u32"),
    ("copied_base", "u32"),
    ("tcp_received_close", "u64"),
    ("copied_close", "u32"),
    ("unread_close", "u32"),
    ("tgid", "u32"),
    ("srtt_us", "u32"),
    ("dir", "u8"),
    ("flags", "u8"),
    ("family", "u16"),
    ("lport", "u16"),
    ("rport", "u16"),
    ("start_ns", "u64"),
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("pid", "u32"),
    ("__pad0", "u32"),
    ("laddr", "u8[16]"),
    ("raddr", "u8[16]"),
    ("comm", "char[16]"),
    ("retrans", f"u32[{RETRANS_TYPES}]"),
    ("resets_sent", "u32"),
    ("resets_received", "u32"),
    ("rst_reason", "u32"),
    ("__pad1", "u32"),
    ("rtt_sum_us", "u64"),
    ("rtt_hist", f"u32[{RTT_SLOTS}]"),
)

POLL_BATCH = 256  # TCPFLOW_POLL_BATCH
POLL_ARGS = layout(
    "tcpflow_poll_args", ("n", "u32"), ("__pad", "u32"), ("sk", f"u64[{POLL_BATCH}]")
)

EVENT = layout(
    "tcpflow_event",
    ("sk", "u64"),
    ("start_ns", "u64"),
    ("end_ns", "u64"),
    ("bytes_sent", "u64"),
    ("bytes_received", "u64"),
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("bytes_acked", "u64"),
    ("tcp_bytes_received", "u64"),
    ("segs_out", "u32"),
    ("segs_in", "u32"),
    ("total_retrans", "u32"),
    ("srtt_us", "u32"),
    ("tgid", "u32"),
    ("pid", "u32"),
    ("laddr", "u8[16]"),
    ("raddr", "u8[16]"),
    ("comm", "char[16]"),
    ("lport", "u16"),
    ("rport", "u16"),
    ("family", "u16"),
    ("dir", "u8"),
    ("flags", "u8"),
    ("type", "u8"),
    ("oldstate", "u8"),
    ("shutdown", "u16"),
    ("error", "u32"),
    ("retrans", f"u32[{RETRANS_TYPES}]"),
    ("resets_sent", "u32"),
    ("resets_received", "u32"),
    ("rst_reason", "u32"),
    ("__pad1", "u32"),
    ("rtt_sum_us", "u64"),
    ("rtt_hist", f"u32[{RTT_SLOTS}]"),
)

LISTEN_KEY = layout(
    "tcpflow_listen_key", ("netns", "u64"), ("port", "u16"), ("__pad0", "u16"), ("__pad1", "u32")
)

OWNER = layout(
    "tcpflow_owner", ("cgroup_id", "u64"), ("tgid", "u32"), ("pid", "u32"), ("comm", "char[16]")
)

KEY_DTYPE = np.dtype("<u8")


@dataclass
class Listener:
    netns: int
    port: int
    tgid: int
    comm: str
    cgroup_id: int


class TcpFlowProbe(Probe):
    name = "tcpflow"
    layouts: tuple[Layout, ...] = (VALUE, POLL_ARGS, EVENT, LISTEN_KEY, OWNER)

    def __init__(
        self,
        max_flows: int = 65536,
        ringbuf_bytes: int = 2 << 20,
        trace_opens: bool = False,
        wake_each: bool = False,
        seed: bool = True,
        health: bool = True,
    ) -> None:
        super().__init__()
        self.seed = seed
        self.health = health
        self.max_flows = max_flows
        self.ringbuf_bytes = ringbuf_bytes
        self.trace_opens = trace_opens
        self.wake_each = wake_each or trace_opens
        self.adopted = 0  # connections older than the probe, found at attach
        self.walks = 0  # reads of the whole flow map (read_flows)
        self._known: np.ndarray | None = None  # the keys the last poll found live
        self._known_at = 0  # Stat.INSERTS when they were read

    def configure(self) -> None:
        assert self.obj
        if not self.health:
            for name in HEALTH_PROGRAMS:
                self.obj.programs[name].set_autoload(False)
        self.obj.maps[FLOWS_MAP].set_max_entries(self.max_flows)
        self.obj.maps[EVENTS_MAP].set_max_entries(self.ringbuf_bytes)
        self.set_global("emit_opens", int(self.trace_opens))
        self.set_global("rtt_samples", int(self.health))
        # A trace wants each record now; the agent wants few wake-ups.
        self.set_global("wakeup_bytes", 0 if self.wake_each else self.ringbuf_bytes // 8)

    def loaded(self) -> None:
        # Before attach, so a connection accepted right after start is named.
        if self.seed:
            from ..proc_sockets import listening_sockets
            from .base import cgroup2_root

            try:
                root = cgroup2_root()
            except FileNotFoundError:
                root = "/sys/fs/cgroup"
            self.seed_listeners(listening_sockets(cgroup_root=root))

    def seed_listeners(self, listeners: list[Any]) -> int:
        """Record the owners of sockets that were listening before we loaded, so
        their accepted connections are named from the start. The kernel's own
        entries (a listen() seen live) win."""
        m = self.map(LISTENERS_MAP)
        added = 0
        for lst in listeners:
            key = LISTEN_KEY.encode(netns=lst.netns, port=lst.port)
            comm = lst.comm.encode()[:15]
            value = OWNER.encode(cgroup_id=lst.cgroup_id, tgid=lst.tgid, pid=lst.tgid, comm=comm)
            try:
                m.update(key, value, BPF_NOEXIST)
                added += 1
            except OSError:
                pass  # already known, or the map is full (counted by the kernel)
        return added

    def attach(self) -> None:
        super().attach()
        self.adopted = self.adopt(ADOPT_PROG, "connections")

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        """All live flows as (socket keys, values) arrays: the keys, then their
        entries brought up to their sockets' counts by tcpflow_poll, POLL_BATCH
        at a time (no call holds the CPU for long).

        The keys come from batch reads of the map only when an entry was made
        since the last read (Stat.INSERTS moved); otherwise they are the keys
        the last poll found live, which is the same set: an entry the poll finds
        gone is gone for good (a socket address used again is a new insert).
        A read walks every bucket of the map, most of a refresh's kernel time
        when connections are long-lived."""
        assert self.obj
        inserts = self.map(STATS_MAP).percpu_sums()[Stat.INSERTS]  # before the read
        if self._known is not None and inserts == self._known_at:
            sks = self._known
        else:
            keys, _, n = self.map(FLOWS_MAP).lookup_batch(values=False)  # the poll gives them
            sks = np.frombuffer(keys, KEY_DTYPE, n)
            self.walks += 1
        self._known_at = inserts
        sks, vals = self._poll(sks)
        self._known = sks
        return sks, vals

    def _poll(self, sks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The entries of these keys, brought up to date; the keys gone are left out."""
        assert self.obj
        n = len(sks)
        poll, polled = self.obj.programs[POLL_PROG], self.map(POLLED_MAP)
        args = np.zeros(1, POLL_ARGS.dtype)
        parts = []
        for i in range(0, n, POLL_BATCH):
            batch = sks[i : i + POLL_BATCH]
            args["n"], args["sk"][0, : len(batch)] = len(batch), batch
            err = poll.run(args.tobytes())
            if err:
                raise RuntimeError(f"tcpflow: the poll failed ({err})")
            _, vals, m = polled.lookup_batch(chunk=POLL_BATCH)
            parts.append((batch, VALUE.decode_many(vals, m)[: len(batch)]))
            pace()
        if not parts:
            return sks, VALUE.decode_many(b"", 0)
        sks = np.concatenate([k for k, _ in parts])
        vals_all = np.concatenate([v for _, v in parts])
        live = vals_all["start_ns"] != 0  # 0: closed and gone since the keys were read
        return sks[live], vals_all[live]

    def read_listeners(self) -> list[Listener]:
        keys, vals, n = self.map(LISTENERS_MAP).lookup_batch()
        ks = LISTEN_KEY.decode_many(keys, n)
        vs = OWNER.decode_many(vals, n)
        return [
            Listener(
                int(k["netns"]),
                int(k["port"]),
                int(v["tgid"]),
                bytes(v["comm"]).split(b"\0")[0].decode(errors="replace"),
                int(v["cgroup_id"]),
            )
            for k, v in zip(ks, vs, strict=True)
        ]

    def stats(self) -> dict[Stat, int]:
        sums = self.map(STATS_MAP).percpu_sums()
        return {s: sums[s] for s in Stat}


def decode_events(records: list[bytes]) -> np.ndarray:
    """Ring buffer records (all the same struct) to one structured array."""
    return EVENT.decode_many(b"".join(records), len(records))
