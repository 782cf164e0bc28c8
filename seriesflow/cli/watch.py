"""`seriesflow watch`: the store's WatchSeries feed as JSON lines, optionally driving a command.

Each event is printed as one line of protobuf JSON (the SeriesEvent, cursor included) and
flushed at once. With `--exec CMD`, CMD runs through the shell for each COMPLETED event, with
the series as JSON on its stdin, and the event's line is printed only after CMD exited 0: so
the last cursor printed is always an event fully processed, and a supervisor that keeps it
and restarts with `--after CURSOR` never skips one (at-least-once: CMD may see an event again
if the watch dies between CMD's success and the line). A failing CMD stops the watch (exit 1)
naming the cursor to resume from; the watch stores nothing itself.

A stream the store ends (restart, replica change: UNAVAILABLE and the like) is reopened with
backoff after the last cursor printed, so nothing is printed twice. Errors that retrying cannot
fix (OUT_OF_RANGE, INVALID_ARGUMENT, credentials) stop it with exit 2 and the store's message.
SIGTERM ends it with 0, SIGINT with 130, each after the event in hand is done.

grpc and protobuf are imported only when a watch runs, so `seriesflow --help` stays quick.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from seriesflow import settings
from seriesflow.settings import setting

if TYPE_CHECKING:
    import grpc

    from seriesflow.v1 import series_store_pb2 as pb

_log = logging.getLogger(__name__)

KINDS = ("created", "instances_added", "completed", "reopened")

# Exit statuses, as the README documents them.
EXIT_STOPPED = 0  # SIGTERM
EXIT_EXEC_FAILED = 1  # --exec CMD failed, or stdout was closed
EXIT_REFUSED = 2  # the store refused the watch in a way retrying cannot fix
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), as shells report it

_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0


def _optional_path(value: str) -> Path | None:
    return settings.path(value) if value.strip() else None


@dataclass(frozen=True)
class WatchConfig:
    """How `watch` reaches the store: the same names as the receiver's store settings."""

    store_address: str = setting(
        "localhost:50051", settings.host_port, "host:port of the store's gRPC service"
    )
    store_token_file: Path | None = setting(
        "",
        _optional_path,
        "file holding the bearer token sent to the store (authorization metadata); "
        "re-read on each reconnect; empty sends none",
    )
    store_tls_ca: Path | None = setting(
        "", _optional_path, "PEM CA bundle to verify the store; empty for plaintext gRPC"
    )
    store_tls_cert: Path | None = setting(
        "", _optional_path, "PEM client certificate for mTLS to the store"
    )
    store_tls_key: Path | None = setting("", _optional_path, "PEM client key for mTLS to the store")

    def __post_init__(self) -> None:
        if (self.store_tls_cert is None) != (self.store_tls_key is None):
            raise settings.ConfigError(
                "SERIESFLOW_STORE_TLS_CERT and SERIESFLOW_STORE_TLS_KEY must be set together"
            )
        if self.store_tls_cert is not None and self.store_tls_ca is None:
            raise settings.ConfigError(
                "SERIESFLOW_STORE_TLS_CERT needs SERIESFLOW_STORE_TLS_CA (mTLS implies TLS)"
            )


@dataclass(frozen=True)
class WatchOptions:
    """What to watch: flags of this one invocation (no environment variables: a filter
    left in the environment would silently narrow every later watch)."""

    after: str = ""
    kinds: tuple[str, ...] = ()
    modality: str = ""
    calling_ae_title: str = ""
    consumer: str = ""
    exec_command: str | None = None


def _kind(text: str) -> list[str]:
    kinds = [part.strip().lower() for part in text.split(",") if part.strip()]
    for kind in kinds:
        if kind not in KINDS:
            raise argparse.ArgumentTypeError(f"{kind!r} is not a kind; expected {', '.join(KINDS)}")
    return kinds


