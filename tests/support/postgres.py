"""The real PostgreSQL on 127.0.0.1:5432 for tests: a fresh database each, dropped afterwards.

Without a server the tests that need one skip with a message saying how to start it, unless
MODELSMITH_REQUIRE_POSTGRES=1 (CI), which makes that a failure.
"""

import contextlib
import os
import secrets
from collections.abc import Iterator

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def connect(dbname: str):
    import psycopg2

    conn = psycopg2.connect(host=HOST, port=PORT, user=USER, password=os.environ.get("PGPASSWORD", ""),
                            dbname=dbname, connect_timeout=3)
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[tuple[str, dict[str, str]]]:
    """(database name, the DAGSTER_PG_* variables `dagster.yaml.example` reads) for a new database."""
    import psycopg2
    import pytest

    try:
        admin = connect("postgres")
    except psycopg2.OperationalError as exc:
        msg = (f"no PostgreSQL on {HOST}:{PORT} ({str(exc).strip()}). Start it with "
               "`pg_ctlcluster --skip-systemctl-redirect 15 main start` (trust auth, user postgres), then rerun")
        if os.environ.get("MODELSMITH_REQUIRE_POSTGRES", "") not in ("", "0"):
            pytest.fail(msg + " (required: MODELSMITH_REQUIRE_POSTGRES is set)")
        pytest.skip(msg + "; CI sets MODELSMITH_REQUIRE_POSTGRES=1 and always runs it")
    dbname = f"{prefix}_{secrets.token_hex(4)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{dbname}"')
    try:
        yield dbname, {"DAGSTER_PG_USERNAME": USER, "DAGSTER_PG_PASSWORD": os.environ.get("PGPASSWORD", ""),
                       "DAGSTER_PG_HOST": HOST, "DAGSTER_PG_DB": dbname}
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
