"""meshlens.btf against clang-built objects, hand-built blobs, vmlinux and malformed input."""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlens.btf import Btf, BtfError

VMLINUX = Path("/sys/kernel/btf/vmlinux")


def compile_bpf(out_dir: Path, source: str, target: str = "bpf") -> Path:
    """clang -g -O2 -target bpf -c; skips the test when clang is missing."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed; cannot build a BPF object")
    src = out_dir / f"prog_{target}.c"
    obj = out_dir / f"prog_{target}.o"
    src.write_text(source)
    # <linux/types.h> needs <asm/types.h>, which Debian keeps under the multiarch dir.
    incs = [f"-I{Path(p).parent.parent}" for p in glob.glob("/usr/include/*/asm/types.h")]
    cmd = [clang, "-g", "-O2", "-target", target, *incs, "-c", str(src), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"clang failed:\n{res.stderr}"
    return obj


SOURCE = r"""
#include <linux/types.h>

typedef __u32 my_u32;
typedef my_u32 flow_id_t;                 /* typedef chain */
typedef const volatile flow_id_t cv_id_t;

struct inner { __u16 port; __u8 proto; };
union addr { __u32 v4; __u8 v6[16]; };

struct outer {
    __u8 tag;
    __u64 bytes;
    struct inner in;
    union addr a;
    unsigned int f1:3, f2:13;
    __u32 grid[2][3];
    flow_id_t id;
    cv_id_t cid;
    struct outer *next;
    char comm[16];
};

enum color { RED, GREEN = 5, BLUE };
enum neg { NEG_A = -5, NEG_B = 3 };

const volatile __u32 cfg_a = 0x11223344;
const volatile __u64 cfg_b = 0x5566778899aabbccULL;
const volatile __u8 cfg_c[3] = { 0xde, 0xad, 0xbf };
const volatile __u16 cfg_d = 0xf00d;

__u64 counter;
__u32 seed = 7;
struct outer g_outer;
enum color g_color;
enum neg g_neg;
union addr g_addr;

