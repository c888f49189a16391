"""`recorder import FILE`: income history from the files a user downloads from Binance.

The REST ledger reaches three months back; the files reach further, cost no request and no
share of the five asynchronous downloads a month. Two kinds are read, told apart by their header
(formats undocumented by Binance; two independent parsers agree, see shared/ledger.md):

    futures-export     Futures > Transaction History: `Date(UTC),type,Amount,Asset,Symbol,Transaction ID`,
                       a zip holding one CSV or the bare CSV. `type` is the income type and the
                       Transaction ID its tranId, so an entry has Binance's own key
                       (income_type, tran_id, asset) and meets an API entry on it; a key archived
                       with another amount or time refuses the file. A row with Transaction ID 0
                       or below has no usable key (TRANSFER rows carry 0, third parties report):
                       it is matched and keyed like a statement row.
    account-statement  the whole-account statement: `User_ID,UTC_Time,Account,Operation,Coin,Change,Remark`.
                       Only futures rows (Account USD-MFutures, USDT-Futures or USD-M Futures) are read;
                       Operation names map to income types by OPERATION_TYPES. It has no transaction
                       id: see `statement_tran_id` for the synthetic key and the match rule.

A file is parsed whole before anything is stored, and stored in one transaction: a bad file
stores nothing and is reported as one line naming the file, the line and the problem. Importing
a file again adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from recorder.errors import RecorderError
from recorder.ledger.keys import archived_with_keys, usable_tran_id
# supersede_statement_entries is the import's match rule run the other way, for the API sync.
from recorder.ledger.supersede import supersede_statement_entries  # noqa: F401
from recorder.ledger.types import ACCOUNT_STATEMENT, FUTURES_EXPORT, KNOWN_INCOME_TYPES
from recorder.models import IncomeEntry
from recorder.queries.states import _account_id
from recorder.store import ensure_account

FUTURES_EXPORT_HEADER = ("Date(UTC)", "type", "Amount", "Asset", "Symbol", "Transaction ID")
ACCOUNT_STATEMENT_HEADER = ("User_ID", "UTC_Time", "Account", "Operation", "Coin", "Change", "Remark")
FUTURES_ACCOUNTS = frozenset({"USD-MFutures", "USDT-Futures", "USD-M Futures"})

# The statement's Operation names for futures rows, and the income type each books. Names seen in
# downloaded statements (shared/ledger.md); an Operation missing here is stored under its own name,
# flagged as an unknown type (known_type false), never dropped.
OPERATION_TYPES: dict[str, str] = {
    "Realized Profit and Loss": "REALIZED_PNL",
    "Realize profit and loss": "REALIZED_PNL",
    "Fee": "COMMISSION",
    "Transaction Fee": "COMMISSION",
    "Funding Fee": "FUNDING_FEE",
    "Insurance Fund Compensation": "INSURANCE_CLEAR",
    "Referrer rebates": "REFERRAL_KICKBACK",
    "Referral Kickback": "REFERRAL_KICKBACK",
    "Commission Rebate": "COMMISSION_REBATE",
    "API Rebate": "API_REBATE",
    "Welcome Bonus": "WELCOME_BONUS",
    "Contest Reward": "CONTEST_REWARD",
    "Transfer Between Spot Account and UM Futures Account": "TRANSFER",
    "Transfer Between Main and Futures Account": "TRANSFER",
    "transfer_in": "TRANSFER",
    "transfer_out": "TRANSFER",
    "Cross Collateral Transfer": "CROSS_COLLATERAL_TRANSFER",
    "Strategy UMFutures Transfer": "STRATEGY_UMFUTURES_TRANSFER",
    "Internal Transfer": "INTERNAL_TRANSFER",
    "Auto-Exchange": "AUTO_EXCHANGE",
    "Fee Return": "FEE_RETURN",
    "BFUSD Reward": "BFUSD_REWARD",
    "Delivered Settlement": "DELIVERED_SETTELMENT",
}
# Swaps book one leg per asset: in, COIN_SWAP_DEPOSIT; out, COIN_SWAP_WITHDRAW (an inference from the
# sign: Binance does not document which Operation name the API's coin-swap types appear under).
SIGNED_OPERATIONS: dict[str, tuple[str, str]] = {
    "Asset Conversion Transfer": ("COIN_SWAP_DEPOSIT", "COIN_SWAP_WITHDRAW"),
}

_TIME = re.compile(r"(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_ASSET = re.compile(r"[A-Za-z0-9]{1,32}")
_TRAN_ID = re.compile(r"-?[0-9]{1,19}")
_TRADE_ID = re.compile(r"TradeID\s*-\s*([0-9]{1,40})")
# Largest file accepted: a year of a busy account is a few MB; this only stops a wrong file filling memory.
MAX_FILE_BYTES = 512 * 1024 * 1024
_BIGINT = 2**63


class ImportFileError(RecorderError):
    """The file cannot be imported as it is; nothing of it was stored."""


@dataclass(frozen=True)
class ParsedEntry:
    """One income entry read from a file, with the line it came from."""

    line: int
    time: datetime
    income_type: str
    tran_id: int | None
    asset: str
    income: Decimal
    symbol: str
    trade_id: str


@dataclass(frozen=True)
class ImportResult:
    """What one import did."""

    file: str
    kind: str
    rows: int
    added: int
    already_archived: int
    other_accounts: int
    unknown_types: tuple[str, ...]


def import_file(session: Session, account: str, path: Path, *, recorded_at: datetime,
                base_url: str | None = None) -> ImportResult:
    """Parse `path` whole, then add its entries that are not archived yet; the caller commits.

    With `base_url` an account never polled is created (its environment from the URL), so old
    statements can be archived before the first poll; without it the account must exist.
    """
    kind, entries, other_accounts = read_file(path)
    if base_url is None:
        account_id = _account_id(session, account)
    else:
        # After the parse: a bad file creates no account either.
        account_id = ensure_account(session, account, base_url, recorded_at).id
    if kind == FUTURES_EXPORT:
        try:
            new, duplicates = _new_by_key(session, account_id, entries)
        except _LineError as exc:
            raise ImportFileError(f"{path}: line {exc.line}: {exc.problem}") from None
    else:
        new, duplicates = _new_by_match(session, account_id, entries)
    session.add_all(
        IncomeEntry(account_id=account_id, time=entry.time, income_type=entry.income_type, tran_id=tran_id,
                    asset=entry.asset, income=entry.income, symbol=entry.symbol, info="", trade_id=entry.trade_id,
                    known_type=entry.income_type in KNOWN_INCOME_TYPES, source=kind, recorded_at=recorded_at)
        for entry, tran_id in new
    )
    session.flush()
    unknown = sorted({entry.income_type for entry in entries if entry.income_type not in KNOWN_INCOME_TYPES})
    return ImportResult(str(path), kind, len(entries), len(new), duplicates, other_accounts, tuple(unknown))


def read_file(path: Path) -> tuple[str, list[ParsedEntry], int]:
    """The file's kind, its futures entries, and how many rows belonged to other accounts."""
    text = _read_text(path)
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is None:
        raise ImportFileError(f"{path}: the file is empty")
    header_cells = tuple(cell.strip() for cell in header)
    try:
        if header_cells == FUTURES_EXPORT_HEADER:
            return FUTURES_EXPORT, list(_futures_export(rows)), 0
        if header_cells == ACCOUNT_STATEMENT_HEADER:
            entries, others = _account_statement(rows)
            return ACCOUNT_STATEMENT, entries, others
    except _LineError as exc:
        raise ImportFileError(f"{path}: line {exc.line}: {exc.problem}") from None
    except csv.Error as exc:
        raise ImportFileError(f"{path}: line {rows.line_num}: not valid CSV ({exc})") from None
    raise ImportFileError(
        f"{path}: line 1: not a Binance futures transaction history ({','.join(FUTURES_EXPORT_HEADER)}) "
        f"or account statement ({','.join(ACCOUNT_STATEMENT_HEADER)}) header"
    )


