"""The gRPC backends, each behaving like its Online Boutique namesake: which upstream it
calls per RPC is what shapes the call graph the bench measures."""

from __future__ import annotations

import random
import threading
import uuid
from typing import Any

from . import PRODUCTS, RATES
from .resp import Redis
from .rpc import Upstreams, protos

NANOS = 1_000_000_000


def money(pb: Any, code: str, units: int, nanos: int) -> Any:
    return pb.Money(currency_code=code, units=units, nanos=nanos)


def to_float(m: Any) -> float:
    return float(m.units) + float(m.nanos) / NANOS


def from_float(pb: Any, code: str, value: float) -> Any:
    units = int(value)
    nanos = round((value - units) * NANOS)
    if nanos >= NANOS:
        units, nanos = units + 1, nanos - NANOS
    return money(pb, code, units, nanos)


def add(pb: Any, a: Any, b: Any) -> Any:
    nanos = a.nanos + b.nanos
    units = a.units + b.units + nanos // NANOS
    return money(pb, a.currency_code, units, nanos % NANOS)


def multiply(pb: Any, m: Any, n: int) -> Any:
    total = money(pb, m.currency_code, 0, 0)
    for _ in range(n):
        total = add(pb, total, m)
    return total


class ProductCatalog:
    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.products = [
            pb.Product(
                id=pid,
                name=name,
                description=f"{name}: one of the shop's finest.",
                picture=f"/static/img/products/{pid.lower()}.jpg",
                price_usd=money(pb, "USD", *price),
                categories=list(cats),
            )
            for pid, name, price, cats in PRODUCTS
        ]
        self.by_id = {p.id: p for p in self.products}

    def ListProducts(self, request: Any, context: Any) -> Any:
        return self.pb.ListProductsResponse(products=self.products)

    def GetProduct(self, request: Any, context: Any) -> Any:
        p = self.by_id.get(request.id)
        if p is None:
            import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]

            context.abort(grpc.StatusCode.NOT_FOUND, f"no product with ID {request.id}")
        return p


class Currency:
    def __init__(self, pb: Any) -> None:
        self.pb = pb

    def GetSupportedCurrencies(self, request: Any, context: Any) -> Any:
        return self.pb.GetSupportedCurrenciesResponse(currency_codes=sorted(RATES))

    def Convert(self, request: Any, context: Any) -> Any:
        src = request.__getattribute__("from")  # "from" is a Python keyword
        if src.currency_code not in RATES or request.to_code not in RATES:
            import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]

            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported currency")
        euros = to_float(src) / RATES[src.currency_code]
        return from_float(self.pb, request.to_code, euros * RATES[request.to_code])


class Cart:
    """Carts in redis: one hash per user, product id → quantity."""

    def __init__(self, pb: Any, redis: Redis) -> None:
        self.pb = pb
        self.redis = redis

    def AddItem(self, request: Any, context: Any) -> Any:
        key = f"cart:{request.user_id}"
        self.redis.command("HINCRBY", key, request.item.product_id, request.item.quantity)
        return self.pb.Empty()

    def GetCart(self, request: Any, context: Any) -> Any:
        raw = self.redis.command("HGETALL", f"cart:{request.user_id}")
        items = []
        if isinstance(raw, list):
            for pid, qty in zip(raw[::2], raw[1::2], strict=True):
                items.append(self.pb.CartItem(product_id=pid.decode(), quantity=int(qty)))
        return self.pb.Cart(user_id=request.user_id, items=items)

    def EmptyCart(self, request: Any, context: Any) -> Any:
        self.redis.command("DEL", f"cart:{request.user_id}")
        return self.pb.Empty()


class Recommendation:
    def __init__(self, pb: Any, up: Upstreams) -> None:
        self.pb = pb
        self.up = up
        self.rng = random.Random(7)
        self.lock = threading.Lock()

    def ListRecommendations(self, request: Any, context: Any) -> Any:
        products = self.up["productcatalog"].ListProducts(self.pb.Empty()).products
        excluded = set(request.product_ids)
        ids = [p.id for p in products if p.id not in excluded]
        with self.lock:
            picked = self.rng.sample(ids, min(5, len(ids)))
        return self.pb.ListRecommendationsResponse(product_ids=picked)


class Shipping:
    def __init__(self, pb: Any) -> None:
        self.pb = pb

    def GetQuote(self, request: Any, context: Any) -> Any:
        count = sum(i.quantity for i in request.items)
        cost = 0.0 if count == 0 else 8.99
        return self.pb.GetQuoteResponse(cost_usd=from_float(self.pb, "USD", cost))

    def ShipOrder(self, request: Any, context: Any) -> Any:
        a = request.address
        tracking = f"{a.city[:1]}{a.zip_code % 100:02d}-{uuid.uuid4().hex[:10].upper()}"
        return self.pb.ShipOrderResponse(tracking_id=tracking)


