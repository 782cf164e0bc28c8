"""Configuration: environment and flags, parsing, and errors that name the key and value."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from seriesflow import settings
from seriesflow.settings import ConfigError, setting


@dataclass(frozen=True)
class Example:
    dicom_port: int = setting("6667", settings.port, "port")
    series_idle_timeout: float = setting("10", settings.positive_seconds, "idle")
    ae_title: str = setting("STORESCP", settings.ae_title, "AE", aliases=("--called-ae",))
    database_url: str | None = setting(None, settings.text, "url", secret=True)
    spool_max_bytes: int = setting("1GiB", settings.byte_size, "spool")
    data_dir: Path = setting("./data", settings.path, "data")


def parse_flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    settings.add_flags(parser, Example)
    return parser.parse_args(list(argv))


def test_defaults_apply_when_nothing_is_set() -> None:
    config = settings.load(Example, environ={})
    assert config.dicom_port == 6667
    assert config.series_idle_timeout == 10.0
    assert config.database_url is None
    assert config.spool_max_bytes == 1024**3


def test_environment_overrides_defaults() -> None:
    config = settings.load(
        Example, environ={"SERIESFLOW_DICOM_PORT": "11112", "SERIESFLOW_SERIES_IDLE_TIMEOUT": "2.5"}
    )
    assert config.dicom_port == 11112
    assert config.series_idle_timeout == 2.5


def test_flag_overrides_environment() -> None:
    args = parse_flags("--dicom-port", "4242")
    config = settings.load(Example, environ={"SERIESFLOW_DICOM_PORT": "11112"}, args=args)
    assert config.dicom_port == 4242


def test_alias_flag_sets_the_same_setting() -> None:
    config = settings.load(Example, environ={}, args=parse_flags("--called-ae", "PACS"))
    assert config.ae_title == "PACS"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SERIESFLOW_DICOM_PORT", "abc"),
        ("SERIESFLOW_DICOM_PORT", "70000"),
        ("SERIESFLOW_SERIES_IDLE_TIMEOUT", "-1"),
        ("SERIESFLOW_SERIES_IDLE_TIMEOUT", "soon"),
        ("SERIESFLOW_AE_TITLE", "A_TITLE_FAR_TOO_LONG"),
        ("SERIESFLOW_AE_TITLE", "BAD\\AE"),
        ("SERIESFLOW_SPOOL_MAX_BYTES", "lots"),
    ],
)
def test_bad_value_error_names_variable_and_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings.load(Example, environ={variable: value})
    assert variable in str(caught.value)
    assert repr(value) in str(caught.value)


def test_bad_flag_error_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--dicom-port='x'"):
        settings.load(Example, environ={}, args=parse_flags("--dicom-port", "x"))


def test_secret_values_never_appear_in_errors_or_descriptions() -> None:
    config = settings.load(Example, environ={"SERIESFLOW_DATABASE_URL": "postgresql://u:pw@h/db"})
    assert config.database_url == "postgresql://u:pw@h/db"
    assert "pw" not in str(settings.describe(config))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1048576", 1048576), ("512MiB", 512 * 1024**2), ("2G", 2 * 1024**3), ("1.5GiB", 1610612736)],
)
def test_byte_sizes_accept_binary_units(text: str, expected: int) -> None:
    assert settings.byte_size(text) == expected


def test_ae_title_set_splits_and_strips() -> None:
    assert settings.ae_title_set(" MODALITY1, PACS ,") == frozenset({"MODALITY1", "PACS"})
    assert settings.ae_title_set("") == frozenset()


def test_host_port_requires_a_port() -> None:
    assert settings.host_port("store:50051") == "store:50051"
    with pytest.raises(ValueError):
        settings.host_port("store")
