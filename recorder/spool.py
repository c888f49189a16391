"""A durable local spool for polls the database could not take, replayed in order.

Each entry is one JSON file, written to a temporary name, fsynced, renamed, and the folder
fsynced, so a crash leaves either the whole entry or none (and a stale `.tmp` file, removed
at the next start). Entries sort by the time the poll finished; the poll's key in the
database, (account, finished_at), makes the replay idempotent (a poll stored but not yet
unlinked when the process died is not stored twice). Nothing secret is ever in an entry.

The folder is `<spool dir>/<database id>/<label>/`: keyed by the id stored in the database
(recorder.identity), not by the URL's spelling, and every entry carries that id and the
label, so an entry is never replayed into another database or account. A file that cannot
be read back is moved to `corrupt/`, one the database refuses to `rejected/`; neither ever
blocks the entries behind it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from recorder.db_types import decimal_text
from recorder.errors import ConfigError, SpoolError
from recorder.pidlock import hold_pid_lock
from recorder.records import AssetBalance, FetchedBalances
from recorder.storable import check_amount, clean_text

log = logging.getLogger(__name__)

AMOUNT_NAMES = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")
# A spool entry is a few hundred bytes per asset; anything this large was not written by us.
MAX_ENTRY_BYTES = 64 * 1024 * 1024
# Most file systems allow 255 bytes a name; longer label encodings fall back to a hash.
MAX_NAME_BYTES = 200
# Lower case only: on a case-insensitive file system (macOS, a Windows share) `A` and `a`
# would otherwise share a folder and a lock.
_SAFE_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
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


def label_filename(label: str) -> str:
    """An injective, file-system-safe name for any label: `a/b`, `a_b`, `..`, `.`, `A` and `a` stay distinct.

    Bytes outside [a-z0-9-_] are %XX-escaped (`%` too, so the escape is reversible); a name
    that would be too long becomes `~` plus a SHA-256 (`~` never appears in an escaped name).
    """
    escaped = "".join(chr(b) if chr(b) in _SAFE_NAME_CHARACTERS else f"%{b:02X}" for b in label.encode("utf-8", "surrogatepass"))
    if len(escaped) <= MAX_NAME_BYTES:
        return escaped
    return "~" + hashlib.sha256(label.encode("utf-8", "surrogatepass")).hexdigest()


def spool_dir_for(base: str, database_id: str, account: str) -> Path:
    """One spool per database (by the id stored in it) and account label."""
    return Path(base).expanduser() / label_filename(database_id) / label_filename(account)


def legacy_spool_dir_for(base: str, database_url: str, account: str) -> Path:
    """Where recorder before database ids kept the spool: keyed by the URL's spelling (see Spool.adopt)."""
    url = make_url(database_url).render_as_string(hide_password=True)
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    safe_account = "".join(c if c.isalnum() or c in "-_." else "_" for c in account)
    return Path(base).expanduser() / f"{digest}-{safe_account}"


class CorruptEntry(ValueError):
    """A spool file that cannot be read back as an entry: it is moved to `corrupt/`."""


class ForeignEntry(ValueError):
    """A spool entry written for another database or account, or one no column can hold: `rejected/`."""


