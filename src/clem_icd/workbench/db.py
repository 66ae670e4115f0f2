"""Connecting to the workbench database and holding it to the code's migrations.

SQLite (the embedded default, a file path or `sqlite:///…`) is set up for a service with many
readers and one writer at a time: WAL (readers never block the writer), foreign keys on (SQLite
leaves them off), a busy timeout (a second writer waits instead of failing at once), and write
transactions that take the write lock when they begin (BEGIN IMMEDIATE): a deferred transaction
that reads, then writes, can fail with "database is locked" halfway, after the busy timeout had no
chance to help. PostgreSQL (`postgresql+psycopg://…`) needs none of this.
"""

from __future__ import annotations

from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import sessionmaker

from clem_icd.errors import ClemError

BUSY_TIMEOUT_MS = 10_000
MIGRATIONS = files("clem_icd.workbench") / "migrations"


def database_url(value: str | Path) -> URL:
    """A SQLAlchemy URL from `--db`: a URL as given, or a file path for SQLite."""
    text = str(value)
    if "://" not in text:
        return URL.create("sqlite+pysqlite", database=str(Path(text).expanduser()))
    try:
        url = make_url(text)
    except ArgumentError:
        raise ClemError(f"--db: not a database URL or file path ({_safe(text)})") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ClemError(f"--db: {url.get_backend_name()} is not supported; use a SQLite file or "
                        "postgresql+psycopg://user@host/dbname")
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we depend on
    return url


def _safe(text: str) -> str:
    """A URL for an error message, without its password."""
    try:
        return make_url(text).render_as_string(hide_password=True)
    except ArgumentError:
        return "unparsable"


class Database:
    """An engine and two session makers: `read()` for queries, `write()` for a transaction that
    changes something (immediate on SQLite). Each commits on success and rolls back on error."""

    def __init__(self, url: str | Path | URL):
        self.url = url if isinstance(url, URL) else database_url(url)
        self.engine = _engine(self.url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        writer = self.engine.execution_options(clem_immediate=True) if self.is_sqlite else self.engine
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(writer, expire_on_commit=False)

    @property
    def name(self) -> str:
        """As a user writes it in --db: a SQLite file's path, a URL without its password."""
        if self.is_sqlite and self.url.database:
            return self.url.database
        return self.url.render_as_string(hide_password=True)

    @contextmanager
    def read(self):
        with self._read() as session:
            yield session

    @contextmanager
    def write(self):
        with self._write() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    if url.database and url.database != ":memory:":
        folder = Path(url.database).parent
        if not folder.is_dir():
            raise ClemError(f"--db {url.database}: the folder {folder} does not exist")
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        # The driver's own transaction handling off: SQLAlchemy's "begin" event below issues BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in ("journal_mode=WAL", "foreign_keys=ON", f"busy_timeout={BUSY_TIMEOUT_MS}",
                       "synchronous=NORMAL"):  # NORMAL is durable in WAL mode except on power loss
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        immediate = connection.get_execution_options().get("clem_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# ---------------------------------------------------------------------------- migrations


def alembic_config(db: Database):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # Alembic's config is an ini file: a % in a URL (an escaped password) must be doubled.
    config.set_main_option("sqlalchemy.url", db.url.render_as_string(hide_password=False).replace("%", "%%"))
    config.attributes["engine"] = db.engine
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def current_revision(db: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    try:
        with db.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        raise ClemError(f"--db {db.name}: cannot connect ({_first_line(exc)})") from None


def upgrade(db: Database) -> tuple[str | None, str]:
    """Bring the schema to the code's head revision: (revision before, revision now)."""
    from alembic import command

    before = current_revision(db)
    command.upgrade(alembic_config(db), "head")
    return before, head_revision()


def require_current(db: Database) -> None:
    """A database behind (or ahead of) the code's migrations is refused in one line."""
    current, head = current_revision(db), head_revision()
    if current == head:
        return
    if current is None:
        raise ClemError(f"--db {db.name}: no workbench schema yet; run: clem-icd db upgrade --db {db.name}")
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory(str(MIGRATIONS)).walk_revisions()}
    if current not in known:
        raise ClemError(f"--db {db.name}: schema revision {current} is newer than this clem-icd knows "
                        f"(head {head}); upgrade clem-icd")
    raise ClemError(f"--db {db.name}: schema revision {current} is behind this clem-icd's {head}; run: "
                    f"clem-icd db upgrade --db {db.name}")


def _first_line(exc: Exception) -> str:
    original = getattr(exc, "orig", exc)
    return str(original).strip().splitlines()[0] if str(original).strip() else original.__class__.__name__


def open_database(value: str | Path, *, check: bool = True) -> Database:
    """The database of `--db`, checked against the code's migrations (unless `check` is False)."""
    db = Database(value)
    if check:
        require_current(db)
    return db

