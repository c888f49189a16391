"""LeaseBook on PostgreSQL: a handover waits for the account's write under way before the next holder can write."""

from __future__ import annotations

import logging
import threading
from functools import partial

import pytest
from sqlalchemy import text

from recorder.db import make_engine
from recorder.errors import HandedOver
from recorder.locks import advisory_key
from recorder.scheduling import LeaseBook
from recorder.schema import upgrade_to_head
from tests.e2e.test_cli_recording import wait_until
from tests.integration.test_outages import make_recorder


def writer_lock_free(engine, label: str) -> bool:
    """Whether another session could take `label`'s writer lock now (taken and let go again at once)."""
    with engine.connect() as connection:
        taken = connection.execute(text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(label)}).scalar()
        if taken:
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": advisory_key(label)})
        return bool(taken)


def lease_holder(engine, label: str) -> str | None:
    with engine.connect() as connection:
        return connection.execute(text("SELECT holder FROM account_leases WHERE account = :a"), {"a": label}).scalar()


def test_lease_handover_waits_for_the_write_under_way_before_dropping_the_writer_lock(postgres_db_url):
    engine = make_engine(postgres_db_url)
    upgrade_to_head(engine)
    first = LeaseBook(engine, ["alpha", "beta"], ttl=60)
    second = LeaseBook(engine, ["alpha", "beta"], ttl=60)
    try:
        assert first.refresh() == ({"alpha", "beta"}, set())
        with first.holding("beta") as held:
            assert held
            # A second process joins: the first one's next refresh hands "beta" over (ceil(2 / 2) each).
            assert second.refresh() == (set(), set())
            handover = threading.Thread(target=first.refresh)
            handover.start()
            wait_until(lambda: lease_holder(engine, "beta") is None, "the lease of beta given back in the database")
            # Given back, but a write for it may be under way here: its writer lock stays this process's.
            assert not writer_lock_free(engine, "beta")
            assert handover.is_alive()
        handover.join(60)
        assert not handover.is_alive()
        assert first.held == {"alpha"} and writer_lock_free(engine, "beta")
        with first.holding("beta") as held:
            assert not held
        with first.holding("alpha") as held:
            assert held
    finally:
        first.release_all()
        second.release_all()
        engine.dispose()


def polls_stored(engine) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT count(*) FROM polls")).scalar()


def test_a_poll_finishing_after_its_account_was_handed_over_stores_nothing(postgres_db_url, simulator, tmp_path,
                                                                         caplog):
    engine = make_engine(postgres_db_url)
    upgrade_to_head(engine)
    first = LeaseBook(engine, ["alpha", "default"], ttl=60)
    second = LeaseBook(engine, ["alpha", "default"], ttl=60)
    recorder = make_recorder(simulator, engine, tmp_path / "spool")
    observed = []
    recorder.observer = lambda *figures: observed.append(figures)
    recorder.hold = partial(first.holding, "default")
    try:
        first.refresh()
        recorder.poll_once()
        assert polls_stored(engine) == 1 and len(observed) == 1
        # Another recorder joins and this one hands "default" over (ceil(2 / 2) accounts each).
        second.refresh()
        first.refresh()
        assert "default" not in first.held
        simulator.step()  # a changed balance: a poll stored now would write rows
        with caplog.at_level(logging.INFO, logger="recorder.service"):
            with pytest.raises(HandedOver):
                recorder.poll_once()
        assert polls_stored(engine) == 1
        assert not list((tmp_path / "spool").glob("**/*.json"))  # not spooled either
        assert len(observed) == 1  # the new holder counts its polls, not this process
        assert any("poll dropped account=default" in r.getMessage() for r in caplog.records)
    finally:
        recorder.client.close()
        recorder.close()
        first.release_all()
        second.release_all()
        engine.dispose()
