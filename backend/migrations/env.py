"""Alembic environment: the engine comes from ``backend.db.migrate`` (or ``-x url=...``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Engine

from backend.schema import metadata
from cloud_sync.ingest_db import metadata as ingest_metadata
from cloud_sync.sqldb import make_engine

INGEST_TABLES = frozenset(ingest_metadata.tables)


def include_object(
    obj: object, name: str | None, type_: str, reflected: bool, compare_to: object
) -> bool:
    """Autogenerate and ``check`` leave the ingest's own tables alone."""
    return not (type_ == "table" and name in INGEST_TABLES)


config = context.config
engine: Engine | None = config.attributes.get("engine")
if engine is None:
    url = context.get_x_argument(as_dictionary=True).get("url", "var/backend.db")
    engine = make_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
