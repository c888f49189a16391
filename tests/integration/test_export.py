"""`recorder export` on both backends: every format reads back to exactly what the query module returns.

The data is the scripted history of tests/integration/test_queries.py (its docstring has the
table). The command runs in-process through click's runner against a real database file or
PostgreSQL database; the files are read back with csv, json and pyarrow.
"""

from __future__ import annotations

import csv
import json
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import GeneratorType

import pytest
from click.testing import CliRunner

from recorder import queries
from recorder.cli import cli
from recorder.reports.export import kind_of
from recorder.reports.render import CHANGE_COLUMNS, change_record
from tests.integration.test_queries import SCRIPT, UPDATE, asset, at, record

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FORMATS = ("csv", "jsonl", "parquet")


@pytest.fixture
def scripted(sessions):
    """The scripted account 'default' and a second account 'other'."""
    for minute, outcome in SCRIPT:
        record(sessions, at(minute), outcome)
    record(sessions, at(0, 30), (asset("USDT", "5.00000000"),), label="other")
    record(sessions, at(9, 30), (asset("USDT", "6.00000000"),), label="other")
    return sessions


def export(db_url: str, *args: str, out: Path | None = None, expect: int = 0) -> str:
    """Run `recorder export` in-process; returns stdout (or the error output when it fails)."""
    command = ["export", "--database-url", db_url, *args]
    if out is not None:
        command += ["--out", str(out)]
    result = CliRunner().invoke(cli, command, catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


def read_back(path: Path, fmt: str) -> list[dict]:
    """The rows of an exported file as dicts of Python values, Decimal and datetime parsed from text."""
    if fmt == "parquet":
        table = pq.read_table(path)
        return table.to_pylist()
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8") as handle:
            return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(handle)]
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def typed(value, kind: str):
    """A text cell as the value the query module returns."""
    if value is None or not isinstance(value, str):
        return value
    if kind == "decimal":
        return Decimal(value)
    if kind == "time":
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    if kind == "bool":
        return {"true": True, "false": False}[value]
    return value


def state_row(account: str, state) -> dict:
    return {
        "account": account, "asset": state.asset, "observed_at": state.observed_at, "present": state.present,
        "balance": state.balance, "cross_wallet_balance": state.cross_wallet_balance, "cross_un_pnl": state.cross_un_pnl,
        "available_balance": state.available_balance, "max_withdraw_amount": state.max_withdraw_amount,
        "margin_available": state.margin_available, "update_time": state.update_time,
    }


HISTORY_KINDS = {"observed_at": "time", "update_time": "time", "present": "bool", "margin_available": "bool",
                 **{name: "decimal" for name in ("balance", "cross_wallet_balance", "cross_un_pnl",
                                                  "available_balance", "max_withdraw_amount")}}


def parsed(rows: list[dict], kinds: dict[str, str]) -> list[dict]:
    return [{name: typed(value, kinds.get(name, "text")) for name, value in row.items()} for row in rows]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_history_equals_the_query_module_in_every_format(scripted, db_url, tmp_path, fmt):
    out = tmp_path / f"history.{fmt}"
    export(db_url, "--what", "history", "--account", "default", "--account", "other", "--format", fmt, out=out)
    with scripted() as session:
        expected = [state_row("default", s) for s in queries.history(session, "default")]
        expected += [state_row("other", s) for s in queries.history(session, "other")]
    rows = parsed(read_back(out, fmt), HISTORY_KINDS)
    assert rows == expected
    assert len(rows) == 8 and {row["account"] for row in rows} == {"default", "other"}
    # Equal as numbers is not enough: the digits are the ones stored (100.00000000, not 100).
    text_rows = read_back(out, fmt) if fmt != "parquet" else None
    if text_rows is not None:
        assert text_rows[1]["balance"] == "100.00000000" and text_rows[2]["cross_un_pnl"] == "-0.25000000"
        assert text_rows[0]["update_time"] == "2025-12-31T23:00:00.123Z"


