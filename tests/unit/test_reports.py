"""Rendering: exact decimals, UTC JSON times, zone-shifted tables and CSV."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from recorder.reports import render as reports
from recorder.queries import AssetState

OBSERVED = datetime(2026, 1, 1, 23, 30, 0, 3000, tzinfo=timezone.utc)
UPDATE = datetime(2026, 1, 1, 23, 29, 59, 123000, tzinfo=timezone.utc)


def state(asset="USDT", balance="0.00000001", present=True) -> AssetState:
    value = Decimal(balance) if present else None
    return AssetState(
        asset=asset,
        observed_at=OBSERVED,
        present=present,
        balance=value,
        cross_wallet_balance=value,
        cross_un_pnl=Decimal("-12.50000000") if present else None,
        available_balance=value,
        max_withdraw_amount=value,
        margin_available=True if present else None,
        update_time=UPDATE if present else None,
    )


def render(write, *args, **kwargs) -> str:
    stream = io.StringIO()
    write(*args, stream, **kwargs)
    return stream.getvalue()


def test_format_time_uses_z_for_utc_and_offsets_elsewhere():
    assert reports.format_time(OBSERVED) == "2026-01-01T23:30:00.003000Z"
    assert reports.format_time(UPDATE, timespec="milliseconds") == "2026-01-01T23:29:59.123Z"
    assert reports.format_time(OBSERVED, ZoneInfo("Asia/Tokyo")) == "2026-01-02T08:30:00.003000+09:00"


def test_history_json_has_exact_decimal_strings_utc_times_and_bools():
    text = render(reports.write_history, [state(), state("BNB", present=False)], "main", "json")
    documents = json.loads(text)
    assert documents == [
        {
            "account": "main",
            "asset": "USDT",
            "observed_at": "2026-01-01T23:30:00.003000Z",
            "present": True,
            "balance": "0.00000001",
            "cross_wallet_balance": "0.00000001",
            "cross_un_pnl": "-12.50000000",
            "available_balance": "0.00000001",
            "max_withdraw_amount": "0.00000001",
            "margin_available": True,
            "update_time": "2026-01-01T23:29:59.123Z",
        },
        {
            "account": "main",
            "asset": "BNB",
            "observed_at": "2026-01-01T23:30:00.003000Z",
            "present": False,
            "balance": None,
            "cross_wallet_balance": None,
            "cross_un_pnl": None,
            "available_balance": None,
            "max_withdraw_amount": None,
            "margin_available": None,
            "update_time": None,
        },
    ]
    assert "E-" not in text


def test_history_json_stays_utc_even_with_a_display_zone():
    text = render(reports.write_history, [state()], "main", "json", tz=ZoneInfo("Asia/Tokyo"))
    assert json.loads(text)[0]["observed_at"] == "2026-01-01T23:30:00.003000Z"


def test_history_csv_shifts_times_into_the_zone_and_leaves_missing_cells_empty():
    text = render(reports.write_history, [state("USDT", "98765432109.12345678"), state("BNB", present=False)], "main", "csv", tz=ZoneInfo("Asia/Tokyo"))
    lines = text.splitlines()
    assert lines[0] == (
        "account,asset,observed_at,present,balance,cross_wallet_balance,cross_un_pnl,"
        "available_balance,max_withdraw_amount,margin_available,update_time"
    )
    assert lines[1] == (
        "main,USDT,2026-01-02T08:30:00.003000+09:00,true,98765432109.12345678,98765432109.12345678,"
        "-12.50000000,98765432109.12345678,98765432109.12345678,true,2026-01-02T08:29:59.123+09:00"
    )
    assert lines[2] == "main,BNB,2026-01-02T08:30:00.003000+09:00,false,,,,,,,"


def test_history_table_aligns_numbers_right():
    text = render(reports.write_history, [state("USDT", "100.00000000"), state("BTC", "0.00100000")], "main", "table")
    lines = text.splitlines()
    assert lines[0].split() == ["account", "asset", "observed_at", "present", "balance", "cross_wallet_balance",
                                "cross_un_pnl", "available_balance", "max_withdraw_amount", "margin_available", "update_time"]
    column = lines[0].index("balance")
    end = column + len("100.00000000")
    assert lines[2][column:end] == "100.00000000"
    assert lines[3][column:end] == "  0.00100000"


def test_write_changes_names_the_changed_fields_in_every_format():
    from recorder.queries import Change
    from recorder.queries.changelog import changed_fields

    before = state(balance="1.00000000")
    moved = AssetState(**{**before.__dict__, "update_time": datetime(2026, 1, 2, tzinfo=timezone.utc)})
    event = Change("USDT", OBSERVED, "changed", before, moved, {name: Decimal("0E-8") for name in reports.AMOUNT_FIELDS},
                   changed_fields(before, moved))
    assert event.changed == ("update_time",)
    assert json.loads(render(reports.write_changes, [event], "main", "json"))[0]["changed"] == ["update_time"]
    header, row = render(reports.write_changes, [event], "main", "csv").splitlines()
    assert header.split(",")[-1] == "changed" and row.split(",")[-1] == "update_time"
    assert render(reports.write_changes, [event], "main", "table").splitlines()[2].split()[-1] == "update_time"
    # A scale change (10.0 -> 10.00) is another text from Binance: it is named too.
    rescaled = AssetState(**{**before.__dict__, "balance": Decimal("1.0")})
    assert changed_fields(before, rescaled) == ("balance",)
    assert changed_fields(None, before)[0] == "present"
    assert changed_fields(before, state(present=False))[0] == "present"


def test_write_balances_names_assets_that_have_no_state_yet():
    from datetime import timedelta

    from recorder.queries import AsOf, Freshness, Position

    result = AsOf("main", Freshness(OBSERVED, None, timedelta(seconds=120)),
                  (Position("BTC", None, "before_first_poll"), Position("USDT", None, "before_first_poll")))
    documents = json.loads(render(reports.write_balances, result, "json"))
    assert [(d["asset"], d["status"], d["balance"]) for d in documents] == [
        ("BTC", "before_first_poll", None), ("USDT", "before_first_poll", None)]
    assert [line.split(",")[1] for line in render(reports.write_balances, result, "csv").splitlines()[1:]] == ["BTC", "USDT"]


def test_history_json_is_a_streamed_array_identical_to_a_whole_dump_for_0_1_and_many_rows():
    for count in (0, 1, 3):
        states = [state(balance=f"{i}.00000001") for i in range(count)]
        # A generator: the writer must not need a list.
        text = render(reports.write_history, (s for s in states), "main", "json")
        documents = json.loads(text)
        assert [d["balance"] for d in documents] == [f"{i}.00000001" for i in range(count)]
        expected = io.StringIO()
        reports.write_json([{"account": "main", **reports.state_fields(s)} for s in states], expected)
        assert text == expected.getvalue()


def test_table_pages_keep_widths_and_repeat_the_header_only_when_a_column_grows(monkeypatch):
    monkeypatch.setattr(reports, "PAGE_ROWS", 2)
    states = [state(balance="1.00000000"), state(balance="2.00000000"), state(balance="3.00000000"),
              state(balance="12345.00000000")]
    lines = render(reports.write_history, iter(states), "main", "table").splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("account")]
    # Page 1 sets the widths; page 2 holds a wider balance, so it comes under a new header after a blank line.
    assert headers == [0, 5]
    assert lines[4] == "" and lines[-1].split()[4] == "12345.00000000"
    assert len(lines[2]) == len(lines[3]) and len(lines[7]) == len(lines[8]) == len(lines[6])
    assert len(lines[7]) > len(lines[2])


def test_empty_table_still_has_its_header():
    lines = render(reports.write_history, iter(()), "main", "table").splitlines()
    assert lines[0].split()[:3] == ["account", "asset", "observed_at"] and len(lines) == 2
