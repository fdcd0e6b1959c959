"""Pure-Python reader for BTF (BPF Type Format).

Reads the ``.BTF`` section of an ELF64 object built by ``clang -g -target bpf`` (either
endianness) or a raw BTF blob such as ``/sys/kernel/btf/vmlinux``. Loading only indexes where
each type record starts; records are decoded on demand and the by-name index is built on first
use, so even vmlinux (>100k types) loads quickly.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["KINDS", "Btf", "BtfError", "Member", "StructInfo"]


class BtfError(Exception):
    """Malformed BTF/ELF input, or a lookup that found nothing."""


# BTF_KIND_* names; the index is the kind number (0 is BTF_KIND_UNKN, never a real type).
KINDS = (
    "unkn", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef", "volatile",
    "const", "restrict", "func", "func_proto", "var", "datasec", "float", "decl_tag",
    "type_tag", "enum64",
)  # fmt: skip
(INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC,
 FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64) = range(1, 20)  # fmt: skip

# u32 words that follow the 3-word struct btf_type: a fixed part plus a per-vlen part.
_FIXED = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_PER_VLEN = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)
_MODIFIERS = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
_SIZED = frozenset({INT, STRUCT, UNION, ENUM, DATASEC, FLOAT, ENUM64})
_MAX_DEPTH = 64  # bounds type-chain walks so a malicious cycle cannot hang us
_PTR_SIZE = 8  # BPF and every 64-bit kernel
_HDR_LEN = 24


@dataclass(frozen=True)
class Member:
    """One struct/union member. ``bit_offset`` counts bits from the start of the struct."""

    name: str
    offset: int  # bytes (bit_offset // 8)
    bit_offset: int
    bitfield_size: int  # 0 unless a bitfield
    size: int  # sizeof the member's resolved type
    type_name: str  # C-ish spelling with typedef/const/volatile stripped
    type_id: int


@dataclass(frozen=True)
class StructInfo:
    name: str
    size: int
    members: tuple[Member, ...]
    kind: str  # "struct" | "union"

    def member(self, name: str) -> Member:
        """The top-level member called ``name`` (anonymous members are not searched)."""
        for m in self.members:
            if m.name == name:
                return m
        have = ", ".join(m.name or "(anon)" for m in self.members)
        raise BtfError(f"{self.kind} {self.name} has no member {name!r} (members: {have})")


class _Type(NamedTuple):
    name_off: int
    kind: int
    kflag: int
    vlen: int
    size_or_type: int
    extra: int  # word index of the kind-specific data


class Btf:
    """Parsed BTF. Build with :meth:`from_file` or :meth:`from_bytes`."""

    def __init__(
        self,
        words: array[int],
        strings: bytes,
        symbols: dict[str, dict[str, tuple[int, int]]] | None = None,
    ) -> None:
        self._w = words
        self._strs = strings
        self._offs = _index(words)
        # ELF section name -> {symbol: (value, size)}; None for raw BTF.
        self._symbols = symbols
        self._str_cache: dict[int, str] = {}
        self._by_name: dict[str, list[int]] | None = None
        self._by_enumerator: dict[str, int] | None = None

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Btf:
        """Load an ELF object (its ``.BTF`` section) or a raw BTF file."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise BtfError(f"cannot read {os.fspath(path)!r}: {e}") from e
        return cls.from_bytes(data)

    @classmethod
    def from_bytes(cls, data: bytes) -> Btf:
        """Parse ELF64 (detected by ``\\x7fELF``) or raw BTF (magic 0xeB9F) bytes."""
        data = bytes(data)
        if data[:4] == b"\x7fELF":
            btf, symbols = _parse_elf(data)
            words, strings = _parse_raw(btf)
            return cls(words, strings, symbols)
        words, strings = _parse_raw(data)
        return cls(words, strings)

    # -- public lookups -----------------------------------------------------------------

    def __len__(self) -> int:
        """Number of type ids, including id 0 (void)."""
        return len(self._offs)

    def find(self, name: str, kind: str | None = None) -> list[int]:
        """Type ids named ``name``, optionally only of ``kind`` (e.g. "struct", "typedef")."""
        ids = self._names().get(name, [])
        if kind is None:
            return list(ids)
        try:
            k = KINDS.index(kind, 1)
        except ValueError:
            raise BtfError(f"unknown BTF kind {kind!r}; expected one of {KINDS[1:]}") from None
        return [t for t in ids if self._rec(t).kind == k]

    def struct(self, name: str) -> StructInfo:
        """The struct or union called ``name`` ("struct "/"union " prefixes are accepted)."""
        kinds, bare = _split_tag(name, {"struct": STRUCT, "union": UNION}, (STRUCT, UNION))
        for tid in self._names().get(bare, ()):
            t = self._rec(tid)
            if t.kind in kinds:
                return self._struct_info(t)
        raise BtfError(f"no struct or union named {bare!r} in BTF")

    def enum(self, name: str) -> dict[str, int]:
        """Enumerators of the ENUM/ENUM64 called ``name`` ("enum " prefix accepted)."""
        _, bare = _split_tag(name, {"enum": ENUM}, ())
        if self._by_name is not None:
            candidates: Iterable[int] = self._by_name.get(bare, ())
        else:
            # Without the name index (a vmlinux is ~126k names, many MB of
            # strings), compare the name bytes of the enums only.
            want = bare.encode() + b"\0"
            strs, w, offs = self._strs, self._w, self._offs
            candidates = (
                tid
                for tid in range(1, len(offs))
                if ((w[offs[tid] + 1] >> 24) & 0x1F) in (ENUM, ENUM64)
                and strs[w[offs[tid]] : w[offs[tid]] + len(want)] == want
            )
        for tid in candidates:
            t = self._rec(tid)
            if t.kind in (ENUM, ENUM64):
                return self._enum_values(t)
        raise BtfError(f"no enum named {bare!r} in BTF")

    def enum_containing(self, value_name: str) -> dict[str, int]:
        """The (possibly anonymous) enum that has an enumerator called ``value_name``."""
        if self._by_enumerator is None:
            index: dict[str, int] = {}
            for tid in range(1, len(self._offs)):
                t = self._rec(tid)
                if t.kind in (ENUM, ENUM64):
                    step = 2 if t.kind == ENUM else 3
                    for i in range(t.vlen):
                        index.setdefault(self._str(self._w[t.extra + step * i]), tid)
            self._by_enumerator = index
        found = self._by_enumerator.get(value_name)
        if found is None:
            raise BtfError(f"no enum has an enumerator named {value_name!r}")
        return self._enum_values(self._rec(found))

    def datasec(self, name: str) -> dict[str, tuple[int, int]]:
        """``{var: (offset, size)}`` for a DATASEC such as ".rodata".

        For ELF input the symbol table wins over the BTF values, because clang leaves the
        DATASEC offsets at 0 until libbpf fixes them up at load time.
        """
        for tid in self._names().get(name, ()):
            t = self._rec(tid)
            if t.kind != DATASEC:
                continue
            syms = (self._symbols or {}).get(name, {})
            out: dict[str, tuple[int, int]] = {}
            for i in range(t.vlen):
                vtype, off, size = self._w[t.extra + 3 * i : t.extra + 3 * i + 3]
                var = self._str(self._rec(vtype).name_off)
                out[var] = syms.get(var, (off, size))
            return out
        raise BtfError(f"no DATASEC named {name!r} in BTF")

    def type_size(self, type_id: int) -> int:
        """sizeof the type, following typedefs/modifiers/vars and multiplying arrays out."""
        return self._size(type_id, 0)

    def type_name(self, type_id: int) -> str:
        """C-ish spelling of the type with typedef/const/volatile/restrict stripped."""
        return self._spell(type_id, 0)

    # -- internals ----------------------------------------------------------------------

    def _rec(self, tid: int) -> _Type:
        if not 0 < tid < len(self._offs):
            raise BtfError(f"type id {tid} out of range (valid ids are 1..{len(self._offs) - 1})")
        p = self._offs[tid]
        w = self._w
        info = w[p + 1]
        return _Type(w[p], (info >> 24) & 0x1F, info >> 31, info & 0xFFFF, w[p + 2], p + 3)

    def _str(self, off: int) -> str:
        s = self._str_cache.get(off)
        if s is None:
            strs = self._strs
            if off >= len(strs):
                raise BtfError(
                    f"string offset {off} out of range (string section is {len(strs)} bytes)"
                )
            end = strs.find(b"\0", off)
            if end < 0:
                raise BtfError(f"unterminated string at string offset {off}")
            s = self._str_cache[off] = strs[off:end].decode("utf-8", "replace")
        return s

    def _names(self) -> dict[str, list[int]]:
        if self._by_name is None:
            w, offs = self._w, self._offs
            by_off: dict[int, list[int]] = {}
            for tid in range(1, len(offs)):
                off = w[offs[tid]]
                if off:
                    by_off.setdefault(off, []).append(tid)
            by_name: dict[str, list[int]] = {}
            for off, ids in by_off.items():
                by_name.setdefault(self._str(off), []).extend(ids)
            for ids in by_name.values():
                ids.sort()
            self._by_name = by_name
        return self._by_name

    def _strip(self, tid: int) -> int:
        """Follow typedef/const/volatile/restrict/type_tag; returns 0 for void."""
        for _ in range(_MAX_DEPTH):
            if tid == 0:
                return 0
            t = self._rec(tid)
            if t.kind not in _MODIFIERS:
                return tid
            tid = t.size_or_type
        raise BtfError(f"type chain at id {tid} is too deep (a loop?)")

    def _size(self, tid: int, depth: int) -> int:
        if depth > _MAX_DEPTH:
            raise BtfError(f"type chain at id {tid} is too deep (a loop?)")
        tid = self._strip(tid)
        if tid == 0:
            raise BtfError("void has no size")
        t = self._rec(tid)
        if t.kind in _SIZED:
            return t.size_or_type
        if t.kind == PTR:
            return _PTR_SIZE
        if t.kind == VAR:
            return self._size(t.size_or_type, depth + 1)
        if t.kind == ARRAY:
            elem, nelems = self._w[t.extra], self._w[t.extra + 2]
            return nelems * self._size(elem, depth + 1)
        raise BtfError(f"type id {tid} ({KINDS[t.kind]}) has no size")

    def _spell(self, tid: int, depth: int) -> str:
        if depth > _MAX_DEPTH:
            raise BtfError(f"type chain at id {tid} is too deep (a loop?)")
        tid = self._strip(tid)
        dims = ""
        for _ in range(_MAX_DEPTH):  # int[2][3] is an array of 2 arrays of 3
            if tid == 0 or self._rec(tid).kind != ARRAY:
                break
            t = self._rec(tid)
            dims += f"[{self._w[t.extra + 2]}]"
            tid = self._strip(self._w[t.extra])
        else:
            raise BtfError(f"array nesting at type id {tid} is too deep (a loop?)")
        if tid == 0:
            return "void" + dims
        t = self._rec(tid)
        k, name = t.kind, self._str(t.name_off)
        if k in (STRUCT, UNION, ENUM, ENUM64, FWD):
            tag = "enum" if k == ENUM64 else KINDS[k]
            if k == FWD:
                tag = "union" if t.kflag else "struct"
            base = f"{tag} {name or '(anon)'}"
        elif k == PTR:
            base = self._spell(t.size_or_type, depth + 1) + " *"
        elif k == FUNC_PROTO:
            base = self._spell(t.size_or_type, depth + 1) + " (...)"
        else:  # INT, FLOAT, FUNC, VAR, DATASEC, DECL_TAG
            base = name or f"({KINDS[k]})"
        return base + dims

    def _struct_info(self, t: _Type) -> StructInfo:
        w = self._w
        members = []
        for i in range(t.vlen):
            q = t.extra + 3 * i
            name_off, mtype, moff = w[q], w[q + 1], w[q + 2]
            if t.kflag:  # bitfield size in the top 8 bits, bit offset in the low 24
                bits, bsize = moff & 0xFFFFFF, moff >> 24
            else:
                bits, bsize = moff, 0
                base = self._strip(mtype)
                if base and self._rec(base).kind == INT:
                    # Old encoding: a bitfield points at an INT with fewer bits than its size.
                    it = self._rec(base)
                    enc = w[it.extra]
                    nbits, ioff = enc & 0xFF, (enc >> 16) & 0xFF
                    if ioff or nbits != it.size_or_type * 8:
                        bits, bsize = bits + ioff, nbits
            members.append(
                Member(
                    name=self._str(name_off),
                    offset=bits // 8,
                    bit_offset=bits,
                    bitfield_size=bsize,
                    size=self._size(mtype, 0),
                    type_name=self._spell(mtype, 0),
                    type_id=mtype,
                )
            )
        return StructInfo(self._str(t.name_off), t.size_or_type, tuple(members), KINDS[t.kind])

    def _enum_values(self, t: _Type) -> dict[str, int]:
        # kind_flag set means signed values; clear means unsigned (the 6.0+ BTF spec).
        w, out = self._w, {}
        for i in range(t.vlen):
            if t.kind == ENUM:
                q = t.extra + 2 * i
                v = w[q + 1]
                if t.kflag and v >= 1 << 31:
                    v -= 1 << 32
            else:
                q = t.extra + 3 * i
                v = w[q + 1] | (w[q + 2] << 32)
                if t.kflag and v >= 1 << 63:
                    v -= 1 << 64
            out[self._str(w[q])] = v
        return out


