"""The frontend: HTTP/1.1 pages that call the backends as Online Boutique's frontend
does, page by page. The home page makes 13 backend calls (currencies, products, cart,
one conversion per product, an ad).

It counts what it served on its own sockets: connections, requests per route and status,
and the bytes its recv and send calls moved, which equal what the kernel saw."""

from __future__ import annotations

import html
import io
import socket
import socketserver
import threading
import urllib.parse
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler
from typing import Any

import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]

from . import FRONTEND_CURRENCIES
from .backends import add, multiply, to_float
from .rpc import Upstreams, protos

SESSION_COOKIE = "shop_session-id"
CURRENCY_COOKIE = "shop_currency"
REASONS = {
    200: "OK",
    302: "Found",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
}


class Stats:
    """Counters of the frontend's sockets, per peer address (the bench compares the load
    generator's edge alone, apart from readiness probes)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.peers: dict[str, dict[str, int]] = {}
        self.requests: Counter[str] = Counter()  # "METHOD route status"

    def peer(self, ip: str) -> dict[str, int]:
        with self.lock:
            return self.peers.setdefault(
                ip, {"connections": 0, "bytes_received": 0, "bytes_sent": 0, "requests": 0}
            )

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            peers = {ip: dict(c) for ip, c in self.peers.items()}
            return {
                "peers": peers,
                "connections": sum(c["connections"] for c in peers.values()),
                "bytes_received": sum(c["bytes_received"] for c in peers.values()),
                "bytes_sent": sum(c["bytes_sent"] for c in peers.values()),
                "requests": dict(self.requests),
                "requests_total": sum(self.requests.values()),
            }


class _CountingRaw(io.RawIOBase):
    """The socket as a raw stream for BufferedReader, counting what recv returned."""

    def __init__(self, sock: socket.socket, stats: Stats, peer: dict[str, int]) -> None:
        self.sock = sock
        self.stats = stats
        self.peer = peer

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self.sock.recv_into(b)
        with self.stats.lock:
            self.peer["bytes_received"] += n
        return n


class _CountingWriter:
    def __init__(self, sock: socket.socket, stats: Stats, peer: dict[str, int]) -> None:
        self.sock = sock
        self.stats = stats
        self.peer = peer

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        with self.stats.lock:
            self.peer["bytes_sent"] += len(data)
        return len(data)

    def flush(self) -> None:
        pass


class Page(Exception):
    """An early answer (redirect, error) from inside a page handler."""

    def __init__(self, status: int, body: str = "", location: str = "") -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.location = location


def _money_text(m: Any) -> str:
    return f"{m.currency_code} {to_float(m):,.2f}"


def _layout(title: str, currency: str, cart_size: int, body: str) -> str:
    options = "".join(
        f'<option value="{c}"{" selected" if c == currency else ""}>{c}</option>'
        for c in FRONTEND_CURRENCIES
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="UTF-8">'
        f"<title>{html.escape(title)} | Online Boutique</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="stylesheet" href="/static/styles/styles.css"></head><body>'
        '<header><div class="navbar"><a href="/" class="navbar-brand">Online Boutique</a>'
        f'<form method="POST" action="/setCurrency" class="controls"><select name="currency_code">'
        f"{options}</select></form>"
        f'<a href="/cart" class="cart-link">Cart ({cart_size})</a></div></header>'
        f"<main>{body}</main>"
        '<footer class="py-5"><p>This website is hosted for demo purposes only. It is not an '
        "actual shop.</p></footer></body></html>\n"
    )


def _product_card(p: Any, price: Any) -> str:
    return (
        f'<div class="hot-product-card"><a href="/product/{p.id}">'
        f'<img alt="" src="{p.picture}"><div class="hot-product-card-img-overlay"></div></a>'
        f'<div><div class="hot-product-card-name">{html.escape(p.name)}</div>'
        f'<div class="hot-product-card-price">{_money_text(price)}</div></div></div>'
    )


class Frontend:
    """Page logic; one instance shared by the server's threads."""

    def __init__(self, up: Upstreams) -> None:
        self.up = up
        self.pb = protos()[0]

    # -- calls, named as in Online Boutique's frontend -------------------------------

    def currencies(self) -> list[str]:
        got = self.up["currency"].GetSupportedCurrencies(self.pb.Empty()).currency_codes
        return [c for c in got if c in FRONTEND_CURRENCIES]

    def products(self) -> list[Any]:
        return list(self.up["productcatalog"].ListProducts(self.pb.Empty()).products)

    def product(self, pid: str) -> Any:
        return self.up["productcatalog"].GetProduct(self.pb.GetProductRequest(id=pid))

    def cart(self, user: str) -> list[Any]:
        return list(self.up["cart"].GetCart(self.pb.GetCartRequest(user_id=user)).items)

    def convert(self, m: Any, to: str) -> Any:
        if m.currency_code == to:
            return m
        req = self.pb.CurrencyConversionRequest(to_code=to)
        req.__getattribute__("from").CopyFrom(m)
        return self.up["currency"].Convert(req)

    def recommendations(self, user: str, ids: list[str]) -> list[Any]:
        req = self.pb.ListRecommendationsRequest(user_id=user, product_ids=ids)
        got = self.up["recommendation"].ListRecommendations(req).product_ids
        return [self.product(pid) for pid in list(got)[:4]]

    def shipping_quote(self, items: list[Any], currency: str) -> Any:
        quote = self.up["shipping"].GetQuote(self.pb.GetQuoteRequest(items=items)).cost_usd
        return self.convert(quote, currency)

    def ad(self, keys: list[str]) -> Any:
        ads = self.up["ad"].GetAds(self.pb.AdRequest(context_keys=keys)).ads
        return ads[0] if ads else None

    # -- pages ---------------------------------------------------------------------------

    def home(self, user: str, currency: str) -> str:
        currencies = self.currencies()
        products = self.products()
        cart = self.cart(user)
        cards = [_product_card(p, self.convert(p.price_usd, currency)) for p in products]
        ad = self.ad([])
        body = (
            f'<div class="home"><div class="currencies">{" ".join(currencies)}</div>'
            f'<h3>Hot Products</h3><div class="row">{"".join(cards)}</div>'
            f'<div class="ad"><a href="{ad.redirect_url}">{html.escape(ad.text)}</a></div></div>'
        )
        return _layout("Home", currency, len(cart), body)

    def product_page(self, user: str, currency: str, pid: str) -> str:
        try:
            p = self.product(pid)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise Page(404, "product not found") from None
            raise
        currencies = self.currencies()
        cart = self.cart(user)
        price = self.convert(p.price_usd, currency)
        recs = self.recommendations(user, [pid])
        ad = self.ad(list(p.categories))
        rec_html = "".join(
            f'<div class="rec"><a href="/product/{r.id}">{html.escape(r.name)}</a></div>'
            for r in recs
        )
        body = (
            f'<div class="product"><img src="{p.picture}" alt=""><h2>{html.escape(p.name)}</h2>'
            f'<p class="price">{_money_text(price)}</p><p>{html.escape(p.description)}</p>'
            f'<form method="POST" action="/cart"><input type="hidden" name="product_id" '
            f'value="{p.id}"><select name="quantity">'
            + "".join(f"<option>{q}</option>" for q in (1, 2, 3, 4, 5, 10))
            + f'</select><button type="submit">Add To Cart</button></form></div>'
            f'<div class="currencies">{" ".join(currencies)}</div>'
            f'<div class="recommendations">{rec_html}</div>'
            f'<div class="ad"><a href="{ad.redirect_url}">{html.escape(ad.text)}</a></div>'
        )
        return _layout(p.name, currency, len(cart), body)

    def add_to_cart(self, user: str, form: dict[str, str]) -> None:
        pid = form.get("product_id", "")
        try:
            qty = int(form.get("quantity", ""))
        except ValueError:
            raise Page(400, "invalid quantity") from None
        if not pid or not 1 <= qty <= 10:
            raise Page(400, "invalid form input")
        p = self.product(pid)
        item = self.pb.CartItem(product_id=p.id, quantity=qty)
        self.up["cart"].AddItem(self.pb.AddItemRequest(user_id=user, item=item))
        raise Page(302, location="/cart")

    def view_cart(self, user: str, currency: str) -> str:
        currencies = self.currencies()
        cart = self.cart(user)
        recs = self.recommendations(user, [i.product_id for i in cart])
        shipping = self.shipping_quote(cart, currency)
        total = shipping
        rows = []
        for item in cart:
            p = self.product(item.product_id)
            price = self.convert(p.price_usd, currency)
            line = multiply(self.pb, price, item.quantity)
            total = add(self.pb, total, line)
            rows.append(
                f'<div class="cart-item"><a href="/product/{p.id}">{html.escape(p.name)}</a>'
                f"<span>Quantity: {item.quantity}</span><span>{_money_text(line)}</span></div>"
            )
        rec_html = "".join(f'<a href="/product/{r.id}">{html.escape(r.name)}</a>' for r in recs)
        body = (
            f'<div class="cart">{"".join(rows)}<p>Shipping: {_money_text(shipping)}</p>'
            f"<p>Total: {_money_text(total)}</p>"
            '<form method="POST" action="/cart/checkout"><button>Place order</button></form>'
            f'</div><div class="currencies">{" ".join(currencies)}</div>'
            f'<div class="recommendations">{rec_html}</div>'
        )
        return _layout("Cart", currency, len(cart), body)

    def place_order(self, user: str, currency: str, form: dict[str, str]) -> str:
        pb = self.pb
        try:
            address = pb.Address(
                street_address=form["street_address"],
                city=form["city"],
                state=form["state"],
                country=form["country"],
                zip_code=int(form["zip_code"]),
            )
            card = pb.CreditCardInfo(
                credit_card_number=form["credit_card_number"],
                credit_card_cvv=int(form["credit_card_cvv"]),
                credit_card_expiration_year=int(form["credit_card_expiration_year"]),
                credit_card_expiration_month=int(form["credit_card_expiration_month"]),
            )
            req = pb.PlaceOrderRequest(
                user_id=user,
                user_currency=currency,
                address=address,
                email=form["email"],
                credit_card=card,
            )
        except (KeyError, ValueError):
            raise Page(400, "invalid form input") from None
        order = self.up["checkout"].PlaceOrder(req).order
        recs = self.recommendations(user, [])
        total = order.shipping_cost
        for oi in order.items:
            total = add(pb, total, multiply(pb, oi.cost, oi.item.quantity))
        currencies = self.currencies()
        rec_html = "".join(f'<a href="/product/{r.id}">{html.escape(r.name)}</a>' for r in recs)
        body = (
            f'<div class="order"><h3>Your order is complete!</h3>'
            f"<p>Confirmation # {order.order_id}</p>"
            f"<p>Tracking # {order.shipping_tracking_id}</p><p>Total paid: {_money_text(total)}</p>"
            f'</div><div class="currencies">{" ".join(currencies)}</div>'
            f'<div class="recommendations">{rec_html}</div>'
        )
        return _layout("Order", currency, 0, body)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "shop-frontend"
    timeout = 120
    server: FrontendServer

    def setup(self) -> None:
        self.connection = self.request
        self.connection.settimeout(self.timeout)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stats = self.server.stats
        self.peer = stats.peer(self.client_address[0])
        with stats.lock:
            self.peer["connections"] += 1
        self.rfile = io.BufferedReader(_CountingRaw(self.connection, stats, self.peer), 65536)
        self.wfile = _CountingWriter(self.connection, stats, self.peer)  # type: ignore[assignment]

    def finish(self) -> None:
        pass

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _cookies(self) -> dict[str, str]:
        out = {}
        for part in (self.headers.get("Cookie") or "").split(";"):
            k, sep, v = part.strip().partition("=")
            if sep:
                out[k] = v
        return out

    def _send(self, status: int, body: str, route: str, headers: list[tuple[str, str]]) -> None:
        data = body.encode()
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"Content-Length: {len(data)}")
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.wfile.write(head + data)  # one write: no Nagle stall between head and body
        stats = self.server.stats
        with stats.lock:
            stats.requests[f"{self.command} {route} {status}"] += 1
            self.peer["requests"] += 1

    def _form(self) -> dict[str, str]:
        n = int(self.headers.get("Content-Length") or 0)
        if not 0 <= n <= 1 << 20:
            raise Page(400, "bad length")
        raw = self.rfile.read(n) if n else b""
        return {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}

    def _dispatch(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        cookies = self._cookies()
        headers: list[tuple[str, str]] = [("Content-Type", "text/html; charset=utf-8")]
        user = cookies.get(SESSION_COOKIE, "")
        if not user:
            user = str(uuid.uuid4())
            headers.append(("Set-Cookie", f"{SESSION_COOKIE}={user}; Max-Age=172800"))
        currency = cookies.get(CURRENCY_COOKIE, "USD")
        if currency not in FRONTEND_CURRENCIES:
            currency = "USD"
        fe = self.server.frontend
        route = path
        method = self.command
        try:
            form = self._form() if method == "POST" else {}
            if path == "/_healthz":
                self._send(200, "ok", path, [("Content-Type", "text/plain")])
                return
            if path == "/" and method in ("GET", "HEAD"):
                body = fe.home(user, currency)
            elif path.startswith("/product/") and method in ("GET", "HEAD"):
                route = "/product/{id}"
                body = fe.product_page(user, currency, path[len("/product/") :])
            elif path == "/cart" and method == "GET":
                body = fe.view_cart(user, currency)
            elif path == "/cart" and method == "POST":
                fe.add_to_cart(user, form)
                body = ""
            elif path == "/cart/checkout" and method == "POST":
                body = fe.place_order(user, currency, form)
            elif path == "/setCurrency" and method == "POST":
                code = form.get("currency_code", "")
                if code in FRONTEND_CURRENCIES:
                    headers.append(("Set-Cookie", f"{CURRENCY_COOKIE}={code}; Max-Age=172800"))
                raise Page(302, location=self.headers.get("Referer") or "/")
            elif path in ("/", "/cart", "/cart/checkout", "/setCurrency"):
                raise Page(405, "method not allowed")
            else:
                route = "other"
                raise Page(404, "not found")
        except Page as p:
            if p.location:
                headers.append(("Location", p.location))
            self._send(p.status, p.body, route, headers)
            return
        except grpc.RpcError as e:
            self._send(500, f"backend error: {e.code()}", route, headers)
            return
        self._send(200, body, route, headers)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()


class FrontendServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024

    def __init__(self, addr: tuple[str, int], frontend: Frontend) -> None:
        self.stats = Stats()
        self.frontend = frontend
        super().__init__(addr, Handler)
