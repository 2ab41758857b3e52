"""Taking a test database back to an older schema revision, for the migration tests."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from fhir_alliance_service.store.engine import make_engine
from fhir_alliance_service.store.schema import MIGRATIONS


def downgrade_to(url: str, revision: str) -> None:
    """Run Alembic's downgrade of the database at ``url`` to ``revision``."""
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS))
            config.attributes["connection"] = connection
            command.downgrade(config, revision)
    finally:
        engine.dispose()
