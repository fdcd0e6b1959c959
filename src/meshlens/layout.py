"""Python mirrors of structs shared between BPF programs and user space.

A :class:`Layout` lists a C struct's fields in order; offsets follow natural C alignment.
``check()`` compares it with the struct in a compiled object's BTF so that drift between the C
and Python sides fails loudly at load time (and in unit tests) instead of garbling data.
"""

from __future__ import annotations

import operator
import re
import struct
from dataclasses import dataclass, field
from math import prod
from typing import Any

import numpy as np
import numpy.typing as npt

from meshlens.btf import Btf, BtfError

__all__ = ["Layout", "LayoutMismatch", "layout"]


class LayoutMismatch(Exception):
    """The Python layout disagrees with the BTF of the compiled object."""


# base ctype -> (size, struct code, numpy code); all little-endian (BPF on x86-64/arm64).
_BASES = {
    "u8": (1, "B", "u1"), "u16": (2, "H", "u2"), "u32": (4, "I", "u4"), "u64": (8, "Q", "u8"),
    "s8": (1, "b", "i1"), "s16": (2, "h", "i2"), "s32": (4, "i", "i4"), "s64": (8, "q", "i8"),
    "char": (1, "s", "S"),
    # kernel-owned bytes user space never reads (e.g. struct bpf_timer): size is checked,
    # not type; 8-byte aligned like the kernel's opaque structs
    "opaque": (1, "s", "V"),
}  # fmt: skip
_CTYPE = re.compile(r"(u8|u16|u32|u64|s8|s16|s32|s64|char|opaque)(?:\[([1-9][0-9]*)\])?")
_DIMS = re.compile(r"(?:\[\d+\])+$")

Value = int | bytes | tuple[int, ...]


@dataclass(frozen=True)
class _Field:
    name: str
    ctype: str
    base: str
    count: int | None  # None for a scalar
    offset: int

    @property
    def size(self) -> int:
        return _BASES[self.base][0] * (self.count or 1)

    @property
    def is_bytes(self) -> bool:  # u8[N] and char[N] travel as bytes
        return self.count is not None and self.base in ("u8", "char", "opaque")


