"""Read commands never write: older schemas are refused, read-only files, mounts and roles work."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from recorder.db import make_engine, make_read_engine, make_sessions
from recorder.errors import StorageError
from recorder.records import AssetBalance, FetchedBalances
from recorder.schema import alembic_config, head_revision, shipped_revisions, upgrade_to_head
from recorder.store import ensure_account, record_poll

RECORDER = str(Path(sys.executable).with_name("recorder"))
ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# Every read command, with the options it needs; each must refuse an older schema alike.
READ_COMMANDS = [
    ["history"],
    ["balances", "--at", "2026-01-01T00:05:00Z"],
    ["diff", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:05:00Z"],
    ["changes"],
    ["gaps", "--since", "2026-01-01T00:00:00Z", "--until", "2026-01-01T00:05:00Z"],
    ["export", "--what", "history"],
    ["export", "--what", "daily"],
    ["reconcile"],
    ["diff", "--from", "2026-01-01T00:00:00Z", "--to", "2026-01-01T00:05:00Z", "--explain"],
    ["series", "--asset", "USDT", "--every", "minute", "--since", "2026-01-01T00:00:00Z",
     "--until", "2026-01-01T00:05:00Z"],
]
# Root without the capabilities that bypass file permissions: the modes then bind it like any
# user, while it can still read the checkout and its .venv wherever the clone lives (a
# private 0700 folder would shut another user such as nobody out of the code itself).
PERMISSIONS_BIND = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def poll(engine: Engine, minute: int, usdt: str) -> None:
    """Record one successful poll of account 'main' holding USDT only."""
    when = T0 + timedelta(minutes=minute)
    value = Decimal(usdt)
    balance = AssetBalance("USDT", value, value, Decimal(0), value, value, True, when)
    with make_sessions(engine, write=True).begin() as session:
        account = ensure_account(session, "main", "http://127.0.0.1:9", when)
        record_poll(session, account, FetchedBalances("SgsR", (balance,), "/fapi/v2/balance", 5),
                    started_at=when, finished_at=when)


def recorded(url: str) -> str:
    """A database at head with two polls: USDT 10 at minute 0, 11 at minute 1."""
    engine = make_engine(url)
    try:
        upgrade_to_head(engine)
        poll(engine, 0, "10")
        poll(engine, 1, "11")
    finally:
        engine.dispose()
    return url


def recorder(url: str, *args: str, user: list[str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script as a subprocess, optionally as another user."""
    return subprocess.run(
        [*(user or []), RECORDER, *args, "--database-url", url, "--account", "main"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "RECORDER_INTERVAL": "60", "HOME": "/"},
        cwd="/",
    )


def snapshot(directory: Path) -> dict[str, str]:
    """Every file in the folder with its sha256: a read must change none and add none."""
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def latest_usdt(result: subprocess.CompletedProcess[str]) -> Decimal:
    assert result.returncode == 0, result.stderr
    return Decimal(json.loads(result.stdout)[-1]["balance"])


def previous_revision() -> str:
    """The revision just before head, as Alembic walks the shipped migrations."""
    config = alembic_config()
    return ScriptDirectory.from_config(config).get_revision(head_revision()).down_revision


def downgrade_one(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            command.downgrade(config, previous_revision())
    finally:
        engine.dispose()


def test_schema_head_scanned_without_alembic_matches_alembic():
    """A migration that the plain-text scan misreads fails here, not on a user's read."""
    revisions, head = shipped_revisions()
    scripts = ScriptDirectory.from_config(alembic_config())
    assert head == scripts.get_current_head()
    assert revisions == {script.revision for script in scripts.walk_revisions()}


def test_read_commands_on_an_older_schema_exit_1_and_leave_the_database_untouched(db_url, tmp_path):
    recorded(db_url)
    downgrade_one(db_url)
    old, head = previous_revision(), head_revision()
    sqlite_dir = tmp_path if db_url.startswith("sqlite") else None
    before = snapshot(sqlite_dir) if sqlite_dir else None
    for read in READ_COMMANDS:
        result = recorder(db_url, *read)
        assert result.returncode == 1, (read, result.stderr)
        assert result.stderr.splitlines() == [
            f"error: StorageError: the database's schema ({old}) is older than this recorder's ({head}): "
            "run `recorder migrate`"
        ], read
        assert result.stdout == ""
    if sqlite_dir:
        assert snapshot(sqlite_dir) == before
        assert set(before) == {"recorder.db"}
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == old
    finally:
        engine.dispose()
    # migrate still migrates, and the reads then answer.
    assert recorder(db_url, "migrate").returncode == 0
    assert latest_usdt(recorder(db_url, "history", "--format", "json")) == Decimal(11)


def test_read_commands_on_an_unmigrated_database_say_to_migrate(db_url, tmp_path):
    if db_url.startswith("sqlite"):
        (tmp_path / "recorder.db").touch()
    for read in (["history"], ["gaps"]):
        result = recorder(db_url, *read)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"error: StorageError: the database has no recorder schema (expected {head_revision()}): "
            "run `recorder migrate`"
        ]
    if db_url.startswith("sqlite"):
        assert snapshot(tmp_path) == {"recorder.db": hashlib.sha256(b"").hexdigest()}
    else:
        engine = make_engine(db_url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()


@pytest.mark.parametrize("spelling", ["plain", "uri"])
def test_read_commands_never_create_a_missing_sqlite_file(tmp_path, spelling):
    missing = tmp_path / "nowhere.db"
    url = f"sqlite:///{missing}" if spelling == "plain" else f"sqlite:///file:{missing}?mode=ro&uri=true"
    result = recorder(url, "history")
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: StorageError: no database at {missing}: check --database-url / RECORDER_DATABASE_URL"
    ]
    assert list(tmp_path.iterdir()) == []


