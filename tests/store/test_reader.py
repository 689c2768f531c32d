"""The Reader's rows by column name are the engine's, read afresh on every call."""

from sqlalchemy import Engine, bindparam, insert, select

from openhosting.store.reader import Reader
from openhosting.store.tables import users

BY_UUID = select(users).where(users.c.uuid == bindparam("uuid"))


def test_mappings_are_the_engines_rows_and_see_every_commit(engine: Engine) -> None:
    reader = Reader(engine)
    try:
        assert reader.mappings(BY_UUID, uuid="u1") == []
        with engine.begin() as connection:
            connection.execute(insert(users).values(uuid="u1", key_hash="h", created_at=1))
        with engine.connect() as connection:
            expected = [dict(row) for row in connection.execute(BY_UUID, {"uuid": "u1"}).mappings()]
        assert reader.mappings(BY_UUID, uuid="u1") == expected
        with engine.begin() as connection:
            connection.execute(users.update().values(key_hash="h2"))
        assert reader.mappings(BY_UUID, uuid="u1")[0]["key_hash"] == "h2"
    finally:
        reader.close()
