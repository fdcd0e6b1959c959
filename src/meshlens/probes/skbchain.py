"""The cgroup_skb chain (bpf/skbchain.bpf.c, docs/skbchain.md).

One program per direction sits on the cgroup-v2 root for the whole process;
every probe's cgroup_skb program runs behind it by tail call instead of being
attached on its own. Each program attached to a cgroup costs an indirect call
per packet (~20 ns with retpolines) even when it returns at once; a tail call to
a slot known at load time is a direct jump.

A member probe joins before load (`join`): it shares the chain's program arrays
and gets a slot per direction, written into its read-only globals so the
verifier sees a constant. A slot whose member is loading or gone holds a
pass-through program, so the members after it still run.
"""

from __future__ import annotations

from .. import _libbpf as libbpf
from .base import PerProcess, Probe, cgroup2_root

DIRECTIONS = ("egress", "ingress")
SLOTS = 8  # SKBCHAIN_SLOTS in bpf/skbchain.h


def array_name(direction: str) -> str:
    return f"skbchain_{direction}"


def direction_of(section: str) -> str | None:
    """'cgroup_skb/egress' -> 'egress'; None for programs that are not members."""
    kind, _, direction = section.partition("/")
    return direction if kind == "cgroup_skb" and direction in DIRECTIONS else None


class SkbChain(Probe):
    name = "skbchain"
    chain_member = False  # it is the chain

    def __init__(self) -> None:
        super().__init__()
        # slot -> member program name, per direction (reserved or filled)
        self.members: dict[str, dict[int, str]] = {d: {} for d in DIRECTIONS}
        self.links: dict[str, libbpf.Link] = {}  # direction -> its dispatcher's link

    def attach(self) -> None:
        """Nothing yet: a direction's dispatcher goes on the root with its first
        member, so a direction no member uses costs its packets nothing."""

    def _attached(self, direction: str, on: bool) -> None:
        assert self.obj
        link = self.links.get(direction)
        if on and link is None:
            prog = self.obj.programs[f"skbchain_{direction}_run"]
            self.links[direction] = prog.attach_cgroup(cgroup2_root())
        elif not on and link is not None:
            link.destroy()
            del self.links[direction]

    def close(self) -> None:
        for direction in list(self.links):
            self._attached(direction, False)
        super().close()

    def reserve(self, direction: str, program: str) -> int:
        used = self.members[direction]
        free = [slot for slot in range(SLOTS) if slot not in used]
        if not free:
            raise RuntimeError(
                f"skbchain: all {SLOTS} {direction} slots are taken ({', '.join(used.values())})"
            )
        used[free[0]] = program
        self._sync(direction)
        return free[0]

    def fill(self, direction: str, slot: int, prog_fd: int) -> None:
        """The member's program takes its reserved slot: from now on it runs."""
        self._set(direction, slot, prog_fd)
        self._attached(direction, True)

    def vacate(self, direction: str, slot: int) -> None:
        self.members[direction].pop(slot, None)
        self._sync(direction)
        if not self.members[direction]:
            self._attached(direction, False)

    def _set(self, direction: str, slot: int, prog_fd: int) -> None:
        self.map(array_name(direction)).update(
            slot.to_bytes(4, "little"), prog_fd.to_bytes(4, "little")
        )

    def _sync(self, direction: str) -> None:
        """Pass-through programs in the free slots below the last member (and in
        reserved ones not filled yet); nothing after it."""
        assert self.obj
        used = self.members[direction]
        last = max(used, default=-1)
        array = self.map(array_name(direction))
        for slot in range(SLOTS):
            if slot > last:
                array.delete(slot.to_bytes(4, "little"))
            elif slot not in used:
                self._set(direction, slot, self.pass_fd(direction, slot))

    def pass_fd(self, direction: str, slot: int) -> int:
        assert self.obj
        return self.obj.programs[f"skbchain_{direction}_pass{slot}"].fd


_shared = PerProcess(SkbChain)
current = _shared.current  # the process's chain, if any probe uses it
acquire = _shared.acquire  # the process's chain, loaded and attached on first use
release = _shared.release  # drop one holder; the last one detaches the chain


class Membership:
    """A probe's place in the chain: its slots, from join (before load) to leave."""

    def __init__(self, probe: Probe) -> None:
        assert probe.obj
        self.chain = acquire()
        self.slots: dict[str, tuple[int, str]] = {}  # direction -> (slot, program)
        try:
            for direction in DIRECTIONS:
                probe.obj.maps[array_name(direction)].reuse_fd(
                    self.chain.map(array_name(direction)).fd
                )
            for prog in probe.obj.programs.values():
                found = direction_of(prog.section)
                if not found or not prog.autoload:
                    continue
                direction = found
                if direction in self.slots:
                    raise RuntimeError(
                        f"{probe.name}: two cgroup_skb/{direction} programs; the chain takes one"
                    )
                slot = self.chain.reserve(direction, prog.name)
                self.slots[direction] = (slot, prog.name)
                probe.set_global(f"skbchain_{direction}_slot", slot)
        except Exception:
            self.leave()
            raise

    def fill(self, probe: Probe) -> list[str]:
        """After load: put the probe's programs in their slots; their targets."""
        assert probe.obj
        targets = []
        for direction, (slot, name) in self.slots.items():
            self.chain.fill(direction, slot, probe.obj.programs[name].fd)
            targets.append(f"cgroup_skb/{direction} skbchain[{slot}]")
        return targets

    def suspend(self) -> None:
        """Take the probe's programs out of the chain, keeping their slots."""
        for direction, (slot, _name) in self.slots.items():
            self.chain.fill(direction, slot, self.chain.pass_fd(direction, slot))

    def leave(self) -> None:
        for direction, (slot, _name) in self.slots.items():
            self.chain.vacate(direction, slot)
        self.slots.clear()
        release(self.chain)
