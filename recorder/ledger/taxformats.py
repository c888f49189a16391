"""The income ledger for accountants and tax tools: `recorder export --what ledger`.

`iter_entries` reads the archived entries; `LEDGER_COLUMNS` is the plain export (csv, jsonl,
parquet through recorder.reports.export); PRESETS are CSV files that tax tools import as they are
(headers from shared/ledger.md):

    koinly           Koinly's universal CSV; dates `YYYY-MM-DD HH:MM UTC`
    cointracking     CoinTracking's CSV import; every field quoted; dates `DD.MM.YYYY HH:MM:SS` (UTC)
    binance-futures  Binance's own futures transaction history (what BittyTax and others read,
                     and what `recorder import` reads back); dates `YYYY-MM-DD HH:MM:SS` (UTC)

Every row keeps the raw income type in its description/comment column, and carries the stable id
`binance-usdm:<incomeType>:<tranId>:<asset>`. Ids are written quoted, as text: a spreadsheet keeps
only 15 digits of a number and Binance's tranId can have 19. Amounts are exact plain decimals.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.models import Account, IncomeEntry
from recorder.queries.flat import BOOL, DECIMAL, TEXT, TIME
from recorder.queries.states import _account_id

LEDGER_COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", TIME),
    ("account", TEXT),
    ("income_type", TEXT),
    ("asset", TEXT),
    ("income", DECIMAL),
    ("symbol", TEXT),
    ("info", TEXT),
    ("tran_id", TEXT),
    ("trade_id", TEXT),
    ("known_type", BOOL),
    ("source", TEXT),
)

KOINLY_HEADER = ("Date", "Sent Amount", "Sent Currency", "Received Amount", "Received Currency", "Fee Amount",
                 "Fee Currency", "Net Worth Amount", "Net Worth Currency", "Label", "Description", "TxHash")
COINTRACKING_HEADER = ("Type", "Buy Amount", "Buy Currency", "Sell Amount", "Sell Currency", "Fee", "Fee Currency",
                       "Exchange", "Trade-Group", "Comment", "Date")
BINANCE_FUTURES_HEADER = ("Date(UTC)", "type", "Amount", "Asset", "Symbol", "Transaction ID")
COINTRACKING_EXCHANGE = "Binance USD-M Futures"

_PNL = ("REALIZED_PNL", "INSURANCE_CLEAR", "DELIVERED_SETTELMENT", "OPTIONS_SETTLE_PROFIT")
_FUNDING = ("FUNDING_FEE", "SPECIAL_FUNDING_FEE")
_FEES = ("COMMISSION", "POSITION_LIMIT_INCREASE_FEE", "OPTIONS_PREMIUM_FEE")
_REWARDS = ("COMMISSION_REBATE", "API_REBATE", "REFERRAL_KICKBACK", "FEE_RETURN", "WELCOME_BONUS",
            "CONTEST_REWARD", "BFUSD_REWARD")

# Income type -> Koinly label, as (label when received, label when sent). "" = no label: Koinly
# books a plain deposit or withdrawal (transfers, swap legs, and every type not listed here).
KOINLY_LABELS: dict[str, tuple[str, str]] = {
    **{income_type: ("realized gain", "realized gain") for income_type in _PNL},
    **{income_type: ("realized gain", "margin fee") for income_type in _FUNDING},
    **{income_type: ("", "cost") for income_type in _FEES},
    **{income_type: ("reward", "") for income_type in _REWARDS},
}
# Income type -> CoinTracking type, as (type when received, type when sent); types not listed
# are Deposit / Withdrawal.
COINTRACKING_TYPES: dict[str, tuple[str, str]] = {
    **{income_type: ("Derivatives / Futures Profit", "Derivatives / Futures Loss") for income_type in _PNL},
    **{income_type: ("Derivatives / Futures Profit", "Margin Fee") for income_type in _FUNDING},
    **{income_type: ("Derivatives / Futures Profit", "Other Fee") for income_type in _FEES},
    **{income_type: ("Reward / Bonus", "Other Fee") for income_type in _REWARDS},
}
DEFAULT_COINTRACKING_TYPES = ("Deposit", "Withdrawal")


@dataclass(frozen=True)
class LedgerEntry:
    """One archived income entry with its account label."""

    time: datetime
    account: str
    income_type: str
    asset: str
    income: Decimal
    symbol: str
    info: str
    tran_id: int
    trade_id: str
    known_type: bool
    source: str

    @property
    def stable_id(self) -> str:
        """The id that stays the same in every export: binance-usdm:<incomeType>:<tranId>:<asset>."""
        return f"binance-usdm:{self.income_type}:{self.tran_id}:{self.asset}"

    def record(self) -> dict[str, Any]:
        """The plain export's record (LEDGER_COLUMNS); tran_id as text."""
        return {"time": self.time, "account": self.account, "income_type": self.income_type, "asset": self.asset,
                "income": self.income, "symbol": self.symbol, "info": self.info, "tran_id": str(self.tran_id),
                "trade_id": self.trade_id, "known_type": self.known_type, "source": self.source}


