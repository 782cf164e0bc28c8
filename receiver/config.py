"""The receiver's configuration: SERIESFLOW_* environment variables and same-named flags."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from seriesflow import settings
from seriesflow.receiver import admission, contexts
from seriesflow.receiver.tracker import Adaptive
from seriesflow.settings import setting


def _non_negative_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds, 0 or more, e.g. 2 or 0.5") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number of seconds, 0 or more, e.g. 2 or 0.5")
    return value


COMPLETION_MODES = ("fixed", "adaptive")


def _completion_mode(text: str) -> str:
    if text.strip().lower() not in COMPLETION_MODES:
        raise ValueError(f"expected one of {', '.join(COMPLETION_MODES)}")
    return text.strip().lower()


def _multiplier(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number, 1 or more, e.g. 4 or 2.5") from None
    # Below 1 the wait would be shorter than the series' own usual gap: it would complete
    # between two of its instances.
    if not value >= 1 or value == float("inf"):
        raise ValueError("expected a number, 1 or more, e.g. 4 or 2.5")
    return value


def _optional_positive_seconds(text: str) -> float | None:
    return settings.positive_seconds(text) if text.strip() else None


def _optional_path(value: str) -> Path | None:
    return settings.path(value) if value.strip() else None


def _transfer_syntax_preference(text: str) -> str:
    if text.strip() not in contexts.PREFERENCES:
        raise ValueError(f"expected one of {', '.join(contexts.PREFERENCES)}")
    return text.strip()


def _user_identity_file(text: str) -> Path | None:
    """The path, checked now so that a bad file stops the receiver at start."""
    path = _optional_path(text)
    if path is not None:
        admission.load_credentials(path)
    return path


def _preview_size(text: str) -> int:
    value = settings.positive_int(text)
    if not 16 <= value <= 2048:
        raise ValueError("expected 16 to 2048 (pixels of a preview's longest side)")
    return value


def _stow_port(text: str) -> int | None:
    """A port (0: ephemeral), or None for off/empty: no STOW-RS server."""
    if text.strip().lower() in {"", "off", "false", "no", "none"}:
        return None
    return settings.port(text)


def _stow_tokens_file(text: str) -> Path | None:
    """The path, read now so that a missing or unreadable file stops the receiver at start."""
    path = _optional_path(text)
    if path is not None:
        try:
            path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read it ({exc}); give a file with one token a line") from None
    return path


def _read_token_file(text: str) -> Path | None:
    """The path, checked now: a missing file or one without a token stops the receiver at
    start rather than failing every C-FIND later."""
    path = _optional_path(text)
    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read it ({exc})") from None
        if not any(line.strip() and not line.strip().startswith("#") for line in lines):
            raise ValueError("it holds no token (one line, the token)")
    return path


@dataclasses.dataclass(frozen=True)
class ReceiverConfig:
    """Everything the receiver reads at start; see `seriesflow receiver --help`."""

    listen_host: str = setting(
        "127.0.0.1", settings.non_empty_text, "address the DICOM and metrics ports bind to"
    )
    data_dir: Path = setting(
        "./data", settings.path, "root of local state; the spool is in data_dir/spool"
    )
    log_level: str = setting("INFO", settings.log_level, "DEBUG, INFO, WARNING or ERROR")
    ae_title: str = setting("STORESCP", settings.ae_title, "AE title the receiver answers to")
    dicom_port: int = setting("6667", settings.port, "TCP port of the DICOM Storage SCP")
    store_address: str = setting(
        "localhost:50051", settings.host_port, "host:port of the store's gRPC service"
    )
    series_idle_timeout: float = setting(
        "10",
        settings.positive_seconds,
        "a series with no new instance for this long is complete (fixed mode); adaptive: the "
        "wait until a series has a second instance, and the longest unless "
        "SERIESFLOW_SERIES_IDLE_MAX",
    )
    series_released_grace: float = setting(
        "2",
        _non_negative_seconds,
        "shorter idle wait once every association that carried the series was released",
    )
    series_completion_mode: str = setting(
        "adaptive",
        _completion_mode,
        "fixed: a series is idle after SERIESFLOW_SERIES_IDLE_TIMEOUT; adaptive: after a wait "
        "learned from the gaps between its instances and the pauses its sender made before "
        "(SERIESFLOW_SERIES_IDLE_MULTIPLIER, _MIN, _MAX)",
    )
    series_idle_multiplier: float = setting(
        "4",
        _multiplier,
        "adaptive: the idle wait is this times the series' smoothed gap plus 4 deviations, "
        "and at least 1.5 times the longest pause known of the series and its sender",
    )
    series_idle_min: float = setting(
        "3",
        settings.positive_seconds,
        "adaptive: shortest idle wait (never below SERIESFLOW_SERIES_RELEASED_GRACE)",
    )
    series_idle_max: float | None = setting(
        "",
        _optional_positive_seconds,
        "adaptive: longest idle wait; empty: SERIESFLOW_SERIES_IDLE_TIMEOUT (a shortest wait "
        "above it then gives way to it)",
    )
    series_max_age: float = setting(
        "600", settings.positive_seconds, "a series receiving for longer is flushed in parts"
    )
    previews: bool = setting(
        "true",
        settings.boolean,
        "render a PNG preview of each series' representative (middle) instance, in worker "
        "processes after the instances are acknowledged",
    )
    preview_size: int = setting(
        "256", _preview_size, "longest side of a preview in pixels (16 to 2048)"
    )
    preview_workers: int = setting(
        "1", settings.positive_int, "worker processes rendering previews (each one at a time)"
    )
    preview_timeout: float = setting(
        "60",
        settings.positive_seconds,
        "seconds one preview may take; a slower render is stopped and recorded as failed",
    )
    max_associations: int = setting(
        "32", settings.positive_int, "concurrent DICOM associations accepted"
    )
    acse_timeout: float = setting(
        "30",
        settings.positive_seconds,
        "seconds a peer has to read our A-ASSOCIATE-AC/RJ; the request itself has "
        "SERIESFLOW_ASSOCIATION_REQUEST_TIMEOUT",
    )
    association_request_timeout: float = setting(
        "5",
        settings.positive_seconds,
        "a TCP connection must deliver its whole A-ASSOCIATE-RQ (and TLS handshake) within this",
    )
    max_pending_connections: int = setting(
        "64",
        settings.positive_int,
        "TCP connections not yet associated, at most; more are closed at once "
        "(they never count against SERIESFLOW_MAX_ASSOCIATIONS)",
    )
    max_associate_request_bytes: int = setting(
        "64KiB",
        settings.byte_size,
        "a larger A-ASSOCIATE-RQ is refused (A-ASSOCIATE-RJ local-limit-exceeded) unread",
    )
    accept_unknown_sop_classes: bool = setting(
        "true",
        settings.boolean,
        "accept any abstract syntax that is not a known non-storage service as a storage SOP "
        "class (private and new IODs), like storescp --promiscuous",
    )
    accept_unknown_transfer_syntaxes: bool = setting(
        "false",
        settings.boolean,
        "also accept transfer syntaxes not in docs/conformance.md, read as explicit VR little "
        "endian",
    )
    transfer_syntax_preference: str = setting(
        "sender",
        _transfer_syntax_preference,
        "which proposed syntax a context gets: sender (its first we accept) or explicit-first "
        "(explicit VR little endian when proposed)",
    )
    user_identity_file: Path | None = setting(
        "",
        _user_identity_file,
        "file of credentials ([CALLING_AE] username[:password] a line) every association must "
        "present as DICOM User Identity; empty checks none",
    )
    dimse_timeout: float = setting("30", settings.positive_seconds, "DIMSE message timeout")
    network_timeout: float = setting(
        "60", settings.positive_seconds, "an association idle this long is aborted"
    )
    allowed_calling_ae_titles: frozenset[str] = setting(
        "", settings.ae_title_set, "comma-separated calling AE titles allowed; empty allows all"
    )
    require_called_ae_title: bool = setting(
        "false",
        settings.boolean,
        "reject associations whose called AE title is not SERIESFLOW_AE_TITLE; false accepts any",
    )
    dicom_tls_cert: Path | None = setting(
        "", _optional_path, "PEM certificate for DICOM TLS; empty for plain TCP"
    )
    dicom_tls_key: Path | None = setting("", _optional_path, "PEM private key for DICOM TLS")
    spool_max_bytes: int = setting(
        "1GiB", settings.byte_size, "pending spool size beyond which C-STORE answers 0xA700"
    )
    max_instance_bytes: int = setting(
        "4GiB",
        settings.byte_size,
        "largest dataset accepted per C-STORE (inflated size for deflated ones); a larger one "
        "is answered 0xC001 and its bytes are dropped as they arrive",
    )
    receiver_metrics_port: int = setting(
        "9102", settings.port, "HTTP port of /metrics, /livez and /readyz"
    )
    stow_port: int | None = setting(
        "8081",
        _stow_port,
        "HTTP port of STOW-RS (POST /studies, PS3.18 10.5) into the same intake as C-STORE; "
        "0 for an ephemeral port, off for none",
    )
    stow_max_request_bytes: int = setting(
        "8GiB",
        settings.byte_size,
        "largest STOW-RS request body; a larger one is answered 413 (each instance also "
        "has SERIESFLOW_MAX_INSTANCE_BYTES)",
    )
    stow_tokens_file: Path | None = setting(
        "",
        _stow_tokens_file,
        "file of bearer tokens allowed to store over STOW-RS (one a line, # comments; re-read "
        "when it changes); empty: no authentication",
    )
    stow_calling_ae_title: str = setting(
        "STOW-RS",
        settings.ae_title,
        "the calling AE title STOW-RS instances are recorded with (as a C-STORE sender's is)",
    )
    receiver_id: str = setting(
        socket.gethostname() or "receiver",
        settings.non_empty_text,
        "identity of this receiver replica in every update (e.g. the pod name)",
    )
    store_tls_ca: Path | None = setting(
        "", _optional_path, "PEM CA bundle to verify the store; empty for plaintext gRPC"
    )
    store_tls_cert: Path | None = setting(
        "", _optional_path, "PEM client certificate for mTLS to the store"
    )
    store_tls_key: Path | None = setting("", _optional_path, "PEM client key for mTLS to the store")
    store_token_file: Path | None = setting(
        "",
        _optional_path,
        "file holding the bearer token sent to the store (authorization metadata); "
        "re-read on each reconnect; empty sends none",
    )
    store_read_token_file: Path | None = setting(
        "",
        _read_token_file,
        "file holding the bearer token C-FIND queries send to the store: the store's read "
        "scope (the write token of SERIESFLOW_STORE_TOKEN_FILE cannot query); read per query; "
        "empty sends none",
    )
    grpc_keepalive_time: float = setting(
        "20",
        settings.positive_seconds,
        "seconds between keepalive pings on the store stream, also when idle; the store "
        "must permit it (its SERIESFLOW_GRPC_KEEPALIVE_MIN_TIME at or below this)",
    )
    grpc_keepalive_timeout: float = setting(
        "10",
        settings.positive_seconds,
        "seconds without a ping answer before the store stream counts as broken",
    )
    stream_window: int = setting(
        "64", settings.positive_int, "series updates sent to the store and not yet acked, at most"
    )

    def __post_init__(self) -> None:
        if self.series_idle_max is not None and self.series_idle_min > self.series_idle_max:
            raise settings.ConfigError(
                f"SERIESFLOW_SERIES_IDLE_MIN={self.series_idle_min:g} is above "
                f"SERIESFLOW_SERIES_IDLE_MAX={self.series_idle_max:g}: the shortest idle wait "
                "must not exceed the longest"
            )
        if (self.dicom_tls_cert is None) != (self.dicom_tls_key is None):
            raise settings.ConfigError(
                "SERIESFLOW_DICOM_TLS_CERT and SERIESFLOW_DICOM_TLS_KEY must be set together"
            )
        if (self.store_tls_cert is None) != (self.store_tls_key is None):
            raise settings.ConfigError(
                "SERIESFLOW_STORE_TLS_CERT and SERIESFLOW_STORE_TLS_KEY must be set together"
            )
        if self.store_tls_cert is not None and self.store_tls_ca is None:
            raise settings.ConfigError(
                "SERIESFLOW_STORE_TLS_CERT needs SERIESFLOW_STORE_TLS_CA (mTLS implies TLS)"
            )

    def adaptive_idle(self) -> Adaptive | None:
        """The tracker's adaptive idle wait, or None in fixed mode."""
        if self.series_completion_mode != "adaptive":
            return None
        # Unset, the longest wait is the fixed timeout, and a shortest wait above it (the
        # default 3 s against a 0.5 s timeout in a test) gives way to it rather than failing.
        max_idle = (
            self.series_idle_timeout if self.series_idle_max is None else self.series_idle_max
        )
        return Adaptive(self.series_idle_multiplier, min(self.series_idle_min, max_idle), max_idle)

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"
