"""Names of the kernel's own enums, read from the running kernel's BTF, so a
newer kernel's drop or reset reasons just work and labels stay a closed set."""

from __future__ import annotations

import errno
import functools

from .btf import Btf, BtfError
from .system import BTF_PATH

_WANTED = {"skb_drop_reason": "SKB_DROP_REASON_", "sk_rst_reason": "SK_RST_REASON_"}


@functools.cache
def _enums() -> dict[str, dict[int, str]]:
    """Read the few enums we label with once, then let the 6 MB of BTF go."""
    try:
        btf = Btf.from_file(BTF_PATH)
    except (OSError, BtfError):
        return {}
    out = {}
    for name, prefix in _WANTED.items():
        try:
            values = btf.enum(name)
        except BtfError:
            continue
        out[name] = {v: k.removeprefix(prefix) for k, v in values.items() if not k.endswith("_MAX")}
    return out


def load() -> None:
    """Parse the enums now (the agent does it in a thread at start-up)."""
    _enums()


def _enum(name: str, prefix: str) -> dict[int, str]:
    return _enums().get(name, {})


def drop_reason(code: int) -> str:
    """enum skb_drop_reason, e.g. 2 -> "NOT_SPECIFIED", 12 -> "NETFILTER_DROP"."""
    return _enum("skb_drop_reason", "SKB_DROP_REASON_").get(code, f"REASON_{code}")


def drop_reasons() -> dict[int, str]:
    return dict(_enum("skb_drop_reason", "SKB_DROP_REASON_"))


def reset_reason(code: int) -> str:
    """enum sk_rst_reason, e.g. 1 -> "NO_SOCKET"."""
    return _enum("sk_rst_reason", "SK_RST_REASON_").get(code, f"REASON_{code}")


# What a failed connect() is called, by the socket error the kernel left.
_CONNECT_ERRORS = {
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.ECONNRESET: "reset",
    0: "aborted",  # the application closed the socket before the handshake ended
}


def connect_failure(err: int) -> str:
    return _CONNECT_ERRORS.get(err, "other")