class Payment:
    def __init__(self, pb: Any) -> None:
        self.pb = pb

    def Charge(self, request: Any, context: Any) -> Any:
        number = request.credit_card.credit_card_number.replace("-", "")
        if not number.isdigit() or not _luhn(number):
            import grpc  # type: ignore[import-untyped, import-not-found, unused-ignore]

            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "credit card info is invalid")
        return self.pb.ChargeResponse(transaction_id=str(uuid.uuid4()))


def _luhn(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


class Email:
    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.sent = 0

    def SendOrderConfirmation(self, request: Any, context: Any) -> Any:
        # Render the confirmation as the original does, then "send" it nowhere.
        body = f"Order {request.order.order_id} confirmed for {request.email}"
        self.sent += len(body) > 0
        return self.pb.Empty()


ADS = {
    "clothing": ("/product/66VCHSJNUP", "Tank top for sale. 20% off."),
    "accessories": ("/product/1YMWWN1N4O", "Watch for sale. Buy one, get second kit for free"),
    "footwear": ("/product/L9ECAV7KIM", "Loafers for sale. Buy one, get second one for free"),
    "hair": ("/product/2ZYFJ3GM2N", "Hairdryer for sale. 50% off."),
    "decor": ("/product/0PUK6V6EV0", "Candle holder for sale. 30% off."),
    "kitchen": ("/product/9SIQT8TOJO", "Bamboo glass jar for sale. 10% off."),
}


class Ad:
    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.rng = random.Random(11)
        self.lock = threading.Lock()

    def GetAds(self, request: Any, context: Any) -> Any:
        ads = [
            self.pb.Ad(redirect_url=u, text=t)
            for k, (u, t) in ADS.items()
            if k in request.context_keys
        ]
        if not ads:
            with self.lock:
                u, t = self.rng.choice(list(ADS.values()))
            ads = [self.pb.Ad(redirect_url=u, text=t)]
        return self.pb.AdResponse(ads=ads)


class Checkout:
    """PlaceOrder: cart → prices in the user's currency → shipping quote → charge →
    ship → empty the cart → confirmation email (Online Boutique's checkoutservice)."""

    def __init__(self, pb: Any, up: Upstreams) -> None:
        self.pb = pb
        self.up = up

    def _convert(self, m: Any, to: str) -> Any:
        req = self.pb.CurrencyConversionRequest(to_code=to)
        req.__getattribute__("from").CopyFrom(m)
        return self.up["currency"].Convert(req)

    def PlaceOrder(self, request: Any, context: Any) -> Any:
        pb, up = self.pb, self.up
        cart = up["cart"].GetCart(pb.GetCartRequest(user_id=request.user_id))
        items = []
        for item in cart.items:
            product = up["productcatalog"].GetProduct(pb.GetProductRequest(id=item.product_id))
            price = self._convert(product.price_usd, request.user_currency)
            items.append(pb.OrderItem(item=item, cost=price))
        quote = up["shipping"].GetQuote(
            pb.GetQuoteRequest(address=request.address, items=cart.items)
        )
        shipping = self._convert(quote.cost_usd, request.user_currency)
        total = money(pb, request.user_currency, 0, 0)
        total = add(pb, total, shipping)
        for oi in items:
            total = add(pb, total, multiply(pb, oi.cost, oi.item.quantity))
        up["payment"].Charge(pb.ChargeRequest(amount=total, credit_card=request.credit_card))
        shipped = up["shipping"].ShipOrder(
            pb.ShipOrderRequest(address=request.address, items=cart.items)
        )
        up["cart"].EmptyCart(pb.EmptyCartRequest(user_id=request.user_id))
        order = pb.OrderResult(
            order_id=str(uuid.uuid4()),
            shipping_tracking_id=shipped.tracking_id,
            shipping_cost=shipping,
            shipping_address=request.address,
            items=items,
        )
        up["email"].SendOrderConfirmation(
            pb.SendOrderConfirmationRequest(email=request.email, order=order)
        )
        return pb.PlaceOrderResponse(order=order)


def make_servicer(name: str, up: Upstreams, redis: Redis | None) -> Any:
    pb = protos()[0]
    if name == "productcatalog":
        return ProductCatalog(pb)
    if name == "currency":
        return Currency(pb)
    if name == "cart":
        assert redis is not None
        return Cart(pb, redis)
    if name == "recommendation":
        return Recommendation(pb, up)
    if name == "shipping":
        return Shipping(pb)
    if name == "checkout":
        return Checkout(pb, up)
    if name == "payment":
        return Payment(pb)
    if name == "email":
        return Email(pb)
    if name == "ad":
        return Ad(pb)
    raise ValueError(f"unknown backend {name!r}")
