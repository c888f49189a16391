"""Settings for every command, and the only reader of os.environ."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from recorder.errors import ConfigError

LIVE_BASE_URL = "https://fapi.binance.com"
TESTNET_BASE_URL = "https://demo-fapi.binance.com"
# Account-wide endpoints (/sapi: the API key's permissions) live on the spot host.
LIVE_SPOT_BASE_URL = "https://api.binance.com"
DEFAULT_DATABASE_URL = "sqlite:///recorder.db"
DEFAULT_INTERVAL_SECONDS = 60.0
DEFAULT_RECV_WINDOW_MS = 5000
# Binance's connectors reject recvWindow above 60000 ms (binance-api.md section 2).
MAX_RECV_WINDOW_MS = 60000
BALANCE_ENDPOINTS = {"v2": "/fapi/v2/balance", "v3": "/fapi/v3/balance"}

# Environment variable -> Settings field. CLI options use the same field names.
ENVIRONMENT = {
    "BINANCE_API_KEY": "api_key",
    "BINANCE_API_SECRET": "api_secret",
    "BINANCE_BASE_URL": "base_url",
    "RECORDER_DATABASE_URL": "database_url",
    "RECORDER_INTERVAL": "interval",
    "RECORDER_ACCOUNT": "account",
    "RECORDER_BALANCE_ENDPOINT": "endpoint",
    "RECORDER_RECV_WINDOW": "recv_window",
    "RECORDER_TIMEOUT": "timeout",
    "BINANCE_API_SECRET_FILE": "api_secret_file",
    "BINANCE_PRIVATE_KEY_PATH": "private_key_path",
    "BINANCE_PRIVATE_KEY_PASSPHRASE": "private_key_passphrase",
    "RECORDER_SPOOL_DIR": "spool_dir",
    "RECORDER_WEIGHT_LIMIT": "weight_limit",
    "RECORDER_CONFIG": "config_file",
    "RECORDER_METRICS_ADDR": "metrics_addr",
    "RECORDER_METRICS_ALLOW_REMOTE": "metrics_allow_remote",
    "RECORDER_REQUIRE_READ_ONLY_KEY": "require_read_only_key",
    "BINANCE_SPOT_BASE_URL": "spot_base_url",
    "RECORDER_LEDGER_INTERVAL": "ledger_interval",
}
DEFAULT_SPOOL_DIR = ".recorder-spool"
# Binance's REQUEST_WEIGHT limit per IP per minute (exchangeInfo rateLimits).
DEFAULT_WEIGHT_LIMIT = 2400
# Sane ranges for the numbers people type: past these a value is a typo (`inf`, `1e300`,
# an extra zero), and a guess would run a service that never polls or never times out.
MIN_INTERVAL_SECONDS, MAX_INTERVAL_SECONDS = 0.2, 86400.0
MIN_TIMEOUT_SECONDS, MAX_TIMEOUT_SECONDS = 0.1, 600.0
MIN_WEIGHT_LIMIT, MAX_WEIGHT_LIMIT = 20, 1_000_000
# The income-ledger sync (`recorder run`): every 5 minutes by default; at most daily, far inside
# the three months Binance keeps the ledger.
DEFAULT_LEDGER_INTERVAL_SECONDS = 300.0
MIN_LEDGER_INTERVAL_SECONDS, MAX_LEDGER_INTERVAL_SECONDS = 10.0, 86400.0


@dataclass(frozen=True)
class Settings:
    """Everything a command needs; the secret never shows in repr or logs."""

    api_key: str = field(default="", repr=False)
    api_secret: str = field(default="", repr=False)
    base_url: str = LIVE_BASE_URL
    database_url: str = DEFAULT_DATABASE_URL
    interval: float = DEFAULT_INTERVAL_SECONDS
    account: str = "default"
    endpoint: str = "v2"
    recv_window: int = DEFAULT_RECV_WINDOW_MS
    timeout: float = 10.0
    api_secret_file: str | None = None
    private_key_path: str | None = None
    private_key_passphrase: str | None = field(default=None, repr=False)
    spool_dir: str = DEFAULT_SPOOL_DIR
    weight_limit: int = DEFAULT_WEIGHT_LIMIT
    # The accounts file (recorder.accounts) that `run` polls instead of the one account above.
    config_file: str | None = None
    # Operations (recorder.metrics, recorder.keycheck): "host:port" of /metrics and /healthz.
    metrics_addr: str | None = None
    metrics_allow_remote: bool = False
    require_read_only_key: bool = False
    spot_base_url: str | None = None
    ledger_interval: float = DEFAULT_LEDGER_INTERVAL_SECONDS

    @property
    def balance_path(self) -> str:
        """The balance endpoint path the client polls."""
        return BALANCE_ENDPOINTS[self.endpoint]

    def require_credentials(self) -> None:
        """Fail before any request when the key or the secret (or private key) is missing."""
        has_secret = bool(self.api_secret or self.private_key_path)
        missing = [name for name, value in (("BINANCE_API_KEY", self.api_key), ("BINANCE_API_SECRET", has_secret)) if not value]
        if missing:
            raise ConfigError(
                f"missing {' and '.join(missing)}: set the environment variable or pass "
                + " / ".join("--" + n.lower().replace("binance_", "").replace("_", "-") for n in missing)
            )


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    ignore: frozenset[str] = frozenset(),
) -> Settings:
    """Build Settings from the environment, then CLI overrides (None means not given).

    `ignore` names environment variables this command must not read at all.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for variable, name in ENVIRONMENT.items():
        if variable in ignore:
            continue
        value = environ.get(variable)
        if value not in (None, ""):
            raw[name] = value
    for name, value in (overrides or {}).items():
        if value is not None:
            raw[name] = value
    return _validated(raw)