def add_watch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--after",
        default="",
        metavar="CURSOR",
        help="print the events after this cursor (the last one processed), stored ones first;"
        " 0 for every event the store still has; default: only events from now on",
    )
    parser.add_argument(
        "--kind",
        action="append",
        type=_kind,
        default=[],
        metavar="KIND",
        help=f"only events of this kind ({', '.join(KINDS)}); repeat or comma-separate for more",
    )
    parser.add_argument("--modality", default="", help="only series of this modality, e.g. CT")
    parser.add_argument(
        "--calling-ae",
        dest="watch_calling_ae",
        default="",
        metavar="AE_TITLE",
        help="only series whose latest update came from this calling AE title",
    )
    parser.add_argument(
        "--consumer", default="", metavar="NAME", help="name for the store's lag metric"
    )
    parser.add_argument(
        "--exec",
        dest="exec_command",
        default=None,
        metavar="CMD",
        help="run CMD (through the shell) for each COMPLETED event, the series as JSON on its"
        " stdin, its stdout sent to stderr; the event is printed once CMD exited 0, and a"
        " failing CMD stops the watch (exit 1)",
    )
    settings.add_flags(parser, WatchConfig)


def options_from_args(args: argparse.Namespace) -> WatchOptions:
    return WatchOptions(
        after=args.after.strip(),
        kinds=tuple(dict.fromkeys(kind for group in args.kind for kind in group)),
        modality=args.modality,
        calling_ae_title=args.watch_calling_ae,
        consumer=args.consumer,
        exec_command=args.exec_command,
    )


class _Fatal(Exception):
    """Stop the watch with `status` after printing `message` (already worded for the user)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Stopper:
    """SIGTERM/SIGINT: remember which, and cancel the stream in flight.

    The handlers only set state and cancel the call (which wakes the blocked iteration); they
    never raise, so a line is never cut short and a running CMD is waited for."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.call: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self._handle)
        # A shell starts background jobs with SIGINT ignored; keep it so (as Python does).
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.call is not None:
            self.call.cancel()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.requested and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))

    def status(self) -> int:
        return EXIT_INTERRUPTED if self.signum == signal.SIGINT else EXIT_STOPPED


# Every gRPC status a watch can end with -> None (reconnect and resume) or what to tell the
# user before exiting 2. Transport trouble (a store restarting, a proxy resetting the stream)
# shows as UNAVAILABLE, CANCELLED, ABORTED, INTERNAL or DEADLINE_EXCEEDED; the rest are
# answers about the request itself, which a retry would only repeat.
_ON_STATUS: dict[str, str | None] = {
    "OK": None,
    "UNAVAILABLE": None,
    "CANCELLED": None,
    "ABORTED": None,
    "INTERNAL": None,
    "DEADLINE_EXCEEDED": None,
    "RESOURCE_EXHAUSTED": None,
    "OUT_OF_RANGE": "the events after that cursor are gone (pruned by retention) or the cursor is"
    " beyond the end of the log: resync from ListSeries, then resume with the cursor the store"
    " names, or run without --after to start from now",
    "INVALID_ARGUMENT": "check --after (decimal digits; 0 for every event kept), --kind,"
    " --modality, --calling-ae and --consumer (at most 64 characters)",
    "UNAUTHENTICATED": "the store wants a token with the read scope: put it in a file and give"
    " --store-token-file (SERIESFLOW_STORE_TOKEN_FILE)",
    "PERMISSION_DENIED": "the token has no read scope: use one listed in the store's"
    " SERIESFLOW_GRPC_READ_TOKENS_FILE",
    "UNIMPLEMENTED": "this store does not serve WatchSeries: upgrade it",
    "FAILED_PRECONDITION": "see the store's log",
    "NOT_FOUND": "see the store's log",
    "ALREADY_EXISTS": "see the store's log",
    "UNKNOWN": "the store failed; see its log",
    "DATA_LOSS": "the store failed; see its log",
}


class _Backoff:
    def __init__(self) -> None:
        self.next = _BACKOFF_FIRST

    def reset(self) -> None:
        self.next = _BACKOFF_FIRST

    def take(self) -> float:
        delay = self.next * random.uniform(0.8, 1.2)
        self.next = min(self.next * 2, _BACKOFF_MAX)
        return delay


# The store's initial metadata naming the position a watch starts after (store.watch).
_START_CURSOR_KEY = "seriesflow-start-cursor"