def test_read_engine_refuses_every_write(db_url):
    """Belt and braces: even a statement that writes fails on the read engine, on both backends."""
    recorded(db_url)
    reader = make_read_engine(db_url)
    try:
        with reader.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM polls")).scalar_one() == 2
            if db_url.startswith("sqlite"):
                # The decimal functions the views and documented queries use are registered.
                total = connection.execute(text("SELECT decimal_sum(balance) FROM balances")).scalar_one()
                assert Decimal(total) == 21
            with pytest.raises(DBAPIError, match="read-?only"):
                connection.execute(text("DELETE FROM polls"))
    finally:
        reader.close()
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM polls")).scalar_one() == 2
    finally:
        engine.dispose()


# --- read-only SQLite files -----------------------------------------------------------------


@contextmanager
def shared_folder() -> Iterator[Path]:
    """A folder other users can enter (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="recorder-ro-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


@contextmanager
def read_only_mount(folder: Path) -> Iterator[Path]:
    """The folder seen through a read-only bind mount, where not even root can write."""
    view = Path(tempfile.mkdtemp(prefix="recorder-ro-view-"))
    mounted = subprocess.run(["mount", "--bind", "-o", "ro", str(folder), str(view)], capture_output=True, text=True)
    if mounted.returncode != 0:
        view.rmdir()
        pytest.skip(f"cannot bind-mount read-only here: {mounted.stderr.strip()}")
    try:
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True)
        view.rmdir()


@contextmanager
def database_in(folder: Path, state: str) -> Iterator[Path]:
    """A WAL database in `folder`, closed cleanly, held open by a writer, or left by a crash;
    or the same file switched back to a rollback journal (a copy made with `sqlite3 .backup`).

    In "open" and "crashed" the second poll (USDT 11) lives only in the -wal file, so a
    reader that ignored the WAL would show 10.
    """
    path = folder / "recorder.db"
    url = f"sqlite:///{path}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    poll(engine, 0, "10")
    engine.dispose()
    engine = make_engine(url)
    poll(engine, 1, "11")
    try:
        if state in ("clean", "rollback-journal"):
            engine.dispose()
            if state == "rollback-journal":
                with sqlite3.connect(path) as connection:
                    assert connection.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
                connection.close()
            assert sorted(p.name for p in folder.iterdir()) == ["recorder.db"]
        elif state == "crashed":
            # Copies taken while the writer is idle are what a killed recorder leaves behind.
            crashed = folder / "crashed"
            crashed.mkdir()
            for suffix in ("", "-wal", "-shm"):
                shutil.copyfile(f"{path}{suffix}", crashed / f"recorder.db{suffix}")
            engine.dispose()
            for leftover in folder.iterdir():
                if leftover.is_file():
                    leftover.unlink()
            for copy in crashed.iterdir():
                copy.rename(folder / copy.name)
            crashed.rmdir()
            assert sorted(p.name for p in folder.iterdir()) == ["recorder.db", "recorder.db-shm", "recorder.db-wal"]
        if state in ("open", "crashed"):
            assert (folder / "recorder.db-wal").stat().st_size > 0
        for file in folder.iterdir():
            file.chmod(0o444)
        yield path
    finally:
        engine.dispose()


@pytest.mark.parametrize("state", ["clean", "open", "crashed", "rollback-journal"])
@pytest.mark.parametrize("access", ["chmod-444", "uri-mode-ro", "read-only-mount", "read-only-dir"])
def test_read_commands_answer_on_a_read_only_sqlite_database_and_change_no_byte(state, access):
    with shared_folder() as folder, database_in(folder, state) as path:
        user = None
        with read_only_mount(folder) if access == "read-only-mount" else nullcontext(folder) as where:
            if access == "read-only-dir":
                if os.geteuid() == 0:
                    user = PERMISSIONS_BIND
                folder.chmod(0o555)
            url = f"sqlite:///{where / path.name}"
            if access == "uri-mode-ro":
                url = f"sqlite:///file:{where / path.name}?mode=ro&uri=true"
            before = snapshot(folder)
            assert latest_usdt(recorder(url, "history", "--format", "json", user=user)) == Decimal(11)
            series = recorder(url, *READ_COMMANDS[-1], "--format", "json", user=user)
            assert series.returncode == 0, series.stderr
            assert [Decimal(point["value"]) for point in json.loads(series.stdout)[:2]] == [10, 11]
            assert snapshot(folder) == before


def test_read_only_sqlite_folder_is_really_read_only_for_the_reader():
    """Guards the test above: its reader truly cannot create a file in the folder."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop its capabilities")
    with shared_folder() as folder:
        folder.chmod(0o555)
        probe = subprocess.run([*PERMISSIONS_BIND, "touch", str(folder / "probe")], capture_output=True, text=True)
        assert probe.returncode != 0
        assert not (folder / "probe").exists()


