"""The change log: every recorded change of an asset (Change), with its previous state and delta."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from recorder.queries.diffs import _delta
from recorder.queries.snapshots import _snapshot
from recorder.queries.states import AssetState, history


@dataclass(frozen=True)
class Change:
    """One recorded change of an asset: its previous record, the new one and the delta.

    kind: 'appeared' (first seen, or back after vanishing), 'changed', or 'vanished'.
    `delta` (current - previous per amount field) is None unless both are present.
    """

    asset: str
    observed_at: datetime
    kind: str
    previous: AssetState | None
    current: AssetState
    delta: Mapping[str, Decimal] | None


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
        result.append(Change(state.asset, state.observed_at, kind, before, state, _delta(before, state)))
        previous[state.asset] = state
    return result
