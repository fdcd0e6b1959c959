"""UDP flow accounting (bpf/udpflow.bpf.c): per socket and peer, from the socket
send/recv tracepoints and the cgroup sendmsg/recvmsg hooks (the peer of an
unconnected socket); idle flows expire in the kernel with a final record.
See docs/udpflow.md."""

from __future__ import annotations

import enum

import numpy as np

from ..layout import Layout, layout
from .base import Probe
from .sockchain import Slot

FLOWS_MAP = "udpflow_flows"
EVENTS_MAP = "udpflow_events"
STATS_MAP = "udpflow_stats"
SWEEPER_START = "udpflow_start_sweeper"


class Dir(enum.IntEnum):
    SOURCE = 1
    DESTINATION = 2


class EventType(enum.IntEnum):
    EXPIRE = 1
    LATE = 2


class Stat(enum.IntEnum):
    FLOWS_FULL = 0
    EVENTS_LOST = 1
    BYTES_LOST = 2
    NO_PEER = 3
    LIVE = 4
    PEER_ASSUMED = 5


_TUPLE = (
    ("ino", "u64"),
    ("laddr", "u8[16]"),
    ("raddr", "u8[16]"),
    ("lport", "u16"),
    ("rport", "u16"),
    ("family", "u16"),
)
_COUNTERS = (
    ("bytes_sent", "u64"),
    ("bytes_received", "u64"),
    ("datagrams_sent", "u64"),
    ("datagrams_received", "u64"),
)

KEY = layout("udpflow_key", *_TUPLE, ("__pad0", "u16"))

VALUE = layout(
    "udpflow_value",
    ("start_ns", "u64"),
    ("quiet_ns", "u64"),
    ("seen", "u64"),
    *_COUNTERS,
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("tgid", "u32"),
    ("pid", "u32"),
    ("closing", "u32"),
    ("dir", "u32"),
    ("comm", "char[16]"),
)

SWEEPER = layout("udpflow_sweeper", ("timer", "opaque[16]"))

PEER = layout(
    "udpflow_peer",
    ("cookie", "u64"),
    ("addr", "u8[16]"),
    ("port", "u16"),
    ("family", "u16"),
    ("__pad0", "u32"),
)

EVENT = layout(
    "udpflow_event",
    *_TUPLE,
    ("__pad1", "u16"),
    *_COUNTERS,
    ("start_ns", "u64"),
    ("end_ns", "u64"),
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("tgid", "u32"),
    ("pid", "u32"),
    ("comm", "char[16]"),
    ("type", "u32"),
    ("dir", "u32"),
)


class UdpFlowProbe(Probe):
    name = "udpflow"
    sockchain_slot = Slot.UDP
    layouts: tuple[Layout, ...] = (KEY, VALUE, PEER, SWEEPER, EVENT)

    def __init__(
        self, max_flows: int = 65536, idle_seconds: float = 30.0, ringbuf_bytes: int = 512 << 10
    ) -> None:
        super().__init__()
        self.max_flows = max_flows
        self.idle_seconds = idle_seconds
        self.ringbuf_bytes = ringbuf_bytes

    def configure(self) -> None:
        assert self.obj
        self.obj.maps[FLOWS_MAP].set_max_entries(self.max_flows)
        self.obj.maps[EVENTS_MAP].set_max_entries(self.ringbuf_bytes)
        self.set_global("idle_ns", int(self.idle_seconds * 1e9))
        # a flow goes between idle and idle + 2 sweeps after its last datagram
        self.set_global("sweep_ns", int(min(max(self.idle_seconds / 4, 0.01), 1.0) * 1e9))
        self.set_global("wakeup_bytes", self.ringbuf_bytes // 8)

    def loaded(self) -> None:
        assert self.obj
        err = self.obj.programs[SWEEPER_START].run()
        if err:
            raise RuntimeError(f"udpflow: the expiry timer did not start (step {err})")

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        # An empty map is not read: a batch read walks every bucket (65,536 by
        # default) in one call, with the CPU held, to find nothing. An entry
        # made after this look is read next time, as if made after the read.
        if self.stats()[Stat.LIVE] == 0:
            return KEY.decode_many(b"", 0), VALUE.decode_many(b"", 0)
        keys, vals, n = self.map(FLOWS_MAP).lookup_batch()
        return KEY.decode_many(keys, n), VALUE.decode_many(vals, n)

    def stats(self) -> dict[Stat, int]:
        sums = self.map(STATS_MAP).percpu_sums()
        return {s: sums[s] for s in Stat}


def decode_events(records: list[bytes]) -> np.ndarray:
    return EVENT.decode_many(b"".join(records), len(records))
