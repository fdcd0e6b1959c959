"""The report: the talk's table (CPU utilisation, P50, P90) reproduced per mode, plus P99,
CPU seconds per 1,000 requests, memory of the proxies against the agent, and fidelity;
Markdown (report.md) and a PNG chart (chart.png). Works from results.json alone, so a
past run can be re-reported."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

MODE_TITLE = {"baseline": "baseline", "meshlens": "meshlens (eBPF)", "envoy": "Envoy sidecars"}
MEASURED_GROUPS = ("services", "proxies", "agent")
TARGET_CPU_OVERHEAD = 0.03  # meshlens: at most +3% CPU over baseline
TALK = {  # KubeCon EU 2020, Online Boutique on 3 nodes, Locust 500 users
    "cpu": (0.13, 0.22, 0.14),
    "p50": (16.0, 25.0, None),
    "p90": (33.0, 48.0, None),
}


def percentile(values: list[int] | list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    xs = sorted(values)
    if not xs:
        return math.nan
    k = (len(xs) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (xs[hi] - xs[lo]) * (k - lo))


def bootstrap_ci(values: list[int], q: float, n: int = 200, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the q-th percentile (for single-run noise bands)."""
    import numpy as np

    if len(values) < 2:
        v = percentile(values, q) if values else math.nan
        return v, v
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=np.float64)
    stats = np.percentile(rng.choice(arr, size=(n, len(arr)), replace=True), q, axis=1)
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def median_ci(values: list[float], level: float = 0.90) -> tuple[float, float] | None:
    """Distribution-free interval of the median: the k-th smallest and k-th largest
    value, k the largest with P(Binomial(n, 1/2) < k) <= (1 - level) / 2, so the
    interval holds the true median with probability at least `level` (None: too
    few values for that). For paired A/B differences on a noisy host."""
    xs = sorted(values)
    n, tail = len(xs), (1 - level) / 2
    k, below = 0, 0.0  # below: P(X < k + 1) as k grows
    while k < n // 2:
        below += math.comb(n, k) / 2**n
        if below > tail:
            break
        k += 1
    return (xs[k - 1], xs[n - k]) if k else None


def run_metrics(run: dict[str, Any]) -> dict[str, float]:
    """Per-run numbers the tables are made of."""
    w = run["window_seconds"] or math.nan
    cpu = sum(run["cpu"].get(g, 0.0) for g in MEASURED_GROUPS)
    lat = run["latency_ns"]
    mem = run.get("memory_kb", {})
    out = {
        "cpu_util": cpu / (w * run["ncpu"]),
        "cpu_services": run["cpu"].get("services", 0.0) / (w * run["ncpu"]),
        "cpu_proxies": run["cpu"].get("proxies", 0.0) / (w * run["ncpu"]),
        "cpu_agent": run["cpu"].get("agent", 0.0) / (w * run["ncpu"]),
        "loadgen_util": run["cpu"].get("loadgen", 0.0) / (w * run["ncpu"]),
        "machine_util": run["machine_busy"] / (w * run["ncpu"]),
        "cpu_per_1k": 1000.0 * cpu / run["requests"] if run["requests"] else math.nan,
        "rps": run["requests"] / w,
        "requests": float(run["requests"]),
        "proxies_pss_mb": mem.get("proxies", {}).get("pss_kb", 0) / 1024,
        "proxies_rss_mb": mem.get("proxies", {}).get("rss_kb", 0) / 1024,
        "agent_pss_mb": mem.get("agent", {}).get("pss_kb", 0) / 1024,
        "agent_rss_mb": mem.get("agent", {}).get("rss_kb", 0) / 1024,
        "services_pss_mb": mem.get("services", {}).get("pss_kb", 0) / 1024,
    }
    for q in (50, 90, 99):
        out[f"p{q}"] = percentile(lat, q) / 1e6 if lat else math.nan
    return out


