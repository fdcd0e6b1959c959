"""Locust, headless, against the shop's frontend, with the task weights of Online
Boutique's own locustfile (index 1, setCurrency 2, browseProduct 10, addToCart 2,
viewCart 3, checkout 1) at a fixed task rate (``constant_throughput``), so CPU is
comparable between runs:

    python -m meshlens.shop.load --url http://HOST:PORT --users 20 --rate 15 \\
        --warmup 5 --duration 30 --out /tmp/load.json

Prints JSON lines: {"window": "start"} after the warm-up and {"window": "end"} after
--duration (the caller reads CPU counters at these two lines), then stops the users
gracefully (each finishes its task, so every request sent got its answer) and writes
--out: Locust's own counts, and each request's latency from time.perf_counter_ns around
the call (Locust's percentiles are rounded to whole milliseconds below 100 ms).

Redirects are not followed by the client: the follow-up GET the browser would make is
issued as its own request, so one recorded request is one HTTP exchange on the wire.
Runs in its own process: importing Locust monkey-patches the standard library (gevent).
"""

from __future__ import annotations

# isort: off
# Locust monkey-patches the standard library (gevent) on import: first, before anything
# else imports socket or threading.
from locust import FastHttpUser, constant_throughput, events, task  # type: ignore[import-not-found, unused-ignore]
from locust.env import Environment  # type: ignore[import-not-found, unused-ignore]

# isort: on
import argparse
import itertools
import json
import logging
import random
import sys
import time
import urllib.parse
from typing import Any

import gevent  # type: ignore[import-untyped, import-not-found, unused-ignore]

from . import PRODUCT_IDS
from .client import CHECKOUT_FORM

CURRENCIES = ("EUR", "USD", "JPY", "CAD")
QUANTITIES = (1, 2, 3, 4, 5, 10)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NAMES = (
    "GET /",
    "POST /setCurrency",
    "GET /product/{id}",
    "POST /cart",
    "GET /cart",
    "POST /cart/checkout",
)
NAME_INDEX = {n: i for i, n in enumerate(NAMES)}

# Per request: (start ns, latency ns, name index, status); appended by every user.
RECORDS: list[tuple[int, int, int, int]] = []
_user_ids = itertools.count()


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


class ShopUser(FastHttpUser):
    abstract = True  # made concrete (with host and rate) in run()
    seed = 0

    def on_start(self) -> None:
        self.rng = random.Random(self.seed * 100_003 + next(_user_ids))
        self.index()

    def _req(self, method: str, path: str, name: str, form: dict[str, str] | None = None) -> int:
        body = urllib.parse.urlencode(form) if form is not None else None
        t0 = time.perf_counter_ns()
        with self.client.request(
            method,
            path,
            name=name,
            data=body,
            headers=FORM if form is not None else None,
            allow_redirects=False,
            catch_response=True,
        ) as resp:
            dt = time.perf_counter_ns() - t0
            status = int(resp.status_code or 0)
            if status in (200, 302):
                resp.success()
            else:
                resp.failure(f"status {status}")
        RECORDS.append((t0, dt, NAME_INDEX[f"{method} {name}"], status))
        return status

    # -- the original's tasks; follow-ups are the redirects a browser would follow --

    @task(1)
    def index(self) -> None:
        self._req("GET", "/", "/")

    @task(2)
    def set_currency(self) -> None:
        form = {"currency_code": self.rng.choice(CURRENCIES)}
        if self._req("POST", "/setCurrency", "/setCurrency", form) == 302:
            self._req("GET", "/", "/")

    @task(10)
    def browse_product(self) -> None:
        self._req("GET", f"/product/{self.rng.choice(PRODUCT_IDS)}", "/product/{id}")

    @task(2)
    def add_to_cart(self) -> None:
        product = self.rng.choice(PRODUCT_IDS)
        self._req("GET", f"/product/{product}", "/product/{id}")
        form = {"product_id": product, "quantity": str(self.rng.choice(QUANTITIES))}
        if self._req("POST", "/cart", "/cart", form) == 302:
            self._req("GET", "/cart", "/cart")

    @task(3)
    def view_cart(self) -> None:
        self._req("GET", "/cart", "/cart")

    @task(1)
    def checkout(self) -> None:
        self.add_to_cart()
        self._req("POST", "/cart/checkout", "/cart/checkout", CHECKOUT_FORM)


def run(args: argparse.Namespace) -> dict[str, Any]:
    user_cls = type(
        "OnlineBoutiqueUser",
        (ShopUser,),
        {
            "abstract": False,
            "host": args.url,
            "seed": args.seed,
            "wait_time": constant_throughput(args.rate / args.users),
            "network_timeout": 30.0,
            "connection_timeout": 10.0,
        },
    )
    env = Environment(user_classes=[user_cls], events=events, stop_timeout=args.stop_timeout)
    runner = env.create_local_runner()
    t0 = time.perf_counter_ns()
    runner.start(args.users, spawn_rate=max(args.users / max(args.ramp, 0.1), 1.0))
    _emit({"started": args.users})
    gevent.sleep(args.warmup)
    w0 = time.perf_counter_ns()
    _emit({"window": "start"})
    gevent.sleep(args.duration)
    w1 = time.perf_counter_ns()
    _emit({"window": "end"})
    runner.stop()  # graceful: users finish their task (bounded by --stop-timeout)
    runner.quit()
    in_window = [r for r in RECORDS if w0 <= r[0] < w1]
    by_name: dict[str, int] = {}
    for r in RECORDS:
        by_name[NAMES[r[2]]] = by_name.get(NAMES[r[2]], 0) + 1
    total = env.stats.total
    return {
        "users": args.users,
        "rate": args.rate,
        "seconds_total": (time.perf_counter_ns() - t0) / 1e9,
        "window_seconds": (w1 - w0) / 1e9,
        "requests": len(RECORDS),
        "requests_by_name": by_name,
        "statuses": _count(r[3] for r in RECORDS),
        "locust_requests": total.num_requests,
        "locust_failures": total.num_failures,
        "locust_p50_ms": total.get_response_time_percentile(0.5),
        "locust_p90_ms": total.get_response_time_percentile(0.9),
        "window_requests": len(in_window),
        "window_latency_ns": [r[1] for r in in_window],
        "window_names": [r[2] for r in in_window],
        "names": list(NAMES),
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[str(v)] = out.get(str(v), 0) + 1
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m meshlens.shop.load", description=__doc__.split("\n")[0]
    )
    p.add_argument("--url", required=True, help="http://HOST:PORT of the frontend")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--rate", type=float, default=15.0, help="tasks per second, all users together")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds to start all users")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--stop-timeout", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", required=True)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .main import hostport

    hostport(args.url.removeprefix("http://").rstrip("/"))  # loopback / lab ranges only
    if not (1 <= args.users <= 5000 and 0 < args.rate <= 10000 and 0 < args.duration <= 86400):
        print("load: --users 1..5000, --rate > 0, --duration 0..86400", file=sys.stderr)
        return 2
    logging.getLogger("locust").setLevel(logging.WARNING)
    result = run(args)
    with open(args.out, "w") as f:
        json.dump(result, f)
    _emit({"done": True, "requests": result["requests"], "failures": result["locust_failures"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
