"""systemd's notify protocol, implemented here: one datagram to ``$NOTIFY_SOCKET``.

READY=1 once serving, WATCHDOG=1 at half of ``$WATCHDOG_USEC``, STATUS=… lines a person
reads in ``systemctl status``, STOPPING=1 on shutdown. Without systemd (no
``NOTIFY_SOCKET``) every call is a no-op. A message is never waited for: when the
socket's queue is full (its reader behind), it is dropped rather than block the event loop.
"""

from __future__ import annotations

import asyncio
import os
import socket


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> None:
        if not self.address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto("\n".join(lines).encode(), self.address)
        except OSError:
            pass  # systemd gone, or its queue full (BlockingIOError): nothing to tell now

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def watchdog_interval(self) -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not self.address or not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 1e6 / 2
        except ValueError:
            return None

    async def watchdog(self) -> None:
        """Ping the watchdog until cancelled (returns at once when none is asked for)."""
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await asyncio.sleep(interval)
