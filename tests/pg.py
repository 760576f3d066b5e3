"""A throwaway PostgreSQL schema per test.

``FRESHBOX_TEST_PG`` names the server (default ``postgresql://postgres@127.0.0.1:5432/test``,
the CI service). When it cannot be reached the test is skipped, unless
``FRESHBOX_REQUIRE_SERVICES`` is set (CI), where it fails instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"


def _server_url() -> str:
    url = make_url(os.environ.get("FRESHBOX_TEST_PG", DEFAULT_PG))
    return str(url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False))


@contextmanager
def postgres_schema() -> Iterator[str]:
    """Yield a database URL whose search_path is a new, empty schema; drop it afterwards."""
    server = _server_url()
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    schema = f"fbtest_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # the server is absent or refuses us
        admin.dispose()
        if os.environ.get("FRESHBOX_REQUIRE_SERVICES"):
            pytest.fail(f"PostgreSQL at {server} is unreachable (FRESHBOX_REQUIRE_SERVICES): {exc}")
        pytest.skip(f"PostgreSQL is unreachable: {exc}")
    url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
