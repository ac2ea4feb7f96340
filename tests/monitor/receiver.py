"""A real HTTP receiver on loopback for the webhook and Alertmanager tests: records each POST and
answers from a script (status codes), optionally holding every answer until released."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Received:
    """One request as the receiver read it (header names lower-cased)."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() on arrival


class Receiver:
    """Answers the i-th POST with the i-th of `statuses`, then with `default`.

    Args:
        statuses: scripted answers, in order.
        default: the answer once the script is used up.
        hold: while not set, every request is recorded at once but answered only once it is.
        retry_after: a Retry-After header (seconds) sent with every non-2xx answer.
    """

    def __init__(
        self,
        statuses: Iterable[int] = (),
        default: int = 200,
        hold: threading.Event | None = None,
        retry_after: int | None = None,
    ) -> None:
        self._script = deque(statuses)
        self._default = default
        self.hold = hold
        self.requests: list[Received] = []
        self._arrived = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received = Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                )
                with outer._arrived:
                    outer.requests.append(received)
                    status = outer._script.popleft() if outer._script else outer._default
                    outer._arrived.notify_all()
                if outer.hold is not None:
                    outer.hold.wait(60)
                self.send_response(status)
                if status >= 300 and retry_after is not None:
                    self.send_header("Retry-After", str(retry_after))
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="test-receiver", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        """The first `count` requests, once they arrived (AssertionError after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.requests)} of {count} requests arrived in {timeout_s} s"
                self._arrived.wait(left)
            return list(self.requests[:count])

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.hold is not None:
            self.hold.set()
        self._server.shutdown()
        self._server.server_close()
