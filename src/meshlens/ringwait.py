"""Wait on ring buffers' epoll fd, an optional timer, or a stop request, whichever
comes first.

The ring-buffer threads of `meshlens run` sleep until the kernel wakes them (a ring
1/8 full) or stop() does, through a self-pipe: no timer, so an idle agent takes no
CPU from the host's workloads (docs/bench/http.md).
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

    def wait(self, timeout: float | None) -> bool:
        """Sleep until data, the timer (None: no timer) or stop(); False once stopped."""
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
