"""Store settings checked at start: SERIESFLOW_DATABASE_URL, with a message that names the
variable, says what is expected, and never repeats the (secret) value; and limits that
would reject what receivers send."""

from __future__ import annotations

import pytest

from seriesflow import settings
from seriesflow.receiver.updates import MAX_INSTANCES_PER_UPDATE
from seriesflow.settings import ConfigError
from seriesflow.store.config import RECEIVER_UPDATE_INSTANCES, StoreConfig


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


def test_an_instances_per_update_limit_below_what_receivers_send_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match=r"SERIESFLOW_MAX_INSTANCES_PER_UPDATE.*at least 1000"):
        settings.load(StoreConfig, environ={"SERIESFLOW_MAX_INSTANCES_PER_UPDATE": "999"})
    limit = settings.load(StoreConfig, environ={"SERIESFLOW_MAX_INSTANCES_PER_UPDATE": "1000"})
    assert limit.max_instances_per_update == 1000


def test_the_store_limit_matches_the_receivers_update_size() -> None:
    assert RECEIVER_UPDATE_INSTANCES == MAX_INSTANCES_PER_UPDATE