@dataclasses.dataclass
class _Watch:
    config: WatchConfig
    options: WatchOptions
    out: BinaryIO
    err: TextIO
    stopper: _Stopper
    last: str = ""  # the cursor to resume after: the last printed, or --after
    token: str | None = None

    def say(self, text: str) -> None:
        print(f"seriesflow watch: {text}", file=self.err, flush=True)

    def resume_hint(self) -> str:
        return f"--after {self.last}" if self.last else "no --after (nothing was printed)"

    def run(self) -> int:
        import grpc

        from seriesflow.receiver.client import channel_options, credentials, read_token

        self.last = self.options.after
        self.token = read_token(self.config.store_token_file)
        creds = credentials(
            self.config.store_tls_ca, self.config.store_tls_cert, self.config.store_tls_key
        )
        options = channel_options(20.0, 10.0)
        backoff = _Backoff()
        address = self.config.store_address
        while not self.stopper.requested:
            if creds is None:
                channel = grpc.insecure_channel(address, options)
            else:
                channel = grpc.secure_channel(address, creds, options)
            try:
                for _ in self._stream(channel):
                    backoff.reset()
                if self.stopper.requested:
                    break
                why = "the store ended the stream"
            except grpc.RpcError as exc:
                if self.stopper.requested:
                    break
                code = exc.code()
                name = code.name if code is not None else "UNKNOWN"
                detail = exc.details() or "no details"
                hint = _ON_STATUS.get(name, "see the store's log")
                if hint is not None:
                    raise _Fatal(
                        EXIT_REFUSED,
                        f"the store at {address} refused the watch ({name}: {detail}); {hint}",
                    ) from None
                why = f"the store at {address} is unreachable or went away ({name}: {detail})"
            finally:
                channel.close()
            delay = backoff.take()
            self.say(f"{why}; reconnecting in {delay:.1f} s, resuming {self.resume_text()}")
            self.stopper.sleep(delay)
            self._reread_token()
        resume = f"; resume with {self.resume_hint()}" if self.last else ""
        name = signal.Signals(self.stopper.signum).name if self.stopper.signum else "a signal"
        self.say(f"stopped by {name}{resume}")
        return self.stopper.status()

    def resume_text(self) -> str:
        return f"after cursor {self.last}" if self.last else "from now (nothing printed yet)"

    def _reread_token(self) -> None:
        from seriesflow.receiver.client import read_token

        try:
            self.token = read_token(self.config.store_token_file)
        except settings.ConfigError as exc:  # keep the last good token; the next try rereads
            self.say(f"{exc}; using the token read before")

    def _request(self) -> pb.WatchSeriesRequest:
        from seriesflow.v1 import series_store_pb2 as pb

        return pb.WatchSeriesRequest(
            after_cursor=self.last,
            kinds=[f"SERIES_EVENT_KIND_{kind.upper()}" for kind in self.options.kinds],
            modality=self.options.modality,
            calling_ae_title=self.options.calling_ae_title,
            consumer=self.options.consumer,
        )

    def _stream(self, channel: grpc.Channel) -> Iterator[None]:
        """Print the events of one WatchSeries call; yields after each one printed."""
        from google.protobuf import json_format

        from seriesflow.receiver.client import call_metadata
        from seriesflow.v1 import series_store_pb2 as pb
        from seriesflow.v1 import series_store_pb2_grpc as pb_grpc

        stub = pb_grpc.SeriesStoreStub(channel)  # type: ignore[no-untyped-call]
        call = stub.WatchSeries(self._request(), metadata=call_metadata(self.token))
        self.stopper.call = call
        try:
            if self.stopper.requested:  # a signal between the loop's check and the call
                call.cancel()
            if not self.last:
                # Watching "from now": the store says where now was, so a reconnect before
                # the first event resumes from there instead of from a later now.
                for key, value in call.initial_metadata() or ():
                    if key == _START_CURSOR_KEY and str(value).isdigit():
                        self.last = str(value)
            for event in call:
                if not self._is_new(event.cursor):
                    continue
                if self.options.exec_command is not None and (
                    event.kind == pb.SERIES_EVENT_KIND_COMPLETED
                ):
                    self._exec(event, json_format)
                line = json_format.MessageToJson(event, indent=None, ensure_ascii=False)
                self._print(line, event.cursor)
                self.last = event.cursor
                yield
                if self.stopper.requested:
                    return
        finally:
            self.stopper.call = None

    def _is_new(self, cursor: str) -> bool:
        """Guard for the never-print-twice promise: a store that sends a cursor at or before
        the last one printed is named on stderr (it breaks the contract) and skipped."""
        if not cursor.isdigit():
            raise _Fatal(
                EXIT_REFUSED,
                f"the store sent an event with cursor {cursor!r}, not"
                " decimal digits; it does not speak this watch's protocol",
            )
        if self.last.isdigit() and int(cursor) <= int(self.last):
            self.say(
                f"the store sent cursor {cursor}, not after {self.last}; skipped"
                " (a store bug: please report it)"
            )
            return False
        return True

    def _exec(self, event: pb.SeriesEvent, json_format: Any) -> None:
        assert self.options.exec_command is not None
        series_json = json_format.MessageToJson(event.series, indent=None, ensure_ascii=False)
        env = dict(
            os.environ,
            SERIESFLOW_EVENT_CURSOR=event.cursor,
            SERIESFLOW_SERIES_INSTANCE_UID=event.series.series_instance_uid,
            SERIESFLOW_STUDY_INSTANCE_UID=event.series.study_instance_uid,
            SERIESFLOW_COMPLETION_VERSION=str(event.completion_version),
        )
        # CMD's stdout goes to our stderr: our stdout carries only event lines.
        done = subprocess.run(
            self.options.exec_command,
            shell=True,
            input=(series_json + "\n").encode("utf-8"),
            stdout=self.err.fileno() if _has_fileno(self.err) else subprocess.DEVNULL,
            env=env,
            check=False,
        )
        if done.returncode == 0:
            return
        if self.stopper.requested:
            # Most likely CMD got the same Ctrl-C / SIGTERM: a stop, not a failed pipeline.
            raise _Fatal(
                self.stopper.status(),
                f"stopped while --exec ran for cursor {event.cursor} (it exited"
                f" {_describe_exit(done.returncode)}); it was not printed and runs again when"
                f" you resume with {self._retry_hint(event.cursor)}",
            )
        raise _Fatal(
            EXIT_EXEC_FAILED,
            f"--exec command {_describe_exit(done.returncode)} on the COMPLETED event at cursor"
            f" {event.cursor} (series {event.series.series_instance_uid}, completion"
            f" {event.completion_version}); stopped without printing that event. Fix the"
            f" command, then restart with {self._retry_hint(event.cursor)} to run it again",
        )

    def _retry_hint(self, failed: str) -> str:
        # Nothing printed yet and no --after: the cursor just before the failed one replays it.
        return f"--after {self.last or int(failed) - 1}"

    def _print(self, line: str, cursor: str) -> None:
        try:
            # One write per line, flushed: a reader never sees half a line it could act on
            # before the rest, and the line is out before the next event is read.
            self.out.write((line + "\n").encode("utf-8"))
            self.out.flush()
        except BrokenPipeError:
            _silence_stdout()
            raise _Fatal(
                EXIT_EXEC_FAILED,
                f"stdout was closed; stopped before printing cursor {cursor}"
                f" (resume with {self.resume_hint()})",
            ) from None


def _has_fileno(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (OSError, ValueError, AttributeError):
        return False
    return True


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    if returncode == 127:
        return "exited with status 127 (the shell found no such command)"
    return f"exited with status {returncode}"


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; on a closed pipe that prints a second traceback.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def watch(
    config: WatchConfig,
    options: WatchOptions,
    *,
    out: BinaryIO | None = None,
    err: TextIO = sys.stderr,
) -> int:
    """Print the feed until a signal (0 / 130), a failed CMD (1) or a refusal (2)."""
    stopper = _Stopper()
    stopper.install()
    job = _Watch(config, options, out or sys.stdout.buffer, err, stopper)
    try:
        return job.run()
    except _Fatal as exc:
        job.say(str(exc))
        return exc.status
