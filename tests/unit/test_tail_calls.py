"""Every tail call in the built objects has a constant index set right before it
and is reached by no jump, so the verifier can make it a direct jump.

A bpf_tail_call() whose index differs by path (clang merges the calls of two
branches into one) is emitted by the JIT as an indirect jump: a retpoline on
this VM, ~20-50 ns per send()/recv() (docs/sockchain.md). bpf_tail_call_static()
keeps each index at a call of its own."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from meshlens.probes.base import objects_dir

SHF_EXECINSTR = 0x4
CALL, TAIL_CALL = 0x85, 12
MOV_K = (0xB7, 0xB4)  # r = imm, w = imm
JMP_CLASSES = (0x05, 0x06)  # BPF_JMP, BPF_JMP32
NO_TARGET_OPS = (0x80, 0x90)  # call, exit


def program_sections(path: Path) -> dict[str, bytes]:
    """Executable sections of a 64-bit little-endian ELF object, by name."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not ELF64 LE"
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx]
    names = data[strtab[4] : strtab[4] + strtab[5]]
    out = {}
    for name_off, _type, flags, _addr, off, size, *_ in headers:
        if flags & SHF_EXECINSTR and size:
            name = names[name_off : names.index(b"\0", name_off)].decode()
            out[name] = data[off : off + size]
    return out


def indirect_tail_calls(code: bytes) -> list[int]:
    """Indexes of tail calls whose index is not a constant set just before, or
    that a jump lands on (so another path's index may reach them)."""
    insns = [struct.unpack_from("<BBhi", code, i) for i in range(0, len(code), 8)]
    targets = set()
    for i, (op, _regs, off, _imm) in enumerate(insns):
        if op & 0x07 in JMP_CLASSES and op & 0xF0 not in NO_TARGET_OPS:
            targets.add(i + off + 1)
    bad = []
    for i, (op, regs, _off, imm) in enumerate(insns):
        if op != CALL or regs >> 4 or imm != TAIL_CALL:
            continue
        prev_op, prev_regs = insns[i - 1][:2] if i else (0, 0)
        if prev_op not in MOV_K or prev_regs & 0x0F != 3 or i in targets:
            bad.append(i)
    return bad


OBJECTS = sorted(objects_dir().glob("*.bpf.o"))


@pytest.mark.skipif(not OBJECTS, reason="objects not built (make build)")
@pytest.mark.parametrize("path", OBJECTS, ids=[p.name for p in OBJECTS])
def test_tail_calls_are_direct(path: Path) -> None:
    bad = {
        name: at
        for name, code in program_sections(path).items()
        if (at := indirect_tail_calls(code))
    }
    assert not bad, f"{path.name}: tail calls with a variable index at {bad}"


def test_the_check_catches_a_merged_call() -> None:
    """What clang emitted for the dispatcher with plain bpf_tail_call(): two paths
    (r3 = 3 and r3 = 4) meeting at one call, and r3 copied from a register."""

    def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
        return struct.pack("<BBhi", op, dst | src << 4, off, imm)

    merged = b"".join([
        insn(0x15, 1, off=2),  # if r1 == 0 goto +2 (to the r1 = r6 below)
        insn(0xB4, 3, imm=3),  # w3 = 3
        insn(0x05, off=1),  # goto +1
        insn(0xB4, 3, imm=4),  # w3 = 4
        insn(0xBF, 1, 6),  # r1 = r6
        insn(CALL, imm=TAIL_CALL),  # call 12: r3 is 3 or 4
        insn(0xBC, 3, 7),  # w3 = w7
        insn(CALL, imm=TAIL_CALL),  # call 12: r3 is whatever r7 was
        insn(0xB4, 3, imm=0),  # w3 = 0
        insn(CALL, imm=TAIL_CALL),  # call 12: constant, direct
        insn(0x95),  # exit
    ])  # fmt: skip
    assert indirect_tail_calls(merged) == [5, 7]
