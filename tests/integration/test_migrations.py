"""Alembic upgrade/check/downgrade on both databases, and migrations shipping in the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from sqlalchemy import inspect, text

from recorder.db import make_engine
from recorder.schema import head_revision, upgrade_to_head

ROOT = Path(__file__).resolve().parents[2]


def alembic(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RECORDER_DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def tables(db_url: str) -> set[str]:
    engine = make_engine(db_url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_alembic_upgrade_check_downgrade_round_trip(db_url):
    for step in (("upgrade", "head"), ("check",), ("downgrade", "base"), ("upgrade", "head"), ("check",)):
        result = alembic(*step, db_url=db_url)
        assert result.returncode == 0, f"alembic {' '.join(step)}: {result.stderr}"
        if step == ("downgrade", "base"):
            assert tables(db_url) == {"alembic_version"}
    assert {"accounts", "polls", "balances", "balance_heads"} <= tables(db_url)
    current = alembic("current", db_url=db_url)
    assert head_revision() in current.stdout


def test_wheel_ships_migrations_and_migrates_from_any_directory(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("recorder-*.whl")
    unpacked = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(unpacked)
    assert "recorder/_migrations/env.py" in names
    assert any(name.startswith("recorder/_migrations/versions/0001_") for name in names)
    # Run the unpacked wheel (not the checkout) from an unrelated directory.
    database = tmp_path / "fresh.db"
    env = {**os.environ, "PYTHONPATH": str(unpacked), "RECORDER_DATABASE_URL": f"sqlite:///{database}"}
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", "import recorder, sys; print(recorder.__file__); from recorder.cli import main; "
         "sys.argv=['recorder','migrate']; main()"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(str(unpacked))
    assert "upgraded" in result.stdout
    assert {"accounts", "polls", "balances"} <= tables(f"sqlite:///{database}")


def test_database_from_a_newer_recorder_is_refused_in_one_line(db_url):
    engine = make_engine(db_url)
    try:
        upgrade_to_head(engine)
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    env = {**os.environ, "RECORDER_DATABASE_URL": db_url}
    for command in (["history"], ["migrate"]):
        result = subprocess.run(
            [sys.executable, "-m", "recorder", *command], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1
        newer = f"the database's schema (9999) is newer than this recorder's ({head_revision()}): upgrade recorder"
        assert result.stderr.strip().splitlines() == [f"error: StorageError: {newer}"]
    assert tables(db_url) >= {"polls", "balances"}
