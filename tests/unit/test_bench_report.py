"""The bench report from synthetic results: tables, verdicts, failures shown, chart written."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import pytest

from meshlens.bench import cli, report


def _run(
    mode: str, rep: int, cpu: float, lat_ms: float, ok: bool = True, **kw: Any
) -> dict[str, Any]:
    lat = [int((lat_ms + (i % 7) * 0.5) * 1e6) for i in range(211)]
    base = {
        "mode": mode,
        "rep": rep,
        "ok": ok,
        "error": "" if ok else "envoy for cart exited",
        "window_seconds": 20.0,
        "ncpu": 2,
        "machine_busy": 10.0,
        "requests": 211,
        "cpu": {"services": cpu, "proxies": 0.0, "agent": 0.0, "loadgen": 0.4},
        "memory_kb": {},
        "latency_ns": lat if ok else [],
        "fidelity": {"rows": []},
    }
    base.update(kw)
    return base


def _data(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "command": "meshlens bench --quick",
        "config": {
            "users": 10,
            "rate": 6.0,
            "warmup": 4.0,
            "duration": 20.0,
            "reps": 2,
            "modes": ["baseline", "meshlens", "envoy"],
            "scrape_interval": 10.0,
        },
        "machine": {"cpus": 2},
        "runs": runs,
    }


def test_percentile_interpolates() -> None:
    assert report.percentile([1, 2, 3, 4], 50) == 2.5
    assert report.percentile([5], 99) == 5
    assert math.isnan(report.percentile([], 50))


@pytest.mark.parametrize(
    ("n", "ranks"),
    # the order statistics of the binomial tables: P(X <= k - 1) <= 5 % < P(X <= k)
    [(4, None), (5, (1, 5)), (8, (2, 7)), (16, (5, 12)), (32, (11, 22)), (100, (42, 59))],
)
def test_median_interval_order_statistics(n: int, ranks: tuple[int, int] | None) -> None:
    values = [10.0 * i for i in range(n, 0, -1)]  # any order
    got = report.median_ci(values)
    assert got == (None if ranks is None else (10.0 * ranks[0], 10.0 * ranks[1]))


def test_median_interval_covers_the_median_as_promised() -> None:
    """Coverage of the 90 % interval over many samples of a skewed distribution."""
    import random

    rng = random.Random(1)
    true_median = math.log(2)  # of Exp(1)
    hits = 0
    for _ in range(2000):
        ci = report.median_ci([rng.expovariate(1.0) for _ in range(16)])
        assert ci is not None
        hits += ci[0] <= true_median <= ci[1]
    assert 0.90 <= hits / 2000 <= 0.96  # 92.3 % for n = 16


def test_tables_deltas_and_verdicts() -> None:
    row = {
        "protocol": "redis",
        "edge": "cart→redis",
        "metric": "request_bytes",
        "truth": 23,
        "truth_source": "redis client",
        "observer": "meshlens",
        "observed": 23,
        "reporter": "source",
    }
    miss = dict(row, observer="envoy", observed=22, reporter="")
    runs = [
        _run("baseline", 0, 4.0, 10.0),
        _run("meshlens", 0, 4.04, 10.0, cpu_agent=0.0, fidelity={"rows": [row]}),
        _run("envoy", 0, 6.0, 16.0, fidelity={"rows": [miss]}),
        _run("baseline", 1, 4.2, 10.5),
        _run("meshlens", 1, 4.1, 10.2),
        _run("envoy", 1, 0.0, 0.0, ok=False),
    ]
    md = report.render(_data(runs))
    assert "| CPU utilisation (services + proxies + agent) | 10.2% (10.0%-10.5%) |" in md
    assert "| 15.0% | +46% |" in md  # envoy CPU vs the baseline median
    assert "meets the ≤ +3% target" in md
    assert "within noise" in md
    assert "1/2" in md and "envoy: envoy for cart exited" in md  # a failed run is shown
    assert "23 = truth ✓" in md and "22 vs 23 (-4.35%)" in md
    assert "| CPU utilisation (cluster) | 13% | 22% | +69% | 14% | +7% |" in md


def test_all_runs_of_a_mode_failed() -> None:
    runs = [_run("baseline", 0, 4.0, 10.0), _run("envoy", 0, 0, 0, ok=False)]
    data = _data(runs)
    data["config"]["modes"] = ["baseline", "envoy"]
    md = report.render(data)
    assert "| P50 response time | " in md and "| failed |" in md


def test_single_run_band_is_bootstrap() -> None:
    s = report.summarize(_data([_run("baseline", 0, 4.0, 10.0)]))["baseline"]
    assert s["p50_lo"] <= s["p50"] <= s["p50_hi"]
    assert s["p50_hi"] > s["p50_lo"]


def test_chart_is_written(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    runs = [_run("baseline", 0, 4.0, 10.0), _run("meshlens", 0, 4.1, 10.1), _run("envoy", 0, 6, 15)]
    report.write_report(_data(runs), tmp_path)
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![chart](chart.png)" in (tmp_path / "report.md").read_text()


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_quick_and_overrides() -> None:
    cfg = cli.config_from(_parse("--quick", "--users", "7"))
    assert (cfg.users, cfg.rate, cfg.reps) == (7, cli.QUICK["rate"], cli.QUICK["reps"])
    full = cli.config_from(_parse("--modes", "envoy,baseline", "--duration", "90"))
    assert (
        full.modes == ("envoy", "baseline")
        and full.duration == 90
        and full.reps == cli.FULL["reps"]
    )


@pytest.mark.parametrize(
    "argv", [["--modes", "istio"], ["--users", "0"], ["--rate", "x"], ["--modes", ""]]
)
def test_cli_rejects(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        _parse(*argv)


def test_quick_fits_in_five_minutes() -> None:
    cfg = cli.config_from(_parse("--quick"))
    assert cli.estimated_seconds(cfg) < 300