def _split_tag(
    name: str, tags: dict[str, int], default: tuple[int, ...]
) -> tuple[tuple[int, ...], str]:
    """Split an optional "struct "/"union "/"enum " prefix off a name."""
    tag, _, rest = name.partition(" ")
    if rest and tag in tags:
        return (tags[tag],), rest.strip()
    return default, name


def _index(words: array[int]) -> array[int]:
    """Word offset of every type record; index = type id (entry 0 is a dummy for void)."""
    offs = array("I", [0])
    append = offs.append
    fixed, per = _FIXED, _PER_VLEN
    n, p = len(words), 0
    while p < n:
        if p + 3 > n:
            raise BtfError(f"type id {len(offs)}: record truncated at end of type section")
        info = words[p + 1]
        kind = (info >> 24) & 0x1F
        if not 0 < kind < len(KINDS):
            raise BtfError(f"type id {len(offs)}: unknown BTF kind {kind}")
        append(p)
        p += 3 + fixed[kind] + per[kind] * (info & 0xFFFF)
    if p != n:
        raise BtfError(f"type id {len(offs) - 1}: record extends past end of type section")
    return offs


def _parse_raw(data: bytes) -> tuple[array[int], bytes]:
    """Split a raw BTF blob into native-endian u32 type words and the string section."""
    if len(data) < _HDR_LEN:
        raise BtfError(f"truncated BTF header: {len(data)} bytes, need {_HDR_LEN}")
    if data[:2] == b"\x9f\xeb":
        e = "<"
    elif data[:2] == b"\xeb\x9f":
        e = ">"
    else:
        raise BtfError(f"bad BTF magic {data[:2].hex()} (expected 0xeb9f)")
    version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
        e + "BBIIIII", data, 2
    )
    if version != 1:
        raise BtfError(f"unsupported BTF version {version}")
    if not _HDR_LEN <= hdr_len <= len(data):
        raise BtfError(f"bad BTF header length {hdr_len} (data is {len(data)} bytes)")
    body = len(data) - hdr_len
    for what, off, ln in (("type", type_off, type_len), ("string", str_off, str_len)):
        if off + ln > body:
            raise BtfError(
                f"BTF {what} section [{off}, {off + ln}) extends past the end of the data "
                f"({body} bytes after the header); file truncated?"
            )
    if type_off % 4 or type_len % 4:
        raise BtfError("BTF type section is not 4-byte aligned")
    words = array("I")
    words.frombytes(data[hdr_len + type_off : hdr_len + type_off + type_len])
    if (e == "<") != (sys.byteorder == "little"):
        words.byteswap()
    strings = data[hdr_len + str_off : hdr_len + str_off + str_len]
    if not strings or strings[0] != 0:
        raise BtfError("BTF string section must start with a NUL byte")
    return words, strings


