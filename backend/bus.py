"""Live events for browsers (server-sent events): receipts, unlock progress, alarms.

Channels are strings: ``user:{id}`` (a resident's ``receipt``, ``unlock``, ``wallet``
and ``refund`` events), ``operator:{id}`` (an operator's ``sale``, ``alarm`` and
``status`` events) and ``supplier:{id}``. ``publish`` may
be called from any thread (the ingest and MQTT threads do); subscribers are asyncio
queues on the event loop. A slow subscriber loses its oldest events, never blocks
the publisher.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from typing import Any

__all__ = ["EventBus"]


class EventBus:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None, maxsize: int = 100) -> None:
        self.loop = loop
        self.maxsize = maxsize
        self._subs: dict[str, set[asyncio.Queue[dict[str, Any]]]] = defaultdict(set)
        self._lock = threading.Lock()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def subscribe(self, channel: str) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self.maxsize)
        with self._lock:
            self._subs[channel].add(q)
        return q

    def unsubscribe(self, channel: str, q: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._subs[channel].discard(q)
            if not self._subs[channel]:
                del self._subs[channel]

    def subscribers(self, channel: str) -> int:
        with self._lock:
            return len(self._subs.get(channel, ()))

    def publish(self, channel: str, event: dict[str, Any]) -> None:
        """Deliver ``event`` to every subscriber of ``channel`` (thread-safe)."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._deliver(channel, event)
        else:
            loop.call_soon_threadsafe(self._deliver, channel, event)

    def _deliver(self, channel: str, event: dict[str, Any]) -> None:
        with self._lock:
            queues = list(self._subs.get(channel, ()))
        for q in queues:
            if q.full():
                q.get_nowait()
            q.put_nowait(event)
