"""The statement with --include-derived: backfilled balances shown as their own source, never blended.

Uses test_ledger_backfill's `recorded` account (a 3-week USDT ledger, one observed poll now,
the derived timeline walked back from it), on both backends.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from recorder.reports.statement import (
    DERIVED_ROLL_FORWARD_NOTE,
    build_statement,
    write_statement,
)
from tests.integration.test_ledger_backfill import OPENING, at_ms, recorded, run_backfill  # noqa: F401 (fixture)

UTC = timezone.utc
GENERATED = datetime(2030, 1, 1, tzinfo=UTC)


def derived_balance(entries, at: datetime) -> Decimal:
    """What the exchange's wallet held just before `at`: the opening plus every entry booked before it."""
    return OPENING + sum((e["income"] for e in entries if at_ms(e["time"]) < at), Decimal(0))


def period(recorded):
    entries = recorded["entries"]
    # From the middle of the ledger (not on an entry) to just after the one observed poll.
    since = at_ms(entries[20]["time"]) + timedelta(minutes=1)
    return since, recorded["now"] + timedelta(minutes=1)


def statement_of(sessions, since, until, include_derived):
    with sessions() as session:
        return build_statement(session, since, until, ["main"], UTC, generated_at=GENERATED,
                               include_derived=include_derived)


def backfilled_usdt(recorded, sessions):
    """After the backfill, the derived statement's USDT over the period, and the period's start."""
    run_backfill(sessions, recorded["now"])
    since, until = period(recorded)
    (account,) = statement_of(sessions, since, until, True).accounts
    (usdt,) = account.assets
    return usdt, since


def rendered(statement) -> dict[str, str]:
    out = {}
    for fmt in ("table", "csv", "json"):
        stream = io.StringIO()
        write_statement(statement, fmt, stream, UTC)
        out[fmt] = stream.getvalue()
    return out


def test_without_the_option_the_statement_is_the_same_bytes_as_before_the_backfill(recorded, sessions):
    since, until = period(recorded)
    before = rendered(statement_of(sessions, since, until, False))
    run_backfill(sessions, recorded["now"])
    assert rendered(statement_of(sessions, since, until, False)) == before
    assert "before_first_poll" in before["table"] and "derived" not in before["table"]


def test_opening_and_days_before_the_first_observation_come_from_the_derived_balances(recorded, sessions):
    usdt, since = backfilled_usdt(recorded, sessions)
    entries = recorded["entries"]
    assert usdt.opening.status == "derived"
    assert usdt.opening.balance == derived_balance(entries, since)
    # The derived balance in force at `since` holds from the last entry before it.
    assert usdt.opening.observed_at == max(at_ms(e["time"]) for e in entries if at_ms(e["time"]) < since)
    assert usdt.opening.unrealized_pnl is None and usdt.opening.available_balance is None
    assert usdt.closing.status == "ok" and usdt.closing.balance == recorded["states"][-1][1]
    assert usdt.derived.start == at_ms(entries[0]["time"]) and usdt.derived.rows == len(entries)
    first_poll = recorded["now"]
    for day in usdt.days:
        assert day.open == derived_balance(entries, day.start)
        if day.end <= first_poll:
            assert day.source == "derived" and day.close == derived_balance(entries, day.end)
        else:
            assert day.source == "derived-opening" and day.close == recorded["states"][-1][1]
    assert [d.source for d in usdt.days].count("derived-opening") == 1


def test_the_derived_span_has_its_own_roll_forward_with_residual_zero_by_construction(recorded, sessions):
    usdt, since = backfilled_usdt(recorded, sessions)
    entries = recorded["entries"]
    rolled = usdt.derived_roll_forward
    inside = [e for e in entries if at_ms(e["time"]) >= since]
    assert rolled.opening == derived_balance(entries, since)
    assert rolled.closing == recorded["states"][-1][1] and rolled.closing_observed_at == usdt.derived.anchor_observed_at
    assert rolled.by_type == {
        kind: sum((e["income"] for e in inside if e["type"] == kind), Decimal(0)) for kind in sorted({e["type"] for e in inside})
    }
    assert rolled.groups["transfers"] == sum((e["income"] for e in inside if e["type"] == "TRANSFER"), Decimal(0))
    assert rolled.residual == 0 and rolled.expected_closing == rolled.closing
    # The observed roll-forward starts at the first observation: nothing observed to reconcile before it.
    assert usdt.roll_forward.opening_observed_at == recorded["now"] and usdt.roll_forward.residual == 0


def test_every_format_labels_the_derived_rows(recorded, sessions):
    run_backfill(sessions, recorded["now"])
    since, until = period(recorded)
    out = rendered(statement_of(sessions, since, until, True))
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert [r["row"] for r in rows[:2]] == ["period", "derived_span"]
    assert rows[0]["opening_status"] == "derived" and rows[0]["source"] == "derived-opening"
    assert rows[1]["source"] == "derived" and Decimal(rows[1]["rf_residual"]) == 0
    days = [r for r in rows if r["row"] == "day"]
    assert {r["source"] for r in days[:-1]} == {"derived"} and days[-1]["source"] == "derived-opening"
    document = json.loads(out["json"])
    (asset,) = document["accounts"][0]["assets"]
    assert asset["opening"]["status"] == "derived" and asset["opening"]["source"] == "derived"
    assert asset["closing"]["source"] == "observed"
    assert asset["derived"]["roll_forward"]["verified"] is False
    assert asset["derived"]["roll_forward"]["note"] == DERIVED_ROLL_FORWARD_NOTE
    assert {d["source"] for d in asset["days"]} == {"derived", "derived-opening"}
    table = out["table"]
    assert "derived from the income ledger (recorder backfill), not observed" in table
    assert f"roll-forward over the derived span ({DERIVED_ROLL_FORWARD_NOTE})" in table
    assert "before_first_poll" not in table


def test_a_period_after_the_first_observation_shows_no_derived_data(recorded, sessions):
    run_backfill(sessions, recorded["now"])
    since = recorded["now"] + timedelta(seconds=1)
    (account,) = statement_of(sessions, since, since + timedelta(hours=1), True).accounts
    (usdt,) = account.assets
    assert usdt.derived is None and usdt.derived_roll_forward is None
    assert usdt.opening.status == "ok" and {d.source for d in usdt.days} == {"observed"}