def test_export_parquet_columns_are_exact_decimals_and_utc_times_never_floats(scripted, db_url, tmp_path):
    out = tmp_path / "history.parquet"
    export(db_url, "--what", "changes", "--format", "parquet", out=out)
    schema = pq.read_schema(out)
    types = {field.name: field.type for field in schema}
    assert types["balance"] == pa.decimal128(38, 18) and types["delta_cross_un_pnl"] == pa.decimal128(38, 18)
    assert types["observed_at"] == pa.timestamp("us", tz="UTC")
    assert not [name for name, kind in types.items() if pa.types.is_floating(kind)]


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_changes_equals_the_query_module(scripted, db_url, tmp_path, fmt):
    out = tmp_path / f"changes.{fmt}"
    export(db_url, "--what", "changes", "--since", at(1).isoformat(), "--format", fmt, out=out)
    with scripted() as session:
        expected = [change_record(event, "default") for event in queries.changes(session, "default", since=at(1))]
    kinds = {name: kind_of(name) for name in CHANGE_COLUMNS}
    rows = parsed(read_back(out, fmt), kinds)
    assert rows == expected
    # The USDT drop at 00:02 against its value before --since, exactly.
    assert rows[0]["delta_balance"] == Decimal("-0.50000000") and rows[0]["previous_balance"] == Decimal("100")


def test_export_balances_daily_polls_and_gaps_hold_the_hand_computed_values(scripted, db_url, tmp_path):
    export(db_url, "--what", "balances", "--at", at(8, 30).isoformat(), out=tmp_path / "b.csv")
    balances = read_back(tmp_path / "b.csv", "csv")
    assert [(r["asset"], r["status"], r["balance"], r["stale_seconds"]) for r in balances] == [
        ("BNB", "vanished", None, "30.000000"), ("BTC", "ok", "0.00100000", "30.000000"), ("USDT", "ok", "120.00000000", "30.000000"),
    ]
    export(db_url, "--what", "daily", "--format", "jsonl", out=tmp_path / "d.jsonl")
    daily = {row["asset"]: row for row in read_back(tmp_path / "d.jsonl", "jsonl")}
    usdt = daily["USDT"]
    assert (usdt["day"], usdt["open"], usdt["close"], usdt["change"], usdt["high"], usdt["low"], usdt["changes"]) == (
        "2026-01-01", None, "120.00000000", None, "120.00000000", "99.50000000", 3)
    # The 00:02 -> 00:07 gap (300 s) lies inside the day: not fully observed.
    assert (usdt["gap_seconds"], usdt["fully_observed"], usdt["day_end"]) == ("300.000000", False, "2026-01-01T00:09:00.000000Z")
    assert (daily["BNB"]["open"], daily["BNB"]["close"], daily["BNB"]["changes"]) == (None, None, 2)
    assert (daily["BTC"]["close"], daily["BTC"]["high"]) == ("0.00100000", "0.00100000")
    export(db_url, "--what", "polls", out=tmp_path / "p.csv")
    polls = read_back(tmp_path / "p.csv", "csv")
    assert [row["outcome"] for row in polls] == ["ok"] * 3 + ["failed"] * 4 + ["ok"] * 3
    assert polls[5]["error_class"] == "RateLimited" and polls[0]["finished_at"] == "2026-01-01T00:00:00.000000Z"
    export(db_url, "--what", "gaps", "--since", at(0).isoformat(), "--until", at(9).isoformat(), out=tmp_path / "g.csv")
    gaps = read_back(tmp_path / "g.csv", "csv")
    assert [(g["start"], g["end"], g["seconds"], g["failed_polls"]) for g in gaps] == [
        ("2026-01-01T00:02:00.000000Z", "2026-01-01T00:07:00.000000Z", "300.000000", "4")]


def test_daily_days_follow_the_time_zone_given(scripted, db_url, tmp_path):
    export(db_url, "--what", "daily", "--tz", "+05:00", "--since", at(-60 * 24).isoformat(), "--until", at(10).isoformat(),
           "--asset", "USDT", "--format", "jsonl", out=tmp_path / "d.jsonl")
    rows = read_back(tmp_path / "d.jsonl", "jsonl")
    # 2026-01-01T00:00Z is 05:00 on 1 January at +05:00: that day starts at 2025-12-31T19:00Z.
    assert [(r["day"], r["day_start"]) for r in rows] == [("2026-01-01", "2025-12-31T19:00:00.000000Z")]


