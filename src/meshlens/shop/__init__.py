"""A small stand-in for Google's Online Boutique: the services the KubeCon EU 2020
eBPF-vs-Istio comparison measured, each meant to run in its own namespace host.

- ``frontend``: HTTP/1.1 (the six pages Locust drives), calling the backends per page
  the way Online Boutique's frontend does (the home page makes 13 backend calls);
- gRPC backends: ``productcatalog``, ``currency``, ``cart`` (backed by a real
  redis-server), ``recommendation``, ``shipping``, ``checkout``, ``payment``,
  ``email``, ``ad``; each serves ``grpc.health.v1.Health/Check``.

Every process counts what it did (calls per upstream method, HTTP requests, connections
and bytes on the sockets it owns), which is the ground truth the bench compares the
agent and the sidecars against. Run one with ``python -m meshlens.shop serve NAME ...``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Service:
    name: str
    port: int  # Online Boutique's port for the service
    kind: str  # "http" (frontend), "grpc", or "redis"
    upstreams: tuple[str, ...] = ()


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            "frontend",
            8080,
            "http",
            ("productcatalog", "currency", "cart", "recommendation", "shipping", "checkout", "ad"),
        ),
        Service("productcatalog", 3550, "grpc"),
        Service("currency", 7000, "grpc"),
        Service("cart", 7070, "grpc", ("redis",)),
        Service("redis", 6379, "redis"),
        Service("recommendation", 8080, "grpc", ("productcatalog",)),
        Service("shipping", 50051, "grpc"),
        Service(
            "checkout",
            5050,
            "grpc",
            ("productcatalog", "shipping", "payment", "email", "currency", "cart"),
        ),
        Service("payment", 50051, "grpc"),
        Service("email", 8080, "grpc"),
        Service("ad", 9555, "grpc"),
    )
}

# Start order: a service after the ones it calls (its channels connect lazily anyway).
START_ORDER = (
    "redis",
    "productcatalog",
    "currency",
    "cart",
    "recommendation",
    "shipping",
    "payment",
    "email",
    "ad",
    "checkout",
    "frontend",
)

# gRPC service name (package hipstershop) of each backend.
GRPC_SERVICE = {
    "productcatalog": "ProductCatalogService",
    "currency": "CurrencyService",
    "cart": "CartService",
    "recommendation": "RecommendationService",
    "shipping": "ShippingService",
    "checkout": "CheckoutService",
    "payment": "PaymentService",
    "email": "EmailService",
    "ad": "AdService",
}

# The catalog: (id, name, price in USD as (units, nanos), categories).
PRODUCTS: tuple[tuple[str, str, tuple[int, int], tuple[str, ...]], ...] = (
    ("OLJCESPC7Z", "Sunglasses", (19, 990000000), ("accessories",)),
    ("66VCHSJNUP", "Tank Top", (18, 990000000), ("clothing", "tops")),
    ("1YMWWN1N4O", "Watch", (109, 990000000), ("accessories",)),
    ("L9ECAV7KIM", "Loafers", (89, 990000000), ("footwear",)),
    ("2ZYFJ3GM2N", "Hairdryer", (24, 990000000), ("hair", "beauty")),
    ("0PUK6V6EV0", "Candle Holder", (18, 990000000), ("decor", "home")),
    ("LS4PSXUNUM", "Salt & Pepper Shakers", (18, 490000000), ("kitchen",)),
    ("9SIQT8TOJO", "Bamboo Glass Jar", (5, 490000000), ("kitchen",)),
    ("6E92ZMYYFZ", "Mug", (8, 990000000), ("kitchen",)),
)
PRODUCT_IDS = tuple(p[0] for p in PRODUCTS)

# Units of currency per EUR (the currency service converts through EUR).
RATES = {
    "EUR": 1.0,
    "USD": 1.1305,
    "JPY": 126.40,
    "GBP": 0.85970,
    "TRY": 6.1247,
    "CAD": 1.5128,
    "CHF": 1.1360,
    "SEK": 10.5375,
}
FRONTEND_CURRENCIES = ("USD", "EUR", "CAD", "JPY", "GBP", "TRY")
