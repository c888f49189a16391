"""Read the recorded history: distinct states, as-of balances, diffs, change log, series, gaps.

Every function takes a Session and an account label, takes and returns aware UTC datetimes,
and returns frozen dataclasses; money stays Decimal end to end. Ranges are half-open,
`since <= t < until`, so consecutive ranges never count an event twice.

One concept per module; each imports only the ones listed above it:
    states      AssetState, the account lookup, history, and the statements the others share
    snapshots   as_of: every asset at one instant (AsOf, Position, Freshness)
    diffs       diff: every asset between two instants (Diff, AssetDiff)
    changelog   changes: every recorded change (Change)
    poll_gaps   gaps: stretches without a successful poll (Gap)
    timeseries  series: one amount per minute, hour or day bucket (SeriesPoint, BUCKETS)
    flat        history and the poll log as text rows in batches, for exports (Flat)
history, changes and series have streaming twins (iter_history, iter_changes, iter_series) that yield rows
as they are read in constant memory; the list-returning names stay for callers that want a list.
Callers import from here: `from recorder import queries`, `from recorder.queries import AsOf`.
"""

from __future__ import annotations

from recorder.queries.changelog import Change, changes, iter_changes
from recorder.queries.diffs import AssetDiff, Diff, diff
from recorder.queries.poll_gaps import Gap, gaps
from recorder.queries.snapshots import AsOf, Freshness, Position, as_of
from recorder.queries.states import DEFAULT_TOLERANCE, UTC, AssetState, find_account, history, iter_history, list_assets
from recorder.queries.timeseries import BUCKETS, MAX_BUCKETS, SeriesPoint, iter_series, series

__all__ = [
    "BUCKETS",
    "DEFAULT_TOLERANCE",
    "MAX_BUCKETS",
    "UTC",
    "AsOf",
    "AssetDiff",
    "AssetState",
    "Change",
    "Diff",
    "Freshness",
    "Gap",
    "Position",
    "SeriesPoint",
    "as_of",
    "changes",
    "diff",
    "find_account",
    "gaps",
    "history",
    "iter_changes",
    "iter_history",
    "iter_series",
    "list_assets",
    "series",
]