class Spool:
    """The folder of pending entries for one database and account.

    Only the account's writer (holding the writer lock) opens it, so the stale temporary
    files it removes at start are leftovers of a crash, never another process's work.
    """

    def __init__(self, directory: Path, *, database_id: str, account: str, exclusive: bool = False) -> None:
        self.directory = directory
        self.database_id = database_id
        self.account = account
        # Entries that could not even be moved aside: skipped until the next start.
        self.skipped: set[Path] = set()
        # True once a listing found nothing and this Spool has added nothing since. Only the
        # account's writer (writer lock or lease) uses the folder, so entries arrive only
        # through put() and adopt(): the next poll need not list the folder again.
        self._known_empty = False
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the spool folder {directory}: {exc.strerror}; set RECORDER_SPOOL_DIR (--spool-dir)"
            ) from None
        if exclusive:
            self._lock()
        self._remove_stale_temporaries()

    def _lock(self) -> None:
        """Hold the folder for this process's lifetime (the OS releases it when the process dies).

        The writer lock already keeps a second writer of this database and account away; this
        one catches a copy of a SQLite file (same database id) recording the same label.
        """
        path = self.directory / "writer.lock"
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot use the spool folder {self.directory}: {exc.strerror or exc}") from None
        holder = hold_pid_lock(descriptor)
        if holder is not None:
            raise ConfigError(
                f"another recorder (pid {holder}) uses the spool folder {self.directory} for account "
                f"{self.account!r} of a database with the same id (a copy of this database file?): "
                "stop it, or give this one another --spool-dir"
            )
        self._lock_descriptor = descriptor

    def put(self, entry: SpooledPoll) -> Path:
        """Write an entry durably and return its path; SpoolError (and no file left) when it cannot."""
        self._known_empty = False  # even a failed put may leave a file behind
        name = f"{time.time_ns():020d}-{label_filename(entry.uid)[:64]}.json"
        final = self.directory / name
        temporary = self.directory / f".{name}.tmp"
        payload = json.dumps({**_encode(entry), "database_id": self.database_id}, sort_keys=True).encode()
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_durably(temporary, payload)
            os.replace(temporary, final)
        except OSError as exc:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:
                pass  # nothing more can be done about a folder we cannot write
            raise SpoolError(f"the spool cannot keep the poll: {exc.strerror or exc} ({self.directory})") from None
        try:
            self._sync_directory()
        except OSError as exc:
            # The entry is written and named; only its survival of a power cut is in doubt.
            log.warning("cannot fsync the spool folder %s: %s", self.directory, exc.strerror or exc)
        return final

    def pending(self) -> list[Path]:
        """Entries waiting to be stored, oldest first; SpoolError when the folder cannot be listed."""
        try:
            names = sorted(path for path in self.directory.glob("*.json") if not path.name.startswith("."))
        except OSError as exc:
            raise SpoolError(f"cannot list the spool folder {self.directory}: {exc.strerror or exc}") from None
        waiting = [path for path in names if path not in self.skipped]
        self._known_empty = not waiting
        return waiting

    def waiting(self) -> list[Path]:
        """pending(), without listing the folder when it is known to be empty (the common case, every poll)."""
        return [] if self._known_empty else self.pending()

    def load(self, path: Path) -> SpooledPoll:
        """Read one entry back: CorruptEntry when unreadable or malformed, ForeignEntry when not ours."""
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_ENTRY_BYTES + 1)
        except OSError as exc:
            raise CorruptEntry(f"cannot read it: {exc.strerror or exc}") from None
        if len(raw) > MAX_ENTRY_BYTES:
            raise CorruptEntry(f"larger than {MAX_ENTRY_BYTES} bytes")
        try:
            data = json.loads(raw, parse_float=Decimal)
        except (ValueError, RecursionError) as exc:
            raise CorruptEntry(f"not JSON: {clean_text(str(exc))[:120]}") from None
        try:
            entry = _decode(data)
        except CorruptEntry:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, InvalidOperation) as exc:
            raise CorruptEntry(f"not a spool entry: {type(exc).__name__} {clean_text(str(exc))[:120]}") from None
        if data.get("database_id") != self.database_id:
            raise ForeignEntry(
                f"written for database {clean_text(str(data.get('database_id')))[:40]}, not this one ({self.database_id})"
            )
        if entry.account != self.account:
            raise ForeignEntry(f"written for account {clean_text(entry.account)[:80]!r}, not {self.account!r}")
        return entry

    def remove(self, path: Path) -> None:
        """Forget an entry once the database holds it."""
        path.unlink(missing_ok=True)
        self._sync_directory()

    def set_aside(self, path: Path, folder: str, reason: str) -> Path | None:
        """Move an entry to `folder/` with one log line; when even that fails, skip it from now on."""
        target = self.directory / folder / path.name
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            if target.exists():
                target = target.with_name(f"{time.time_ns():020d}-{path.name}")
            os.replace(path, target)
            self._sync_directory()
        except OSError as exc:
            self.skipped.add(path)
            log.error(
                "spool entry %s %s, and cannot be moved to %s/ (%s): skipped",
                clean_text(str(path)),
                reason,
                folder,
                exc.strerror or exc,
            )
            return None
        log.error("spool entry %s %s: moved to %s", clean_text(path.name), reason, clean_text(str(target)))
        return target

    def adopt(self, legacy: Path) -> int:
        """Move this account's entries from a spool folder of the URL-keyed layout into this one.

        They were written for the same URL, so for this database; entries of another label
        sharing the old folder (`a/b` and `a_b` shared one) are left for that label to adopt.
        """
        if not legacy.is_dir() or legacy.resolve() == self.directory.resolve():
            return 0
        self._known_empty = False
        try:
            guard = os.open(legacy / "writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return 0
        try:
            try:
                fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.warning("old spool folder %s is in use by an older recorder: left alone", legacy)
                return 0
            moved = 0
            for path in sorted(legacy.glob("*.json")):
                moved += self._adopt_entry(path)
        finally:
            os.close(guard)
        if moved:
            log.info("moved %d spooled poll(s) from the old spool folder %s to %s", moved, legacy, self.directory)
        return moved

    def _adopt_entry(self, path: Path) -> int:
        try:
            data = json.loads(path.read_bytes(), parse_float=Decimal)
        except (OSError, ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and data.get("account") != self.account:
            return 0
        if not isinstance(data, dict) or "database_id" in data:
            self._set_aside_foreign(path, "corrupt", "from the old spool folder cannot be read")
            return 0
        # The old entry's values are kept as written (Decimal as text, times as ISO strings).
        payload = json.dumps({**data, "database_id": self.database_id}, sort_keys=True, default=str).encode()
        temporary = self.directory / f".{path.name}.tmp"
        try:
            _write_durably(temporary, payload)
            os.replace(temporary, self.directory / path.name)
            self._sync_directory()
            path.unlink()
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            log.error("cannot move old spool entry %s: %s", path, exc.strerror or exc)
            return 0
        return 1

    def _set_aside_foreign(self, path: Path, folder: str, reason: str) -> None:
        """Move a file from another folder into this spool's `folder/`, with one log line."""
        target = self.directory / folder / path.name
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(path, target)
        except OSError as exc:
            log.error("spool entry %s %s, and cannot be moved (%s)", path, reason, exc.strerror or exc)
            return
        log.error("spool entry %s %s: moved to %s", path, reason, target)

    def _remove_stale_temporaries(self) -> None:
        for stale in self.directory.glob(".*.tmp"):
            try:
                stale.unlink()
            except OSError as exc:
                log.warning("cannot remove the stale temporary spool file %s: %s", stale, exc.strerror or exc)
            else:
                log.info("removed %s, left by a crash while spooling", stale)

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def _write_durably(path: Path, payload: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(payload)
        while view:
            written = os.write(descriptor, view)
            view = view[written:]
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


def _decode(data: Any) -> SpooledPoll:
    """An entry from its JSON, every field checked for its type: CorruptEntry names the first wrong one."""
    data = _mapping(data, "the entry")
    fetched = None
    raw = data.get("fetched")
    if raw is not None:
        raw = _mapping(raw, "fetched")
        assets = []
        for item in _typed(raw, "assets", list):
            item = _mapping(item, "an asset")
            amounts = {name: Decimal(_typed(item, name, str)) for name in AMOUNT_NAMES}
            for name, amount in amounts.items():
                check_amount(amount, name)
            assets.append(
                AssetBalance(
                    asset=_typed(item, "asset", str),
                    **amounts,
                    margin_available=_typed(item, "margin_available", bool),
                    update_time=_time(item, "update_time"),
                )
            )
        fetched = FetchedBalances(
            account_alias=_typed(raw, "account_alias", str),
            endpoint=_typed(raw, "endpoint", str),
            used_weight=_integer(raw, "used_weight"),
            assets=tuple(assets),
        )
    failure = None
    if data.get("failure") is not None:
        raw = _mapping(data["failure"], "failure")
        unknown = set(raw) - {"error_class", "message", "http_status", "code", "used_weight"}
        if unknown:
            raise CorruptEntry(f"failure has unknown fields {sorted(map(str, unknown))[:3]}")
        failure = PollFailure(
            error_class=_typed(raw, "error_class", str),
            message=_typed(raw, "message", str),
            http_status=_integer(raw, "http_status"),
            code=_integer(raw, "code"),
            used_weight=_integer(raw, "used_weight"),
        )
    if (fetched is None) == (failure is None):
        raise CorruptEntry("an entry holds either balances or a failure")
    return SpooledPoll(
        uid=_typed(data, "uid", str),
        account=_typed(data, "account", str),
        base_url=_typed(data, "base_url", str),
        endpoint=_typed(data, "endpoint", str),
        started_at=_time(data, "started_at"),
        finished_at=_time(data, "finished_at"),
        fetched=fetched,
        failure=failure,
    )


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise CorruptEntry(f"{what} is not a JSON object")
    return value


def _typed(data: dict[str, Any], name: str, kind: type) -> Any:
    if name not in data:
        raise CorruptEntry(f"{name} is missing")
    value = data[name]
    # bool is an int in Python, and an int is no bool: both must be exactly what was written.
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CorruptEntry(f"{name} is not {kind.__name__}")
    return value


def _integer(data: dict[str, Any], name: str) -> int | None:
    value = data.get(name)
    if value is None:
        return None
    return _typed(data, name, int)


def _time(data: dict[str, Any], name: str) -> datetime:
    value = datetime.fromisoformat(_typed(data, name, str))
    if value.utcoffset() is None:
        raise CorruptEntry(f"{name} has no UTC offset")
    return value