def test_export_refuses_an_existing_file_without_force_and_replaces_it_with_force(scripted, db_url, tmp_path):
    out = tmp_path / "history.csv"
    out.write_text("keep me\n")
    message = export(db_url, "--what", "history", out=out, expect=2)
    assert "exists" in message and "--force" in message
    assert out.read_text() == "keep me\n"
    export(db_url, "--what", "history", "--force", out=out)
    assert out.read_text().startswith("account,asset,observed_at")
    assert len(read_back(out, "csv")) == 6
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_export_to_stdout_and_refusals(scripted, db_url, tmp_path):
    lines = export(db_url, "--what", "history", "--asset", "usdt", "--format", "jsonl").splitlines()
    assert [json.loads(line)["balance"] for line in lines] == ["100.00000000", "99.50000000", "120.00000000"]
    assert "needs --out" in export(db_url, "--what", "history", "--format", "parquet", expect=2)
    assert "--incremental works with" in export(db_url, "--what", "polls", "--incremental", "n", expect=2)
    assert "no asset XYZ" in export(db_url, "--what", "history", "--asset", "XYZ", expect=2)


def test_incremental_exports_are_disjoint_and_consecutive_with_a_late_row(scripted, db_url, tmp_path):
    """Rows recorded between two runs, one observed before rows already exported, land in the second file once."""
    first, second, third = (tmp_path / f"{n}.csv" for n in ("first", "second", "third"))
    export(db_url, "--what", "history", "--incremental", "nightly", out=first)
    record(scripted, at(10), (asset("USDT", "121.00000000"), asset("BTC", "0.00100000")))
    # Replayed from the spool: observed at 00:05:30, stored after every row the first file holds.
    record(scripted, at(5, 30), (asset("USDT", "77.00000000"), asset("BTC", "0.00100000")))
    export(db_url, "--what", "history", "--incremental", "nightly", out=second)
    export(db_url, "--what", "history", "--incremental", "nightly", out=third)
    one, two = read_back(first, "csv"), read_back(second, "csv")
    assert len(one) == 6
    assert sorted((r["observed_at"], r["asset"], r["balance"]) for r in two) == [
        ("2026-01-01T00:05:30.000000Z", "USDT", "77.00000000"),
        ("2026-01-01T00:10:00.000000Z", "USDT", "121.00000000"),
    ]
    key = lambda r: (r["observed_at"], r["asset"])  # noqa: E731
    with scripted() as session:
        everything = {(s.observed_at, s.asset) for s in queries.history(session, "default")}
    assert {key(r) for r in one} | {key(r) for r in two} == {
        (t.isoformat(timespec="microseconds").replace("+00:00", "Z"), a) for t, a in everything}
    assert not {key(r) for r in one} & {key(r) for r in two}
    assert read_back(third, "csv") == [] and third.read_text() != ""
    assert "use another NAME" in export(db_url, "--what", "changes", "--incremental", "nightly", expect=2)


def test_incremental_changes_carry_the_previous_state_at_export_time(scripted, db_url, tmp_path):
    export(db_url, "--what", "changes", "--incremental", "c", out=tmp_path / "1.csv")
    record(scripted, at(10), (asset("USDT", "121.00000000"), asset("BTC", "0.00100000")))
    export(db_url, "--what", "changes", "--incremental", "c", "--format", "jsonl", out=tmp_path / "2.jsonl")
    (row,) = read_back(tmp_path / "2.jsonl", "jsonl")
    assert (row["kind"], row["previous_balance"], row["balance"], row["delta_balance"]) == (
        "changed", "120.00000000", "121.00000000", "1.00000000")


def test_query_functions_stream_iterators(scripted):
    with scripted() as session:
        history = queries.iter_history(session, "default")
        changes = queries.iter_changes(session, "default")
        series = queries.iter_series(session, "default", "USDT", "balance", at(0), at(10), every="minute")
        assert all(isinstance(it, GeneratorType) for it in (history, changes, series))
        assert [s.balance for s in history][:2] == [Decimal("0.50000000"), Decimal("100.00000000")]
        assert len(list(changes)) == 6 and len(list(series)) == 10