def summarize(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per mode: median and min/max over its successful runs, and the failures."""
    modes = data["config"]["modes"]
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        runs = [r for r in data["runs"] if r["mode"] == mode]
        good = [r for r in runs if r["ok"]]
        per = [run_metrics(r) for r in good]
        agg: dict[str, Any] = {
            "runs": len(runs),
            "ok": len(good),
            "errors": [r["error"] for r in runs if not r["ok"]],
        }
        if per:
            for key in per[0]:
                vals = [p[key] for p in per]
                agg[key] = statistics.median(vals)
                agg[key + "_lo"] = min(vals)
                agg[key + "_hi"] = max(vals)
            if len(good) == 1:  # one run: the noise band of a percentile is its bootstrap CI
                for q in (50, 90, 99):
                    lo, hi = bootstrap_ci(good[0]["latency_ns"], q)
                    agg[f"p{q}_lo"], agg[f"p{q}_hi"] = lo / 1e6, hi / 1e6
        out[mode] = agg
    return out


def _pct(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f}%"


def _delta(v: float | None, base: float | None) -> str:
    if base is None or v is None or math.isnan(v) or math.isnan(base) or base == 0:
        return "-"
    return (
        f"{100 * (v - base) / base:+.0f}%"
        if abs(v - base) / base >= 0.095
        else f"{100 * (v - base) / base:+.1f}%"
    )


def _ms(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.1f} ms"


def _range(agg: dict[str, Any], key: str, fmt: Any) -> str:
    if key not in agg:
        return "failed"
    lo, hi = agg[key + "_lo"], agg[key + "_hi"]
    if agg["ok"] > 1 or key.startswith("p"):
        return f"{fmt(agg[key])} ({fmt(lo).replace(' ms', '')}-{fmt(hi)})"
    return str(fmt(agg[key]))


def overlaps(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    return bool(a[key + "_lo"] <= b[key + "_hi"] and b[key + "_lo"] <= a[key + "_hi"])


def verdicts(summary: dict[str, dict[str, Any]]) -> list[str]:
    base, ml = summary.get("baseline"), summary.get("meshlens")
    out = []
    if base and ml and "cpu_util" in base and "cpu_util" in ml:
        d = (ml["cpu_util"] - base["cpu_util"]) / base["cpu_util"]
        ok = d <= TARGET_CPU_OVERHEAD
        out.append(
            f"- CPU: meshlens {100 * d:+.1f}% over baseline "
            f"({'meets' if ok else 'misses'} the ≤ +3% target; "
            f"{100 * (ml['cpu_util'] - base['cpu_util']):+.2f} points of the machine)."
        )
        for q in (50, 90, 99):
            k = f"p{q}"
            within = overlaps(base, ml, k)
            out.append(
                f"- P{q}: meshlens {_ms(ml[k])} vs baseline {_ms(base[k])} — "
                + (
                    "within noise (the ranges overlap)."
                    if within
                    else "outside the baseline's noise band."
                )
            )
    env = summary.get("envoy")
    if base and env and "cpu_util" in env and "cpu_util" in base:
        out.append(
            f"- Envoy sidecars, as measured: CPU {_delta(env['cpu_util'], base['cpu_util'])}, "
            f"P50 {_delta(env['p50'], base['p50'])}, P90 {_delta(env['p90'], base['p90'])}, "
            f"P99 {_delta(env['p99'], base['p99'])}."
        )
    return out


def main_table(summary: dict[str, dict[str, Any]]) -> str:
    modes = list(summary)
    base = summary.get("baseline", {})
    head = [
        "",
        *(
            h
            for m in modes
            for h in ((MODE_TITLE[m],) if m == "baseline" else (MODE_TITLE[m], "Δ"))
        ),
    ]
    rows: list[list[str]] = []

    def add(label: str, key: str, fmt: Any, delta: bool = True) -> None:
        cells = [label]
        for m in modes:
            agg = summary[m]
            cells.append(
                _range(agg, key, fmt) if key in agg else ("failed" if agg["ok"] == 0 else "-")
            )
            if m != "baseline":
                cells.append(_delta(agg.get(key), base.get(key)) if delta and key in agg else "")
        rows.append(cells)

    add("CPU utilisation (services + proxies + agent)", "cpu_util", _pct)
    add("P50 response time", "p50", _ms)
    add("P90 response time", "p90", _ms)
    add("P99 response time", "p99", _ms)
    add("CPU seconds per 1,000 requests", "cpu_per_1k", lambda v: f"{v:.2f}")
    add("— of which proxies", "cpu_proxies", _pct, delta=False)
    add("— of which agent", "cpu_agent", _pct, delta=False)
    add(
        "memory of the proxies (PSS, all sidecars)",
        "proxies_pss_mb",
        lambda v: f"{v:.0f} MB",
        delta=False,
    )
    add("memory of the agent (PSS)", "agent_pss_mb", lambda v: f"{v:.0f} MB", delta=False)
    add("requests per second (measured)", "rps", lambda v: f"{v:.1f}", delta=False)
    add("load generator CPU (measured apart)", "loadgen_util", _pct, delta=False)
    add("whole machine busy (incl. other tenants)", "machine_util", _pct, delta=False)
    ok_row = ["runs ok"]
    for m in modes:
        ok_row.append(f"{summary[m]['ok']}/{summary[m]['runs']}")
        if m != "baseline":
            ok_row.append("")
    rows.append(ok_row)
    return _md([head, *rows])


def talk_table() -> str:
    cpu, p50, p90 = TALK["cpu"], TALK["p50"], TALK["p90"]
    rows = [
        ["", "baseline", "Istio 1.6 + Envoy", "Δ", "bcc tcptop (eBPF)", "Δ"],
        ["CPU utilisation (cluster)", "13%", "22%", "+69%", "14%", "+7%"],
        ["P50 response time", f"{p50[0]:.0f} ms", f"{p50[1]:.0f} ms", "+56%", "unchanged", ""],
        ["P90 response time", f"{p90[0]:.0f} ms", f"{p90[1]:.0f} ms", "+45%", "unchanged", ""],
    ]
    assert cpu
    return _md(rows)


NA_REASON = {
    ("meshlens", "grpc", "requests"): "n/a (HTTP/2 not parsed)",
    ("meshlens", "http/1.1", "requests"): "n/a (no http feature)",
}


def fidelity_table(data: dict[str, Any]) -> str:
    """Observed vs truth, summed over the runs of each observer."""
    agg: dict[tuple[str, str, str], dict[tuple[str, str], list[int | None]]] = defaultdict(dict)
    for run in data["runs"]:
        if not run["ok"]:
            continue
        for r in run.get("fidelity", {}).get("rows", []):
            edge = r["edge"]
            if r["protocol"] == "grpc":
                edge = "frontend→backends" if edge.startswith("frontend→") else "backend→backend"
            key = (r["protocol"], edge, r["metric"])
            col = (r["observer"], r["reporter"])
            cell = agg[key].setdefault(col, [0, 0])
            cell[0] = (cell[0] or 0) + (r["truth"] or 0)
            cell[1] = None if r["observed"] is None or cell[1] is None else cell[1] + r["observed"]
    cols = [("meshlens", "source"), ("meshlens", "destination"), ("envoy", "")]
    head = [
        "protocol",
        "edge",
        "count",
        "meshlens (reporter=source)",
        "meshlens (reporter=destination)",
        "Envoy sidecars",
    ]
    rows = [head]
    order = {"http/1.1": 0, "grpc": 1, "redis": 2}
    metrics = {"requests": 0, "connections": 1, "request_bytes": 2, "response_bytes": 3}
    for key in sorted(agg, key=lambda k: (order.get(k[0], 9), k[1], metrics.get(k[2], 9))):
        proto, edge, metric = key
        cells = [proto, edge, metric.replace("_", " ")]
        for col in cols:
            got = agg[key].get(col)
            if got is None and col == ("meshlens", "destination") and ("meshlens", "") in agg[key]:
                got = agg[key][("meshlens", "")]
            if got is None and col[0] == "meshlens" and ("meshlens", "") in agg[key]:
                got = agg[key][("meshlens", "")]
            if got is None:
                cells.append("-")
                continue
            truth, observed = got
            if observed is None:
                cells.append(NA_REASON.get((col[0], proto, metric), "n/a"))
            elif observed == truth:
                cells.append(f"{observed:,} = truth ✓")
            else:
                d = 100 * (observed - truth) / truth if truth else math.inf
                cells.append(f"{observed:,} vs {truth:,} ({d:+.2f}%)")
        rows.append(cells)
    if len(rows) == 1:
        return "_no fidelity data (no successful meshlens or envoy run)_"
    return _md(rows)


def _md(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(out)


def render(data: dict[str, Any]) -> str:
    summary = summarize(data)
    cfg = data["config"]
    m = data.get("machine", {})
    lines = [
        "# meshlens bench: eBPF vs sidecars on the shop",
        "",
        f"Command: `{data.get('command', 'meshlens bench')}`  ",
        f"Machine: {m.get('cpus')} CPUs, kernel {m.get('kernel')}, Python {m.get('python')}, "
        f"Envoy {m.get('envoy')}, Locust {m.get('locust')}, grpcio {m.get('grpc')}  ",
        f"Load: {cfg['users']} Locust users, {cfg['rate']:g} tasks/s in all "
        f"(Online Boutique's task weights), {cfg['warmup']:g} s warm-up, {cfg['duration']:g} s "
        f"measured, {cfg['reps']} repetition(s), modes interleaved ({', '.join(cfg['modes'])}); "
        f"scrapes every {cfg['scrape_interval']:g} s.",
        "",
        "Median over the runs of each mode (min-max over runs; for a single run, the 95% "
        "bootstrap interval of each percentile). CPU utilisation = CPU seconds of the "
        "service processes, redis, the sidecars and the agent in the measured window / "
        f"(window x {m.get('cpus')} CPUs); the load generator is measured apart.",
        "",
        main_table(summary),
        "",
    ]
    v = verdicts(summary)
    if v:
        lines += ["**Verdict**", "", *v, ""]
    if data.get("interrupted"):
        lines += ["**Interrupted**: the tables hold the runs that finished.", ""]
    fails = [(mode, e) for mode, agg in summary.items() for e in agg["errors"]]
    if fails:
        lines += ["**Failed runs**", ""] + [f"- {mode}: {e}" for mode, e in fails] + [""]
    lines += [
        "The published comparison (KubeCon EU 2020, Online Boutique on 3 nodes, Locust 500 users):",
        "",
        talk_table(),
        "",
        "**Fidelity**: the observers' counts against the ground truth of the same runs "
        "(summed over runs). HTTP/1.1 requests: the load generator's own record; TCP: the "
        "frontend's and the redis client's socket counters, and the kernel's TCP_INFO for "
        "the gRPC channels. Envoy is compared on the hop it sees (app ↔ its sidecar).",
        "",
        fidelity_table(data),
        "",
    ]
    return "\n".join(lines)


def chart(data: dict[str, Any], path: Path) -> None:
    import matplotlib  # type: ignore[import-not-found, unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found, unused-ignore]

    summary = {k: v for k, v in summarize(data).items() if "cpu_util" in v}
    modes = list(summary)
    if not modes:
        return
    colors = {"baseline": "#6b7280", "meshlens": "#2563eb", "envoy": "#dc2626"}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    x = range(len(modes))
    bottoms = [0.0] * len(modes)
    shades = {"services": 1.0, "proxies": 0.55, "agent": 0.3}
    for g in ("services", "proxies", "agent"):
        vals = [100 * summary[m][f"cpu_{g}"] for m in modes]
        ax1.bar(
            x,
            vals,
            bottom=bottoms,
            color=[colors[m] for m in modes],
            alpha=shades[g],
            edgecolor="black",
            linewidth=0.5,
            label=g,
        )
        bottoms = [b + v for b, v in zip(bottoms, vals, strict=True)]
    lo = [100 * (summary[m]["cpu_util"] - summary[m]["cpu_util_lo"]) for m in modes]
    hi = [100 * (summary[m]["cpu_util_hi"] - summary[m]["cpu_util"]) for m in modes]
    ax1.errorbar(
        x,
        [100 * summary[m]["cpu_util"] for m in modes],
        yerr=[lo, hi],
        fmt="none",
        ecolor="black",
        capsize=4,
    )
    for i, m in enumerate(modes):
        top = max(bottoms[i], 100 * summary[m]["cpu_util_hi"])
        ax1.text(i, top * 1.01, f"{100 * summary[m]['cpu_util']:.1f}%", ha="center", va="bottom")
    ax1.set_xticks(list(x), [MODE_TITLE[m] for m in modes])
    ax1.set_ylabel("CPU utilisation of the shop, % of the machine")
    ax1.set_title("CPU (services + proxies + agent)")
    ax1.legend(title="stacked", fontsize=8, loc="upper left")
    width = 0.8 / len(modes)
    for i, m in enumerate(modes):
        qs = (50, 90, 99)
        vals = [summary[m][f"p{q}"] for q in qs]
        err = [
            [summary[m][f"p{q}"] - summary[m][f"p{q}_lo"] for q in qs],
            [summary[m][f"p{q}_hi"] - summary[m][f"p{q}"] for q in qs],
        ]
        pos = [j + (i - (len(modes) - 1) / 2) * width for j in range(len(qs))]
        ax2.bar(pos, vals, width, color=colors[m], label=MODE_TITLE[m], yerr=err, capsize=3)
    ax2.set_xticks(range(3), ["P50", "P90", "P99"])
    ax2.set_ylabel("response time, ms")
    ax2.set_title("Latency per request (Locust, per-request timings)")
    ax2.legend(fontsize=8)
    cfg = data["config"]
    fig.suptitle(
        f"meshlens bench — {cfg['users']} users, {cfg['rate']:g} tasks/s, "
        f"{cfg['reps']}x {cfg['duration']:g} s per mode, interleaved",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(data: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = render(data)
    (out_dir / "report.md").write_text(md + "\n![chart](chart.png)\n")
    chart(data, out_dir / "chart.png")
    return md
