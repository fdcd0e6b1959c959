"""Packet- and listener-level network health (bpf/tcphealth.bpf.c): drops with the
kernel's reason, resets for no socket, listen-queue drops and backlog.
See docs/tcphealth.md."""

from __future__ import annotations

import enum

import numpy as np

from ..layout import Layout, layout
from .base import Probe

EVENTS_MAP = "tcphealth_events"
LISTENERS_MAP = "tcphealth_listeners"
STATS_MAP = "tcphealth_stats"
POLL_PROG = "tcphealth_poll"
ADOPT_PROG = "tcphealth_adopt"
BACKLOG_SLOTS = 16  # TCPHEALTH_BACKLOG_SLOTS


class Kind(enum.IntEnum):
    DROP = 1
    RST_NOSK = 2


class Stat(enum.IntEnum):
    EVENTS_FULL = 0
    LISTEN_FULL = 1
    UNPARSED = 2


KEY = layout(
    "tcphealth_key",
    ("netns", "u64"),
    ("laddr", "u8[16]"),
    ("raddr", "u8[16]"),
    ("lport", "u16"),
    ("rport", "u16"),
    ("family", "u16"),
    ("proto", "u8"),
    ("kind", "u8"),
    ("reason", "u32"),
    ("has_sock", "u32"),
)

LISTEN_KEY = layout(
    "tcphealth_listen_key",
    ("netns", "u64"),
    ("port", "u16"),
    ("__pad0", "u16"),
    ("__pad1", "u32"),
)

LISTEN_VALUE = layout(
    "tcphealth_listen_value",
    ("overflows", "u64"),
    ("queued", "u64"),
    ("synack_retrans", "u64"),
    ("backlog_hist", f"u64[{BACKLOG_SLOTS}]"),
    ("max_backlog", "u32"),
    ("__pad0", "u32"),
)


class TcpHealthProbe(Probe):
    name = "tcphealth"
    layouts: tuple[Layout, ...] = (KEY, LISTEN_KEY, LISTEN_VALUE)

    def __init__(self, max_keys: int = 16384) -> None:
        super().__init__()
        self.max_keys = max_keys
        self.adopted = 0  # listeners older than the probe, found at attach

    def configure(self) -> None:
        assert self.obj
        self.obj.maps[EVENTS_MAP].set_max_entries(self.max_keys)

    def read_events(self) -> tuple[np.ndarray, np.ndarray]:
        keys, vals, n = self.map(EVENTS_MAP).lookup_batch()
        return KEY.decode_many(keys, n), np.frombuffer(vals, "<u8", n)

    def attach(self) -> None:
        super().attach()
        self.adopted = self.adopt(ADOPT_PROG, "listeners")

    def read_listeners(self) -> tuple[np.ndarray, np.ndarray]:
        """Per (netns, port); the listeners' drops are read from the kernel first."""
        assert self.obj
        self.obj.programs[POLL_PROG].run()
        keys, vals, n = self.map(LISTENERS_MAP).lookup_batch()
        return LISTEN_KEY.decode_many(keys, n), LISTEN_VALUE.decode_many(vals, n)

    def stats(self) -> dict[Stat, int]:
        sums = self.map(STATS_MAP).percpu_sums()
        return {s: sums[s] for s in Stat}
