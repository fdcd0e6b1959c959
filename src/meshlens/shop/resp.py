"""A minimal redis client (RESP2) that counts its connections and the exact bytes its
send and recv calls moved: the ground truth of the cart→redis TCP edge."""

from __future__ import annotations

import socket
import threading
from typing import Any

Reply = int | bytes | str | list[Any] | None


class RedisError(Exception):
    pass


def encode(*args: str | bytes | int) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class Redis:
    """One connection, one command at a time (a lock serialises threads); reconnects
    once on a broken connection."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.addr = (host, port)
        self.timeout = timeout
        self.connections = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.commands = 0
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(self.addr, timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connections += 1
        self._buf.clear()
        return sock

    def _fill(self, sock: socket.socket) -> None:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("redis closed the connection")
        self.bytes_received += len(data)
        self._buf += data

    def _line(self, sock: socket.socket) -> bytes:
        while (i := self._buf.find(b"\r\n")) < 0:
            self._fill(sock)
        line = bytes(self._buf[:i])
        del self._buf[: i + 2]
        return line

    def _exact(self, sock: socket.socket, n: int) -> bytes:
        while len(self._buf) < n + 2:
            self._fill(sock)
        out = bytes(self._buf[:n])
        del self._buf[: n + 2]
        return out

    def _reply(self, sock: socket.socket) -> Reply:
        line = self._line(sock)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(sock, n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply(sock) for _ in range(n)]
        raise RedisError(f"bad reply line {line!r}")

    def command(self, *args: str | bytes | int) -> Reply:
        msg = encode(*args)
        with self._lock:
            for attempt in (0, 1):
                if self._sock is None:
                    self._sock = self._connect()
                try:
                    self._sock.sendall(msg)
                    self.bytes_sent += len(msg)
                    reply = self._reply(self._sock)
                    self.commands += 1
                    return reply
                except (ConnectionError, TimeoutError, OSError):
                    self._sock.close()
                    self._sock = None
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "connections": self.connections,
                "bytes_sent": self.bytes_sent,
                "bytes_received": self.bytes_received,
                "commands": self.commands,
            }

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
