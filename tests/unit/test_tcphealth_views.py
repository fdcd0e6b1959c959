"""Pure parts of the network-health views."""

from meshlens.features.tcphealth import backlog_bounds, log2_lines
from meshlens.probes.tcphealth import BACKLOG_SLOTS


def test_backlog_bounds_cover_every_slot() -> None:
    b = backlog_bounds()
    assert len(b) == BACKLOG_SLOTS
    assert b[:4] == ["0", "1", "3", "7"] and b[-1] == "+Inf"


def test_log2_lines_like_bcc() -> None:
    lines = log2_lines([0, 0, 3, 6], "usecs")
    assert lines[1].split(":")[0].split() == ["0", "->", "1"]
    assert "|" + "*" * 40 + "|" in lines[-1]
    assert "*" * 20 in lines[-2]
    assert "(none)" in log2_lines([0, 0], "usecs")[0]
