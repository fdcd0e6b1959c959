"""Wait on ring buffers' epoll fd, a timer, or a stop request, whichever comes first.

The ring-buffer threads sleep up to a second between drains (an idle agent's CPU
is mostly its wake-ups); a self-pipe lets stop() end that sleep at once.
"""

from __future__ import annotations

import contextlib
import os
import select


class RingWait:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.stopped = False
        self._r, self._w = os.pipe()

    def wait(self, timeout: float) -> bool:
        """Sleep until data, the timer or stop(); False once stopped."""
        if self.stopped or self.fd < 0:
            return False
        try:
            select.select([self.fd, self._r], [], [], timeout)
        except (OSError, ValueError):
            return False
        return not self.stopped

    def stop(self) -> None:
        self.stopped = True
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