def statement_tran_id(entry: ParsedEntry, occurrence: int) -> int:
    """The synthetic tran_id of a file row without an id (an account-statement row, or a futures-export
    row with Transaction ID 0 or below): negative and even, so it never meets a Binance id nor an API
    entry's synthetic id (odd, recorder.ledger.keys).

    Both kinds of file share it: a statement row and an export row of one movement get one key, so
    the archive's unique key backs the match rule that already takes them as one.

    A hash of (time to the second, income type, asset, amount, occurrence), where occurrence
    counts the rows before it in the file with the same four values: the same file always
    gives the same ids, and two identical rows in one second stay two entries. The amount is
    hashed normalized, so "-1.0" and "-1.00" (a file re-saved by a spreadsheet) give one id.
    """
    amount = format(entry.income.normalize(), "f")
    key = f"{entry.time:%Y-%m-%dT%H:%M:%S}|{entry.income_type}|{entry.asset}|{amount}|{occurrence}"
    tran_id = -1 - int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % (_BIGINT - 1)
    # Folded onto the even number below: migration 0012 folds ids stored before the split the same way.
    return tran_id - (tran_id & 1)


class _LineError(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line, self.problem = line, problem


def _read_text(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImportFileError(f"{path}: {size:,} bytes is larger than the {MAX_FILE_BYTES:,} accepted")
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [info for info in archive.infolist() if not info.is_dir()]
                if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                    names = ", ".join(info.filename for info in members) or "nothing"
                    raise ImportFileError(f"{path}: a zip must hold exactly one CSV file, this one holds {names}")
                if members[0].file_size > MAX_FILE_BYTES:
                    raise ImportFileError(f"{path}: its CSV unpacks to more than {MAX_FILE_BYTES:,} bytes")
                data = archive.read(members[0])
        else:
            data = path.read_bytes()
    except zipfile.BadZipFile as exc:
        raise ImportFileError(f"{path}: a damaged zip ({exc})") from None
    except OSError as exc:
        raise ImportFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        # utf-8-sig: spreadsheet programs save a byte-order mark in front of the header.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFileError(f"{path}: line {line}: not UTF-8 text") from None


def _futures_export(rows: Iterable[list[str]]) -> Iterator[ParsedEntry]:
    for line, row in _numbered(rows, len(FUTURES_EXPORT_HEADER)):
        date, income_type, amount, asset, symbol, tran_id = (cell.strip() for cell in row)
        if not income_type or not re.fullmatch(r"[A-Z0-9_]{1,64}", income_type):
            raise _LineError(line, f"type {income_type!r} is not an income type")
        if not _TRAN_ID.fullmatch(tran_id) or not -_BIGINT <= int(tran_id) < _BIGINT:
            raise _LineError(line, f"Transaction ID {tran_id!r} is not an integer id")
        yield ParsedEntry(line, _time(line, date, "Date(UTC)"), income_type, int(tran_id), _asset(line, asset),
                          _amount(line, amount, "Amount"), symbol[:64], "")


def _account_statement(rows: Iterable[list[str]]) -> tuple[list[ParsedEntry], int]:
    entries, others = [], 0
    for line, row in _numbered(rows, len(ACCOUNT_STATEMENT_HEADER)):
        _user, when, account, operation, coin, change, remark = (cell.strip() for cell in row)
        if account not in FUTURES_ACCOUNTS:
            others += 1
            continue
        amount = _amount(line, change, "Change")
        if operation in SIGNED_OPERATIONS:
            income_type = SIGNED_OPERATIONS[operation][0 if amount >= 0 else 1]
        else:
            income_type = OPERATION_TYPES.get(operation, operation)
        if not income_type or len(income_type) > 64:
            raise _LineError(line, f"Operation {operation!r} is empty or longer than 64 characters")
        trade = _TRADE_ID.search(remark)
        entries.append(ParsedEntry(line, _time(line, when, "UTC_Time"), income_type, None, _asset(line, coin),
                                   amount, "", trade.group(1) if trade else ""))
    return entries, others


def _numbered(rows: Iterable[list[str]], width: int) -> Iterator[tuple[int, list[str]]]:
    for line, row in enumerate(rows, start=2):
        if not row or row == [""] * len(row):
            continue  # blank lines (a trailing newline, a spreadsheet's padding)
        if len(row) != width:
            raise _LineError(line, f"{len(row)} fields, the header has {width}")
        yield line, row


def _time(line: int, text: str, column: str) -> datetime:
    match = _TIME.fullmatch(text)
    if match is None:
        raise _LineError(line, f"{column} {text!r} is not a time like 2024-01-31 23:59:59 (UTC)")
    try:
        return datetime(*(int(part) for part in match.groups()), tzinfo=timezone.utc)
    except ValueError:
        raise _LineError(line, f"{column} {text!r} is not a valid date and time") from None


def _amount(line: int, text: str, column: str) -> Decimal:
    try:
        amount = Decimal(text)
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or not text:
        raise _LineError(line, f"{column} {text!r} is not a number")
    if abs(amount) >= Decimal(10) ** 30:
        raise _LineError(line, f"{column} {text!r} is out of range")
    return amount


def _asset(line: int, text: str) -> str:
    if not _ASSET.fullmatch(text):
        raise _LineError(line, f"asset {text!r} is not an asset name")
    return text.upper()


def _new_by_key(session: Session, account_id: int, entries: list[ParsedEntry]) -> tuple[list[tuple[ParsedEntry, int]], int]:
    """Futures-export entries not archived yet: by Binance's key where a row has a usable id, else by
    the match rule. A key archived (or earlier in the file) with another amount or time raises _LineError.
    """
    keyed = [entry for entry in entries if usable_tran_id(entry.tran_id)]
    archived = archived_with_keys(session, account_id, ((e.income_type, e.tran_id, e.asset) for e in keyed))
    seen: dict[tuple[str, int, str], ParsedEntry] = {}
    new: list[tuple[ParsedEntry, int]] = []
    duplicates = 0
    for entry in keyed:
        key = (entry.income_type, entry.tran_id, entry.asset)
        if key in archived:
            row = archived[key]
            _refuse_other_content(entry, row.time, row.income, "the archive holds", f" (from {row.source})")
            duplicates += 1
        elif key in seen:
            earlier = seen[key]
            _refuse_other_content(entry, earlier.time, earlier.income, f"line {earlier.line} has", "")
            duplicates += 1
        else:
            seen[key] = entry
            new.append((entry, entry.tran_id))
    # Archived entries under this file's own keys are accounted for by its keyed rows: a row without
    # an id that matched one of them would merge two movements the file lists apart.
    unkeyed = [entry for entry in entries if not usable_tran_id(entry.tran_id)]
    matched, matched_duplicates = _new_by_match(session, account_id, unkeyed, accounted=set(seen) | set(archived))
    return new + matched, duplicates + matched_duplicates


def _refuse_other_content(entry: ParsedEntry, time: datetime, income: Decimal, holder: str, origin: str) -> None:
    """Raise _LineError if `entry` is not the entry with its key that `holder` has.

    The file holds whole seconds, an API entry milliseconds, and whether Binance's export truncates or
    rounds them is unknown: a time less than a second away either way is the same time (as the sync
    compares a file's row with the API's).
    """
    key = f"{entry.income_type} tranId {entry.tran_id} {entry.asset}"
    if abs(entry.time - time) >= timedelta(seconds=1):
        shown = f"{time:%Y-%m-%d %H:%M:%S}" + (f".{time.microsecond // 1000:03d}" if time.microsecond else "")
        raise _LineError(entry.line, f"{key} has Date(UTC) {entry.time:%Y-%m-%d %H:%M:%S} where {holder} "
                                     f"{shown}{origin}; nothing of the file is stored")
    if entry.income != income:
        raise _LineError(entry.line, f"{key} has Amount {format(entry.income, 'f')} where {holder} "
                                     f"{format(income, 'f')}{origin}; nothing of the file is stored")


def _new_by_match(session: Session, account_id: int, entries: list[ParsedEntry], *,
                  accounted: set[tuple[str, int, str]] | frozenset[tuple[str, int, str]] = frozenset()
                  ) -> tuple[list[tuple[ParsedEntry, int]], int]:
    """Entries without an id (statement rows, export rows without a usable id) not archived yet, by the match rule.

    Entries match on (income type, asset, time to the second, amount). Of the file's n rows with
    the same four values, as many as the archive already holds are taken as archived (from the
    API, a futures export or an earlier import of a file); the rest are added. Archived entries
    whose key is in `accounted` are left out of the count.
    """
    if not entries:
        return [], 0
    times = [entry.time for entry in entries]
    archived: Counter[tuple[str, str, datetime, Decimal]] = Counter()
    for income_type, tran_id, asset, time, income in session.execute(
        select(IncomeEntry.income_type, IncomeEntry.tran_id, IncomeEntry.asset, IncomeEntry.time, IncomeEntry.income)
        .where(
            IncomeEntry.account_id == account_id,
            IncomeEntry.time >= min(times),
            IncomeEntry.time < max(times) + timedelta(seconds=1),
        )
    ):
        if (income_type, tran_id, asset) not in accounted:
            archived[(income_type, asset, time.replace(microsecond=0), income)] += 1
    seen: Counter[tuple[str, str, datetime, Decimal]] = Counter()
    new, duplicates = [], 0
    for entry in entries:
        key = (entry.income_type, entry.asset, entry.time, entry.income)
        occurrence = seen[key]
        seen[key] += 1
        if occurrence < archived[key]:
            duplicates += 1
            continue
        new.append((entry, statement_tran_id(entry, occurrence)))
    return new, duplicates
