"""meshlens.layout: offsets, BTF checks against clang-built structs, encode/decode."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshlens.btf import Btf
from meshlens.layout import Layout, LayoutMismatch, layout


def compile_bpf(out_dir: Path, source: str) -> Path:
    """clang -g -O2 -target bpf -c; skips the test when clang is missing."""
    clang = shutil.which("clang")
    if clang is None:
        pytest.skip("clang is not installed; cannot build a BPF object")
    src, obj = out_dir / "layout.c", out_dir / "layout.o"
    src.write_text(source)
    # <linux/types.h> needs <asm/types.h>, which Debian keeps under the multiarch dir.
    incs = [f"-I{Path(p).parent.parent}" for p in glob.glob("/usr/include/*/asm/types.h")]
    cmd = [clang, "-g", "-O2", "-target", "bpf", *incs, "-c", str(src), "-o", str(obj)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, f"clang failed:\n{res.stderr}"
    return obj


SOURCE = r"""
#include <linux/types.h>

struct flow_key { __u32 saddr; __u32 daddr; __u16 sport; __u16 dport; __u8 proto; __u8 __pad0[3]; };
struct event { __u8 kind; __u64 ts; char comm[16]; __u32 addrs[4]; __s32 err; };
struct stats { __u64 packets; __u64 bytes; };
struct overaligned { __u64 a; __u8 b; } __attribute__((aligned(32)));
struct with_bits { __u32 a:4, b:28; };
union either { __u32 a; __u64 b; };

struct flow_key g_key;
struct stats g_stats;
struct overaligned g_over;
struct with_bits g_bits;
union either g_either;
/* Initialised in C so the test can look for Layout.encode()'s bytes in the object file. */
const volatile struct event g_event = {
    .kind = 0xa5, .ts = 0x0102030405060708ULL, .comm = "nginx",
    .addrs = { 0xdeadbeef, 2, 3, 0xcafef00d }, .err = -22,
};