int prog(void *ctx)
{
    return cfg_a + cfg_b + cfg_c[1] + cfg_d + counter + seed + g_outer.tag + g_color + g_neg
           + g_addr.v4;
}
"""


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(tmp_path_factory.mktemp("btf"), SOURCE)


@pytest.fixture(scope="module")
def btf(obj: Path) -> Btf:
    return Btf.from_file(obj)


# -- clang-built objects -------------------------------------------------------------------


def check_outer(btf: Btf) -> None:
    s = btf.struct("outer")
    assert (s.name, s.kind, s.size) == ("outer", "struct", 96)
    got = [(m.name, m.offset, m.size, m.type_name) for m in s.members]
    assert got == [
        ("tag", 0, 1, "unsigned char"),
        ("bytes", 8, 8, "unsigned long long"),
        ("in", 16, 4, "struct inner"),
        ("a", 20, 16, "union addr"),
        ("f1", 36, 4, "unsigned int"),
        ("f2", 36, 4, "unsigned int"),
        ("grid", 40, 24, "unsigned int[2][3]"),
        ("id", 64, 4, "unsigned int"),
        ("cid", 68, 4, "unsigned int"),
        ("next", 72, 8, "struct outer *"),
        ("comm", 80, 16, "char[16]"),
    ]
    f1, f2 = s.member("f1"), s.member("f2")
    assert (f1.bit_offset, f1.bitfield_size) == (288, 3)
    assert (f2.bit_offset, f2.bitfield_size) == (291, 13)
    assert s.member("tag").bitfield_size == 0
    assert btf.type_size(s.member("grid").type_id) == 24


def test_struct_arrays_nested_bitfields_typedef_chains(btf: Btf) -> None:
    check_outer(btf)
    inner = btf.struct("struct inner")
    assert inner.size == 4
    assert [(m.name, m.offset) for m in inner.members] == [("port", 0), ("proto", 2)]
    # typedef chain resolves to the base integer
    (tid,) = btf.find("cv_id_t", "typedef")
    assert btf.type_size(tid) == 4
    assert btf.type_name(tid) == "unsigned int"


def test_union(btf: Btf) -> None:
    u = btf.struct("union addr")
    assert (u.kind, u.size) == ("union", 16)
    assert [(m.name, m.offset, m.size, m.type_name) for m in u.members] == [
        ("v4", 0, 4, "unsigned int"),
        ("v6", 0, 16, "unsigned char[16]"),
    ]
    with pytest.raises(BtfError, match="no struct or union named 'addr'"):
        btf.struct("struct addr")


def test_enums(btf: Btf) -> None:
    assert btf.enum("color") == {"RED": 0, "GREEN": 5, "BLUE": 6}
    assert btf.enum("enum color") == btf.enum_containing("GREEN")
    neg = btf.enum_containing("NEG_A")
    # clang 14 leaves kind_flag clear (so the spec says unsigned); newer clang marks it signed.
    assert neg["NEG_A"] in (-5, 2**32 - 5)
    assert neg["NEG_B"] == 3
    with pytest.raises(BtfError, match="no enum named 'nope'"):
        btf.enum("nope")
    with pytest.raises(BtfError, match="enumerator named 'NOPE'"):
        btf.enum_containing("NOPE")


def test_rodata_offsets_come_from_symtab(btf: Btf, obj: Path) -> None:
    ro = btf.datasec(".rodata")
    assert {k: v[1] for k, v in ro.items()} == {"cfg_a": 4, "cfg_b": 8, "cfg_c": 3, "cfg_d": 2}
    offs = sorted((off, size) for off, size in ro.values())
    assert len({off for off, _ in offs}) == 4, f"offsets not fixed up: {ro}"
    for (o1, s1), (o2, _) in itertools.pairwise(offs):
        assert o1 + s1 <= o2, f"overlapping vars: {ro}"
    # Independent check: the initial values sit in the file at the same relative distances.
    data = obj.read_bytes()
    pos = {
        "cfg_a": data.find(struct.pack("<I", 0x11223344)),
        "cfg_b": data.find(struct.pack("<Q", 0x5566778899AABBCC)),
        "cfg_c": data.find(bytes([0xDE, 0xAD, 0xBF])),
        "cfg_d": data.find(struct.pack("<H", 0xF00D)),
    }
    assert all(p >= 0 for p in pos.values())
    for name in pos:
        assert pos[name] - pos["cfg_a"] == ro[name][0] - ro["cfg_a"][0]
    assert btf.datasec(".data") == {"seed": (0, 4)}
    bss = btf.datasec(".bss")
    assert bss["g_outer"][1] == 96 and bss["counter"][1] == 8
    with pytest.raises(BtfError, match=r"no DATASEC named '\.nope'"):
        btf.datasec(".nope")


def test_big_endian_object(tmp_path: Path, btf: Btf) -> None:
    be = Btf.from_file(compile_bpf(tmp_path, SOURCE, target="bpfeb"))
    check_outer(be)
    assert be.enum("color") == btf.enum("color")
    assert be.datasec(".rodata") == btf.datasec(".rodata")


def test_find(btf: Btf) -> None:
    assert len(btf.find("outer")) == 1
    assert btf.find("outer", "struct") == btf.find("outer")
    assert btf.find("outer", "union") == []
    assert btf.find("prog", "func")
    assert btf.find("missing") == []
    with pytest.raises(BtfError, match="unknown BTF kind 'bogus'"):
        btf.find("outer", "bogus")


def test_missing_member_message(btf: Btf) -> None:
    with pytest.raises(BtfError, match=r"struct outer has no member 'nope' \(members: tag, "):
        btf.struct("outer").member("nope")


# -- hand-built BTF ------------------------------------------------------------------------

# Kind numbers from include/uapi/linux/btf.h, written out independently of meshlens.btf.
_KIND_NAMES = (
    "unkn", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile",
    "const", "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag",
    "type_tag", "enum64",
)  # fmt: skip
KIND = {k: i for i, k in enumerate(_KIND_NAMES)}


class Builder:
    """Minimal BTF writer: add() returns the new type id."""

    def __init__(self) -> None:
        self.strs = b"\0"
        self.types: list[list[int]] = []

    def s(self, text: str) -> int:
        off = len(self.strs)
        self.strs += text.encode() + b"\0"
        return off

    def add(self, kind: str, name: str = "", vlen: int = 0, kflag: int = 0, st: int = 0,
            extra: tuple[int, ...] = ()) -> int:  # fmt: skip
        info = (kflag << 31) | (KIND[kind] << 24) | vlen
        self.types.append([self.s(name) if name else 0, info, st, *extra])
        return len(self.types)

    def build(self, endian: str = "<") -> bytes:
        words = [w for t in self.types for w in t]
        types = struct.pack(f"{endian}{len(words)}I", *words)
        hdr = struct.pack(f"{endian}HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types),
                          len(self.strs))  # fmt: skip
        return hdr + types + self.strs


def rich_builder() -> Builder:
    """One of every kind, including ENUM64, signed enums and kind_flag bitfields."""
    b = Builder()
    u32 = b.add("int", "unsigned int", st=4, extra=(32,))
    s64 = b.add("int", "long long", st=8, extra=((1 << 24) | 64,))
    u8 = b.add("int", "unsigned char", st=1, extra=(8,))
    tdef = b.add("typedef", "__u32", st=u32)
    vol = b.add("volatile", st=tdef)
    cst = b.add("const", st=vol)
    restrict = b.add("restrict", st=cst)
    tag = b.add("type_tag", "user", st=restrict)
    ptr = b.add("ptr", st=tag)
    idx = b.add("int", "__ARRAY_SIZE_TYPE__", st=4, extra=(32,))
    arr = b.add("array", extra=(u8, idx, 6))
    flt = b.add("float", "double", st=8)
    b.add("fwd", "fwd_s")
    b.add("fwd", "fwd_u", kflag=1)
    # struct bits { u32 a:3; u32 b:29; u8 name[6]; __u32 *p; double d; } with kind_flag set
    n = [b.s(x) for x in ("a", "b", "name", "p", "d")]
    bits = b.add("struct", "bits", vlen=5, kflag=1, st=32, extra=(
        n[0], u32, (3 << 24) | 0, n[1], u32, (29 << 24) | 3, n[2], arr, 32,
        n[3], ptr, 64, n[4], flt, 128))  # fmt: skip
    # old encoding: kind_flag clear, the member's INT carries offset/nr_bits
    bf_int = b.add("int", "unsigned int", st=4, extra=((2 << 16) | 5,))
    b.add("struct", "oldbits", vlen=1, st=4, extra=(b.s("x"), bf_int, 8))
    b.add("union", "u", vlen=2, st=8, extra=(b.s("i"), u32, 0, b.s("l"), s64, 0))
    b.add("enum", "sgn", vlen=2, kflag=1, st=4,
          extra=(b.s("S_NEG"), 2**32 - 7, b.s("S_POS"), 7))  # fmt: skip
    b.add("enum", "", vlen=1, st=4, extra=(b.s("U_BIG"), 2**32 - 7))
    b.add("enum64", "big", vlen=2, st=8,
          extra=(b.s("B_HUGE"), 0, 1 << 8, b.s("B_MAX"), 2**32 - 1, 2**32 - 1))  # fmt: skip
    b.add("enum64", "big_signed", vlen=1, kflag=1, st=8,
          extra=(b.s("BS_NEG"), 2**32 - 2, 2**32 - 1))  # fmt: skip
    proto = b.add("func_proto", vlen=1, st=u32, extra=(b.s("ctx"), ptr))
    func = b.add("func", "prog", vlen=1, st=proto)
    b.add("decl_tag", "tagged", st=func, extra=(2**32 - 1,))
    v1 = b.add("var", "v1", st=cst, extra=(1,))
    v2 = b.add("var", "v2", st=bits, extra=(1,))
    b.add("datasec", ".rodata", vlen=2, st=48, extra=(v1, 0, 4, v2, 16, 32))
    fp = b.add("ptr", st=proto)
    b.add("typedef", "handler_t", st=fp)
    return b


def check_rich(btf: Btf) -> None:
    s = btf.struct("bits")
    assert [(m.name, m.offset, m.bit_offset, m.bitfield_size, m.size, m.type_name)
            for m in s.members] == [
        ("a", 0, 0, 3, 4, "unsigned int"),
        ("b", 0, 3, 29, 4, "unsigned int"),
        ("name", 4, 32, 0, 6, "unsigned char[6]"),
        ("p", 8, 64, 0, 8, "unsigned int *"),
        ("d", 16, 128, 0, 8, "double"),
    ]  # fmt: skip
    x = btf.struct("oldbits").member("x")
    assert (x.offset, x.bit_offset, x.bitfield_size) == (1, 10, 5)
    assert btf.struct("u").kind == "union"
    assert btf.enum("sgn") == {"S_NEG": -7, "S_POS": 7}
    assert btf.enum_containing("U_BIG") == {"U_BIG": 2**32 - 7}
    assert btf.enum("big") == {"B_HUGE": 1 << 40, "B_MAX": 2**64 - 1}
    assert btf.enum("big_signed") == {"BS_NEG": -2}
    assert btf.datasec(".rodata") == {"v1": (0, 4), "v2": (16, 32)}
    assert btf.find("fwd_u", "fwd") and btf.find("tagged", "decl_tag")
    assert btf.find("user", "type_tag") and btf.find("double", "float")
    (h,) = btf.find("handler_t")
    assert btf.type_name(h) == "unsigned int (...) *"
    assert btf.type_size(h) == 8
    for name in ("prog", "fwd_s", "tagged"):  # func, fwd, decl_tag
        with pytest.raises(BtfError, match="has no size"):
            btf.type_size(btf.find(name)[0])
    with pytest.raises(BtfError, match="void has no size"):
        btf.type_size(0)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_hand_built_all_kinds(endian: str) -> None:
    check_rich(Btf.from_bytes(rich_builder().build(endian)))


def test_raw_file(tmp_path: Path) -> None:
    p = tmp_path / "blob.btf"
    p.write_bytes(rich_builder().build())
    check_rich(Btf.from_file(p))


# -- vmlinux -------------------------------------------------------------------------------


@pytest.mark.skipif(not os.access(VMLINUX, os.R_OK), reason="no readable /sys/kernel/btf/vmlinux")
def test_vmlinux() -> None:
    t0 = time.perf_counter()
    btf = Btf.from_file(VMLINUX)
    sc = btf.struct("sock_common")
    tcp = btf.struct("tcp_sock")
    elapsed = time.perf_counter() - t0
    assert elapsed < 5, f"loading vmlinux BTF took {elapsed:.2f}s"
    assert len(btf) > 10_000
    assert sc.member("skc_family").size == 2
    acked = tcp.member("bytes_acked")
    assert acked.size == 8 and acked.bitfield_size == 0
    assert acked.type_name in ("unsigned long long", "long long unsigned int")
    drops = btf.enum("skb_drop_reason")
    assert len(drops) > 50
    assert "SKB_DROP_REASON_NOT_SPECIFIED" in drops
    assert all(name.startswith("SKB_") for name in drops)
    assert sum(name.startswith("SKB_DROP_REASON_") for name in drops) > 50
    assert len(set(drops.values())) == len(drops)
    assert btf.enum_containing("SKB_DROP_REASON_NOT_SPECIFIED") == drops


# -- malformed input -----------------------------------------------------------------------


def header(endian: str = "<", **kw: int) -> bytes:
    f = {"magic": 0xEB9F, "version": 1, "flags": 0, "hdr_len": 24, "type_off": 0,
         "type_len": 0, "str_off": 0, "str_len": 1} | kw  # fmt: skip
    return struct.pack(f"{endian}HBBIIIII", *f.values())


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "truncated BTF header"),
        (b"\x9f\xeb\x01", "truncated BTF header"),
        (b"\x00" * 64, "bad BTF magic"),
        (header(version=2) + b"\0", "unsupported BTF version 2"),
        (header(hdr_len=4096) + b"\0", "bad BTF header length"),
        (header(str_len=100) + b"\0", "string section .* extends past the end"),
        (header(type_len=12) + b"\0", "type section .* extends past the end"),
        (header(type_len=3, str_off=3) + b"\0" * 4, "not 4-byte aligned"),
        (header(str_len=1) + b"x", "must start with a NUL"),
        (header(type_len=8, str_off=8) + b"\0" * 9, "record truncated"),
        (header(type_len=12, str_off=12) + struct.pack("<III", 0, 25 << 24, 0) + b"\0",
         "unknown BTF kind 25"),
        (header(type_len=12, str_off=12) + struct.pack("<III", 0, (4 << 24) | 1, 0) + b"\0",
         "extends past end of type section"),
        (b"\x7fELF\x02\x01" + b"\0" * 10, "truncated ELF header"),
        (b"\x7fELF\x01\x01" + b"\0" * 64, "only ELF64"),
        (b"\x7fELF\x02\x07" + b"\0" * 64, "bad ELF data encoding"),
    ],
)  # fmt: skip
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        Btf.from_bytes(data)


def test_truncated_valid_blob_at_every_length() -> None:
    blob = rich_builder().build()
    for n in range(len(blob)):
        with pytest.raises(BtfError):
            Btf.from_bytes(blob[:n])


def test_truncated_elf(obj: Path) -> None:
    data = obj.read_bytes()
    for n in (len(data) // 2, len(data) - 1, 100):
        with pytest.raises(BtfError, match=r"truncated|past the end|out of range"):
            Btf.from_bytes(data[:n])


def test_elf_without_btf(tmp_path: Path) -> None:
    obj = compile_bpf(tmp_path, "int x;")  # compiled with -g, so strip .BTF by hand:
    data = bytearray(obj.read_bytes())
    i = data.find(b".BTF\0")
    data[i : i + 4] = b".XYZ"
    with pytest.raises(BtfError, match=r"no \.BTF section"):
        Btf.from_bytes(bytes(data))


def test_bad_references() -> None:
    b = Builder()
    u32 = b.add("int", "u32", st=4, extra=(32,))
    b.add("struct", "dangling", vlen=1, st=4, extra=(b.s("m"), 999, 0))
    b.add("struct", "badname", vlen=1, st=4, extra=(5000, u32, 0))
    a = b.add("typedef", "loop_a", st=0)
    bb = b.add("typedef", "loop_b", st=a)
    b.types[a - 1][2] = bb  # loop_a -> loop_b -> loop_a
    arr = b.add("array", "", extra=(0, u32, 2))
    b.types[arr - 1][3] = arr  # array of itself
    btf = Btf.from_bytes(b.build())
    with pytest.raises(BtfError, match="type id 999 out of range"):
        btf.struct("dangling")
    with pytest.raises(BtfError, match="string offset 5000 out of range"):
        btf.struct("badname")
    with pytest.raises(BtfError, match="too deep"):
        btf.type_size(a)
    with pytest.raises(BtfError, match="too deep"):
        btf.type_size(arr)
    with pytest.raises(BtfError, match="too deep"):
        btf.type_name(arr)
    # A name offset past the string table poisons the name index with a clear error.
    b.types[0][0] = 10_000
    with pytest.raises(BtfError, match="string offset 10000 out of range"):
        Btf.from_bytes(b.build()).find("u32")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read"):
        Btf.from_file(tmp_path / "nope.o")


# -- fuzzing -------------------------------------------------------------------------------


def exercise(data: bytes) -> None:
    """Parse and poke at everything; only BtfError may escape."""
    try:
        btf = Btf.from_bytes(data)
    except BtfError:
        return
    for tid in range(len(btf)):
        for by_id in (btf.type_size, btf.type_name):
            with contextlib.suppress(BtfError):
                by_id(tid)
    lookups: list[tuple[Callable[[str], object], str]] = [
        (btf.struct, "bits"), (btf.struct, "outer"), (btf.struct, "u"), (btf.enum, "sgn"),
        (btf.enum, "big"), (btf.enum_containing, "U_BIG"), (btf.datasec, ".rodata"),
        (btf.find, "double"),
    ]  # fmt: skip
    for by_name, arg in lookups:
        with contextlib.suppress(BtfError):
            by_name(arg)


mutations = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8)


@settings(max_examples=400, deadline=None)
@given(mutations, st.integers(0, 10**6))
def test_fuzz_raw_blob(muts: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(rich_builder().build())
    for pos, val in muts:
        blob[pos % len(blob)] = val
    exercise(bytes(blob[: len(blob) - cut % 16]))


@settings(max_examples=200, deadline=None)
@given(mutations)
def test_fuzz_elf(obj: Path, muts: list[tuple[int, int]]) -> None:
    data = bytearray(obj.read_bytes())
    for pos, val in muts:
        # Bias towards the ELF header and the section headers (at the end of clang's output).
        where = (pos % 64, len(data) - 1 - pos % min(1024, len(data)), pos % len(data))
        data[where[pos % 3]] = val
    exercise(bytes(data))
