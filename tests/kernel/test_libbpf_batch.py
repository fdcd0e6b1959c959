"""Batch reads return every entry exactly once, whatever the batch size."""

from __future__ import annotations

import pytest

from meshlens.probes.udpflow import UdpFlowProbe

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("bpf_ready")]


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_lookup_batch_reads_each_entry_once(chunk: int | None) -> None:
    probe = UdpFlowProbe()
    probe.start()
    try:
        # a hash map user space may write in a test; the host's own UDP traffic
        # may add entries too (keys are socket inode numbers, far below BASE)
        m = probe.map("udpflow_last_peer")
        n, base = 1000, 1 << 62
        for i in range(n):
            m.update((base + i).to_bytes(8, "little"), bytes([i % 251]) * m.value_size)
        for _ in range(2):  # the second read follows the first one's size
            keys, vals, count = m.lookup_batch(chunk)
            ours = [
                (key - base, vals[j * m.value_size])
                for j in range(count)
                if (key := int.from_bytes(keys[j * 8 : j * 8 + 8], "little")) >= base
            ]
            assert len(ours) == n  # none missed, none twice
            assert dict(ours) == {i: i % 251 for i in range(n)}
        only_keys, no_vals, count2 = m.lookup_batch(chunk, values=False)
        assert (
            not no_vals
            and count2 == count
            and sorted(only_keys[j * 8 : j * 8 + 8] for j in range(count2))
            == sorted(keys[j * 8 : j * 8 + 8] for j in range(count))
        )
    finally:
        probe.close()


def test_percpu_sums_add_every_cpu_of_every_slot() -> None:
    """One batch read of a PERCPU_ARRAY gives each slot's sum over all CPUs."""
    from meshlens import _libbpf

    probe = UdpFlowProbe()
    probe.start()
    probe.detach()  # its programs must not count while we look
    try:
        m = probe.map("udpflow_stats")
        ncpu = _libbpf.num_possible_cpus()
        want = []
        for slot in range(m.max_entries):
            per_cpu = [(slot + 1) * 1000 + cpu for cpu in range(ncpu)]
            m.update(slot.to_bytes(4, "little"), b"".join(v.to_bytes(8, "little") for v in per_cpu))
            want.append(sum(per_cpu))
        assert m.percpu_sums() == want
    finally:
        probe.close()


def test_lookup_batch_walks_a_big_sparse_hash_map_in_short_calls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch call walks buckets until its batch is full, with the CPU held: a
    hash map's reads are split so that each call walks about BUCKETS_PER_READ
    buckets, whether the map is sparse, dense, or grew since the last read."""
    from meshlens import _libbpf

    calls: list[int] = []
    real = _libbpf._lookup_batch

    def counted(*args: object) -> int:
        calls.append(1)
        return int(real(*args))

    monkeypatch.setattr(_libbpf, "_lookup_batch", counted)
    probe = UdpFlowProbe()
    probe.start()
    try:
        m = probe.map("udpflow_last_peer")  # an LRU hash of 16,384 buckets
        buckets, base = m.max_entries, 1 << 62
        assert buckets == 4 * _libbpf.BUCKETS_PER_READ

        def read_ours() -> int:
            calls.clear()
            keys, _, count = m.lookup_batch()
            ours = [
                k
                for j in range(count)
                if (k := int.from_bytes(keys[j * 8 : j * 8 + 8], "little")) >= base
            ]
            assert len(ours) == len(set(ours))  # none twice
            return len(ours)

        for n in (3000, 9000, 5):  # grown, then shrunk, since the last read
            for i in range(n):
                m.update((base + i).to_bytes(8, "little"), bytes(m.value_size))
            for i in range(n, 9000):
                m.delete((base + i).to_bytes(8, "little"))
            for _ in range(2):  # the first read follows the last size, the second this one
                assert read_ours() == n
                assert len(calls) <= 3 * buckets // _libbpf.BUCKETS_PER_READ + 6, (n, calls)
            if n > 100:  # not one call over the whole map
                assert len(calls) >= buckets // _libbpf.BUCKETS_PER_READ - 1, (n, calls)
    finally:
        probe.close()