def test_update_time_keeps_milliseconds(scripted, db_url, tmp_path):
    export(db_url, "--what", "history", "--format", "jsonl", out=tmp_path / "h.jsonl")
    row = read_back(tmp_path / "h.jsonl", "jsonl")[0]
    assert datetime.fromisoformat(row["update_time"].replace("Z", "+00:00")) == UPDATE
    assert datetime.fromisoformat(row["observed_at"].replace("Z", "+00:00")) - at(0) == timedelta(0)


def test_history_csv_fast_path_is_byte_identical_to_the_rendered_csv(scripted, db_url):
    """`history --format csv` in UTC takes the export's text rows; other zones render objects: same bytes in UTC."""
    import io

    from recorder.reports import render

    result = CliRunner().invoke(cli, ["history", "--database-url", db_url, "--format", "csv"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with scripted() as session:
        expected = io.StringIO()
        render.write_history(queries.iter_history(session, "default"), "default", "csv", expected)
    assert result.output == expected.getvalue()
    assert "-0.25000000" in result.output and "1E-" not in result.output


def test_csv_lines_built_by_the_database_quote_like_the_csv_module(sessions, db_url, tmp_path):
    label = 'desk, "north"'
    record(sessions, at(0), (asset("USDT", "1.00000000"), asset("BTC", "-0.00000001")), label=label)
    out = tmp_path / "h.csv"
    export(db_url, "--what", "history", "--account", label, out=out)
    rows = read_back(out, "csv")
    assert [(r["account"], r["asset"], r["balance"]) for r in rows] == [(label, "BTC", "-0.00000001"), (label, "USDT", "1.00000000")]
    assert out.read_bytes().count(b"\r\n") == 3


def test_csv_lines_built_by_the_database_match_the_csv_module_on_awkward_assets_and_vanished_rows(sessions, db_url):
    """The database-built lines equal csv.writer over the same text rows: quoting, NULL cells, booleans, times."""
    import io

    from recorder.queries.flat import history_rows
    from recorder.reports.export import write_csv

    awkward = ("A,B", 'Q"T', "N\nL", "C\rR", "USDT")
    record(sessions, at(0), tuple(asset(name, "1.00000000", margin=name != "USDT") for name in awkward))
    record(sessions, at(1), (asset("USDT", "-0.00000001"),))  # the other four vanish: rows with empty cells
    written = {}
    for lines in (True, False):
        with sessions() as session:
            flat = history_rows(session, "default", csv_lines=lines)
            written[lines] = io.StringIO(newline="")
            assert write_csv(flat.columns, flat.batches, written[lines], lines=flat.csv_lines) == 10
    assert written[True].getvalue() == written[False].getvalue()
    rows = list(csv.DictReader(io.StringIO(written[True].getvalue(), newline="")))
    vanished = rows[5:9]
    # Control characters reach the database escaped (C\\x0dR); a comma and a quote as they are.
    assert len(rows) == 10 and {"A,B", 'Q"T'} <= {r["asset"] for r in vanished}
    assert all(r["present"] == "false" and r["balance"] == r["margin_available"] == r["update_time"] == "" for r in vanished)
    assert (rows[-1]["asset"], rows[-1]["balance"], rows[-1]["margin_available"]) == ("USDT", "-0.00000001", "true")


def test_changes_csv_fast_path_is_byte_identical_to_the_rendered_csv(scripted, db_url):
    """`changes --format csv` in UTC takes the export's text rows: the same bytes as rendering Change objects."""
    import io

    from recorder.queries import flat
    from recorder.reports import render

    assert [name for name, _ in flat.CHANGE_COLUMNS] == list(render.CHANGE_COLUMNS)
    for extra in ([], ["--since", at(2).isoformat(), "--asset", "USDT"]):
        result = CliRunner().invoke(cli, ["changes", "--database-url", db_url, "--format", "csv", *extra],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        with scripted() as session:
            expected = io.StringIO()
            events = queries.iter_changes(session, "default", since=at(2) if extra else None,
                                          assets=["USDT"] if extra else None)
            render.write_changes(events, "default", "csv", expected)
        assert result.output == expected.getvalue() and result.output.count("\n") > 1
