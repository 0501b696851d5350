"""testcontainers-python's Redis and PostgreSQL modules through sidewhale."""

import sqlalchemy
from testcontainers.postgres import PostgresContainer
from testcontainers.redis import RedisContainer




def test_redis_set_and_get(sidewhale):
    with RedisContainer("redis:7") as redis:
        client = redis.get_client()
        assert client.set("greeting", "hello")
        assert client.get("greeting") == b"hello"


def test_postgres_table_round_trip(sidewhale):
    with PostgresContainer("postgres:16", username="tester", password="secret", dbname="shop") as postgres:
        engine = sqlalchemy.create_engine(postgres.get_connection_url())
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("CREATE TABLE item (id serial PRIMARY KEY, name text)"))
            connection.execute(sqlalchemy.text("INSERT INTO item (name) VALUES ('kettle'), ('cup')"))
        with engine.connect() as connection:
            names = connection.execute(sqlalchemy.text("SELECT name FROM item ORDER BY id")).scalars().all()
            user = connection.execute(sqlalchemy.text("SELECT current_user")).scalar()
            database = connection.execute(sqlalchemy.text("SELECT current_database()")).scalar()
        engine.dispose()
    assert names == ["kettle", "cup"]
    assert user == "tester"
    assert database == "shop"
