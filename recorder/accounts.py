"""The accounts file: a TOML list of accounts, parsed and validated into one Settings per account.

    database_url = "postgresql://recorder@db/recorder"   # optional: process-wide settings
    [defaults]                                          # optional: shared by every account
    endpoint = "v3"
    interval = 60
    ledger_interval = 600                               # income-ledger syncs (recorder run)
    [[accounts]]
    label = "alice"
    api_key_env = "ALICE_API_KEY"                       # credentials only by reference:
    api_secret_env = "ALICE_API_SECRET"                 # an environment variable, a file, a key
    [[accounts]]
    label = "bob"
    api_key_env = "BOB_API_KEY"
    private_key_path = "/etc/recorder/bob.pem"

Parsing reads no secret: `recorder accounts` lists the file without the credentials.
`AccountEntry.settings()` resolves them (environment variables, files) when a recorder starts.
Values go through config.py's validation, so a file and the environment obey the same rules;
an error names the file, the line and the key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recorder.config import Settings, validated_settings
from recorder.errors import ConfigError

# Keys an account (or [defaults]) may set, beside its label and credential sources.
EXCHANGE_KEYS = ("endpoint", "base_url", "interval", "recv_window", "timeout", "ledger_interval")
CREDENTIAL_KEYS = ("api_key_env", "api_secret_env", "api_secret_file", "private_key_path", "private_key_passphrase_env")
# Process-wide keys at the top of the file; the environment and the command line override them.
PROCESS_KEYS = ("database_url", "spool_dir", "weight_limit")
ACCOUNT_KEYS = ("label", *EXCHANGE_KEYS, *CREDENTIAL_KEYS)
# A secret written into the file would sit in backups and version control: refused outright.
INLINE_SECRETS = {
    "api_key": "api_key_env",
    "api_secret": "api_secret_env or api_secret_file",
    "secret": "api_secret_env or api_secret_file",
    "private_key": "private_key_path",
    "private_key_passphrase": "private_key_passphrase_env",
    "passphrase": "private_key_passphrase_env",
}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# config.py's messages start with the environment variable and option they came from.
_SOURCE_PREFIX = re.compile(r"^[A-Z_]+ \(--[a-z-]+\) ")


@dataclass(frozen=True)
class AccountEntry:
    """One account of the file: its label, exchange settings and where its credentials come from."""

    label: str
    exchange: dict[str, Any]  # the validated-once raw values of EXCHANGE_KEYS, [defaults] merged in
    settings_base: Settings
    api_key_env: str
    api_secret_env: str | None
    api_secret_file: str | None
    private_key_path: str | None
    private_key_passphrase_env: str | None
    where: str  # "FILE line N" of its [[accounts]] header, for errors found later

    @property
    def credential_source(self) -> str:
        """Where the key and secret come from, naming variables and files, never their content."""
        if self.api_secret_env:
            secret = f"env {self.api_secret_env}"
        elif self.api_secret_file:
            secret = f"file {self.api_secret_file}"
        else:
            secret = f"key {self.private_key_path}"
        return f"env {self.api_key_env} + {secret}"

    def settings(self, environ: Mapping[str, str], process: Settings) -> Settings:
        """The account's complete Settings, credentials read from the environment and files now.

        `process` carries the process-wide values (database, spool folder, weight limit).
        """
        raw: dict[str, Any] = {name: getattr(process, name) for name in PROCESS_KEYS}
        raw.update({name: getattr(process, name) for name in OPERATIONS_KEYS if getattr(process, name) is not None})
        # --ledger-interval / RECORDER_LEDGER_INTERVAL for every account, unless the file sets it for this one.
        raw["ledger_interval"] = process.ledger_interval
        raw.update(self.exchange)
        raw["account"] = self.label
        raw["api_key"] = self._variable(environ, self.api_key_env, "api_key_env")
        if self.api_secret_env:
            raw["api_secret"] = self._variable(environ, self.api_secret_env, "api_secret_env")
        if self.api_secret_file:
            raw["api_secret_file"] = self.api_secret_file
        if self.private_key_path:
            raw["private_key_path"] = self.private_key_path
        if self.private_key_passphrase_env:
            raw["private_key_passphrase"] = self._variable(
                environ, self.private_key_passphrase_env, "private_key_passphrase_env"
            )
        try:
            return validated_settings(raw)
        except ConfigError as error:
            raise ConfigError(f"{self.where}: account {self.label!r}: {_bare(error)}") from None

    def _variable(self, environ: Mapping[str, str], name: str, key: str) -> str:
        value = environ.get(name, "").strip()
        if not value:
            raise ConfigError(f"{self.where}: account {self.label!r}: {key}: environment variable {name} is not set")
        return value


@dataclass(frozen=True)
class AccountsFile:
    """A parsed accounts file: process-wide settings and the accounts, in file order."""

    path: str
    process: dict[str, Any]
    accounts: tuple[AccountEntry, ...]


def load_accounts_file(path: str) -> AccountsFile:
    """Read and validate the accounts file; ConfigError naming the file, line and key if it is wrong."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read the accounts file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the accounts file is not UTF-8 text") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message already ends with "(at line L, column C)".
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_accounts(document, text, path)


