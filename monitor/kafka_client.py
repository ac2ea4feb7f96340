"""Kafka connection settings and the producer, consumer and admin factories (kafka-python).

`KafkaSettings` says where the brokers are and how to authenticate; `ProducerSettings` and
`ConsumerSettings` tune the clients. The producer may be confluent-kafka's instead
(`producer.client`), behind the same interface. Every factory turns an unreachable broker into one
`KafkaUnavailableError` line naming the address.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError, TopicAlreadyExistsError
from kafka.future import Future
from kafka.record.default_records import DefaultRecordBatch
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from model.config import ConfigError, read_yaml_mapping
from monitor.wire import MAX_FRAME_BYTES

BOOTSTRAP_ENV = "ANOMON_BOOTSTRAP"
"""Environment variable giving the default bootstrap servers (else 127.0.0.1:9092)."""
PASSWORD_ENV = "ANOMON_KAFKA_PASSWORD"
"""Environment variable read for the SASL password when neither the setting nor a file gives it."""

# Room for the biggest frame plus its key, headers and batch overhead.
_MAX_RECORD_BYTES = MAX_FRAME_BYTES + 1024 * 1024


class KafkaUnavailableError(RuntimeError):
    """The brokers cannot be reached or refused a request; the message names the address."""


class KafkaSettings(BaseModel):
    """Where the Kafka brokers are and how to connect to them.

    `bootstrap_servers` defaults to the environment variable `ANOMON_BOOTSTRAP`, else 127.0.0.1:9092.
    The SASL password is a `SecretStr` (printed as `**********`). It is taken from
    `sasl_plain_password`, else from the file `sasl_plain_password_file`, else from the environment
    variable `ANOMON_KAFKA_PASSWORD`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = Field(
        default_factory=lambda: os.environ.get(BOOTSTRAP_ENV, "127.0.0.1:9092"),
        min_length=1,
        description="comma-separated host:port list (default: env ANOMON_BOOTSTRAP, else 127.0.0.1:9092)",
    )
    client_id: str = "anomon"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    sasl_plain_password_file: Path | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_check_hostname: bool = True
    connect_timeout_ms: int = Field(10_000, ge=100, description="how long to wait for the first broker")
    request_timeout_ms: int = Field(30_000, ge=1000)
    startup_wait_seconds: float | None = Field(
        None,
        ge=0,
        description="how long `anomon run` and `anomon ingest --cameras` wait at start for Kafka to "
        "answer (null: until it does; 0: fail at once)",
    )

    @model_validator(mode="before")
    @classmethod
    def _password_from_file_or_env(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("sasl_plain_password") is not None:
            return data
        data = dict(data)
        secret_file = data.get("sasl_plain_password_file")
        if secret_file is not None:
            try:
                data["sasl_plain_password"] = Path(secret_file).read_text().rstrip("\r\n")
            except OSError as err:
                raise ValueError(f"cannot read the password file {secret_file}: {err.strerror}") from None
        elif os.environ.get(PASSWORD_ENV):
            data["sasl_plain_password"] = os.environ[PASSWORD_ENV]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and (self.sasl_mechanism is None or not self.sasl_plain_username):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism and sasl_plain_username"
            )
        if sasl and self.sasl_plain_password is None:
            raise ValueError(
                f"security_protocol {self.security_protocol} needs a password: sasl_plain_password, "
                f"sasl_plain_password_file or the environment variable {PASSWORD_ENV}"
            )
        if not sasl and self.sasl_mechanism is not None:
            raise ValueError(
                f"sasl_mechanism is set but security_protocol {self.security_protocol} is not SASL_*"
            )
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name} {path} is not a file")
        return self

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by kafka-python's producer, consumer and admin client."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()],
            "client_id": self.client_id,
            "security_protocol": self.security_protocol,
            "bootstrap_timeout_ms": self.connect_timeout_ms,
            "request_timeout_ms": self.request_timeout_ms,
        }
        if self.security_protocol.startswith("SASL_"):
            assert self.sasl_plain_password is not None  # checked by the validator
            kwargs |= {
                "sasl_mechanism": self.sasl_mechanism,
                "sasl_plain_username": self.sasl_plain_username,
                "sasl_plain_password": self.sasl_plain_password.get_secret_value(),
            }
        if self.security_protocol in ("SSL", "SASL_SSL"):
            kwargs |= {
                "ssl_cafile": _str_or_none(self.ssl_cafile),
                "ssl_certfile": _str_or_none(self.ssl_certfile),
                "ssl_keyfile": _str_or_none(self.ssl_keyfile),
                "ssl_check_hostname": self.ssl_check_hostname,
            }
        return kwargs


