"""The database owns its writer lock: a second writer is refused however it spells the database,
from whatever directory, with whatever spool; different labels never share a lock."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from sqlalchemy import func, select

from recorder.db import make_engine, make_sessions
from recorder.models import Account, Poll
from tests.conftest import recorder_env
from tests.e2e.test_cli_recording import RECORDER, stop

DEADLINE_SECONDS = 60


def base_env(simulator, database_url: str, spool: Path, account: str = "default") -> dict[str, str]:
    return recorder_env(simulator, database_url, spool, RECORDER_ACCOUNT=account)


def start(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*RECORDER, "run", "--interval", "0.5"], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_a_poll(database_url: str, account: str, process: subprocess.Popen[str]) -> None:
    """Block until `account` has a poll row: the service then holds its lock."""
    engine = make_engine(database_url)
    deadline = time.monotonic() + DEADLINE_SECONDS
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1]
            try:
                with make_sessions(engine)() as session:
                    count = session.scalar(
                        select(func.count()).select_from(Poll).join(Account).where(Account.label == account)
                    )
                if count:
                    return
            except Exception:  # noqa: BLE001 - the schema may not exist yet while the service migrates
                pass
            time.sleep(0.2)
        raise AssertionError(f"no poll for {account!r} within {DEADLINE_SECONDS}s")
    finally:
        engine.dispose()


def run_once(env: dict[str, str], cwd: Path, command: str = "poll") -> subprocess.CompletedProcess[str]:
    args = [*RECORDER, command] + (["--interval", "0.5"] if command == "run" else [])
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=DEADLINE_SECONDS)


def test_second_sqlite_writer_is_refused_however_it_spells_the_database(simulator, tmp_path):
    data = tmp_path / "data"
    for folder in (data, tmp_path / "one", tmp_path / "two", tmp_path / "three"):
        folder.mkdir()
    (tmp_path / "link.db").symlink_to(data / "x.db")
    (tmp_path / "linked-folder").symlink_to(data)
    absolute = f"sqlite:///{data / 'x.db'}"
    first = start(base_env(simulator, absolute, tmp_path / "spool-1"), cwd=tmp_path / "one")
    try:
        wait_for_a_poll(absolute, "default", first)
        spellings = [
            ("sqlite:///x.db", data),  # relative, from the database's folder
            ("sqlite:///data/./x.db", tmp_path),  # relative with a detour
            ("sqlite:///../data/x.db", tmp_path / "two"),  # relative, from a sibling folder
            (f"sqlite:///{tmp_path / 'link.db'}", tmp_path / "three"),  # a symlink to the file
            (f"sqlite:///{tmp_path / 'linked-folder' / 'x.db'}", tmp_path),  # a symlinked folder
        ]
        for index, (url, cwd) in enumerate(spellings):
            env = base_env(simulator, url, tmp_path / f"other-spool-{index}")
            for command in ("poll", "run"):
                result = run_once(env, cwd, command)
                assert result.returncode == 2, (url, command, result.stderr)
                lines = result.stderr.strip().splitlines()
                assert len(lines) == 1, lines
                assert f"another recorder (pid {first.pid}) is already recording account 'default'" in lines[0]
    finally:
        stderr = stop(first)
    assert first.returncode == 0, stderr
    # Once it is gone, any spelling may write.
    assert run_once(base_env(simulator, "sqlite:///x.db", tmp_path / "spool-2"), data).returncode == 0


def test_different_labels_never_share_a_lock_and_any_label_works(simulator, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    first = start(base_env(simulator, url, tmp_path / "spool", account="a/b"), cwd=tmp_path)
    try:
        wait_for_a_poll(url, "a/b", first)
        for label in ("a_b", "a%2Fb", "..", ".", "é/𝄞", "𝄞" * 64):
            result = run_once(base_env(simulator, url, tmp_path / "spool", account=label), tmp_path)
            assert result.returncode == 0, (label, result.stderr)
    finally:
        stderr = stop(first)
    assert first.returncode == 0, stderr


def test_second_postgres_writer_is_refused_under_another_spelling_of_the_url(simulator, postgres_db_url, tmp_path):
    name = postgres_db_url.rsplit("/", 1)[1]
    first = start(base_env(simulator, postgres_db_url, tmp_path / "spool-1"), cwd=tmp_path)
    try:
        wait_for_a_poll(postgres_db_url, "default", first)
        other_spelling = f"postgresql://postgres@localhost:5432/{name}"
        result = run_once(base_env(simulator, other_spelling, tmp_path / "spool-2"), tmp_path)
        assert result.returncode == 2 and "already recording account 'default'" in result.stderr
    finally:
        stderr = stop(first)
    assert first.returncode == 0, stderr


def test_a_copy_of_the_database_cannot_share_the_running_writers_spool(simulator, tmp_path):
    """A copied SQLite file keeps its database id, hence its spool folder: the folder is held too."""
    import sqlite3

    original = f"sqlite:///{tmp_path / 'x.db'}"
    first = start(base_env(simulator, original, tmp_path / "spool"), cwd=tmp_path)
    try:
        wait_for_a_poll(original, "default", first)
        # The backup API copies what the -wal file holds too, as a careful `cp` would.
        source, target = sqlite3.connect(tmp_path / "x.db"), sqlite3.connect(tmp_path / "copy.db")
        source.backup(target)
        source.close()
        target.close()
        copy = f"sqlite:///{tmp_path / 'copy.db'}"
        shared = run_once(base_env(simulator, copy, tmp_path / "spool"), tmp_path)
        assert shared.returncode == 2 and f"another recorder (pid {first.pid}) uses the spool folder" in shared.stderr
        apart = run_once(base_env(simulator, copy, tmp_path / "other-spool"), tmp_path)
        assert apart.returncode == 0, apart.stderr
    finally:
        stderr = stop(first)
    assert first.returncode == 0, stderr