def parse_accounts(document: dict[str, Any], text: str, path: str) -> AccountsFile:
    """Validate a decoded accounts file; `text` is its source, to name lines in errors."""
    lines = _Lines(text, path)
    for key in document:
        if key not in (*PROCESS_KEYS, "defaults", "accounts"):
            _refuse_key(lines, None, key, "top level", (*PROCESS_KEYS, "defaults", "accounts"))
    process = _process_settings(document, lines)
    defaults = document.get("defaults", {})
    if not isinstance(defaults, dict):
        raise ConfigError(f"{lines.where(None, 'defaults')}: defaults must be a table ([defaults])")
    for key in defaults:
        if key not in EXCHANGE_KEYS:
            _refuse_key(lines, "defaults", key, "[defaults]", EXCHANGE_KEYS)
    entries = document.get("accounts")
    if not isinstance(entries, list) or not entries or not all(isinstance(entry, dict) for entry in entries):
        raise ConfigError(f"{lines.where(None, 'accounts')}: the file needs at least one [[accounts]] table")
    accounts: list[AccountEntry] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        account = _account(index, entry, defaults, lines)
        if account.label in seen:
            raise ConfigError(
                f"{lines.where(index, 'label')}: duplicate label {account.label!r} "
                f"(also accounts[{seen[account.label]}]): each account needs its own label"
            )
        seen[account.label] = index
        accounts.append(account)
    return AccountsFile(path=path, process=process, accounts=tuple(accounts))


def _process_settings(document: dict[str, Any], lines: _Lines) -> dict[str, Any]:
    process = {key: document[key] for key in PROCESS_KEYS if key in document}
    for key, value in process.items():
        _check_value(lines, None, key, value)
    return process


def _account(index: int, entry: dict[str, Any], defaults: dict[str, Any], lines: _Lines) -> AccountEntry:
    for key in entry:
        if key not in ACCOUNT_KEYS:
            _refuse_key(lines, index, key, f"accounts[{index}]", ACCOUNT_KEYS)
    if "label" not in entry:
        raise ConfigError(f"{lines.where(index, None)}: accounts[{index}] has no label")
    label = entry["label"]
    if not isinstance(label, str) or not label.strip() or len(label.strip()) > 64:
        raise ConfigError(f"{lines.where(index, 'label')}: accounts[{index}].label must be text of 1 to 64 characters")
    label = label.strip()
    for key in CREDENTIAL_KEYS:
        if key in entry and (not isinstance(entry[key], str) or not entry[key].strip()):
            raise ConfigError(f"{lines.where(index, key)}: account {label!r}: {key} must be a non-empty string")
        if key.endswith("_env") and key in entry and not _ENV_NAME.fullmatch(entry[key].strip()):
            raise ConfigError(
                f"{lines.where(index, key)}: account {label!r}: {key} must name an environment variable, "
                f"like {label.upper().replace('-', '_')}_API_KEY"
            )
    if "api_key_env" not in entry:
        raise ConfigError(f"{lines.where(index, None)}: account {label!r} needs api_key_env (the variable holding its API key)")
    sources = [key for key in ("api_secret_env", "api_secret_file", "private_key_path") if key in entry]
    if len(sources) != 1:
        found = "none" if not sources else " and ".join(sources)
        raise ConfigError(
            f"{lines.where(index, sources[-1] if sources else None)}: account {label!r} needs exactly one of "
            f"api_secret_env, api_secret_file, private_key_path (found {found})"
        )
    merged = {key: value for key, value in defaults.items()}
    merged.update({key: entry[key] for key in EXCHANGE_KEYS if key in entry})
    for key, value in merged.items():
        _check_value(lines, index if key in entry else "defaults", key, value)
    base = validated_settings({**merged, "account": label})
    credential = {key: entry[key].strip() for key in CREDENTIAL_KEYS if key in entry}
    return AccountEntry(
        label=label,
        exchange=merged,
        settings_base=base,
        api_key_env=credential["api_key_env"],
        api_secret_env=credential.get("api_secret_env"),
        api_secret_file=credential.get("api_secret_file"),
        private_key_path=credential.get("private_key_path"),
        private_key_passphrase_env=credential.get("private_key_passphrase_env"),
        where=lines.where(index, None),
    )


