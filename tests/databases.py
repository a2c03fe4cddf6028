"""Real database servers for the store tests: a PostgreSQL server started from its own binaries, never a mock.

`make test` installs the Debian `postgresql` package when its binaries are missing (`make postgres`). The
server runs from a temporary folder on a free 127.0.0.1 port for the whole session, with fsync off; as root it
runs as the `postgres` (or `nobody`) user, since PostgreSQL refuses to run as root. Each test gets its own
database (`store_url` fixture), so tests never see each other's rows.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


def postgres_bindir() -> Path | None:
    """The folder of `initdb` and `pg_ctl`: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    return Path(candidates[0]).parent if candidates else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["runuser", "-u", name, "--", *command]
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists")


def _server_user() -> str | None:
    if os.geteuid() != 0:
        return None
    return "postgres" if _has_user("postgres") else "nobody"


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def local_postgres() -> Iterator[str]:
    """Start a PostgreSQL server in a temporary folder; yields its base URL; stops it and removes the folder.
    Used by the `postgres_server` fixture and by `benchmarks/store.py`."""
    from serving.server import free_port

    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries not found: run `make postgres` (Debian package postgresql)"
        )
    # Not under pytest's temporary root: that one is private to the user running the tests.
    folder = Path(tempfile.mkdtemp(prefix="churnsense-postgres-"))
    user = _server_user()
    if user:
        shutil.chown(folder, user=user)
    data = folder / "data"
    try:
        _run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "churnsense", "-E", "UTF8",
              "--no-sync", "--locale=C"])  # fmt: skip
        port = free_port()
        options = f"-p {port} -h 127.0.0.1 -k {folder} -F -c fsync=off -c full_page_writes=off"
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "-t",
              "60", "start"])  # fmt: skip
        yield f"postgresql+psycopg://churnsense@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A running PostgreSQL server; yields its base URL (`postgresql+psycopg://churnsense@127.0.0.1:<port>`)."""
    if postgres_bindir() is None:
        pytest.fail("PostgreSQL server binaries not found: run `make postgres` (Debian package postgresql)")
    with local_postgres() as url:
        yield url


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command[:1])} failed ({done.returncode}): {done.stderr or done.stdout}"
        )


def new_postgres_database(server: str) -> str:
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(
        server.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True
    ) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty store of each kind: an embedded SQLite file, and a database on the real PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    return new_postgres_database(request.getfixturevalue("postgres_server"))
