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
        m = probe.map("udpflow_owners")  # a hash map user space may write in a test
        n = 1000
        for i in range(n):
            m.update((i + 1).to_bytes(8, "little"), bytes([i % 251]) * m.value_size)
        for _ in range(2):  # the second read follows the first one's size
            keys, vals, count = m.lookup_batch(chunk)
            got = {
                int.from_bytes(keys[j * 8 : j * 8 + 8], "little"): vals[j * m.value_size]
                for j in range(count)
            }
            assert count == n and len(got) == n
            assert got == {i + 1: i % 251 for i in range(n)}
    finally:
        probe.close()
