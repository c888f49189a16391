"""The change log: every recorded change of an asset (Change), with its previous state and delta."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from recorder.models import STATE_FIELDS
from recorder.queries.diffs import _delta
from recorder.queries.snapshots import _snapshot
from recorder.queries.states import AssetState, history


@dataclass(frozen=True)
class Change:
    """One recorded change of an asset: its previous record, the new one and the delta.

    kind: 'appeared' (first seen, or back after vanishing), 'changed', or 'vanished'.
    `delta` (current - previous per amount field) is None unless both are present.
    `changed` names every field that differs from the previous record, in schema order
    ('present' first when the asset appeared or vanished; no previous record counts as absent):
    a change of `update_time` alone shows as ('update_time',).
    """

    asset: str
    observed_at: datetime
    kind: str
    previous: AssetState | None
    current: AssetState
    delta: Mapping[str, Decimal] | None
    changed: tuple[str, ...] = ()


def changes(
    session: Session,
    account: str,
    *,
    assets: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Change]:
    """Every change event in [since, until), oldest first, with the previous value and delta."""
    previous: dict[str, AssetState | None] = {}
    if since is not None:
        previous = _snapshot(session, account, since, assets, inclusive=False)[2]
    result = []
    for state in history(session, account, assets=assets, since=since, until=until):
        before = previous.get(state.asset)
        if not state.present:
            kind = "vanished"
        elif before is None or not before.present:
            kind = "appeared"
        else:
            kind = "changed"
        result.append(Change(state.asset, state.observed_at, kind, before, state, _delta(before, state),
                             changed_fields(before, state)))
        previous[state.asset] = state
    return result


def changed_fields(before: AssetState | None, after: AssetState | None) -> tuple[str, ...]:
    """The fields that differ between two records of an asset; None counts as absent."""
    old = {name: getattr(before, name) if before is not None else None for name in ("present", *STATE_FIELDS)}
    new = {name: getattr(after, name) if after is not None else None for name in ("present", *STATE_FIELDS)}
    old["present"] = bool(old["present"])
    new["present"] = bool(new["present"])
    return tuple(name for name in old if _differs(old[name], new[name]))


def _differs(old: object, new: object) -> bool:
    # 10.0 == 10.00 as numbers, but Binance sent another text: show it, the row exists for it.
    if isinstance(old, Decimal) and isinstance(new, Decimal):
        return old != new or str(old) != str(new)
    return old != new
