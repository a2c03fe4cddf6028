"""The event store's tables, how a store is opened, and its versioned migrations.

A store is a SQLAlchemy URL: an embedded SQLite file by default (WAL mode, no server), PostgreSQL for real
deployments (`postgresql+psycopg://user@host/db`). Its schema is created and migrated by `open_store`, never by
hand: `MIGRATIONS` is an ordered list, the store records the last one applied, and a lock (a file lock for
SQLite, an advisory lock for PostgreSQL) lets only one process migrate at a time.

Values are stored so that they come back bit for bit: times as int64 nanoseconds (naive UTC), numbers as
8-byte floats or as JSON (Python writes the shortest text that reads back as the same float).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from churnsense.errors import UserError

DEFAULT_URL = "sqlite:///churnsense_store.db"
"""`--store` / `CHURNSENSE_STORE_URL` unset: a SQLite file in the working directory."""

metadata = sa.MetaData()

store_meta = sa.Table(
    "store_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.String(256), primary_key=True),
    sa.Column("signup_ns", sa.BigInteger),
    sa.Column("churn_ns", sa.BigInteger),
    sa.Column("churned", sa.SmallInteger),
    sa.Column("profile", sa.Text, nullable=False),  # JSON object: column -> value as the loader read it
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("event_key", sa.String(128), primary_key=True),  # the data's event id, or a content hash
    sa.Column("customer_id", sa.String(256), nullable=False),
    sa.Column("ts_ns", sa.BigInteger, nullable=False),
    sa.Column("event_type", sa.String(256), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),  # arrival order: ties at one time keep the file's order
    sa.Column("text", sa.Text),
    sa.Column("sentiment", sa.Float(precision=53)),
    sa.Column("numbers", sa.Text, nullable=False),  # JSON object: value column -> float or null
    # "This customer's events in the lookback window" is one range scan of this index.
    sa.Index("events_by_customer_time", "customer_id", "ts_ns"),
    # "The newest event of each type before the window" (for days_since_<type>) scans this one.
    sa.Index("events_by_customer_type_time", "customer_id", "event_type", "ts_ns"),
)


class StoreError(UserError):
    """The store cannot be opened, is of a newer version, or holds data of another layout. Says which."""


def _v1(connection: Connection) -> None:
    metadata.create_all(connection, tables=[customers, events])


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "customers and events, indexed by customer and time", _v1),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]


def safe_url(url: str | sa.URL) -> str:
    """The URL with its password hidden: the only form that reaches logs and messages."""
    return sa.make_url(url).render_as_string(hide_password=True)


def create_store_engine(url: str, writer: bool = False) -> Engine:
    """An engine for `url`; SQLite files get WAL mode and a busy timeout.

    `writer`: every transaction of a SQLite writer starts with BEGIN IMMEDIATE, taking the write lock at once.
    A plain (deferred) transaction that reads, then writes, can find another writer holding the lock and fail
    at once with "database is locked" instead of waiting its turn; readers stay deferred and never wait.
    """
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        raise StoreError(f"store URL: {url!r} is not a database URL (e.g. sqlite:///store.db)") from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": 60})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()
            if writer:
                dbapi_connection.isolation_level = None  # SQLAlchemy, not the driver, begins transactions

        if writer:

            @sa.event.listens_for(engine, "begin")
            def _begin_immediate(connection: Connection) -> None:
                connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    try:
        return sa.create_engine(parsed, pool_pre_ping=True)
    except ModuleNotFoundError as error:
        raise StoreError(f"store {safe_url(parsed)}: its driver is not installed ({error.name})") from None


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """One migrating process at a time for a SQLite file: a file lock beside it, taken before any transaction
    (so it never waits on the database lock while holding this one)."""
    database = engine.url.database or ""
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        yield
        return
    lock_path = Path(database).expanduser().resolve().with_name(Path(database).name + ".migrate.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def schema_version(connection: Connection) -> int:
    if not sa.inspect(connection).has_table(store_meta.name):
        return 0
    row = connection.execute(
        sa.select(store_meta.c.value).where(store_meta.c.key == "schema_version")
    ).first()
    return int(row[0]) if row else 0


def migrate(engine: Engine) -> int:
    """Apply every migration the store lacks, under the lock; returns the store's schema version."""
    try:
        with _file_lock(engine), engine.begin() as connection:
            if engine.dialect.name == "postgresql":  # one migrating process at a time, until commit
                connection.execute(sa.text("SELECT pg_advisory_xact_lock(7340211)"))
            metadata.create_all(connection, tables=[store_meta])
            current = schema_version(connection)
            if current > SCHEMA_VERSION:
                raise StoreError(
                    f"store {safe_url(engine.url)} has schema version {current}; this churnsense knows "
                    f"up to {SCHEMA_VERSION}: upgrade churnsense"
                )
            for version, _what, apply in MIGRATIONS:
                if version > current:
                    apply(connection)
                    set_meta(connection, "schema_version", str(version))
            return max(current, SCHEMA_VERSION)
    except sa.exc.OperationalError as error:
        raise StoreError(f"store {safe_url(engine.url)}: cannot open ({error.orig})") from None


def placeholders(engine: Engine, n: int) -> str:
    """`n` parameter markers in the driver's own style, for bulk statements run with `exec_driver_sql`."""
    marker = "?" if engine.dialect.paramstyle == "qmark" else "%s"
    return ", ".join([marker] * n)


def get_meta(connection: Connection, key: str) -> Any:
    row = connection.execute(sa.select(store_meta.c.value).where(store_meta.c.key == key)).first()
    return json.loads(row[0]) if row and key != "schema_version" else (row[0] if row else None)


def set_meta(connection: Connection, key: str, value: Any) -> None:
    text = value if key == "schema_version" else json.dumps(value, sort_keys=True)
    connection.execute(sa.delete(store_meta).where(store_meta.c.key == key))
    connection.execute(sa.insert(store_meta).values(key=key, value=text))


def open_store(url: str = DEFAULT_URL, writer: bool = False) -> Engine:
    """An engine on a migrated store (created on first use); `writer` for one that writes (see
    `create_store_engine`)."""
    engine = create_store_engine(url, writer=writer)
    migrate(engine)
    return engine


def write_lock(connection: Connection) -> None:
    """Serialise writers that number rows (`events.seq`): PostgreSQL takes an advisory lock until commit;
    a SQLite writer already holds the database's write lock (BEGIN IMMEDIATE)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7340212)"))