def _validated(raw: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {}
    for name in ("api_key", "api_secret"):
        if name in raw:
            values[name] = str(raw[name]).strip()
    if "base_url" in raw:
        values["base_url"] = validate_base_url(str(raw["base_url"]))
    if "database_url" in raw:
        values["database_url"] = normalize_database_url(str(raw["database_url"]))
    if "interval" in raw:
        values["interval"] = _number(raw["interval"], "RECORDER_INTERVAL (--interval)", float,
                                     minimum=MIN_INTERVAL_SECONDS, maximum=MAX_INTERVAL_SECONDS, unit="s")
    if "account" in raw:
        account = str(raw["account"]).strip()
        if not account or len(account) > 64:
            raise ConfigError("RECORDER_ACCOUNT (--account) must be 1 to 64 characters")
        values["account"] = account
    if "endpoint" in raw:
        endpoint = str(raw["endpoint"]).strip().lower()
        if endpoint not in BALANCE_ENDPOINTS:
            raise ConfigError(f"RECORDER_BALANCE_ENDPOINT (--endpoint) must be v2 or v3, not {endpoint!r}")
        values["endpoint"] = endpoint
    if "recv_window" in raw:
        values["recv_window"] = _number(raw["recv_window"], "RECORDER_RECV_WINDOW (--recv-window)", int,
                                        minimum=1, maximum=MAX_RECV_WINDOW_MS, unit="ms")
    if "timeout" in raw:
        values["timeout"] = _number(raw["timeout"], "RECORDER_TIMEOUT (--timeout)", float,
                                    minimum=MIN_TIMEOUT_SECONDS, maximum=MAX_TIMEOUT_SECONDS, unit="s")
    if "api_secret_file" in raw:
        if values.get("api_secret"):
            raise ConfigError("set BINANCE_API_SECRET or BINANCE_API_SECRET_FILE, not both")
        from recorder.signing import read_private_file

        values["api_secret"] = read_private_file(str(raw["api_secret_file"]), "the secret file").decode().strip()
        values["api_secret_file"] = str(raw["api_secret_file"])
    if "private_key_path" in raw:
        if values.get("api_secret"):
            raise ConfigError("set an API secret or BINANCE_PRIVATE_KEY_PATH, not both")
        values["private_key_path"] = str(raw["private_key_path"])
    if "private_key_passphrase" in raw:
        values["private_key_passphrase"] = str(raw["private_key_passphrase"])
    if "spool_dir" in raw:
        values["spool_dir"] = str(raw["spool_dir"])
    if "weight_limit" in raw:
        values["weight_limit"] = _number(raw["weight_limit"], "RECORDER_WEIGHT_LIMIT (--weight-limit)", int,
                                         minimum=MIN_WEIGHT_LIMIT, maximum=MAX_WEIGHT_LIMIT)
    if "config_file" in raw:
        values["config_file"] = str(raw["config_file"])
    values.update(_operations(raw))
    if "ledger_interval" in raw:
        values["ledger_interval"] = _number(raw["ledger_interval"], "RECORDER_LEDGER_INTERVAL (--ledger-interval)", float,
                                            minimum=MIN_LEDGER_INTERVAL_SECONDS,
                                            maximum=MAX_LEDGER_INTERVAL_SECONDS, unit="s")
    return Settings(**values)


def validated_settings(raw: Mapping[str, Any]) -> Settings:
    """Settings from raw values by field name, under the same rules as the environment's."""
    return _validated(dict(raw))


def _operations(raw: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, label in (
        ("metrics_allow_remote", "RECORDER_METRICS_ALLOW_REMOTE (--metrics-allow-remote)"),
        ("require_read_only_key", "RECORDER_REQUIRE_READ_ONLY_KEY (--require-read-only-key)"),
    ):
        if name in raw:
            values[name] = _flag(raw[name], label)
    if "metrics_addr" in raw:
        host, port = metrics_address(str(raw["metrics_addr"]))
        if not is_loopback(host) and not values.get("metrics_allow_remote"):
            # Metrics name accounts and show their health: not for every network by accident.
            raise ConfigError(
                f"RECORDER_METRICS_ADDR (--metrics-addr) {host!r} is not a loopback address: "
                "set RECORDER_METRICS_ALLOW_REMOTE=true (--metrics-allow-remote) to serve it beyond this machine"
            )
        values["metrics_addr"] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if "spot_base_url" in raw:
        values["spot_base_url"] = validate_base_url(str(raw["spot_base_url"]), "BINANCE_SPOT_BASE_URL (--spot-base-url)")
    return values


def _flag(value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{label} must be true or false, not {value!r}")


def metrics_address(text: str) -> tuple[str, int]:
    """Parse PORT, :PORT, HOST:PORT or [IPv6]:PORT; a bare port means 127.0.0.1."""
    text = text.strip()
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "127.0.0.1"
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535 or not host or any(c.isspace() for c in host):
        raise ConfigError(
            f"RECORDER_METRICS_ADDR (--metrics-addr) must be PORT or HOST:PORT with a port 0 to 65535, not {text!r}"
        )
    return host, int(port_text)


def spot_base_url_for(settings: Settings) -> str | None:
    """Where GET /sapi/v1/account/apiRestrictions lives for this key; None where it does not exist.

    Binance's futures host (fapi) has no /sapi endpoints: they are on the spot host. The
    simulator serves both on one port. Testnet and unknown hosts have no such endpoint.
    """
    if settings.spot_base_url:
        return settings.spot_base_url
    host = urlsplit(settings.base_url).hostname or ""
    if host == urlsplit(LIVE_BASE_URL).hostname:
        return LIVE_SPOT_BASE_URL
    if is_loopback(host):
        return settings.base_url
    return None


def _number(value: Any, label: str, kind: type, *, minimum: float, maximum: float, unit: str = "") -> Any:
    try:
        number = kind(str(value).strip()) if isinstance(value, str) else kind(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{label} must be {'an integer' if kind is int else 'a number'}, not {value!r}") from None
    unit = f" {unit}" if unit else ""
    # NaN fails every comparison and inf is past any bound: both are refused, never clamped.
    if not math.isfinite(number):
        raise ConfigError(f"{label} must be a finite number from {_plain(minimum)} to {_plain(maximum)}{unit}, not {value!r}")
    if number < minimum:
        raise ConfigError(f"{label} must be at least {_plain(minimum)}{unit}, not {value!r}")
    if number > maximum:
        raise ConfigError(f"{label} must be at most {_plain(maximum)}{unit}, not {value!r}")
    return number


def _plain(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def validate_base_url(url: str, label: str = "BINANCE_BASE_URL (--base-url)") -> str:
    """Accept an http(s) URL with a host and no path, query or credentials; strip the trailing slash."""
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ConfigError(f"{label} is not a valid URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{label} must be an http(s) URL like {LIVE_BASE_URL}, not {url!r}")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(f"{label} must be scheme and host only, like {LIVE_BASE_URL}")
    return url


def is_loopback(hostname: str) -> bool:
    """True for names that can only reach this machine (the simulator, a local proxy)."""
    return hostname in ("localhost", "::1") or hostname.startswith("127.")


def normalize_database_url(url: str) -> str:
    """Pick the psycopg 3 driver for plain postgresql:// URLs, since psycopg2 is not a dependency;
    refuse a URL of another kind or with a port that is not 1 to 65535."""
    url = url.strip()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            url = "postgresql+psycopg://" + url[len(prefix):]
    if not (url.startswith("sqlite") or url.startswith("postgresql+psycopg://")):
        raise ConfigError(
            "RECORDER_DATABASE_URL (--database-url) must be sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    if url.startswith("postgresql+psycopg://"):
        _require_port(url)
    return url


def _require_port(url: str) -> None:
    # SQLAlchemy would fail later with a traceback ("invalid literal for int()"), or libpq
    # with a message that hides which setting was wrong.
    parts = urlsplit(url)
    try:
        port = parts.port  # ValueError for text, a negative number or past 65535
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        shown = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ConfigError(f"RECORDER_DATABASE_URL (--database-url) has an invalid port {shown!r}: use 1 to 65535")


@lru_cache(maxsize=1024)
def environment_of(base_url: str) -> str:
    """Classify where data comes from, so demo or testnet rows never mix into a live account.

    Cached: every poll asks it of its base URL (a handful per process), and the answer is the URL's alone.
    """
    host = urlsplit(base_url).hostname or ""
    if host == urlsplit(LIVE_BASE_URL).hostname:
        return "live"
    if host in ("demo-fapi.binance.com", "testnet.binancefuture.com"):
        return "testnet"
    if is_loopback(host):
        return "local"
    return "custom"
