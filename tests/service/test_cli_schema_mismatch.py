"""Commands started against a store that is not at this release's schema: behind (not yet
upgraded), ahead (upgraded by a newer release) or not there at all (a mistyped SQLite path).
Each stops with one line saying what to do, exit 2, without a traceback and without writing to
the database; ``serve`` and ``worker`` run as real processes."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fhir_alliance_service.store import current_revision, head_revision
from fhir_alliance_service.store.engine import make_engine
from sqlalchemy import text

from fhir_alliance.cli import main
from tests.service.store.migrating import downgrade_to

ROOT = Path(__file__).resolve().parents[2]
#: A revision no release of this code has (a newer release's migration).
NEWER = "0999"


def _set_revision(url: str, revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    finally:
        engine.dispose()


def _env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a command run as a process: this checkout's code, the database and
    ``extra`` as the only FHIR_ALLIANCE_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_ALLIANCE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "service")])
    env["FHIR_ALLIANCE_DATABASE_URL"] = database_url
    env.update(extra)
    return env


def _run(args: list[str], database_url: str) -> subprocess.CompletedProcess[str]:
    """``fhir-alliance ARGS`` as a process (``serve`` and ``worker`` would run until stopped if
    they started: the timeout fails the test then)."""
    return subprocess.run(
        [sys.executable, "-m", "fhir_alliance", *args],
        env=_env(
            database_url,
            FHIR_ALLIANCE_FHIR_BASE_URL="http://127.0.0.1:9/fhir",
            FHIR_ALLIANCE_RECIPIENTS="Organization/clinic-ehr",
            FHIR_ALLIANCE_BIND=f"127.0.0.1:{_free_port()}",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sqlite_files(path: Path) -> dict[str, str]:
    """sha256 of the database file and of its ``-wal`` (when there is one)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (path, path.with_name(path.name + "-wal"))
        if p.exists()
    }


def _error_line(stderr: str) -> str:
    """The one ``error:`` line of ``stderr`` (the worker's JSON log lines may precede it)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if not line.startswith("{")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("error: "), stderr
    return errors[0]


def test_a_store_of_a_newer_release_is_refused_in_one_line_and_left_as_it_is(
    database: str,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A database a newer release upgraded (a revision this code does not know): ``db upgrade``
    used to end in Alembic's traceback ("Can't locate revision"), and every other command told
    the operator to run ``db upgrade``, which cannot help. Now each says the database is newer
    than this release, exit 2, and the revision stays as it was; ``db current`` says so, exit 1."""
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", database_url)
    _set_revision(database_url, NEWER)
    for args in (["db", "upgrade"], ["status"], ["list-api-keys"], ["replay", "--all"]):
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith(f"error: database schema is at {NEWER}, expected {head_revision()}")
        assert "a newer release of fhir-alliance upgraded the database" in err
        assert current_revision(database_url) == NEWER
    assert main(["db", "current"]) == 1
    assert capsys.readouterr().out == (
        f"{NEWER} (not known to this release, whose newest is {head_revision()})\n"
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "worker"])
@pytest.mark.parametrize("where", ["behind", "ahead"])
def test_serve_and_worker_refuse_a_store_behind_or_ahead_without_writing(
    sqlite_url: str, command: str, where: str
) -> None:
    """``serve`` and ``worker`` started on a store not yet upgraded (0007) or upgraded by a newer
    release: exit 2, one ``error:`` line saying what to do, no traceback, the database file
    unchanged."""
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    if where == "behind":
        downgrade_to(sqlite_url, "0007")
        expected = (
            f"database schema is at 0007, expected {head_revision()}: "
            'run "fhir-alliance db upgrade"'
        )
    else:
        _set_revision(sqlite_url, NEWER)
        expected = f"database schema is at {NEWER}, expected {head_revision()}: {NEWER} is not"
    before = _sqlite_files(path)
    done = _run([command], sqlite_url)
    assert done.returncode == 2, done.stderr
    assert _error_line(done.stderr).startswith(f"error: {expected}")
    assert _sqlite_files(path) == before


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["list-api-keys"],
        ["replay", "--all"],
        ["create-api-key", "x", "--scope", "read"],
    ],
)
def test_a_mistyped_sqlite_path_is_not_made_into_a_new_store(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
) -> None:
    """A SQLite URL naming no file (a typo, a volume not mounted): the command used to create an
    empty file there and tell the operator to run ``db upgrade``, which made an empty store that
    ``serve`` then took intake into while the clinic's data sat elsewhere. Now it names the path
    and creates nothing, exit 2."""
    path = tmp_path / "fhir-alliance.db"
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{path}")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: no SQLite database at {path}: check FHIR_ALLIANCE_DATABASE_URL, or run "
        '"fhir-alliance db upgrade" to create a new, empty store there\n'
    )
    assert list(tmp_path.iterdir()) == []


def test_db_current_on_a_missing_file_creates_nothing_and_db_upgrade_creates_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``db current`` names the missing file, exit 1, and creates nothing; ``db upgrade`` is the
    one command that creates a new store."""
    path = tmp_path / "fhir-alliance.db"
    monkeypatch.setenv("FHIR_ALLIANCE_DATABASE_URL", f"sqlite:///{path}")
    assert main(["db", "current"]) == 1
    assert capsys.readouterr().out == f"empty (no database at {path}; db upgrade creates one)\n"
    assert not path.exists()
    assert main(["db", "upgrade"]) == 0
    assert current_revision(f"sqlite:///{path}") == head_revision()


@pytest.mark.slow
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_on_a_mistyped_sqlite_path_create_nothing(
    tmp_path: Path, command: str
) -> None:
    """``serve`` and ``worker`` as processes: the same line, exit 2, no file made."""
    path = tmp_path / "fhir-alliance.db"
    done = _run([command], f"sqlite:///{path}")
    assert done.returncode == 2, done.stderr
    assert _error_line(done.stderr) == (
        f"error: no SQLite database at {path}: check FHIR_ALLIANCE_DATABASE_URL, or run "
        '"fhir-alliance db upgrade" to create a new, empty store there'
    )
    assert list(tmp_path.iterdir()) == []