_ELF_SHDR = "IIQQQQIIQQ"  # Elf64_Shdr
_ELF_SYM = "IBBHQQ"  # Elf64_Sym
_SHT_SYMTAB = 2


def _parse_elf(data: bytes) -> tuple[bytes, dict[str, dict[str, tuple[int, int]]]]:
    """Return the .BTF section and {section: {symbol: (value, size)}} of an ELF64 file."""
    if len(data) < 64:
        raise BtfError(f"truncated ELF header: {len(data)} bytes")
    if data[4] != 2:
        raise BtfError(f"only ELF64 is supported (EI_CLASS={data[4]})")
    e = {1: "<", 2: ">"}.get(data[5])
    if e is None:
        raise BtfError(f"bad ELF data encoding {data[5]}")
    (shoff,) = struct.unpack_from(e + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", data, 0x3A)
    if shentsize < struct.calcsize(e + _ELF_SHDR):
        raise BtfError(f"bad ELF section header size {shentsize}")

    def shdr(i: int) -> tuple[int, ...]:
        off = shoff + i * shentsize
        if off + shentsize > len(data):
            raise BtfError(f"ELF section header {i} is past the end of the file (truncated?)")
        return struct.unpack_from(e + _ELF_SHDR, data, off)

    if shnum == 0 and shoff:  # extended numbering: the count lives in section 0
        shnum = shdr(0)[5]
    if shoff + shnum * shentsize > len(data):
        raise BtfError(
            f"ELF section header table ({shnum} entries at offset {shoff}) extends past the "
            f"end of the file ({len(data)} bytes); truncated?"
        )
    sections = [shdr(i) for i in range(shnum)]
    if shstrndx == 0xFFFF and sections:
        shstrndx = sections[0][6]

    def content(i: int) -> bytes:
        if not 0 <= i < len(sections):
            raise BtfError(f"ELF section index {i} out of range")
        off, size = sections[i][4], sections[i][5]
        if off + size > len(data):
            raise BtfError(f"ELF section {i} extends past the end of the file (truncated?)")
        return data[off : off + size]

    def cstr(table: bytes, off: int) -> str:
        end = table.find(b"\0", off)
        if off >= len(table) or end < 0:
            raise BtfError(f"ELF string offset {off} out of range")
        return table[off:end].decode("utf-8", "replace")

    shstr = content(shstrndx)
    names = [cstr(shstr, s[0]) for s in sections]
    if ".BTF" not in names:
        raise BtfError("ELF file has no .BTF section (was it compiled with -g?)")
    btf = content(names.index(".BTF"))

    symbols: dict[str, dict[str, tuple[int, int]]] = {}
    sym = struct.Struct(e + _ELF_SYM)
    for i, s in enumerate(sections):
        if s[1] != _SHT_SYMTAB:
            continue
        table, strtab = content(i), content(s[6])
        for st_name, _info, _other, shndx, value, size in sym.iter_unpack(
            table[: len(table) - len(table) % sym.size]
        ):
            if st_name and 0 < shndx < len(names):
                symbols.setdefault(names[shndx], {})[cstr(strtab, st_name)] = (value, size)
    return btf, symbols
