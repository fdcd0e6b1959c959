"""The socket send/recv chain (bpf/sockchain.bpf.c, docs/sockchain.md).

One raw_tp program per tracepoint (sock_send_length, sock_recv_length) for the
whole process; it reads the socket's protocol and tail-calls the probe that
accounts it (tcpflow, udpflow), so a send() or recv() pays for one program
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

    TCP = 0
    UDP = 1
    TCP_APP = 2  # runs first on a TCP socket's calls, then jumps to TCP


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
current = _shared.current


class Seat:
    """A probe's place behind the chain: its send/recv programs in its slot."""

    def __init__(self, chain: SockChain, slot: int, programs: dict[str, str]) -> None:
        self.chain = chain
        self.slot = slot
        self.programs = programs  # direction -> program name

    @classmethod
    def take(cls, probe: Probe) -> Seat | None:
        """The probe's seat, or None when another probe of this process holds it."""
        assert probe.obj and probe.sockchain_slot is not None
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
        if probe.sockchain_slot in chain.seated:
            _shared.release(chain)
            return None
        chain.seated[probe.sockchain_slot] = probe.name
        return cls(chain, probe.sockchain_slot, programs)

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
            self.chain.put(direction, self.slot, probe.obj.programs[name].fd)
            targets.append(f"raw_tp/sock_{direction}_length sockchain[{Slot(self.slot).name}]")
        return targets

    def suspend(self) -> None:
        """Take the programs out, keeping the seat."""
        for direction in self.programs:
            self.chain.put(direction, self.slot, None)

    def leave(self) -> None:
        self.suspend()
        self.chain.seated.pop(self.slot, None)
        _shared.release(self.chain)