def polls_seen(url: str) -> int:
    reader = make_read_engine(url)
    try:
        with reader.engine.connect() as connection:
            return connection.execute(text("SELECT count(*) FROM polls")).scalar_one()
    finally:
        reader.close()


def test_unlocked_read_keeps_a_closing_writer_from_checkpointing_into_the_file(tmp_path):
    """A WAL file without -wal is read immutable, under SQLite's SHARED lock: a writer that
    polls and closes meanwhile leaves its poll in the -wal instead of rewriting the file."""
    path = tmp_path / "recorder.db"
    url = recorded(f"sqlite:///{path}")
    reader = make_read_engine(url)
    try:
        assert reader.unlocked_file == path
        with reader.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM polls")).scalar_one() == 2
            # Another process: POSIX locks never block their own process.
            writer = subprocess.run(
                [sys.executable, "-c", "import sys; from recorder.db import make_engine; "
                 "from tests.e2e.test_read_only import poll; engine = make_engine(sys.argv[1]); "
                 "poll(engine, 2, '12'); engine.dispose()", url],
                cwd=ROOT, capture_output=True, text=True, timeout=120,
            )
            assert writer.returncode == 0, writer.stderr
            assert Path(f"{path}-wal").stat().st_size > 0
            assert connection.execute(text("SELECT count(*) FROM polls")).scalar_one() == 2
        reader.verify_unchanged()
    finally:
        reader.close()
    # The next read goes through the -wal the writer left, and sees its poll.
    assert polls_seen(url) == 3


def test_unlocked_read_is_refused_when_the_file_changes_underneath(tmp_path):
    """A checkpoint needs no lock on the file itself; a change during the read is caught."""
    url = recorded(f"sqlite:///{tmp_path / 'recorder.db'}")
    reader = make_read_engine(url)
    try:
        assert reader.unlocked_file == tmp_path / "recorder.db"
        with reader.engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM polls")).scalar_one() == 2
        reader.verify_unchanged()
        writer = make_engine(url)
        poll(writer, 2, "12")
        with writer.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(FULL)")
        writer.dispose()
        with pytest.raises(StorageError, match="written while it was being read: run the command again"):
            reader.verify_unchanged()
    finally:
        reader.close()


# --- read-only PostgreSQL role --------------------------------------------------------------


@contextmanager
def read_only_role(db_url: str) -> Iterator[str]:
    """A login role with CONNECT and SELECT only, in this test's database; yields its URL."""
    role = f"recorder_ro_{uuid.uuid4().hex[:10]}"
    libpq = db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    database = make_url(db_url).database
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute(f'CREATE ROLE "{role}" LOGIN')
        connection.execute(f'GRANT CONNECT ON DATABASE "{database}" TO "{role}"')
        connection.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
        connection.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{role}"')
    try:
        yield make_url(db_url).set(username=role).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(libpq, autocommit=True) as connection:
            connection.execute(f'DROP OWNED BY "{role}"')
            connection.execute(f'DROP ROLE "{role}"')


def test_read_commands_answer_through_a_read_only_postgres_role(postgres_db_url):
    recorded(postgres_db_url)
    with read_only_role(postgres_db_url) as url:
        for read in READ_COMMANDS:
            exporting = read[0] == "export"
            result = recorder(url, *read, "--format", "jsonl" if exporting else "json")
            assert result.returncode == 0, (read, result.stderr)
            assert [json.loads(line) for line in result.stdout.splitlines()] if exporting else json.loads(result.stdout), read
        assert latest_usdt(recorder(url, "history", "--format", "json")) == Decimal(11)
        # The role really cannot write: migrating through it fails.
        downgrade_one(postgres_db_url)
        refused = recorder(url, "migrate")
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: StorageError: cannot migrate the database: ")
        # ...and a read on the older schema says to migrate, not "permission denied".
        behind = recorder(url, "history")
        assert behind.returncode == 1
        assert "run `recorder migrate`" in behind.stderr


# --- concurrent migrations ------------------------------------------------------------------


def test_two_migrates_at_once_on_a_fresh_database_both_succeed(db_url):
    commands = [
        subprocess.Popen([RECORDER, "migrate", "--database-url", db_url], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin"})
        for _ in range(2)
    ]
    results = [(process.wait(timeout=300), *process.communicate()) for process in commands]
    for code, out, err in results:
        assert code == 0, err
    outputs = sorted(out.strip() for _, out, _ in results)
    assert outputs == ["database schema is up to date", "database upgraded to the newest schema"]
    engine = make_engine(db_url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
                head_revision()
            ]
    finally:
        engine.dispose()