def iter_entries(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Iterator[LedgerEntry]:
    """The account's archived entries with time in [since, until), oldest first."""
    query = (
        select(IncomeEntry, Account.label)
        .join(Account, Account.id == IncomeEntry.account_id)
        .where(IncomeEntry.account_id == _account_id(session, account))
    )
    if assets:
        query = query.where(IncomeEntry.asset.in_(list(assets)))
    if since is not None:
        query = query.where(IncomeEntry.time >= since)
    if until is not None:
        query = query.where(IncomeEntry.time < until)
    query = query.order_by(IncomeEntry.time, IncomeEntry.income_type, IncomeEntry.asset, IncomeEntry.tran_id)
    for entry, label in session.execute(query.execution_options(yield_per=5_000)):
        yield LedgerEntry(entry.time, label, entry.income_type, entry.asset, entry.income, entry.symbol, entry.info,
                          entry.tran_id, entry.trade_id, entry.known_type, entry.source)


def _amount(value: Decimal) -> str:
    return format(value, "f")


def _description(entry: LedgerEntry) -> str:
    parts = [entry.income_type, entry.symbol, entry.info if entry.info != entry.symbol else ""]
    return " ".join(part for part in parts if part) + ("" if entry.known_type else " (unknown income type)")


def koinly_row(entry: LedgerEntry) -> tuple[str, ...]:
    """One Koinly universal row: received when the income is positive, sent when negative."""
    received = entry.income >= 0
    label = KOINLY_LABELS.get(entry.income_type, ("", ""))[0 if received else 1]
    amount = _amount(abs(entry.income))
    sent_amount, sent_currency = ("", "") if received else (amount, entry.asset)
    received_amount, received_currency = (amount, entry.asset) if received else ("", "")
    return (f"{entry.time:%Y-%m-%d %H:%M} UTC", sent_amount, sent_currency, received_amount, received_currency,
            "", "", "", "", label, _description(entry), entry.stable_id)


def cointracking_row(entry: LedgerEntry) -> tuple[str, ...]:
    """One CoinTracking row: Buy for a positive income, Sell for a negative one."""
    received = entry.income >= 0
    kind = COINTRACKING_TYPES.get(entry.income_type, DEFAULT_COINTRACKING_TYPES)[0 if received else 1]
    amount = _amount(abs(entry.income))
    buy = (amount, entry.asset) if received else ("", "")
    sell = ("", "") if received else (amount, entry.asset)
    return (kind, *buy, *sell, "", "", COINTRACKING_EXCHANGE, entry.account,
            f"{_description(entry)} {entry.stable_id}", f"{entry.time:%d.%m.%Y %H:%M:%S}")


def binance_futures_row(entry: LedgerEntry) -> tuple[str, ...]:
    """One row of Binance's own futures transaction history, the income type as it is."""
    return (f"{entry.time:%Y-%m-%d %H:%M:%S}", entry.income_type, _amount(entry.income), entry.asset, entry.symbol,
            str(entry.tran_id))


@dataclass(frozen=True)
class Preset:
    """A tax tool's CSV: its header, one row per entry, and which columns are quoted ids."""

    header: tuple[str, ...]
    row: Callable[[LedgerEntry], tuple[str, ...]]
    quote_all: bool
    id_columns: frozenset[str]


PRESETS: dict[str, Preset] = {
    "koinly": Preset(KOINLY_HEADER, koinly_row, False, frozenset({"TxHash"})),
    "cointracking": Preset(COINTRACKING_HEADER, cointracking_row, True, frozenset()),
    "binance-futures": Preset(BINANCE_FUTURES_HEADER, binance_futures_row, False, frozenset({"Transaction ID"})),
}


def write_preset(name: str, entries: Iterable[LedgerEntry], stream: TextIO) -> int:
    """Write the preset's header and rows (CRLF, UTF-8); returns the number of rows."""
    preset = PRESETS[name]
    if preset.quote_all:
        writer = csv.writer(stream, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writerow(preset.header)
        rows = 0
        for entry in entries:
            writer.writerow(preset.row(entry))
            rows += 1
        return rows
    # Ids quoted, everything else as plain CSV: csv's quoting is per writer, so the quoted
    # columns are written by hand (an id holds no quote, comma or line break to escape).
    quoted = [name in preset.id_columns for name in preset.header]
    plain = csv.writer(stream, lineterminator="\r\n")
    plain.writerow(preset.header)
    rows = 0
    for entry in entries:
        cells = preset.row(entry)
        line = _csv_line(cells)
        stream.write(",".join('"' + cell.replace('"', '""') + '"' if q else part
                              for cell, q, part in zip(cells, quoted, line)) + "\r\n")
        rows += 1
    return rows


def _csv_line(cells: Sequence[str]) -> list[str]:
    """Each cell as plain CSV would write it (quoted only where needed)."""
    out = []
    for cell in cells:
        if any(ch in cell for ch in ',"\r\n') or cell != cell.strip():
            out.append('"' + cell.replace('"', '""') + '"')
        else:
            out.append(cell)
    return out
