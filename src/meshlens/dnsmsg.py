"""DNS messages (RFC 1035) in pure Python: a strict, bounded decoder for what the
kernel copies up (a question, the first bytes of a response) and a small encoder
for tests, benchmarks and the load generator.

Decoding never loops and never raises anything but `Malformed`: every name is at
most 255 bytes on the wire with labels of at most 63; a compression pointer must
point strictly backwards (so no loop can form) and a name follows at most 127 of
them; every count is checked against the bytes that are really there. A message
the kernel only copied in part (`len(buf) < total`) decodes as far as the copy
goes and says so (`Message.partial`) instead of calling its counts lies.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

HEADER_LEN = 12
NAME_MAX = 255  # wire bytes, length octets and the root label included
LABEL_MAX = 63
MAX_POINTERS = 127  # no name needs more: each one skips at least one label

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_PTR = 1, 2, 5, 6, 12
TYPE_MX, TYPE_TXT, TYPE_AAAA, TYPE_SRV, TYPE_OPT = 15, 16, 28, 33, 41

QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT",
    28: "AAAA", 33: "SRV", 35: "NAPTR", 39: "DNAME", 43: "DS", 48: "DNSKEY", 52: "TLSA",
    64: "SVCB", 65: "HTTPS", 99: "SPF", 252: "AXFR", 255: "ANY", 257: "CAA",
}  # fmt: skip
QTYPE_CODES = {v: k for k, v in QTYPES.items()}
RCODES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE",
}  # fmt: skip
RCODE_CODES = {v: k for k, v in RCODES.items()}
OTHER = "other"  # label value for a type or rcode outside the closed sets

# Why a message is malformed; the same words label meshlens_dns_malformed_total
# for what the kernel finds (probes/dns.py MALFORMED) and what this decoder finds.
REASONS = (
    "short",  # shorter than the 12-byte header
    "label",  # a label longer than 63 (the reserved 0x40/0x80 label types)
    "pointer",  # a compression pointer that does not point strictly backwards
    "pointer_loop",  # more than MAX_POINTERS pointers in one name
    "name_too_long",  # a name longer than 255 bytes
    "truncated",  # the message ends inside a name, a question or a record
    "count",  # a section count larger than the records present
    "rdata",  # an A/AAAA/CNAME whose data has the wrong length
)


class Malformed(ValueError):
    """The bytes are not a well-formed DNS message; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class _Short(Exception):
    """Ran out of bytes (internal: the caller decides if that is malformed)."""


def qtype_name(qtype: int) -> str:
    """Label value: the mnemonic of a common type, else "other" (a closed set)."""
    return QTYPES.get(qtype, OTHER)


def qtype_text(qtype: int) -> str:
    """For people: the mnemonic, else RFC 3597's TYPE<n>."""
    return QTYPES.get(qtype, f"TYPE{qtype}")


def rcode_name(rcode: int) -> str:
    return RCODES.get(rcode, OTHER)


@dataclass(frozen=True)
class Question:
    name: str
    qtype: int
    qclass: int


@dataclass(frozen=True)
class Record:
    name: str
    rtype: int
    rclass: int
    ttl: int
    data: str | bytes  # address text (A/AAAA), a name (CNAME/NS/PTR), else raw rdata


