"""meshlens.dnsmsg: the user-side DNS decoder, its bounds, and the crafted bad
inputs shared with the kernel tests; fuzzed with hypothesis."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from meshlens import dnsmsg
from meshlens.dnsmsg import Malformed, parse_message

QUERY = dnsmsg.build_query(0x1234, "www.example.test", dnsmsg.TYPE_A)


def answer(*records: tuple[str, int, int, str | bytes], rcode: int = 0) -> bytes:
    return dnsmsg.build_response(QUERY, rcode=rcode, answers=records)


def test_round_trip_question_and_answers() -> None:
    msg = parse_message(
        answer(
            ("www.example.test", dnsmsg.TYPE_CNAME, 300, "web.example.test"),
            ("web.example.test", dnsmsg.TYPE_A, 60, "198.18.0.9"),
            ("web.example.test", dnsmsg.TYPE_AAAA, 30, "fd00:198:18::9"),
        )
    )
    assert msg.id == 0x1234 and msg.qr and msg.rcode == 0 and not msg.partial
    assert msg.questions == [dnsmsg.Question("www.example.test", dnsmsg.TYPE_A, 1)]
    assert [(r.rtype, r.data) for r in msg.answers] == [
        (dnsmsg.TYPE_CNAME, "web.example.test"),
        (dnsmsg.TYPE_A, "198.18.0.9"),
        (dnsmsg.TYPE_AAAA, "fd00:198:18::9"),
    ]
    # the chain is followed and the TTL is the smallest along it
    assert dnsmsg.addresses_for(msg, "www.example.test") == [
        ("198.18.0.9", "www.example.test", 60),
        ("fd00:198:18::9", "www.example.test", 30),
    ]


def test_compression_pointers_decode() -> None:
    # answer owner is a pointer to the question name (offset 12), as servers send
    rr = b"\xc0\x0c" + struct.pack("!HHIH", dnsmsg.TYPE_A, 1, 5, 4) + bytes([198, 18, 0, 1])
    buf = dnsmsg.build_response(QUERY, counts=(1, 0, 0)) + rr
    msg = parse_message(buf)
    assert msg.answers[0].name == "www.example.test"
    # a name that is labels followed by a pointer
    rr2 = b"\x03cdn\xc0\x10" + struct.pack("!HHIH", dnsmsg.TYPE_A, 1, 5, 4) + bytes(4)
    msg = parse_message(dnsmsg.build_response(QUERY, counts=(1, 0, 0)) + rr2)
    assert msg.answers[0].name == "cdn.example.test"


def test_unrelated_addresses_are_not_names_for_the_query() -> None:
    msg = parse_message(
        answer(
            ("other.test", dnsmsg.TYPE_A, 60, "198.18.0.7"),
            ("www.example.test", dnsmsg.TYPE_CNAME, 60, "a.test"),
            ("b.test", dnsmsg.TYPE_A, 60, "198.18.0.8"),
        )
    )
    assert dnsmsg.addresses_for(msg, "www.example.test") == []
    # case differs (0x20 randomisation): still the same name
    assert dnsmsg.addresses_for(
        parse_message(answer(("WWW.Example.TEST", dnsmsg.TYPE_A, 9, "198.18.0.1"))),
        "www.example.test",
    ) == [("198.18.0.1", "www.example.test", 9)]


def test_cname_loop_in_answers_terminates() -> None:
    msg = parse_message(
        answer(
            ("www.example.test", dnsmsg.TYPE_CNAME, 60, "a.test"),
            ("a.test", dnsmsg.TYPE_CNAME, 60, "www.example.test"),
            ("a.test", dnsmsg.TYPE_A, 60, "198.18.0.3"),
        )
    )
    assert dnsmsg.addresses_for(msg, "www.example.test") == [("198.18.0.3", "www.example.test", 60)]


@pytest.mark.parametrize("case", sorted(dnsmsg.malformed_responses(QUERY)))
def test_crafted_malformed_responses(case: str) -> None:
    reason, buf = dnsmsg.malformed_responses(QUERY)[case]
    with pytest.raises(Malformed) as exc:
        parse_message(buf)
    assert exc.value.reason == reason


@pytest.mark.parametrize("case", sorted(dnsmsg.malformed_queries()))
def test_crafted_malformed_queries(case: str) -> None:
    """The kernel's verdict (modelled by classify_query) and the decoder agree
    that each crafted query is bad; the kernel tests send the same bytes."""
    reason, buf = dnsmsg.malformed_queries()[case]
    assert dnsmsg.classify_query(buf) == reason
    if reason == "opcode":
        return  # well-formed enough for the decoder; the kernel tracks QUERY only
    with pytest.raises(Malformed):
        msg = parse_message(buf)
        if len(msg.questions) != 1:
            raise Malformed("count")


def test_limits() -> None:
    ok = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61  # 255 bytes on the wire
    assert len(dnsmsg.encode_name(ok)) == 255
    q = dnsmsg.build_query(1, ok, 1)
    assert dnsmsg.classify_query(q) == "query"
    assert parse_message(q).questions[0].name == ok
    with pytest.raises(ValueError):
        dnsmsg.encode_name(ok + "d")
    with pytest.raises(ValueError):
        dnsmsg.encode_name("x" * 64)
    # a chain of backward pointers longer than MAX_POINTERS
    base = dnsmsg.build_response(QUERY, counts=(1, 0, 0))
    chain = b"\x01a\x00"  # a real name at len(base)
    for i in range(dnsmsg.MAX_POINTERS + 1):
        chain += struct.pack("!H", 0xC000 | (len(base) + (0 if i == 0 else 3 + 2 * (i - 1))))
    buf = base + chain
    start = len(base) + len(chain) - 2
    with pytest.raises(Malformed) as exc:
        dnsmsg.decode_name(buf, start)
    assert exc.value.reason == "pointer_loop"


def test_partial_copy_is_not_malformed() -> None:
    full = answer(*[("www.example.test", dnsmsg.TYPE_A, 60, f"198.18.0.{i}") for i in range(40)])
    assert len(full) > 512
    msg = parse_message(full[:512], len(full))
    assert msg.partial and 0 < len(msg.answers) < 40
    assert all(r.data.startswith("198.18.0.") for r in msg.answers)  # type: ignore[union-attr]
    with pytest.raises(Malformed) as exc:
        parse_message(full[:512])  # the same bytes claimed to be all: counts lie
    assert exc.value.reason in ("count", "truncated")
    with pytest.raises(Malformed) as exc:
        parse_message(b"\x00" * 5)
    assert exc.value.reason == "short"


def test_names_escape_odd_bytes() -> None:
    raw = bytes([3]) + b"a.\x07" + b"\x00"
    name, end = dnsmsg.decode_name(raw, 0)
    assert name == "a\\.\\007" and end == len(raw)
    assert dnsmsg.decode_name(b"\x00", 0) == (".", 1)


def test_labels() -> None:
    assert dnsmsg.qtype_name(28) == "AAAA" and dnsmsg.qtype_name(4242) == "other"
    assert dnsmsg.qtype_text(4242) == "TYPE4242"
    assert dnsmsg.rcode_name(3) == "NXDOMAIN" and dnsmsg.rcode_name(13) == "other"


# -- fuzzing ---------------------------------------------------------------------------

names = st.lists(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20),
    min_size=1,
    max_size=5,
).map(".".join)
records = st.tuples(
    names,
    st.sampled_from([dnsmsg.TYPE_A, dnsmsg.TYPE_AAAA, dnsmsg.TYPE_CNAME, dnsmsg.TYPE_TXT]),
    st.integers(0, 2**31 - 1),
).map(
    lambda t: (
        t[0],
        t[1],
        t[2],
        {1: "198.18.1.2", 28: "fd00::1", 5: "x.test", 16: b"\x03txt"}[t[1]],
    )
)
messages = st.builds(
    lambda name, rrs, rcode: dnsmsg.build_response(
        dnsmsg.build_query(7, name, 1), rcode=rcode, answers=tuple(rrs)
    ),
    names,
    st.lists(records, max_size=6),
    st.integers(0, 15),
)


def _decode_bounded(buf: bytes, total: int | None = None) -> None:
    t0 = time.perf_counter()
    try:
        parse_message(buf, total)
    except Malformed as exc:
        assert exc.reason in dnsmsg.REASONS
    assert time.perf_counter() - t0 < 0.5  # no loops, whatever the input


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
@example(b"\xc0\x0c" * 300)
@example(struct.pack("!6H", 1, 0x8000, 65535, 65535, 65535, 65535))
def test_fuzz_random_bytes(buf: bytes) -> None:
    _decode_bounded(buf)
    _decode_bounded(buf, len(buf) + 100)  # as a prefix of a longer message
    verdict = dnsmsg.classify_query(buf)
    assert verdict in ("query", "response", "opcode", "qdcount", *dnsmsg.REASONS)


@settings(max_examples=300, deadline=None)
@given(messages, st.data())
def test_fuzz_mutated_messages(buf: bytes, data: st.DataObject) -> None:
    msg = parse_message(buf)  # what we built is well-formed
    assert msg.qr and not msg.partial
    mutated = bytearray(buf)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "cut", "count", "pointer"]))
        if kind == "flip" and mutated:
            i = data.draw(st.integers(0, len(mutated) - 1))
            mutated[i] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del mutated[data.draw(st.integers(0, len(mutated))) :]
        elif kind == "count" and len(mutated) >= 12:
            i = data.draw(st.sampled_from([4, 6, 8, 10]))
            mutated[i : i + 2] = struct.pack("!H", data.draw(st.integers(0, 65535)))
        elif kind == "pointer" and len(mutated) > 14:
            i = data.draw(st.integers(12, len(mutated) - 2))
            mutated[i : i + 2] = struct.pack("!H", 0xC000 | data.draw(st.integers(0, 0x3FFF)))
    _decode_bounded(bytes(mutated))
    _decode_bounded(bytes(mutated[:512]), len(mutated))


@settings(max_examples=300, deadline=None)
@given(names, st.sampled_from([1, 28, 5, 16, 255, 4242]), st.booleans())
def test_fuzz_queries_are_tracked(name: str, qtype: int, edns: bool) -> None:
    q = dnsmsg.build_query(9, name, qtype, edns=edns)
    assert dnsmsg.classify_query(q) == "query"
    assert dnsmsg.parse_question(q[12:]).qtype == qtype