@dataclass(frozen=True)
class Layout:
    """A C struct as an ordered field table, e.g. ``("saddr", "u32"), ("comm", "char[16]")``."""

    c_name: str
    fields: tuple[tuple[str, str], ...]
    _fields: tuple[_Field, ...] = field(init=False, repr=False, compare=False)
    _size: int = field(init=False, repr=False, compare=False)
    _struct: struct.Struct = field(init=False, repr=False, compare=False)
    _dtype: np.dtype[np.void] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.fields:
            raise ValueError(f"layout {self.c_name}: no fields")
        out: list[_Field] = []
        fmt, off, align, seen = "<", 0, 1, set()
        for name, ctype in self.fields:
            m = _CTYPE.fullmatch(ctype)
            if m is None or (m[1] in ("char", "opaque") and m[2] is None):
                raise ValueError(f"layout {self.c_name}.{name}: unsupported ctype {ctype!r}")
            if name in seen or not name.isidentifier():
                raise ValueError(f"layout {self.c_name}: bad or duplicate field name {name!r}")
            seen.add(name)
            base, count = m[1], int(m[2]) if m[2] else None
            elem, code = _BASES[base][0], _BASES[base][1]
            elem = 8 if base == "opaque" else elem
            start = -(-off // elem) * elem  # round up to the natural alignment
            f = _Field(name, ctype, base, count, start)
            fmt += f"{start - off}x" if start > off else ""
            fmt += f"{count}s" if f.is_bytes else code if count is None else f"{count}{code}"
            out.append(f)
            off, align = start + f.size, max(align, elem)
        size = -(-off // align) * align  # sizeof pads to the largest member alignment
        fmt += f"{size - off}x" if size > off else ""
        dt = np.dtype(
            {
                "names": [f.name for f in out],
                "formats": [_np_format(f) for f in out],
                "offsets": [f.offset for f in out],
                "itemsize": size,
            }
        )
        object.__setattr__(self, "_fields", tuple(out))
        object.__setattr__(self, "_size", size)
        object.__setattr__(self, "_struct", struct.Struct(fmt))
        object.__setattr__(self, "_dtype", dt)

    @property
    def dtype(self) -> np.dtype[np.void]:
        """Structured dtype with explicit offsets; itemsize == sizeof(struct)."""
        return self._dtype

    @property
    def size(self) -> int:
        return self._size

    def offset(self, name: str) -> int:
        return self._field(name).offset

    def check(self, btf: Btf) -> None:
        """Raise LayoutMismatch unless ``struct c_name`` in ``btf`` has exactly these fields."""
        where = f"struct {self.c_name}"
        try:
            st = btf.struct(self.c_name)
        except BtfError as e:
            raise LayoutMismatch(f"{where}: not found in BTF ({e})") from e
        if st.kind != "struct":
            raise LayoutMismatch(f"{where}: is a {st.kind} in BTF, not a struct")
        py = [f.name for f in self._fields]
        bt = [m.name for m in st.members]
        extra = [m for m in st.members if m.name not in py]
        if extra:
            desc = ", ".join(
                f"{m.name or '(anon)'} ({m.type_name} at offset {m.offset})" for m in extra
            )
            raise LayoutMismatch(f"{where}: BTF has field(s) not declared in Python: {desc}")
        missing = [n for n in py if n not in bt]
        if missing:
            raise LayoutMismatch(
                f"{where}: field(s) declared in Python but missing from BTF: {', '.join(missing)}"
            )
        if py != bt:
            raise LayoutMismatch(
                f"{where}: field order differs; Python: {', '.join(py)}; BTF: {', '.join(bt)}"
            )
        for f, m in zip(self._fields, st.members, strict=True):
            at = f"{where}.{f.name}"
            if m.bitfield_size:
                raise LayoutMismatch(f"{at}: is a {m.bitfield_size}-bit bitfield in BTF")
            if m.offset != f.offset:
                raise LayoutMismatch(f"{at}: offset expected {f.offset}, BTF has {m.offset}")
            if f.base == "opaque":
                if m.size != f.size:
                    raise LayoutMismatch(
                        f"{at}: expected {f.size} opaque bytes, BTF has {m.type_name} "
                        f"({m.size} bytes)"
                    )
                continue
            dims = _DIMS.search(m.type_name)
            count = prod(int(d) for d in re.findall(r"\d+", dims[0])) if dims else None
            if m.size != f.size or count != f.count:
                raise LayoutMismatch(
                    f"{at}: expected {f.ctype} ({f.size} bytes), "
                    f"BTF has {m.type_name} ({m.size} bytes)"
                )
        if st.size != self.size:
            raise LayoutMismatch(f"{where}: size expected {self.size}, BTF has {st.size}")

    def decode(self, buf: bytes | bytearray | memoryview) -> dict[str, Value]:
        """One record. Scalars -> int, u8[N] -> bytes, char[N] -> bytes without trailing NULs,
        other arrays -> tuple of ints."""
        if len(buf) < self.size:
            raise ValueError(f"struct {self.c_name}: need {self.size} bytes, got {len(buf)}")
        vals = self._struct.unpack_from(buf)
        out: dict[str, Value] = {}
        i = 0
        for f in self._fields:
            if f.count is None or f.is_bytes:
                v = vals[i]
                out[f.name] = v.rstrip(b"\0") if f.base == "char" else v
                i += 1
            else:
                out[f.name] = tuple(vals[i : i + f.count])
                i += f.count
        return out

    def decode_many(self, buf: bytes | bytearray | memoryview, count: int) -> npt.NDArray[np.void]:
        """Zero-copy structured view of ``count`` consecutive records."""
        return np.frombuffer(buf, dtype=self._dtype, count=count)

    def encode(self, **values: Any) -> bytes:
        """Build one record; fields not given are zero. Short bytes/arrays are zero-padded."""
        unknown = set(values) - {f.name for f in self._fields}
        if unknown:
            raise TypeError(f"struct {self.c_name}: unknown field(s) {', '.join(sorted(unknown))}")
        args: list[Any] = []
        for f in self._fields:
            v = values.get(f.name)
            if f.is_bytes:
                b = bytes(v or b"")
                if len(b) > (f.count or 0):
                    raise ValueError(f"struct {self.c_name}.{f.name}: {len(b)} bytes > {f.ctype}")
                args.append(b)
            elif f.count is None:
                args.append(_checked_int(self.c_name, f, 0 if v is None else v))
            else:
                items = [_checked_int(self.c_name, f, x) for x in (v or ())]
                if len(items) > f.count:
                    raise ValueError(
                        f"struct {self.c_name}.{f.name}: {len(items)} items > {f.ctype}"
                    )
                args.extend(items + [0] * (f.count - len(items)))
        return self._struct.pack(*args)

    def _field(self, name: str) -> _Field:
        for f in self._fields:
            if f.name == name:
                return f
        raise KeyError(f"struct {self.c_name} has no field {name!r}")


def layout(c_name: str, *fields: tuple[str, str]) -> Layout:
    """``layout("flow_key", ("saddr", "u32"), ("daddr", "u32"), ...)``."""
    return Layout(c_name, tuple(fields))


def _np_format(f: _Field) -> str | tuple[str, tuple[int]]:
    if f.base == "char":
        return f"S{f.count}"
    if f.base == "opaque":
        return f"V{f.count}"
    code = "<" + _BASES[f.base][2]
    return code if f.count is None else (code, (f.count,))


def _checked_int(c_name: str, f: _Field, value: Any) -> int:
    try:
        v = operator.index(value)  # accepts numpy integers too
    except TypeError:
        raise TypeError(
            f"struct {c_name}.{f.name}: expected int, got {type(value).__name__}"
        ) from None
    bits = _BASES[f.base][0] * 8
    lo, hi = (
        (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if f.base[0] == "s" else (0, (1 << bits) - 1)
    )
    if not lo <= v <= hi:
        raise ValueError(f"struct {c_name}.{f.name}: {v} does not fit in {f.base}")
    return v
