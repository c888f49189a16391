"""A durable local spool for polls the database could not take, replayed in order.

Each entry is one JSON file, written to a temporary name, fsynced, renamed, and the folder
fsynced, so a crash leaves either the whole entry or none. Entries sort by the time the
poll finished; the poll's key in the database, (account, finished_at), makes the replay
idempotent (a poll stored but not yet unlinked when the process died is not stored
twice). Nothing secret is ever in an entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from recorder.db_types import decimal_text
from recorder.errors import ConfigError
from recorder.records import AssetBalance, FetchedBalances

AMOUNT_NAMES = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")


@dataclass(frozen=True)
class PollFailure:
    """A failed poll's description, as the poll log stores it."""

    error_class: str
    message: str
    http_status: int | None = None
    code: int | None = None
    used_weight: int | None = None


@dataclass(frozen=True)
class SpooledPoll:
    """Everything needed to store one poll later: its result or its failure."""

    # Names the spool file and the poll in logs; the database knows the poll by
    # (account, finished_at).
    uid: str
    account: str
    base_url: str
    endpoint: str
    started_at: datetime
    finished_at: datetime
    fetched: FetchedBalances | None = None
    failure: PollFailure | None = None


def spool_dir_for(base: str, database_url: str, account: str) -> Path:
    """One spool per database and account, so an entry is never replayed into the wrong place."""
    url = make_url(database_url).render_as_string(hide_password=True)
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    safe_account = "".join(c if c.isalnum() or c in "-_." else "_" for c in account)
    return Path(base).expanduser() / f"{digest}-{safe_account}"


class Spool:
    """The folder of pending entries for one database and account."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the spool folder {directory}: {exc.strerror}; set RECORDER_SPOOL_DIR (--spool-dir)"
            ) from None

    def put(self, entry: SpooledPoll) -> Path:
        """Write an entry durably; return its path."""
        name = f"{time.time_ns():020d}-{entry.uid}.json"
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        payload = json.dumps(_encode(entry), sort_keys=True).encode()
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, payload)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(temporary, final)
        self._sync_directory()
        return final

    def pending(self) -> list[Path]:
        """Entries waiting to be stored, oldest first."""
        return sorted(path for path in self.directory.glob("*.json") if not path.name.startswith("."))

    def load(self, path: Path) -> SpooledPoll:
        """Read one entry back."""
        return _decode(json.loads(path.read_bytes(), parse_float=Decimal))

    def remove(self, path: Path) -> None:
        """Forget an entry once the database holds it."""
        path.unlink(missing_ok=True)
        self._sync_directory()

    def reject(self, path: Path) -> Path:
        """Move an entry the database will never accept aside, for a human to look at."""
        rejected = self.directory / "rejected"
        rejected.mkdir(mode=0o700, exist_ok=True)
        target = rejected / path.name
        os.replace(path, target)
        self._sync_directory()
        return target

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _encode(entry: SpooledPoll) -> dict[str, Any]:
    fetched = None
    if entry.fetched is not None:
        fetched = {
            "account_alias": entry.fetched.account_alias,
            "endpoint": entry.fetched.endpoint,
            "used_weight": entry.fetched.used_weight,
            "assets": [
                {
                    "asset": asset.asset,
                    **{name: decimal_text(getattr(asset, name)) for name in AMOUNT_NAMES},
                    "margin_available": asset.margin_available,
                    "update_time": asset.update_time.isoformat(),
                }
                for asset in entry.fetched.assets
            ],
        }
    return {
        "uid": entry.uid,
        "account": entry.account,
        "base_url": entry.base_url,
        "endpoint": entry.endpoint,
        "started_at": entry.started_at.isoformat(),
        "finished_at": entry.finished_at.isoformat(),
        "fetched": fetched,
        "failure": asdict(entry.failure) if entry.failure else None,
    }


def _decode(data: dict[str, Any]) -> SpooledPoll:
    fetched = None
    if data["fetched"] is not None:
        raw = data["fetched"]
        fetched = FetchedBalances(
            account_alias=raw["account_alias"],
            endpoint=raw["endpoint"],
            used_weight=raw["used_weight"],
            assets=tuple(
                AssetBalance(
                    asset=asset["asset"],
                    **{name: Decimal(asset[name]) for name in AMOUNT_NAMES},
                    margin_available=asset["margin_available"],
                    update_time=datetime.fromisoformat(asset["update_time"]),
                )
                for asset in raw["assets"]
            ),
        )
    return SpooledPoll(
        uid=data["uid"],
        account=data["account"],
        base_url=data["base_url"],
        endpoint=data["endpoint"],
        started_at=datetime.fromisoformat(data["started_at"]),
        finished_at=datetime.fromisoformat(data["finished_at"]),
        fetched=fetched,
        failure=PollFailure(**data["failure"]) if data["failure"] else None,
    )
