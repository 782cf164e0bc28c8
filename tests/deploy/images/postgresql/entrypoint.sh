#!/bin/sh
# First start: a UTF8 cluster (seriesflow refuses SQL_ASCII) with a password-protected
# superuser POSTGRES_USER and a database POSTGRES_DB, as the official image makes them.
set -eu
user="${POSTGRES_USER:-postgres}"
database="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
    initdb --pgdata="$PGDATA" --username="$user" --pwfile=/tmp/pwfile \
        --encoding=UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    if [ "$database" != postgres ]; then
        postgres --single -D "$PGDATA" -p "$PGPORT" postgres >/dev/null <<SQL
CREATE DATABASE "$database" OWNER "$user";
SQL
    fi
fi
exec postgres -D "$PGDATA" -p "$PGPORT" -c listen_addresses="${POSTGRES_LISTEN_ADDRESSES:-*}" "$@"
