"""Every asset's change between two instants: diff, Diff, AssetDiff; deltas are exact Decimals."""

from __future__ import annotations

import decimal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from operator import attrgetter

from sqlalchemy.orm import Session

from recorder.models import AMOUNT_FIELDS, STATE_FIELDS
from recorder.queries.snapshots import Freshness, _as_of
from recorder.queries.states import AssetState

# Exact arithmetic for any two amounts a database can hold: the default context keeps 28
# significant digits and would silently round 123456789012345678901.12345678 - 0.00000001.
# Unbounded precision and exponent make every sum and difference exact; Inexact and
# Rounded are trapped, so a rounding can never pass unnoticed.
EXACT = decimal.Context(
    prec=decimal.MAX_PREC,
    Emax=decimal.MAX_EMAX,
    Emin=decimal.MIN_EMIN,
    traps=[decimal.Inexact, decimal.Rounded, decimal.InvalidOperation, decimal.Overflow],
)
_AMOUNTS = attrgetter(*AMOUNT_FIELDS)


@dataclass(frozen=True)
class AssetDiff:
    """One asset between two instants.

    status: 'appeared', 'vanished', 'changed' or 'unchanged'. `before`/`after` are None
    where the asset was absent (never seen, or vanished); `change` holds after - before per
    amount field, and is None unless the asset was present at both ends.
    """

    asset: str
    before: AssetState | None
    after: AssetState | None
    status: str
    change: Mapping[str, Decimal] | None


@dataclass(frozen=True)
class Diff:
    """Every asset's change between two instants, with the poll evidence at each end."""

    account: str
    start: Freshness
    end: Freshness
    assets: tuple[AssetDiff, ...]


def diff(
    session: Session,
    account: str,
    start: datetime,
    end: datetime,
    *,
    assets: Sequence[str] | None = None,
    tolerance: timedelta | None = None,
) -> Diff:
    """Per asset, the state at `start`, at `end` and the exact change of every amount (end - start).

    Each end's staleness follows the stored schedule unless `tolerance` overrides it.
    """
    before = _as_of(session, account, start, assets, tolerance)
    after = _as_of(session, account, end, assets, tolerance)
    then = {p.asset: _present(p.state) for p in before.positions}
    now = {p.asset: _present(p.state) for p in after.positions}
    rows = []
    for asset in sorted(then.keys() | now.keys()):
        old, new = then.get(asset), now.get(asset)
        if old is None and new is None:
            continue
        rows.append(AssetDiff(asset, old, new, _diff_status(old, new), _delta(old, new)))
    return Diff(account, before.freshness, after.freshness, tuple(rows))


def _present(state: AssetState | None) -> AssetState | None:
    return state if state is not None and state.present else None


def _diff_status(old: AssetState | None, new: AssetState | None) -> str:
    if old is None:
        return "appeared"
    if new is None:
        return "vanished"
    same = all(getattr(old, name) == getattr(new, name) for name in STATE_FIELDS)
    return "unchanged" if same else "changed"


def _delta(old: AssetState | None, new: AssetState | None) -> dict[str, Decimal] | None:
    if old is None or new is None or not old.present or not new.present:
        return None
    return dict(zip(AMOUNT_FIELDS, map(EXACT.subtract, _AMOUNTS(new), _AMOUNTS(old))))
