"""The socket send/recv chain (bpf/sockchain.bpf.c, docs/sockchain.md).

One raw_tp program per tracepoint (sock_send_length, sock_recv_length) for the
whole process; it reads the socket's protocol and tail-calls the probes that
look at that protocol's calls (http, dns, udpflow), so a send() or recv() pays for one program
instead of one per probe. A probe takes its protocol's seat after load; if
another probe of this process holds it, it attaches its own programs instead
(they return early for other protocols, so both count correctly).
"""

from __future__ import annotations

import enum
import logging

from .base import PerProcess, Probe

log = logging.getLogger(__name__)

TRACEPOINTS = {"raw_tp/sock_send_length": "send", "raw_tp/sock_recv_length": "recv"}


class Slot(enum.IntEnum):
    """enum sockchain_slot in bpf/sockchain.h."""

    UDP = 0
    TCP_APP = 1  # runs first on a TCP socket's calls, then jumps to TCP_DNS
    TCP_DNS = 2
    UDP_DNS = 3  # runs first on a UDP socket's calls, then jumps to UDP


def array_name(direction: str) -> str:
    return f"sockchain_{direction}_progs"


class SockChain(Probe):
    name = "sockchain"
    chain_member = False  # it is the chain

    def __init__(self) -> None:
        super().__init__()
        self.seated: dict[int, str] = {}  # slot -> name of the probe that holds it

    def put(self, direction: str, slot: int, prog_fd: int | None) -> None:
        key = slot.to_bytes(4, "little")
        array = self.map(array_name(direction))
        if prog_fd is None:
            array.delete(key)
        else:
            array.update(key, prog_fd.to_bytes(4, "little"))


_shared = PerProcess(SockChain)
current = _shared.current  # the process's chain, if any probe uses it
acquire = _shared.acquire  # the process's chain, loaded and attached on first use
release = _shared.release  # drop one holder; the last one detaches the chain


def slots_of(probe: Probe) -> tuple[int, ...]:
    """The slots a probe's programs go in: one, or several (dns: TCP_DNS and UDP_DNS)."""
    slot = probe.sockchain_slot
    if slot is None:
        return ()
    return tuple(slot) if isinstance(slot, tuple) else (slot,)


class Seat:
    """A probe's place behind the chain: its send/recv programs in its slots."""

    def __init__(self, chain: SockChain, slots: tuple[int, ...], programs: dict[str, str]) -> None:
        self.chain = chain
        self.slots = slots
        self.programs = programs  # direction -> program name

    @classmethod
    def take(cls, probe: Probe) -> Seat | None:
        """The probe's seat, or None when another probe of this process holds it."""
        slots = slots_of(probe)
        assert probe.obj and slots
        programs = {
            TRACEPOINTS[p.section]: p.name
            for p in probe.obj.programs.values()
            if p.section in TRACEPOINTS and p.autoload
        }
        if not programs:
            return None
        try:
            chain = _shared.acquire()
        except Exception as exc:  # the probe still works on its own, at the old cost
            log.warning("sockchain: %s; %s attaches its own programs", exc, probe.name)
            return None
        if any(slot in chain.seated for slot in slots):
            _shared.release(chain)
            return None
        for slot in slots:
            chain.seated[slot] = probe.name
        return cls(chain, slots, programs)

    def share_arrays(self, probe: Probe) -> None:
        """Before load: a member that continues the chain (SOCKCHAIN_NEXT_TCP) jumps
        through the chain's own arrays, not copies of them."""
        assert probe.obj
        for direction in TRACEPOINTS.values():
            name = array_name(direction)
            if name in probe.obj.maps:
                probe.obj.maps[name].reuse_fd(self.chain.map(name).fd)

    def fill(self, probe: Probe) -> list[str]:
        """Put the probe's programs in its slot: from now on they run; their targets."""
        assert probe.obj
        targets = []
        for direction, name in self.programs.items():
            for slot in self.slots:
                self.chain.put(direction, slot, probe.obj.programs[name].fd)
                targets.append(f"raw_tp/sock_{direction}_length sockchain[{Slot(slot).name}]")
        return targets

    def suspend(self) -> None:
        """Take the programs out, keeping the seat."""
        for direction in self.programs:
            for slot in self.slots:
                self.chain.put(direction, slot, None)

    def leave(self) -> None:
        self.suspend()
        for slot in self.slots:
            self.chain.seated.pop(slot, None)
        _shared.release(self.chain)
