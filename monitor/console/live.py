"""Live updates: the feed thread announces changes, each connected browser gets them as server-sent
events (`event: camera|alert`, `data: <JSON view>`)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

QUEUE_LIMIT = 512  # events held for a slow browser before it is dropped (its EventSource reconnects)
KEEPALIVE_SECONDS = 15.0


@dataclass(frozen=True)
class LiveEvent:
    kind: str
    data: str  # JSON, one line

    def frame(self) -> bytes:
        return f"event: {self.kind}\ndata: {self.data}\n\n".encode()


_CLOSE = LiveEvent("close", "{}")


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[LiveEvent] = asyncio.Queue(QUEUE_LIMIT + 1)

    def offer(self, event: LiveEvent) -> None:
        # Runs on the subscriber's loop. A full queue gets the close marker: the stream ends.
        if self.queue.qsize() >= QUEUE_LIMIT:
            event = _CLOSE
        if not self.queue.full():
            self.queue.put_nowait(event)


class LiveUpdates:
    """Fan-out from one publishing thread to the event loops of the connected browsers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribers: set[_Subscriber] = set()
        self.closed = False

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def publish(self, kind: str, data: str) -> None:
        """Send one event to every browser (from any thread)."""
        event = LiveEvent(kind, data)
        with self._lock:
            subscribers = list(self._subscribers)
        for sub in subscribers:
            try:
                sub.loop.call_soon_threadsafe(sub.offer, event)
            except RuntimeError:  # that loop is closed: the server stopped
                self._drop(sub)

    def close(self) -> None:
        """End every stream (shutdown)."""
        self.closed = True
        self.publish(_CLOSE.kind, _CLOSE.data)

    def _drop(self, sub: _Subscriber) -> None:
        with self._lock:
            self._subscribers.discard(sub)

    async def stream(self) -> AsyncIterator[bytes]:
        """The event stream of one browser, with a keep-alive comment when nothing happens."""
        sub = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(sub)
        try:
            yield b"retry: 2000\n\n"
            while not self.closed:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if event is _CLOSE or event.kind == _CLOSE.kind:
                    break
                yield event.frame()
        finally:
            self._drop(sub)
