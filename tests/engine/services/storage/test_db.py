from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, SQLModel, select

from stagecoach.engine.domain.errors import ConfigurationError, DatabaseError
from stagecoach.engine.services.storage import (
    check_connection,
    current_revision,
    head_revision,
    make_engine,
    upgrade,
)
from stagecoach.engine.services.storage.models import Contact, Event


@pytest.mark.parametrize("url", ["not a url", "mysql://u@localhost/db", "oracle+cx_oracle://u@h/x"])
def test_wrong_database_url_is_a_configuration_error_with_a_fix(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        make_engine(url)
    assert "STAGECOACH_DATABASE_URL" in caught.value.one_line()


def test_unreachable_postgres_is_a_database_error_naming_the_host() -> None:
    engine = make_engine("postgresql://u:secret@127.0.0.1:1/stagecoach")
    with pytest.raises(DatabaseError) as caught:
        check_connection(engine)
    assert "127.0.0.1:1" in caught.value.message
    assert "secret" not in caught.value.message


def _assert_schema_matches_models(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), SQLModel.metadata) == []


def _store_contact_and_event(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(Contact(id="c-1", traits={"company": "Acme 机械"}))
        session.add(Event(message_id="m-1", contact_id="c-1", name="page.viewed"))
        session.commit()
    with Session(engine) as session:
        event = session.exec(select(Event)).one()
        assert (event.contact_id, event.name) == ("c-1", "page.viewed")
        assert session.get(Contact, "c-1").traits == {"company": "Acme 机械"}  # type: ignore[union-attr]
        session.add(Event(message_id="m-1", contact_id="c-1", name="page.viewed"))
        with pytest.raises(IntegrityError):
            session.commit()


@pytest.fixture
def alembic_engine(database_url: str) -> Iterator[Engine]:
    """An empty database migrated by Alembic here: these tests are about the migrations,
    so they do not take the shared fixture's copy of a template."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_sqlite_migrations_produce_the_models_schema(alembic_engine: Engine) -> None:
    _assert_schema_matches_models(alembic_engine)
    _store_contact_and_event(alembic_engine)


@pytest.mark.postgres
def test_postgres_migrations_produce_the_models_schema(alembic_engine: Engine) -> None:
    assert alembic_engine.dialect.name == "postgresql"
    _assert_schema_matches_models(alembic_engine)
    _store_contact_and_event(alembic_engine)
