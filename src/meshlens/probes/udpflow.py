"""UDP flow accounting (bpf/udpflow.bpf.c): per socket and peer, from cgroup_skb
on the cgroup-v2 root; idle flows expire in the kernel with a final record.
See docs/udpflow.md."""

from __future__ import annotations

import enum

import numpy as np

from ..layout import Layout, layout
from .base import CgroupProbe

FLOWS_MAP = "udpflow_flows"
EVENTS_MAP = "udpflow_events"
STATS_MAP = "udpflow_stats"


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
    UNPARSED = 3
    LIVE = 4


_TUPLE = (
    ("cookie", "u64"),
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
    ("timer", "opaque[16]"),
    ("start_ns", "u64"),
    ("last_ns", "u64"),
    *_COUNTERS,
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("tgid", "u32"),
    ("pid", "u32"),
    ("closing", "u16"),
    ("armed", "u16"),
    ("dir", "u32"),
    ("comm", "char[16]"),
)

OWNER = layout(
    "udpflow_owner",
    ("netns", "u64"),
    ("cgroup_id", "u64"),
    ("tgid", "u32"),
    ("pid", "u32"),
    ("comm", "char[16]"),
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


class UdpFlowProbe(CgroupProbe):
    name = "udpflow"
    layouts: tuple[Layout, ...] = (KEY, VALUE, OWNER, EVENT)

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
        self.set_global("wakeup_bytes", self.ringbuf_bytes // 8)

    def read_flows(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals, n = self.map(FLOWS_MAP).lookup_batch()
        return KEY.decode_many(keys, n), VALUE.decode_many(vals, n)

    def stats(self) -> dict[Stat, int]:
        sums = self.map(STATS_MAP).percpu_sums()
        return {s: sums[s] for s in Stat}


def decode_events(records: list[bytes]) -> np.ndarray:
    return EVENT.decode_many(b"".join(records), len(records))
