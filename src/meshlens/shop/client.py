"""A small HTTP/1.1 client for smoke runs: one keep-alive connection, cookies kept,
every byte its send and recv calls moved counted (what the agent must report)."""

from __future__ import annotations

import socket
import time
import urllib.parse
from typing import Any

from . import PRODUCT_IDS

CHECKOUT_FORM = {
    "email": "someone@example.com",
    "street_address": "1600 Amphitheatre Parkway",
    "zip_code": "94043",
    "city": "Mountain View",
    "state": "CA",
    "country": "United States",
    "credit_card_number": "4432-8015-6152-0454",
    "credit_card_expiration_month": "1",
    "credit_card_expiration_year": "2039",
    "credit_card_cvv": "672",
}

# The shop's pages in a fixed order: (method, path, form, expected status, text in body).
PAGES: tuple[tuple[str, str, dict[str, str] | None, int, str], ...] = (
    ("GET", "/", None, 200, "Hot Products"),
    ("POST", "/setCurrency", {"currency_code": "EUR"}, 302, ""),
    ("GET", f"/product/{PRODUCT_IDS[0]}", None, 200, "Add To Cart"),
    ("POST", "/cart", {"product_id": PRODUCT_IDS[2], "quantity": "3"}, 302, ""),
    ("GET", "/cart", None, 200, "Quantity: 3"),
    ("POST", "/cart/checkout", CHECKOUT_FORM, 200, "Your order is complete!"),
)


class Client:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.host = f"{host}:{port}"
        self.cookies: dict[str, str] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.buf = bytearray()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("server closed the connection")
        self.bytes_received += len(data)
        self.buf += data

    def request(
        self, method: str, path: str, form: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        body = urllib.parse.urlencode(form).encode() if form is not None else b""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", "User-Agent: shop-visit"]
        if self.cookies:
            head.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if form is not None:
            head += [
                "Content-Type: application/x-www-form-urlencoded",
                f"Content-Length: {len(body)}",
            ]
        msg = ("\r\n".join(head) + "\r\n\r\n").encode() + body
        self.sock.sendall(msg)
        self.bytes_sent += len(msg)
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k, v = k.strip().lower(), v.strip()
            if k == "set-cookie":
                name, _, val = v.split(";")[0].partition("=")
                self.cookies[name] = val
            headers[k] = v
        n = int(headers.get("content-length", "0"))
        while len(self.buf) < n:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return status, headers, data

    def close(self) -> None:
        self.sock.close()


def visit_pages(host: str, port: int, pages: int, timeout: float = 10.0) -> dict[str, Any]:
    """Fetch `pages` pages in PAGES order (wrapping round), check each; count bytes."""
    c = Client(host, port, timeout)
    errors: list[str] = []
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    try:
        for i in range(pages):
            method, path, form, want, text = PAGES[i % len(PAGES)]
            t0 = time.perf_counter()
            status, _headers, body = c.request(method, path, form)
            latencies.append(time.perf_counter() - t0)
            statuses[f"{method} {path}"] = status
            if status != want or text.encode() not in body:
                errors.append(f"{method} {path}: {status} {body[:120]!r}")
    finally:
        c.close()
    return {
        "requests": pages,
        "connections": 1,
        "bytes_sent": c.bytes_sent,
        "bytes_received": c.bytes_received,
        "statuses": statuses,
        "errors": errors,
        "latency_ms": [round(x * 1e3, 3) for x in latencies],
    }
