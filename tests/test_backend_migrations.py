"""The migrations create exactly the tables of backend/schema.py, on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from backend.db import Database, alembic_config
from backend.schema import metadata
from cloud_sync.ingest_db import metadata as ingest_metadata


def test_migrations_match_the_models_and_go_down_and_up(database_target: str) -> None:
    db = Database(database_target, workers=1)
    try:
        db.migrate()
        db.migrate()  # idempotent
        command.check(alembic_config(db.engine))  # raises if models and migrations differ
        tables = set(inspect(db.engine).get_table_names())
        assert set(metadata.tables) | set(ingest_metadata.tables) <= tables
        command.downgrade(alembic_config(db.engine), "base")
        assert not set(metadata.tables) & set(inspect(db.engine).get_table_names())
        db.migrate()
        assert set(metadata.tables) <= set(inspect(db.engine).get_table_names())
    finally:
        db.close()
