"""SERIESFLOW_DATABASE_URL is checked at start, with a message that names the variable,
says what is expected, and never repeats the (secret) value."""

from __future__ import annotations

import pytest

from seriesflow import settings
from seriesflow.settings import ConfigError
from seriesflow.store.config import StoreConfig


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sf:secret@db.example:5432/seriesflow",
        "postgres://sf@db/seriesflow?sslmode=require",
        "postgresql+psycopg://sf:secret@db/seriesflow",
        "host=/tmp dbname=seriesflow user=sf",
    ],
)
def test_libpq_urls_and_key_value_strings_are_accepted(url: str) -> None:
    config = settings.load(StoreConfig, {"SERIESFLOW_DATABASE_URL": url}, None)
    assert config.database_url == url


@pytest.mark.parametrize("url", ["not a url", "sf:hunter2@db/seriesflow", "dbserver"])
def test_a_malformed_database_url_stops_the_start_naming_the_variable_not_the_value(
    url: str,
) -> None:
    with pytest.raises(ConfigError) as info:
        settings.load(StoreConfig, {"SERIESFLOW_DATABASE_URL": url}, None)
    message = str(info.value)
    assert message.startswith("SERIESFLOW_DATABASE_URL=<hidden> is invalid")
    assert "postgresql://user:password@host:5432/seriesflow" in message
    assert url not in message and "hunter2" not in message
