"""The spool never blocks recording: corrupt files are set aside, a full or read-only spool loses
one poll with one ERROR line and no temporary file, and entries never cross databases or labels."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from recorder.db import make_engine, make_sessions
from recorder.errors import ExchangeUnavailable, SpoolError, StorageError
from recorder.exchange import RETRY_ATTEMPTS
from recorder.identity import database_id
from recorder.models import Poll
from recorder.schema import upgrade_to_head
from recorder.spool import Spool, SpooledPoll, label_filename, legacy_spool_dir_for, spool_dir_for
from tests.conftest import SIM_KEY
from tests.integration.test_outages import database_down, make_recorder, outage_engine  # noqa: F401


def stored_polls(engine) -> list[Poll]:
    with make_sessions(engine)() as session:
        return list(session.scalars(select(Poll).order_by(Poll.finished_at)))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


@contextmanager
def tmpfs(path: Path, size: str = "64k"):
    """A real tiny file system at `path` (tests run as root, as CI does)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path) -> Path:
    """Use up every byte of the file system holding `folder`."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(descriptor, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(descriptor)
    return filler


def test_full_spool_and_database_down_lose_each_poll_in_one_error_line_then_recover(
    simulator, db_url, outage_engine, tmp_path, caplog
):
    with tmpfs(tmp_path / "small") as small:
        recorder = make_recorder(simulator, outage_engine, small / "spool")
        filler = fill(small)
        with database_down(db_url):
            for exchange_fails in (False, True):
                if exchange_fails:
                    simulator.inject("http-503", times=RETRY_ATTEMPTS)
                caplog.clear()
                with caplog.at_level(logging.INFO, logger="recorder"):
                    with pytest.raises(ExchangeUnavailable if exchange_fails else SpoolError):
                        recorder.poll_once()
                errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
                assert len(errors) == 1, errors
                assert errors[0].startswith("poll lost: uid=") and "finished_at=2" in errors[0]
                assert "account='default'" in errors[0] and "database: " in errors[0]
                assert "spool: the spool cannot keep the poll: No space left on device" in errors[0]
                assert leftovers(small) == []
        filler.unlink()
        simulator.step(SIM_KEY)
        recorder.poll_once()  # the database is back: stored at once, nothing to catch up
        assert [p.outcome for p in stored_polls(outage_engine)] == ["ok"]
        with database_down(db_url):
            with pytest.raises(StorageError, match="kept in"):
                recorder.poll_once()  # and the spool works again
        recorder.poll_once()
        assert recorder.spool.pending() == [] and leftovers(small) == []
        assert [p.outcome for p in stored_polls(outage_engine)] == ["ok", "ok", "ok"]
        recorder.client.close()


def test_read_only_spool_and_database_down_lose_the_poll_then_recover(simulator, db_url, outage_engine, tmp_path, caplog):
    with tmpfs(tmp_path / "ro") as mounted:
        recorder = make_recorder(simulator, outage_engine, mounted / "spool")
        subprocess.run(["mount", "-o", "remount,ro", str(mounted)], check=True)
        with database_down(db_url), caplog.at_level(logging.ERROR, logger="recorder"):
            with pytest.raises(SpoolError, match="Read-only file system"):
                recorder.poll_once()
        assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1
        recorder.poll_once()  # the database is back; the spool is still read-only and not needed
        subprocess.run(["mount", "-o", "remount,rw", str(mounted)], check=True)
        assert [p.outcome for p in stored_polls(outage_engine)] == ["ok"]
        assert leftovers(mounted) == []
        recorder.client.close()


def write_variant(spool: Spool, entry: SpooledPoll, name: str, change) -> None:
    """A copy of `entry`'s spool file under `name`, its JSON changed by `change` (a function or bytes)."""
    path = spool.put(entry)
    data = json.loads(path.read_bytes())
    path.unlink()
    if callable(change):
        change(data)
        payload = json.dumps(data).encode()
    else:
        payload = change
    (spool.directory / name).write_bytes(payload)


def test_corrupt_or_foreign_spool_files_are_set_aside_and_recording_goes_on(simulator, engine, tmp_path, caplog):
    recorder = make_recorder(simulator, engine, tmp_path / "spool")
    spool = recorder.spool
    fetched = recorder.client.fetch_balances()
    from recorder.service import utcnow

    now = utcnow()
    good = SpooledPoll("good", "default", simulator.base_url, "/fapi/v2/balance", now, now, fetched)
    variants = {
        "01-truncated.json": None,
        "02-not-json.json": b"\x00\xff\xfe garbage",
        "03-a-list.json": b"[]",
        "04-wrong-type.json": lambda d: d["fetched"].update(used_weight="15"),
        "05-nan-amount.json": lambda d: d["fetched"]["assets"][0].update(balance="NaN"),
        "06-huge-amount.json": lambda d: d["fetched"]["assets"][0].update(balance="1E+99999999"),
        "07-naive-time.json": lambda d: d.update(finished_at="2026-01-01T00:00:00"),
        "08-missing-field.json": lambda d: d.pop("uid"),
        "09-another-database.json": lambda d: d.update(database_id="00000000-0000-0000-0000-000000000000"),
        "10-another-account.json": lambda d: d.update(account="a_b"),
        "11-no-database-id.json": lambda d: d.pop("database_id"),
    }
    for name, change in variants.items():
        if change is None:
            path = spool.put(good)
            path.rename(spool.directory / name)
            (spool.directory / name).write_bytes((spool.directory / name).read_bytes()[:40])
        else:
            write_variant(spool, good, name, change)
    (spool.directory / "12-a-directory.json").mkdir()
    spool.put(good)
    with caplog.at_level(logging.ERROR, logger="recorder"):
        recorder.poll_once()
    assert spool.pending() == []
    corrupt = sorted(p.name for p in (spool.directory / "corrupt").iterdir())
    rejected = sorted(p.name for p in (spool.directory / "rejected").iterdir())
    assert corrupt == [n for n in sorted(variants) if int(n[:2]) <= 8] + ["12-a-directory.json"]
    assert rejected == ["09-another-database.json", "10-another-account.json", "11-no-database-id.json"]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("spool entry")]
    assert len(lines) == 12  # one line per file set aside
    assert [p.outcome for p in stored_polls(engine)] == ["ok", "ok"]  # the good entry, then the live poll
    recorder.client.close()


