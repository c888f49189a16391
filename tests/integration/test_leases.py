"""LeaseBook on PostgreSQL: a handover waits for the account's write under way before the next holder can write."""

from __future__ import annotations

import threading

from sqlalchemy import text

from recorder.db import make_engine
from recorder.locks import advisory_key
from recorder.scheduling import LeaseBook
from recorder.schema import upgrade_to_head
from tests.e2e.test_cli_recording import wait_until


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
