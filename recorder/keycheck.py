"""The read-only key check at start: ask Binance what the key may do, warn or refuse.

recorder only reads. A key that may also trade, withdraw or move funds is a larger loss if
the machine is compromised, so `recorder run` says so once, loudly (one WARNING line), and
with RECORDER_REQUIRE_READ_ONLY_KEY refuses to start (ConfigError: exit 2). The check costs
one request of weight 1 on the spot API (/sapi/v1/account/apiRestrictions); testnet and
unknown hosts have no such endpoint. A failure of the check itself never stops the recorder
unless the refuse setting is on. Field names are Binance's:
https://developers.binance.com/docs/wallet/account/api-key-permission
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from recorder.config import Settings, spot_base_url_for
from recorder.errors import ConfigError, ExchangeError

log = logging.getLogger(__name__)

# What a key beyond reading may do, by the consequence a stolen key would have.
PERMISSION_GROUPS = {
    "trading": (
        "enableSpotAndMarginTrading",
        "enableFutures",
        "enableMargin",
        "enableVanillaOptions",
        "enablePortfolioMarginTrading",
        "enableFixApiTrade",
    ),
    "withdrawals": ("enableWithdrawals",),
    "internal/universal transfer": ("enableInternalTransfer", "permitsUniversalTransfer"),
}
REFUSE_HINT = "unset RECORDER_REQUIRE_READ_ONLY_KEY (--require-read-only-key) to start anyway"


class _PermissionSource(Protocol):
    def fetch_api_restrictions(self, spot_base_url: str) -> dict[str, bool]: ...


@dataclass(frozen=True)
class KeyCheck:
    """What the check found: `checked` False when it could not be made (with the reason)."""

    checked: bool
    can_read: bool = False
    # Group name -> the Binance fields enabled in it; only groups with one enabled.
    enabled: tuple[tuple[str, tuple[str, ...]], ...] = ()
    reason: str = ""

    @property
    def read_only(self) -> bool:
        """Checked, may read, and may do nothing else."""
        return self.checked and self.can_read and not self.enabled


def classify(restrictions: dict[str, bool]) -> KeyCheck:
    """Group the enabled permissions of an apiRestrictions answer."""
    enabled = tuple(
        (group, tuple(name for name in names if restrictions.get(name) is True))
        for group, names in PERMISSION_GROUPS.items()
    )
    return KeyCheck(True, restrictions.get("enableReading") is True, tuple((g, n) for g, n in enabled if n))


def inspect_key(client: _PermissionSource, settings: Settings) -> KeyCheck:
    """Ask the exchange; a check that cannot be made is a KeyCheck with checked=False, never an exception."""
    spot = spot_base_url_for(settings)
    if spot is None:
        return KeyCheck(False, reason=f"{settings.base_url} has no API-key permission endpoint "
                                      "(set BINANCE_SPOT_BASE_URL if it has one)")
    try:
        return classify(client.fetch_api_restrictions(spot))
    except ExchangeError as error:
        return KeyCheck(False, reason=f"{type(error).__name__}: {error}")


def check_key(client: _PermissionSource, settings: Settings, *, name_account: bool = False) -> KeyCheck:
    """Run the check and act on it: quiet when read-only, one WARNING line otherwise, ConfigError to refuse.

    `name_account` starts every line with the account's label: an accounts file checks many keys.
    """
    found = inspect_key(client, settings)
    refuse = settings.require_read_only_key
    whose = f"account {settings.account!r}: " if name_account else ""
    if not found.checked:
        message = f"{whose}could not check the API key's permissions: {found.reason}"
        if refuse:
            raise ConfigError(f"{message}; refusing to start: {REFUSE_HINT}")
        log.warning("%s; recording anyway", message)
        return found
    problems = []
    if not found.can_read:
        problems.append("it lacks enableReading, so it cannot poll balances")
    if found.enabled:
        listed = "; ".join(f"{group} ({', '.join(names)})" for group, names in found.enabled)
        problems.append(f"it may do more than read: {listed}; use a key with only enableReading")
    if not problems:
        log.debug("%sAPI key is read-only", whose)
        return found
    message = f"{whose}the API key is not a read-only key: " + " and ".join(problems)
    if refuse:
        raise ConfigError(f"{message}; refusing to start: {REFUSE_HINT}")
    log.warning("%s", message)
    return found