def test_entry_that_cannot_even_be_moved_aside_is_skipped(simulator, engine, tmp_path, caplog):
    recorder = make_recorder(simulator, engine, tmp_path / "spool")
    (recorder.spool.directory / "corrupt").write_text("a file where the folder should be")
    (recorder.spool.directory / "0-bad.json").write_bytes(b"{")
    with caplog.at_level(logging.ERROR, logger="recorder"):
        recorder.poll_once()
        recorder.poll_once()
    assert len([r for r in caplog.records if "cannot be moved to corrupt/" in r.getMessage()]) == 1
    assert [p.outcome for p in stored_polls(engine)] == ["ok", "ok"]
    recorder.client.close()


def test_stale_temporary_files_are_removed_at_start(tmp_path):
    folder = tmp_path / "spool"
    folder.mkdir()
    (folder / ".00000000000000000001-crashed.json.tmp").write_bytes(b'{"half')
    Spool(folder, database_id="id", account="default")
    assert list(folder.iterdir()) == []


LABELS = ["a/b", "a_b", "a%2Fb", ".", "..", "A", "a", "é", "e\u0301", " x", "x\x00y", "%", "~", "𝄞" * 64, "𝄞" * 63 + "x"]


def test_every_label_gets_its_own_valid_folder(tmp_path):
    names = [label_filename(label) for label in LABELS]
    assert len(set(names)) == len(LABELS)
    for label, name in zip(LABELS, names, strict=True):
        assert len(name.encode()) < 255 and "/" not in name and name not in (".", "..")
        folder = spool_dir_for(str(tmp_path), "db-id", label)
        folder.mkdir(parents=True)
        assert folder.parent == tmp_path / "db-id"
    assert len(list((tmp_path / "db-id").iterdir())) == len(LABELS)


def test_two_databases_sharing_a_spool_folder_never_exchange_entries(simulator, tmp_path):
    engines = [make_engine(f"sqlite:///{tmp_path / name}") for name in ("a.db", "b.db")]
    for engine in engines:
        upgrade_to_head(engine)
    ids = [database_id(engine) for engine in engines]
    assert ids[0] != ids[1]
    folders = [spool_dir_for(str(tmp_path / "spool"), identity, "default") for identity in ids]
    assert folders[0] != folders[1]
    first = make_recorder(simulator, engines[0], folders[0])
    fetched = first.client.fetch_balances()
    from recorder.service import utcnow

    now = utcnow()
    path = first.spool.put(SpooledPoll("for-a", "default", simulator.base_url, "/fapi/v2/balance", now, now, fetched))
    folders[1].mkdir(parents=True)
    os.replace(path, folders[1] / path.name)  # a careless copy into the other database's folder
    second = make_recorder(simulator, engines[1], folders[1])
    assert second.replay_spool() == 0
    assert (folders[1] / "rejected" / path.name).exists()
    assert stored_polls(engines[1]) == []
    for recorder in (first, second):
        recorder.client.close()
    for engine in engines:
        engine.dispose()


def test_entries_in_the_old_url_keyed_folder_are_adopted(simulator, tmp_path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = make_engine(url)
    upgrade_to_head(engine)
    base = str(tmp_path / "spool")
    recorder = make_recorder(simulator, engine, spool_dir_for(base, database_id(engine), "a/b"))
    recorder.account = recorder.spool.account = "a/b"
    legacy = legacy_spool_dir_for(base, url, "a/b")
    assert legacy == legacy_spool_dir_for(base, url, "a_b")  # the old layout mixed these two labels
    legacy.mkdir(parents=True)
    fetched = recorder.client.fetch_balances()
    from recorder.service import utcnow

    now = utcnow()
    for label in ("a/b", "a_b"):
        path = recorder.spool.put(SpooledPoll(label, label, simulator.base_url, "/fapi/v2/balance", now, now, fetched))
        data = json.loads(path.read_bytes())
        del data["database_id"]  # the old format had none
        (legacy / path.name).write_text(json.dumps(data))
        path.unlink()
    assert recorder.spool.adopt(legacy) == 1
    assert [p.name.split("-", 1)[1] for p in legacy.glob("*.json")] == ["a_b.json"]  # left for its own label
    assert recorder.replay_spool() == 1
    assert len(stored_polls(engine)) == 1
    recorder.client.close()
    engine.dispose()