@dataclass
class Message:
    id: int
    flags: int
    questions: list[Question] = field(default_factory=list)
    answers: list[Record] = field(default_factory=list)
    authority: list[Record] = field(default_factory=list)
    additional: list[Record] = field(default_factory=list)
    partial: bool = False  # only a prefix of the message was available

    @property
    def qr(self) -> bool:
        return bool(self.flags & 0x8000)

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF

    @property
    def tc(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


# -- names ---------------------------------------------------------------------


# Bytes a label can hold that need no escaping in text (letters, digits, most
# punctuation): the common case decodes in one call.
_PLAIN = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")


def _label_text(raw: bytes) -> str:
    if not raw.translate(None, _PLAIN):
        return raw.decode("ascii")
    out = []
    for b in raw:
        c = chr(b)
        if c in ".\\":
            out.append("\\" + c)
        elif 0x21 <= b <= 0x7E:
            out.append(c)
        else:
            out.append(f"\\{b:03d}")  # dig's escaping of odd bytes
    return "".join(out)


def decode_name(buf: bytes, off: int) -> tuple[str, int]:
    """The name at `off` and the offset just after it (after the first pointer,
    if it is compressed). Raises Malformed, or _Short when the bytes run out."""
    labels: list[str] = []
    wire = 0  # bytes of the uncompressed name so far
    end = -1
    pointers = 0
    pos = off
    start = off  # a pointer must point before the name part it continues
    while True:
        if pos >= len(buf):
            raise _Short
        n = buf[pos]
        if n & 0xC0 == 0xC0:
            if pos + 1 >= len(buf):
                raise _Short
            target = ((n & 0x3F) << 8) | buf[pos + 1]
            if target >= start:
                raise Malformed("pointer", f"at {pos} to {target}")
            pointers += 1
            if pointers > MAX_POINTERS:
                raise Malformed("pointer_loop")
            if end < 0:
                end = pos + 2
            pos = start = target
            continue
        if n & 0xC0:
            raise Malformed("label", f"label type {n >> 6:#x} at {pos}")
        wire += n + 1
        if wire > NAME_MAX:
            raise Malformed("name_too_long")
        if n == 0:
            if end < 0:
                end = pos + 1
            return (".".join(labels) if labels else "."), end
        if pos + 1 + n > len(buf):
            raise _Short
        labels.append(_label_text(buf[pos + 1 : pos + 1 + n]))
        pos += 1 + n


def encode_name(name: str) -> bytes:
    """Wire form of a dotted name (no escapes; for tests and the load generator)."""
    if name in ("", "."):
        return b"\0"
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        if not 0 < len(raw) <= LABEL_MAX:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    out += b"\0"
    if len(out) > NAME_MAX:
        raise ValueError(f"name longer than {NAME_MAX} bytes: {name!r}")
    return bytes(out)


def parse_question(raw: bytes) -> Question:
    """A question as the kernel keeps it (name, qtype, qclass; no compression)."""
    try:
        name, off = decode_name(raw, 0)
        if off + 4 > len(raw):
            raise _Short
    except _Short:
        raise Malformed("truncated", "question") from None
    qtype, qclass = struct.unpack_from("!HH", raw, off)
    return Question(name, qtype, qclass)


def classify_query(msg: bytes) -> str:
    """What the kernel makes of a message a local socket sends to a DNS port
    (bpf/dns.bpf.c, dns_query): "query" (tracked), "response" (QR set: this
    host answers someone; ignored), or the malformed reason it counts. A model
    of the kernel's rules, checked against the kernel in tests/kernel."""
    if len(msg) < HEADER_LEN:
        return "short"
    if msg[2] & 0x80:
        return "response"
    if msg[2] & 0x78:
        return "opcode"
    if msg[4:6] != b"\0\1":
        return "qdcount"
    q = msg[HEADER_LEN : HEADER_LEN + 260]  # the kernel looks at 260 bytes at most
    pos = 0
    for _ in range(128):
        if pos >= len(q):
            return "truncated"
        c = q[pos]
        if c == 0:
            break
        if c & 0xC0 == 0xC0:
            return "pointer"
        if c & 0xC0:
            return "label"
        pos += c + 1
        if pos >= NAME_MAX:
            return "name_too_long"
    if pos >= NAME_MAX:
        return "name_too_long"
    if pos + 5 > len(q):
        return "truncated"
    return "query"


# -- messages ------------------------------------------------------------------


def _rdata(buf: bytes, rtype: int, off: int, rdlen: int) -> str | bytes:
    end = off + rdlen
    if rtype == TYPE_A:
        if rdlen != 4:
            raise Malformed("rdata", f"A with {rdlen} bytes")
        return str(ipaddress.IPv4Address(buf[off:end]))
    if rtype == TYPE_AAAA:
        if rdlen != 16:
            raise Malformed("rdata", f"AAAA with {rdlen} bytes")
        return str(ipaddress.IPv6Address(buf[off:end]))
    if rtype in (TYPE_CNAME, TYPE_NS, TYPE_PTR):
        try:
            name, after = decode_name(buf[:end], off)
        except _Short:
            raise Malformed("rdata", "name runs past its record") from None
        if after != end:
            raise Malformed("rdata", "name shorter than its record")
        return name
    return bytes(buf[off:end])


def parse_message(buf: bytes, total: int | None = None) -> Message:
    """Decode a whole message, or the prefix `buf` of a `total`-byte one.

    Raises Malformed when the bytes contradict themselves; a prefix that simply
    stops (the kernel copies at most 512 bytes) gives `partial=True` with every
    section decoded up to the last complete entry."""
    buf = bytes(buf)
    total = len(buf) if total is None else total
    complete = len(buf) >= total
    if complete:
        buf = buf[:total]
    if total < HEADER_LEN:
        raise Malformed("short", f"{total} bytes")
    if len(buf) < HEADER_LEN:
        return Message(0, 0, partial=True)
    mid, flags, qd, an, ns, ar = struct.unpack_from("!6H", buf, 0)
    msg = Message(mid, flags)
    off = HEADER_LEN
    try:
        for _ in range(qd):
            name, off = decode_name(buf, off)
            if off + 4 > len(buf):
                raise _Short
            qtype, qclass = struct.unpack_from("!HH", buf, off)
            off += 4
            msg.questions.append(Question(name, qtype, qclass))
        for section, count in ((msg.answers, an), (msg.authority, ns), (msg.additional, ar)):
            for _ in range(count):
                name, off = decode_name(buf, off)
                if off + 10 > len(buf):
                    raise _Short
                rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", buf, off)
                off += 10
                if off + rdlen > len(buf):
                    raise _Short
                section.append(Record(name, rtype, rclass, ttl, _rdata(buf, rtype, off, rdlen)))
                off += rdlen
    except _Short:
        if not complete:
            msg.partial = True
            return msg
        # the message is all there: a section claims more than it holds
        if off >= len(buf):
            raise Malformed("count", f"header counts {qd}/{an}/{ns}/{ar}") from None
        raise Malformed("truncated", f"at byte {off} of {len(buf)}") from None
    return msg


def addresses_for(msg: Message, qname: str) -> list[tuple[str, str, int]]:
    """(address, name looked up, ttl) for every A/AAAA that answers qname, following
    CNAME chains inside the answer section; the TTL is the smallest along the
    chain. Names compare case-insensitively, as DNS does."""
    want = {qname.lower().rstrip(".") or "."}
    ttl_of = {next(iter(want)): 1 << 31}
    cnames = [r for r in msg.answers if r.rtype == TYPE_CNAME and isinstance(r.data, str)]
    for _ in range(len(cnames)):  # each round follows at least one link, or stops
        grew = False
        for r in cnames:
            owner = r.name.lower().rstrip(".")
            target = str(r.data).lower().rstrip(".")
            if owner in want and target not in want:
                want.add(target)
                ttl_of[target] = min(ttl_of[owner], r.ttl)
                grew = True
        if not grew:
            break
    out = []
    for r in msg.answers:
        owner = r.name.lower().rstrip(".")
        if r.rtype in (TYPE_A, TYPE_AAAA) and owner in want and isinstance(r.data, str):
            out.append((r.data, qname, min(ttl_of[owner], r.ttl)))
    return out


# -- encoding (tests, benchmarks, load generator) ---------------------------------


def build_query(qid: int, name: str, qtype: int, rd: bool = True, edns: bool = False) -> bytes:
    flags = 0x0100 if rd else 0
    out = struct.pack("!6H", qid, flags, 1, 0, 0, 1 if edns else 0)
    out += encode_name(name) + struct.pack("!HH", qtype, 1)
    if edns:  # OPT: root name, type 41, 1232-byte payload, no options
        out += b"\0" + struct.pack("!HHIH", TYPE_OPT, 1232, 0, 0)
    return out


def encode_record(name: str, rtype: int, ttl: int, data: str | bytes) -> bytes:
    if rtype == TYPE_A:
        rdata = ipaddress.IPv4Address(str(data)).packed
    elif rtype == TYPE_AAAA:
        rdata = ipaddress.IPv6Address(str(data)).packed
    elif rtype in (TYPE_CNAME, TYPE_NS, TYPE_PTR):
        rdata = encode_name(str(data))
    else:
        rdata = bytes(data) if isinstance(data, bytes) else str(data).encode()
    return encode_name(name) + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def build_response(
    query: bytes,
    rcode: int = 0,
    answers: tuple[tuple[str, int, int, str | bytes], ...] = (),
    counts: tuple[int, int, int] | None = None,
) -> bytes:
    """A response to `query` (its id and question), with (name, type, ttl, data)
    answers; `counts` overrides the an/ns/ar counts (to make them lie)."""
    qid, flags = struct.unpack_from("!HH", query, 0)
    _, qend = decode_name(query, HEADER_LEN)
    question = query[HEADER_LEN : qend + 4]
    an, ns, ar = counts if counts is not None else (len(answers), 0, 0)
    head = struct.pack("!6H", qid, 0x8000 | (flags & 0x0100) | 0x0080 | rcode, 1, an, ns, ar)
    return head + question + b"".join(encode_record(*a) for a in answers)


def tcp_frame(msg: bytes) -> bytes:
    """DNS over TCP: the 2-byte length prefix."""
    return struct.pack("!H", len(msg)) + msg


# -- crafted bad messages: the same cases for the kernel and for this decoder -----


def malformed_queries() -> dict[str, tuple[str, bytes]]:
    """case -> (reason the kernel counts, the query's bytes)."""
    head = struct.pack("!6H", 0x4D4C, 0x0100, 1, 0, 0, 0)
    long_name = b"".join(b"\x3f" + b"a" * 63 for _ in range(4)) + b"\0"  # 256 bytes
    return {
        "short": ("short", b"\x12\x34\x01\x00\x00\x01"),
        "label_over_63": ("label", head + b"\x40" + b"a" * 64 + b"\0\0\1\0\1"),
        "name_over_255": ("name_too_long", head + long_name + b"\0\1\0\1"),
        "pointer_loop": ("pointer", head + b"\xc0\x0c\0\1\0\1"),
        "truncated_name": ("truncated", head + b"\x07exam"),
        "truncated_type": ("truncated", head + b"\x03abc\0\0"),
        "qdcount_lies": ("qdcount", struct.pack("!6H", 0x4D4D, 0x0100, 3, 0, 0, 0) + b"\0\0\1\0\1"),
        "no_question": ("qdcount", struct.pack("!6H", 0x4D4E, 0x0100, 0, 0, 0, 0)),
        "http_on_53": ("opcode", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        "tls_on_53": ("qdcount", bytes.fromhex("16030100f5010000f10303") + b"\x5a" * 40),
    }


def malformed_responses(query: bytes) -> dict[str, tuple[str, bytes]]:
    """case -> (reason this decoder reports, a response to `query` whose header
    and question are right and whose answers are not)."""
    ok = build_response(query)
    head, rest = ok[:HEADER_LEN], ok[HEADER_LEN:]

    def with_counts(an: int, ns: int = 0, ar: int = 0) -> bytes:
        return head[:6] + struct.pack("!3H", an, ns, ar) + rest

    a_rr = b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, 1, 60, 4) + bytes([198, 18, 0, 99])
    return {
        "counts_lie": ("count", with_counts(5) + a_rr),
        "pointer_loop": ("pointer", with_counts(1) + b"\xc0" + bytes([len(ok)]) + b"\0\1"),
        "pointer_forward": ("pointer", with_counts(1) + b"\xc0\xff" + b"\0" * 10),
        "label_over_63": ("label", with_counts(1) + b"\x41" + b"b" * 65),
        "truncated_rr": ("truncated", with_counts(1) + a_rr[:-2]),
        "bad_a_length": (
            "rdata",
            with_counts(1) + b"\xc0\x0c" + struct.pack("!HHIH", TYPE_A, 1, 60, 3) + b"\1\2\3",
        ),
    }