int prog(void *ctx) { return g_key.proto + g_stats.bytes + g_over.b + g_bits.b + g_either.a + g_event.kind; }
"""  # noqa: E501

FLOW_KEY = layout(
    "flow_key",
    ("saddr", "u32"),
    ("daddr", "u32"),
    ("sport", "u16"),
    ("dport", "u16"),
    ("proto", "u8"),
    ("__pad0", "u8[3]"),
)
EVENT = layout(
    "event",
    ("kind", "u8"),
    ("ts", "u64"),
    ("comm", "char[16]"),
    ("addrs", "u32[4]"),
    ("err", "s32"),
)
STATS = layout("stats", ("packets", "u64"), ("bytes", "u64"))


@pytest.fixture(scope="module")
def obj(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_bpf(tmp_path_factory.mktemp("layout"), SOURCE)


@pytest.fixture(scope="module")
def btf(obj: Path) -> Btf:
    return Btf.from_file(obj)


# -- offsets -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "offsets", "size"),
    [
        ([("a", "u8"), ("b", "u64")], [0, 8], 16),
        ([("a", "u64"), ("b", "u8")], [0, 8], 16),
        ([("a", "u8"), ("b", "u16")], [0, 2], 4),
        ([("a", "u32"), ("b", "u8")], [0, 4], 8),
        ([("a", "char[3]"), ("b", "u16")], [0, 4], 6),
        ([("a", "u8"), ("b", "u32[4]"), ("c", "s8")], [0, 4, 20], 24),
        ([("a", "u8"), ("b", "u8[5]")], [0, 1], 6),
        ([("a", "s16"), ("b", "u64[3]"), ("c", "s32")], [0, 8, 32], 40),
    ],
)
def test_offsets_alignment_padding(
    fields: list[tuple[str, str]], offsets: list[int], size: int
) -> None:
    lay = layout("t", *fields)
    assert [lay.offset(n) for n, _ in fields] == offsets
    assert lay.size == size
    assert lay.dtype.itemsize == size
    assert [lay.dtype.fields[n][1] for n, _ in fields] == offsets  # type: ignore[index]


def test_bad_declarations() -> None:
    with pytest.raises(ValueError, match="unsupported ctype 'u128'"):
        layout("t", ("a", "u128"))
    with pytest.raises(ValueError, match="unsupported ctype 'char'"):
        layout("t", ("a", "char"))
    with pytest.raises(ValueError, match="unsupported ctype 'u8\\[0\\]'"):
        layout("t", ("a", "u8[0]"))
    with pytest.raises(ValueError, match="duplicate field name 'a'"):
        layout("t", ("a", "u8"), ("a", "u16"))
    with pytest.raises(ValueError, match="no fields"):
        layout("t")
    with pytest.raises(KeyError, match="no field 'zz'"):
        FLOW_KEY.offset("zz")


def test_dtype() -> None:
    dt = EVENT.dtype
    assert dt.names == ("kind", "ts", "comm", "addrs", "err")
    assert dt["comm"] == np.dtype("S16")
    assert dt["addrs"] == np.dtype(("<u4", (4,)))
    assert dt["err"] == np.dtype("<i4")
    assert dt["ts"] == np.dtype("<u8")


# -- check() against BTF -------------------------------------------------------------------


def test_check_passes_and_dtype_matches_btf(btf: Btf) -> None:
    for lay in (FLOW_KEY, EVENT, STATS):
        lay.check(btf)
        assert lay.dtype.itemsize == lay.size == btf.struct(lay.c_name).size
    assert FLOW_KEY.size == 16 and EVENT.size == 56


@pytest.mark.parametrize(
    ("lay", "message"),
    [
        (
            layout("stats", ("bytes", "u64"), ("packets", "u64")),
            "struct stats: field order differs; Python: bytes, packets; BTF: packets, bytes",
        ),
        (
            layout("stats", ("packets", "u64"), ("bytes", "u32")),
            r"struct stats\.bytes: expected u32 \(4 bytes\), "
            r"BTF has unsigned long long \(8 bytes\)",
        ),
        (
            layout("stats", ("packets", "u64"), ("bytes", "u64"), ("drops", "u64")),
            "struct stats: field\\(s\\) declared in Python but missing from BTF: drops",
        ),
        (
            layout("stats", ("packets", "u64")),
            r"struct stats: BTF has field\(s\) not declared in Python: "
            r"bytes \(unsigned long long at offset 8\)",
        ),
        (
            Layout("flow_key", FLOW_KEY.fields[:-1]),
            r"struct flow_key: BTF has field\(s\) not declared in Python: __pad0",
        ),
        (
            layout("event", *EVENT.fields[:3], ("addrs", "u32[2]"), ("err", "s32")),
            r"struct event\.addrs: expected u32\[2\] \(8 bytes\), BTF has unsigned int\[4\]",
        ),
        (
            layout("event", *EVENT.fields[:3], ("addrs", "u8[16]"), ("err", "s32")),
            r"struct event\.addrs: expected u8\[16\] \(16 bytes\), BTF has unsigned int\[4\]",
        ),
        (
            layout("event", ("kind", "u8"), ("ts", "u32"), *EVENT.fields[2:]),
            r"struct event\.ts: offset expected 4, BTF has 8",
        ),
        (
            layout("overaligned", ("a", "u64"), ("b", "u8")),
            r"struct overaligned: size expected 16, BTF has 32",
        ),
        (
            layout("with_bits", ("a", "u32"), ("b", "u32")),
            r"struct with_bits\.a: is a 4-bit bitfield in BTF",
        ),
        (layout("either", ("a", "u32"), ("b", "u64")), "struct either: is a union in BTF"),
        (layout("nope", ("a", "u32")), "struct nope: not found in BTF"),
    ],
)
def test_check_mismatch(btf: Btf, lay: Layout, message: str) -> None:
    with pytest.raises(LayoutMismatch, match=message):
        lay.check(btf)


# -- encode / decode -----------------------------------------------------------------------


def test_encode_matches_clang_initialiser(obj: Path) -> None:
    rec = EVENT.encode(
        kind=0xA5,
        ts=0x0102030405060708,
        comm=b"nginx",
        addrs=(0xDEADBEEF, 2, 3, 0xCAFEF00D),
        err=-22,
    )
    assert len(rec) == 56
    assert rec in obj.read_bytes()  # byte-for-byte what clang laid out, padding included


def test_round_trip() -> None:
    rec = EVENT.encode(kind=3, ts=2**64 - 1, comm=b"curl", addrs=[1, 2], err=-1)
    assert EVENT.decode(rec) == {
        "kind": 3,
        "ts": 2**64 - 1,
        "comm": b"curl",
        "addrs": (1, 2, 0, 0),
        "err": -1,
    }
    key = FLOW_KEY.encode(saddr=0x0A000001, dport=443, proto=6)
    assert FLOW_KEY.decode(memoryview(key)) == {
        "saddr": 0x0A000001,
        "daddr": 0,
        "sport": 0,
        "dport": 443,
        "proto": 6,
        "__pad0": b"\0\0\0",
    }
    assert FLOW_KEY.encode() == bytes(16)


def test_decode_many() -> None:
    buf = EVENT.encode(kind=1, ts=10, comm=b"a") + EVENT.encode(kind=2, ts=20, addrs=[7] * 4)
    arr = EVENT.decode_many(buf, 2)
    assert arr["kind"].tolist() == [1, 2]
    assert arr["ts"].tolist() == [10, 20]
    assert arr["comm"].tolist() == [b"a", b""]
    assert arr["addrs"][1].tolist() == [7, 7, 7, 7]
    assert np.shares_memory(arr, np.frombuffer(buf, np.uint8))


def test_encode_decode_errors() -> None:
    with pytest.raises(TypeError, match="unknown field\\(s\\) bogus"):
        STATS.encode(bogus=1)
    with pytest.raises(ValueError, match=r"struct event\.kind: 256 does not fit in u8"):
        EVENT.encode(kind=256)
    with pytest.raises(ValueError, match=r"struct event\.err: -2147483649 does not fit in s32"):
        EVENT.encode(err=-(2**31) - 1)
    with pytest.raises(ValueError, match=r"struct event\.comm: 17 bytes > char\[16\]"):
        EVENT.encode(comm=b"x" * 17)
    with pytest.raises(ValueError, match=r"struct event\.addrs: 5 items > u32\[4\]"):
        EVENT.encode(addrs=[1] * 5)
    with pytest.raises(TypeError, match=r"struct stats\.bytes: expected int, got str"):
        STATS.encode(bytes="1")
    with pytest.raises(ValueError, match="need 16 bytes, got 15"):
        STATS.decode(bytes(15))
    assert STATS.encode(bytes=np.uint64(5)) == STATS.encode(bytes=5)


u32s = st.integers(0, 2**32 - 1)


@settings(max_examples=100, deadline=None)
@given(
    st.integers(0, 255),
    st.integers(0, 2**64 - 1),
    st.binary(max_size=16).map(lambda b: b.rstrip(b"\0")),
    st.lists(u32s, min_size=4, max_size=4),
    st.integers(-(2**31), 2**31 - 1),
)
def test_round_trip_property(kind: int, ts: int, comm: bytes, addrs: list[int], err: int) -> None:
    rec = EVENT.encode(kind=kind, ts=ts, comm=comm, addrs=addrs, err=err)
    want = {"kind": kind, "ts": ts, "comm": comm, "addrs": tuple(addrs), "err": err}
    assert EVENT.decode(rec) == want
    row = EVENT.decode_many(rec, 1)[0]  # numpy agrees with struct-based decode
    assert {n: row[n].tolist() if n == "addrs" else row[n].item() for n in want} == want | {
        "addrs": addrs
    }