def _check_value(lines: _Lines, table: int | str | None, key: str, value: Any) -> None:
    """Validate one value with config.py's rules; the error names the file, line and key."""
    if isinstance(value, (dict, list)) or (isinstance(value, bool) and key != "endpoint"):
        raise ConfigError(f"{lines.where(table, key)}: {_key_name(table, key)} must be a {_kind(key)}, not {type(value).__name__}")
    if key in ("interval", "timeout", "recv_window", "weight_limit", "ledger_interval") and not isinstance(value, (int, float)):
        raise ConfigError(f"{lines.where(table, key)}: {_key_name(table, key)} must be a {_kind(key)}, not {value!r}")
    try:
        validated_settings({key: value})
    except ConfigError as error:
        raise ConfigError(f"{lines.where(table, key)}: {_key_name(table, key)}: {_bare(error)}") from None


def _kind(key: str) -> str:
    return "number" if key in ("interval", "timeout", "recv_window", "weight_limit", "ledger_interval") else "string"


def _key_name(table: int | str | None, key: str) -> str:
    if table is None:
        return key
    return f"{table}.{key}" if isinstance(table, str) else f"accounts[{table}].{key}"


def _refuse_key(lines: _Lines, table: int | str | None, key: str, place: str, allowed: tuple[str, ...]) -> None:
    if key in INLINE_SECRETS:
        raise ConfigError(
            f"{lines.where(table, key)}: {place}: {key} is a secret written into the file; refer to it with "
            f"{INLINE_SECRETS[key]} instead"
        )
    raise ConfigError(f"{lines.where(table, key)}: {place}: unknown key {key!r} (known: {', '.join(allowed)})")


def _bare(error: ConfigError) -> str:
    """config.py's message without its leading 'ENV_VAR (--option) ', which a file user never typed."""
    return _SOURCE_PREFIX.sub("", str(error))


class _Lines:
    """Finds the line of a key in the file's text by walking its table headers, for error messages.

    tomllib reports positions for syntax errors only; a semantic error (an unknown key, a bad
    value) is located here: the n-th `[[accounts]]` header, then the key's line inside that table.
    """

    _HEADER = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.lines = text.splitlines()
        # (table, first line index, end line index): table is None (top), "defaults" or an account index.
        self.tables: list[tuple[int | str | None, int, int]] = []
        current: int | str | None = None
        start = 0
        accounts = 0
        for number, line in enumerate(self.lines):
            match = self._HEADER.match(line)
            if match is None:
                continue
            self.tables.append((current, start, number))
            name = match.group(1).strip().strip("\"'")
            if line.lstrip().startswith("[[") and name == "accounts":
                current, accounts = accounts, accounts + 1
            else:
                current = name
            start = number
        self.tables.append((current, start, len(self.lines)))

    def where(self, table: int | str | None, key: str | None) -> str:
        """'FILE line N' of `key` in `table` (its header when key is None); just FILE when not found."""
        for name, start, end in self.tables:
            if name != table:
                continue
            if key is None:
                return f"{self.path} line {start + 1}"
            pattern = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
            for number in range(start, end):
                if pattern.match(self.lines[number]):
                    return f"{self.path} line {number + 1}"
            if table is None and key in ("accounts", "defaults"):
                continue
            return f"{self.path} line {start + 1}"
        return self.path


# The process-wide settings' environment variables: they override the file's top-level values.
PROCESS_ENVIRONMENT = {"RECORDER_DATABASE_URL": "database_url", "RECORDER_SPOOL_DIR": "spool_dir",
                       "RECORDER_WEIGHT_LIMIT": "weight_limit"}
# Operations settings (metrics endpoint, key check) come from the environment and the command
# line only, never the file, and apply to every account of it.
OPERATIONS_ENVIRONMENT = {"RECORDER_METRICS_ADDR": "metrics_addr",
                          "RECORDER_METRICS_ALLOW_REMOTE": "metrics_allow_remote",
                          "RECORDER_REQUIRE_READ_ONLY_KEY": "require_read_only_key",
                          "BINANCE_SPOT_BASE_URL": "spot_base_url"}
OPERATIONS_KEYS = tuple(OPERATIONS_ENVIRONMENT.values())
# The ledger sync's interval: from the environment and the command line for every account; a
# `ledger_interval` in the file's [defaults] or an account's table is more specific and wins.
LEDGER_ENVIRONMENT = {"RECORDER_LEDGER_INTERVAL": "ledger_interval"}


def process_settings(accounts: AccountsFile, environ: Mapping[str, str], overrides: Mapping[str, Any]) -> Settings:
    """Database, spool folder and weight limit: the file's values, then the environment's, then the command line's.

    Also the operations settings and the default ledger interval, from the environment and the command line.
    """
    raw = dict(accounts.process)
    for variable, name in (PROCESS_ENVIRONMENT | OPERATIONS_ENVIRONMENT | LEDGER_ENVIRONMENT).items():
        if environ.get(variable, "") != "":
            raw[name] = environ[variable]
    raw.update({
        name: value for name, value in overrides.items()
        if name in (*PROCESS_KEYS, *OPERATIONS_KEYS, *LEDGER_ENVIRONMENT.values()) and value is not None
    })
    return validated_settings(raw)
