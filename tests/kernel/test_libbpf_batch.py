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
