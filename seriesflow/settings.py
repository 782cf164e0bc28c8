"""Typed configuration from SERIESFLOW_* environment variables and same-named CLI flags.

A service declares its configuration as a frozen dataclass whose fields are made with
`setting()`. Field `dicom_port` is read from `SERIESFLOW_DICOM_PORT` and overridden by the
flag `--dicom-port`; a bad value fails at start with a ConfigError naming the variable (or
flag) and the value.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

ENV_PREFIX = "SERIESFLOW_"

T = TypeVar("T")
C = TypeVar("C")


class ConfigError(ValueError):
    """A configuration value is missing or malformed. Fix the named variable or flag."""


def setting(
    default: str | None,
    parse: Callable[[str], Any],
    help: str,
    *,
    secret: bool = False,
    aliases: tuple[str, ...] = (),
) -> Any:
    """Declare a dataclass field read from the environment and the command line.

    `default` is given as text and goes through `parse` like any other value, so a default
    can never be of the wrong type. None means the setting is optional and stays None.
    """
    parsed_default = None if default is None else parse(default)
    return dataclasses.field(
        default=parsed_default,
        metadata={
            "parse": parse,
            "help": help,
            "secret": secret,
            "default_text": default,
            "aliases": aliases,
        },
    )


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_flags(
    parser: argparse.ArgumentParser, config_class: type, *, skip: frozenset[str] = frozenset()
) -> None:
    """Add one flag per setting of `config_class`; unset flags leave the environment in charge.

    Settings named in `skip` are left out (a parser combining two config classes adds a
    shared setting once).
    """
    group = parser.add_argument_group(f"{config_class.__name__} (flags override {ENV_PREFIX}*)")
    for f in dataclasses.fields(config_class):
        if f.name in skip:
            continue
        default_text = f.metadata["default_text"]
        shown = "unset" if default_text is None else repr(default_text)
        if f.metadata["secret"]:
            shown = "hidden"
        group.add_argument(
            flag_name(f.name),
            *f.metadata.get("aliases", ()),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{f.metadata['help']} [env {env_name(f.name)}; default {shown}]",
        )


def load(
    config_class: type[C],
    environ: Mapping[str, str] | None = None,
    args: argparse.Namespace | None = None,
) -> C:
    """Build `config_class` from flags, then the environment, then defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):  # type: ignore[arg-type]
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            source, raw = flag_name(f.name), str(flag_value)
        elif env_name(f.name) in environ:
            source, raw = env_name(f.name), environ[env_name(f.name)]
        else:
            continue
        try:
            values[f.name] = f.metadata["parse"](raw)
        except (ValueError, TypeError) as exc:
            shown = "<hidden>" if f.metadata["secret"] else repr(raw)
            raise ConfigError(f"{source}={shown} is invalid: {exc}") from None
    return config_class(**values)


def describe(config: Any) -> dict[str, Any]:
    """The effective configuration for the start-up log line, secrets masked."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("secret") and value is not None:
            value = "<hidden>"
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, frozenset | tuple):
            value = sorted(value)
        out[f.name] = value
    return out


# Parsers: each raises ValueError with a message saying what a good value looks like.


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a TCP port number 0-65535") from None
    if not 0 <= value <= 65535:
        raise ValueError("expected a TCP port number 0-65535")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number greater than 0") from None
    if value <= 0:
        raise ValueError("expected a whole number greater than 0")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("expected a whole number, 0 or more") from None
    if value < 0:
        raise ValueError("expected a whole number, 0 or more")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("expected a number of seconds greater than 0, e.g. 5 or 2.5") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("expected a number of seconds greater than 0, e.g. 5 or 2.5")
    return value


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def byte_size(text: str) -> int:
    """Bytes, with an optional binary unit: 500000, 512MiB, 2G, 1.5GiB."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError("expected a size in bytes such as 1048576, 512MiB or 2GiB")
    number, unit = match.groups()
    value = int(float(number) * _UNITS[(unit or "")[:1].lower()])
    if value <= 0:
        raise ValueError("expected a size greater than 0")
    return value


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected true or false")


def text(value: str) -> str:
    return value


def non_empty_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def path(value: str) -> Path:
    if not value.strip():
        raise ValueError("expected a file or folder path")
    return Path(value).expanduser()


def ae_title(value: str) -> str:
    """A DICOM AE title: 1-16 characters of printable ASCII, no backslash, not all spaces."""
    stripped = value.strip()
    if not stripped or len(value) > 16:
        raise ValueError("expected an AE title of 1 to 16 characters")
    if any(not (32 <= ord(c) < 127) or c == "\\" for c in value):
        raise ValueError("an AE title may hold only printable ASCII and no backslash")
    return stripped


def ae_title_set(value: str) -> frozenset[str]:
    """Comma-separated AE titles; empty means no restriction."""
    return frozenset(ae_title(part) for part in value.split(",") if part.strip())


def host_port(value: str) -> str:
    """host:port, e.g. localhost:50051 or [::1]:50051 or dns:///store:50051."""
    head, sep, tail = value.rpartition(":")
    if not sep or not head:
        raise ValueError("expected host:port, e.g. localhost:50051")
    port(tail)
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(value: str) -> str:
    upper = value.strip().upper()
    if upper not in LOG_LEVELS:
        raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
    return upper