class ProducerSettings(BaseModel):
    """Producer tuning: every record acknowledged by all in-sync replicas, batched for a few ms."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client: Literal["kafka-python", "confluent-kafka"] = Field(
        "kafka-python",
        description="confluent-kafka (librdkafka; pip install 'anomon[confluent]') sends on its own "
        "threads without Python's GIL: about 12 µs of CPU per score record against kafka-python's 137 "
        "(benchmarks/service_ceiling.py)",
    )
    acks: Literal["all", 0, 1] = "all"
    linger_ms: int = Field(5, ge=0, le=1000)
    batch_size: int = Field(16384, ge=0, description="bytes batched per partition before a send")
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    max_request_size: int = Field(_MAX_RECORD_BYTES, ge=1024)
    max_block_ms: int = Field(10_000, ge=0, description="how long send() may wait for metadata or buffer")


class ConsumerSettings(BaseModel):
    """Group consumer tuning; offsets are committed by the caller, never automatically.

    `session_timeout_ms` 6000 makes a group join take about 3 s (kafka-python's default 10 s
    session takes 5 s, and over 20 s on Tansu with every default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    group_id: str = Field("anomon", min_length=1)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(2000, ge=100)
    max_poll_interval_ms: int = Field(60_000, ge=1000, description="longest gap between polls")
    max_poll_records: int = Field(64, ge=1)
    max_partition_fetch_bytes: int = Field(_MAX_RECORD_BYTES, ge=1024)
    # Tansu holds every fetch for the full wait even when records arrive (Kafka answers at once), so
    # kafka-python's 500 ms default put up to half a second on each frame's latency.
    fetch_max_wait_ms: int = Field(20, ge=0, le=10_000, description="longest a fetch waits for records")

    @model_validator(mode="after")
    def _heartbeat_below_session(self) -> ConsumerSettings:
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms should be at most a third of session_timeout_ms")
        return self


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _unavailable(settings: KafkaSettings, err: Exception) -> KafkaUnavailableError:
    return KafkaUnavailableError(
        f"cannot reach Kafka at {settings.bootstrap_servers} ({err.__class__.__name__}): "
        "check the address (--bootstrap) and that the broker is running"
    )


def make_producer(
    settings: KafkaSettings, producer: ProducerSettings | None = None
) -> KafkaProducer | ConfluentProducer:
    """A connected producer (`producer.client`); keys and values are sent as the bytes given.

    Raises:
        KafkaUnavailableError: no broker answered within `connect_timeout_ms`.
        ConfigError: confluent-kafka is asked for but not installed.
    """
    tuning = producer or ProducerSettings()
    if tuning.client == "confluent-kafka":
        return ConfluentProducer(settings, tuning)
    try:
        return KafkaProducer(**settings.client_kwargs(), **tuning.model_dump(exclude={"client"}))
    except KafkaError as err:
        raise _unavailable(settings, err) from err


def librdkafka_config(settings: KafkaSettings) -> dict[str, Any]:
    """The connection settings as librdkafka (confluent-kafka) names them."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "client.id": settings.client_id,
        "security.protocol": settings.security_protocol.lower(),
        "socket.connection.setup.timeout.ms": settings.connect_timeout_ms,
    }
    if settings.security_protocol.startswith("SASL_"):
        assert settings.sasl_plain_password is not None  # checked by the validator
        config |= {
            "sasl.mechanism": settings.sasl_mechanism,
            "sasl.username": settings.sasl_plain_username,
            "sasl.password": settings.sasl_plain_password.get_secret_value(),
        }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        files = {
            "ssl.ca.location": settings.ssl_cafile,
            "ssl.certificate.location": settings.ssl_certfile,
            "ssl.key.location": settings.ssl_keyfile,
        }
        config |= {key: str(path) for key, path in files.items() if path is not None}
        config["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
    return config


class ConfluentProducer:
    """confluent-kafka's producer behind what the service uses of kafka-python's: `send` returns a
    kafka-python future (resolved when the broker acknowledges the record), `flush` raises
    `KafkaTimeoutError` when records are still unacknowledged, errors are `KafkaError`s.

    Raises:
        ConfigError: confluent-kafka is not installed.
        KafkaUnavailableError: no broker answered within `connect_timeout_ms`.
    """

    def __init__(self, settings: KafkaSettings, tuning: ProducerSettings) -> None:
        try:
            from confluent_kafka import KafkaException, Producer
        except ImportError:
            raise ConfigError(
                "field 'producer.client': confluent-kafka is not installed; pip install 'anomon[confluent]' "
                "or set it to kafka-python"
            ) from None
        self._errors = (KafkaException, BufferError)
        self._block_s = tuning.max_block_ms / 1e3
        self._producer = Producer(
            librdkafka_config(settings)
            | {
                "acks": str(tuning.acks),
                "linger.ms": tuning.linger_ms,
                "batch.size": max(1, tuning.batch_size),
                "compression.type": tuning.compression_type or "none",
                "message.max.bytes": tuning.max_request_size,
                "request.timeout.ms": settings.request_timeout_ms,
            }
        )
        try:  # librdkafka connects lazily: ask for metadata, as kafka-python does when it starts
            self._producer.list_topics(timeout=settings.connect_timeout_ms / 1e3)
        except KafkaException as err:
            raise _unavailable(settings, err) from err

    def send(
        self,
        topic: str,
        key: bytes | None = None,
        value: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        timestamp_ms: int | None = None,
    ) -> Future:
        """Queue one record; the future fails with a KafkaError if the broker does not take it."""
        future = Future()

        def delivered(err: Any, _message: Any) -> None:
            if err is None:
                future.success(None)
            else:
                future.failure(KafkaError(str(err)))

        # librdkafka's timestamp 0 is "now", as kafka-python's None.
        record: dict[str, Any] = {
            "value": value,
            "key": key,
            "headers": headers or None,
            "timestamp": timestamp_ms or 0,
            "on_delivery": delivered,
        }
        try:
            try:
                self._producer.produce(topic, **record)
            except BufferError:  # the local queue is full: wait for room, as kafka-python's max_block_ms
                self._producer.flush(self._block_s)
                self._producer.produce(topic, **record)
        except self._errors as err:
            raise KafkaError(f"cannot send to topic {topic}: {err}") from err
        # No poll(0) here to serve acknowledgements: it releases the GIL, and taking it back behind the
        # consumer's and decoders' threads cost the main thread more than the send; flush serves them.
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent is acknowledged (or failed).

        Raises:
            KafkaTimeoutError: some are still waiting after `timeout` seconds.
        """
        remaining = self._producer.flush(-1 if timeout is None else timeout)
        if remaining:
            raise KafkaTimeoutError(f"{remaining} records not acknowledged within {timeout} s")

    def close(self, timeout: float | None = None) -> None:
        """Send what is queued, waiting at most `timeout` seconds (None: `max_block_ms`)."""
        self._producer.flush(self._block_s if timeout is None else timeout)


class _LenientBytes(bytes):
    """Record bytes whose slices decode text with U+FFFD for invalid UTF-8 instead of raising."""

    def __getitem__(self, index: Any) -> Any:
        item = bytes.__getitem__(self, index)
        return _LenientBytes(item) if isinstance(index, slice) else item

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytes.decode(self, encoding, "replace")


def _tolerate_bad_header_names() -> None:
    """Make kafka-python hand over a record whose header name is not UTF-8 instead of raising.

    The client decodes header names inside poll(): one such record would fail every poll after it
    (a poison pill no dead-letter topic can catch). Only a record that fails is parsed again, from a
    copy of its batch whose text decoding replaces bad bytes with U+FFFD; the frame parser then
    dead-letters it (`bad-header`) with its key, value and headers.
    """
    original = DefaultRecordBatch._read_msg
    if getattr(original, "anomon_lenient", False):
        return

    def read_msg(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = self._pos
        try:
            return original(self, *args, **kwargs)
        except UnicodeDecodeError:
            buffer, self._pos = self._buffer, start
            self._buffer = _LenientBytes(buffer)
            try:
                return original(self, *args, **kwargs)
            finally:
                self._buffer = buffer

    read_msg.anomon_lenient = True  # type: ignore[attr-defined]
    DefaultRecordBatch._read_msg = read_msg


def make_consumer(
    settings: KafkaSettings, topics: Sequence[str], consumer: ConsumerSettings | None = None
) -> KafkaConsumer:
    """A group consumer subscribed to `topics` (none: assign partitions yourself), manual commits.

    Raises:
        KafkaUnavailableError: no broker answered within `connect_timeout_ms`.
    """
    tuning = consumer or ConsumerSettings()
    _tolerate_bad_header_names()
    try:
        return KafkaConsumer(
            *topics, **settings.client_kwargs(), **tuning.model_dump(), enable_auto_commit=False
        )
    except KafkaError as err:
        raise _unavailable(settings, err) from err


def create_topics(
    settings: KafkaSettings, partitions: Mapping[str, int], configs: Mapping[str, str] | None = None
) -> list[str]:
    """Create the topics that do not exist yet (name -> partition count); returns the ones created.

    Idempotent: an existing topic is left as it is, whatever its partition count.

    Raises:
        KafkaUnavailableError: the broker cannot be reached or refused to create a topic.
    """
    try:
        admin = KafkaAdminClient(**settings.client_kwargs())
    except KafkaError as err:
        raise _unavailable(settings, err) from err
    try:
        new = {
            name: {"num_partitions": count, "replication_factor": -1, "configs": dict(configs or {})}
            for name, count in partitions.items()
        }
        response = admin.create_topics(new, raise_errors=False)
        created = []
        for topic in response["topics"]:
            if topic["error_code"] == 0:
                created.append(topic["name"])
            elif topic["error_code"] != TopicAlreadyExistsError.errno:
                raise KafkaUnavailableError(
                    f"Kafka at {settings.bootstrap_servers} refused to create topic {topic['name']}: "
                    f"{topic['error_message'] or topic['error_code']}"
                )
        if created:
            admin.wait_for_topics(created)
        return created
    except KafkaError as err:
        raise _unavailable(settings, err) from err
    finally:
        admin.close()


def load_kafka_settings(path: str | Path | None, **overrides: Any) -> KafkaSettings:
    """Kafka settings from a YAML file (its top level, or its `kafka:` section), then `overrides`.

    Overrides that are None are ignored, so CLI flags left unset keep the file's values.

    Raises:
        ConfigError: the file is missing, not YAML, or a field is invalid (one line naming it).
    """
    data: dict[str, Any] = {}
    source = "kafka settings"
    if path is not None:
        source = str(path)
        loaded = read_yaml_mapping(path, "Kafka settings (bootstrap_servers, ...) or a kafka: section")
        section = loaded.get("kafka")
        data = dict(section if isinstance(section, dict) else loaded)
    data |= {key: value for key, value in overrides.items() if value is not None}
    try:
        return KafkaSettings.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{source}: field '{field}': {first['msg']}") from None


# --- waiting for Kafka at start -------------------------------------------------------------------

WAIT_BACKOFF = (0.5, 5.0)  # first and longest pause between probes while Kafka does not answer, seconds
_PROBE_TIMEOUT_S = 1.0


@contextlib.contextmanager
def quiet_kafka_logs() -> Iterator[None]:
    """Silence kafka-python's own connection errors (several lines per attempt) for a while."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def kafka_unanswered(settings: KafkaSettings) -> str | None:
    """Why no broker of `settings` answers right now (None: one does), in a few words.

    A TCP connection to each bootstrap address first (cheap, and it tells a refused port or an
    unknown host apart), then one Kafka bootstrap with the real settings (TLS, SASL).
    """
    reasons = []
    for address in settings.client_kwargs()["bootstrap_servers"]:
        host, _, port = address.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT_S):
                break
        except ValueError:
            reasons.append(f"{address} is not host:port")
        except OSError as err:
            reasons.append(str(err.strerror or err.__class__.__name__).lower())
    else:
        return "; ".join(dict.fromkeys(reasons))  # the distinct reasons, in order
    kwargs = settings.client_kwargs() | {"bootstrap_timeout_ms": int(_PROBE_TIMEOUT_S * 2000)}
    try:
        with quiet_kafka_logs():
            KafkaAdminClient(**kwargs).close()
    except KafkaError as err:
        return f"the port is open but no Kafka answers: {err.__class__.__name__}"
    return None


def wait_for_kafka(
    settings: KafkaSettings,
    stop: threading.Event,
    say: Callable[[str], None],
    backoff: tuple[float, float] = WAIT_BACKOFF,
) -> bool:
    """Block until a broker answers (True) or `stop` is set (False), probing with growing pauses.

    Says once what it waits for, and once that Kafka answers after a wait; kafka-python's own
    connection errors are kept quiet meanwhile. Waits for `settings.startup_wait_seconds` at most.

    Raises:
        KafkaUnavailableError: no broker answered within `startup_wait_seconds`.
    """
    started = time.monotonic()
    pause = backoff[0]
    waited = False
    while not stop.is_set():
        reason = kafka_unanswered(settings)
        if reason is None:
            if waited:
                say(f"Kafka at {settings.bootstrap_servers} answers after {time.monotonic() - started:.0f} s")
            return True
        limit = settings.startup_wait_seconds
        if limit is not None and time.monotonic() - started >= limit:
            raise KafkaUnavailableError(
                f"cannot reach Kafka at {settings.bootstrap_servers} ({reason}): "
                "check the address (--bootstrap) and that the broker is running"
            )
        if not waited:
            say(
                f"waiting for Kafka at {settings.bootstrap_servers} ({reason}); start it (`anomon broker` "
                "runs one locally) or fix the address (--bootstrap, kafka.bootstrap_servers)"
            )
            waited = True
        wait = pause if limit is None else min(pause, max(0.0, limit - (time.monotonic() - started)))
        stop.wait(wait)
        pause = min(backoff[1], pause * 2)
    return False
