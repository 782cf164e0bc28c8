"""The StoreSeries client: one long-lived bidirectional stream to the store, in its own thread.

At most `window` updates are on the wire without an ack. A broken stream is reopened with
exponential backoff and jitter, and every update sent but not acked is sent again (the
store's merge is idempotent, contract 2). Each ack is matched to its update by update_id.
An update the store settled (ok, or rejected as INVALID) is put on the `settled` queue, for
the flusher to retire or dead-letter its spool entries; the client knows nothing of the
spool. An update rejected with any other kind is sent again later.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from seriesflow.receiver.metrics import ReceiverMetrics
from seriesflow.settings import ConfigError
from seriesflow.v1 import series_store_pb2 as pb
from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

_log = logging.getLogger(__name__)

_AUTH_CODES = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)

_MESSAGE_LIMITS = [
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]


def channel_options(keepalive_time: float, keepalive_timeout: float) -> list[tuple[str, int]]:
    """Keepalive that holds an idle stream open: a ping every `keepalive_time`, data or not.

    The store must permit it (its SERIESFLOW_GRPC_KEEPALIVE_MIN_TIME at or below ours);
    otherwise it answers GOAWAY too_many_pings and the stream is torn down."""
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", int(keepalive_timeout * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        # 0: keep pinging on a stream that carries no data (the default stops after 2).
        ("grpc.http2.max_pings_without_data", 0),
        *_MESSAGE_LIMITS,
    ]


_CHANNEL_OPTIONS = channel_options(20.0, 10.0)


def read_token(path: Path | None) -> str | None:
    """The bearer token in `path` (its first line that is not blank or a # comment).

    Raises ConfigError naming SERIESFLOW_STORE_TOKEN_FILE when it cannot be read or is empty."""
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"SERIESFLOW_STORE_TOKEN_FILE={path} cannot be read: {exc}") from None
    for line in text.splitlines():
        token = line.strip()
        if token and not token.startswith("#"):
            return token
    raise ConfigError(f"SERIESFLOW_STORE_TOKEN_FILE={path} holds no token (one line, the token)")


def call_metadata(token: str | None) -> list[tuple[str, str]] | None:
    """`authorization: Bearer <token>` for the store's authentication, or none."""
    return None if token is None else [("authorization", f"Bearer {token}")]


@dataclasses.dataclass
class Pending:
    """An update on its way to the store."""

    update: pb.SeriesUpdate
    last_instance_wall: float | None  # None when recovered after a restart
    not_before: float = 0.0  # monotonic time before which it is not re-sent


@dataclasses.dataclass(frozen=True)
class Settled:
    """The store's final answer to one update: `ack.ok`, or rejected as KIND_INVALID."""

    pending: Pending
    ack: pb.SeriesAck


def credentials(
    ca: Path | None, cert: Path | None, key: Path | None
) -> grpc.ChannelCredentials | None:
    """TLS (and mTLS with cert+key) credentials, or None for plaintext."""
    if ca is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes(),
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


class StoreClient:
    def __init__(
        self,
        address: str,
        window: int,
        metrics: ReceiverMetrics,
        channel_credentials: grpc.ChannelCredentials | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 5.0,
        options: list[tuple[str, int]] | None = None,
        token_file: Path | None = None,
    ) -> None:
        """`token_file`: read now (ConfigError if unusable) and again before each reconnect,
        so a corrected or rotated token is picked up without a restart."""
        self.address = address
        self._options = options if options is not None else _CHANNEL_OPTIONS
        self._token_file = token_file
        self._token = read_token(token_file)
        self.window = window
        self._metrics = metrics
        # Acks go one way, out to whoever consumes them; None once no more can come.
        self.settled: queue.Queue[Settled | None] = queue.Queue()
        self._credentials = channel_credentials
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._cond = threading.Condition()
        self._backlog: collections.deque[Pending] = collections.deque()
        self._outstanding: dict[str, Pending] = {}
        self._generation = 0
        self._stopping = False
        self._stopped = threading.Event()
        self._call: grpc.Future[Any] | None = None
        self._thread = threading.Thread(target=self._run, name="store-stream", daemon=True)
        self.connected = False
        self.last_progress = time.monotonic()

    # -- public ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, pending: Pending, timeout: float | None = None) -> bool:
        """Queue an update; blocks while `window` updates already wait. False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while len(self._backlog) >= self.window and not self._stopping:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
            if self._stopping:
                return False
            self._backlog.append(pending)
            self._cond.notify_all()
        return True

    def stop(self, drain_timeout: float) -> None:
        """Wait up to `drain_timeout` for queued updates' acks, then close the stream."""
        deadline = time.monotonic() + drain_timeout
        with self._cond:
            # Draining only makes sense while the store answers; otherwise the spool keeps it.
            while (
                self.connected
                and (self._backlog or self._outstanding)
                and time.monotonic() < deadline
            ):
                self._cond.wait(0.1)
            self._stopping = True
            self._stopped.set()
            self._cond.notify_all()
            call = self._call
        if call is not None and (self._outstanding or self._backlog):
            call.cancel()  # what is left is still in the spool; the next start sends it
        self._thread.join(timeout=10)

    # -- the stream thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._stream_until_stopped()
        finally:
            self.settled.put(None)

    def _stream_until_stopped(self) -> None:
        delay = self._backoff_initial
        while not self._stopping:
            healthy = self._stream_once()
            if self._stopping:
                break
            delay = self._backoff_initial if healthy else min(delay * 2, self._backoff_max)
            self._metrics.stream_reconnects.inc()
            # Interruptible, so a shutdown does not wait out the backoff.
            self._stopped.wait(delay * random.uniform(0.5, 1.0))

    def _stream_once(self) -> bool:
        """Run one stream until it breaks; True if it got as far as an ack."""
        if self._credentials is None:
            channel = grpc.insecure_channel(self.address, options=self._options)
        else:
            channel = grpc.secure_channel(self.address, self._credentials, self._options)
        self._reread_token()
        acked = False
        try:
            self._wait_ready(channel)
            stub = pb_grpc.SeriesStoreStub(channel)  # type: ignore[no-untyped-call]
            with self._cond:
                self._generation += 1
                generation = self._generation
            call = stub.StoreSeries(self._requests(generation), metadata=call_metadata(self._token))
            self._call = call
            self._set_connected(True)
            for ack in call:
                self._handle_ack(ack)
                acked = True
        except grpc.FutureTimeoutError:
            _log.warning(
                "store unreachable; instances stay in the spool until it is back",
                extra={"fields": {"store_address": self.address}},
            )
        except grpc.RpcError as exc:
            if exc.code() in _AUTH_CODES and not self._stopping:
                _log.error(
                    "the store refused this receiver's credentials; instances stay in the "
                    "spool. Fix SERIESFLOW_STORE_TOKEN_FILE (or the client certificate): the "
                    "new token is read at the next reconnect",
                    extra={"fields": {"code": exc.code().name, "details": exc.details()}},
                )
            elif not self._stopping:
                _log.warning(
                    "StoreSeries stream broke; reconnecting and re-sending unacked updates",
                    extra={"fields": {"code": str(exc.code()), "details": exc.details()}},
                )
        finally:
            self._set_connected(False)
            self._call = None
            with self._cond:
                # Unacked updates go back to the front, in their original order.
                self._backlog.extendleft(reversed(list(self._outstanding.values())))
                self._outstanding.clear()
                self._generation += 1
                self._cond.notify_all()
            channel.close()
        return acked

    def _reread_token(self) -> None:
        if self._token_file is None:
            return
        try:
            self._token = read_token(self._token_file)
        except ConfigError as exc:  # keep the last good token; the next reconnect retries
            _log.warning(
                "store token unreadable; using the previous one",
                extra={"fields": {"error": str(exc)}},
            )

    def _wait_ready(self, channel: grpc.Channel) -> None:
        ready = grpc.channel_ready_future(channel)
        deadline = time.monotonic() + self._backoff_max
        try:
            while True:
                try:
                    ready.result(timeout=0.25)
                    return
                except grpc.FutureTimeoutError:
                    if self._stopping or time.monotonic() >= deadline:
                        raise
        finally:
            ready.cancel()

    def _set_connected(self, up: bool) -> None:
        self.connected = up
        self._metrics.store_connected.set(1 if up else 0)

    def _requests(self, generation: int) -> Iterator[pb.SeriesUpdate]:
        while True:
            with self._cond:
                while True:
                    if self._generation != generation or self._stopping:
                        return
                    if self._backlog and len(self._outstanding) < self.window:
                        wait = self._backlog[0].not_before - time.monotonic()
                        if wait <= 0:
                            break
                        self._cond.wait(wait)
                    else:
                        self._cond.wait(1.0)
                pending = self._backlog.popleft()
                self._outstanding[pending.update.update_id] = pending
                self._cond.notify_all()
            yield pending.update

    def _handle_ack(self, ack: pb.SeriesAck) -> None:
        self.last_progress = time.monotonic()
        with self._cond:
            pending = self._outstanding.pop(ack.update_id, None)
            self._cond.notify_all()
        if pending is None:
            _log.warning(
                "ack for an unknown update", extra={"fields": {"update_id": ack.update_id}}
            )
            return
        if ack.ok or ack.error.kind == pb.AckError.KIND_INVALID:
            self.settled.put(Settled(pending, ack))
        else:
            # A kind this receiver does not know (a newer store): never drop acknowledged
            # instances on a guess; send it again after a pause, keep the stream.
            _log.warning(
                "store could not take an update yet; will re-send",
                extra={"fields": {"update_id": ack.update_id, "error": ack.error.message}},
            )
            pending.not_before = time.monotonic() + self._backoff_max / 2
            with self._cond:
                self._backlog.appendleft(pending)
                self._cond.notify_all()
