"""Compact poll log: polls keyed by (account_id, finished_at), balances point at that key.

An idle account adds one polls row a minute for years and nothing else, so the row's size
is the recorder's storage cost. The 0001 row carried a surrogate id, a uuid with its unique
index, two secondary indexes, the full endpoint path and a recorded_at that almost always
equalled finished_at: ~299 B per poll on SQLite. Now:

    polls      no id, no uid; PRIMARY KEY (account_id, finished_at), WITHOUT ROWID on
               SQLite (the key is the row); endpoint 'v2'/'v3'; recorded_at kept only
               when the row reached the database more than 1 s after finished_at; no
               secondary index (the key serves every per-account time range).
    balances   poll_id gone: (account_id, observed_at) references the poll's key, and
               UNIQUE (account_id, asset, observed_at) replaces the plain index on the
               same columns. ids are kept: balance_heads.balance_id points at them.
    views      dropped first (they name p.id, p.uid, b.poll_id) and created again:
               latest_balances and balance_changes lose poll_id (observed_at is the
               poll's key now), poll_log loses id and uid and gains recorded_at.

SQLite, inside the caller's transaction with foreign_keys=ON (it cannot be switched off
there): both tables are rebuilt as polls_new / balances_new, and balances_new's foreign
key names polls_new, which RENAME rewrites to polls. The old tables are dropped only once
nothing references their rows (balances before polls, balance_heads emptied into a temp
table and refilled after the renames), so no foreign key is ever violated.
`PRAGMA defer_foreign_keys` does not work here: DROP TABLE's implicit DELETE counts a
violation for every child row, RENAME never uncounts it, and COMMIT then fails although
`PRAGMA foreign_key_check` is clean. balances is never renamed away: RENAME would drag
balance_heads' foreign key along with it.

PostgreSQL: polls is renamed away and created again, so the compact table carries no
dropped columns; balances is altered in place and keeps its id sequence (a balances row
is written per change, not per poll, so its dropped poll_id slot is accepted).

A migration is a frozen snapshot: the view SQL of 0002 and of this revision is copied
here, not imported.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import recorder.db_types

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("latest_balances", "balance_changes", "daily_balances", "poll_log")
AMOUNTS = ("balance", "cross_wallet_balance", "cross_un_pnl", "available_balance", "max_withdraw_amount")
BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# Columns in the order of each layout (recorder.models at this revision; PostgreSQL lays rows out in it).
COMPACT_POLL_COLUMNS = (
    "finished_at, started_at, account_id, used_weight, asset_count, changed_count, outcome, endpoint,"
    " recorded_at, error_class, error_message, http_status, error_code"
)
OLD_POLL_COLUMNS = (
    "id, uid, account_id, started_at, finished_at, outcome, endpoint, asset_count, changed_count,"
    " error_class, error_message, http_status, error_code, used_weight, recorded_at"
)
STATE_NAMES = ("asset", "observed_at", "present", *AMOUNTS, "margin_available", "update_time")
STATE_COLUMNS = ", ".join(STATE_NAMES)
HEAD_COLUMNS = "account_id, asset, balance_id"

TO_SHORT_ENDPOINT = "CASE endpoint WHEN '/fapi/v2/balance' THEN 'v2' WHEN '/fapi/v3/balance' THEN 'v3' END"
TO_FULL_ENDPOINT = "CASE endpoint WHEN 'v2' THEN '/fapi/v2/balance' WHEN 'v3' THEN '/fapi/v3/balance' END"
# recorded_at survives only when later than finished_at + 1 s. SQLite times are fixed-width
# 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text: add the second to the whole-second part (strftime
# rounds fractions to milliseconds) and compare as text.
SQLITE_LATE_RECORDED_AT = (
    "CASE WHEN recorded_at > strftime('%Y-%m-%d %H:%M:%S', substr(finished_at, 1, 19), '+1 second')"
    " || substr(finished_at, 20) THEN recorded_at END"
)
POSTGRES_LATE_RECORDED_AT = "CASE WHEN recorded_at - finished_at > interval '1 second' THEN recorded_at END"
# 0001 made recorded_at NOT NULL; a poll stored at once was recorded when it finished.
OLD_POLL_VALUES = (
    "n, 'migrated-' || CAST(n AS TEXT), account_id, started_at, finished_at, outcome, "
    + TO_FULL_ENDPOINT
    + ", asset_count, changed_count, error_class, error_message, http_status, error_code, used_weight,"
    " COALESCE(recorded_at, finished_at)"
)


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    _drop_views()
    # observed_at becomes the balances row's link to its poll; it was always the poll's
    # finished_at by construction, this makes sure before poll_id goes.
    op.execute(
        "UPDATE balances SET observed_at = (SELECT p.finished_at FROM polls p WHERE p.id = balances.poll_id)"
        " WHERE observed_at <> (SELECT p.finished_at FROM polls p WHERE p.id = balances.poll_id)"
    )
    if sqlite:
        _upgrade_sqlite()
    else:
        _upgrade_postgresql()
    _create_views(sqlite, old=False)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    _drop_views()
    if sqlite:
        _downgrade_sqlite()
    else:
        _downgrade_postgresql()
    _create_views(sqlite, old=True)


# --- SQLite ---------------------------------------------------------------------------------


def _upgrade_sqlite() -> None:
    _create_compact_polls("polls_new")
    op.execute(
        f"INSERT INTO polls_new ({COMPACT_POLL_COLUMNS})"
        " SELECT finished_at, started_at, account_id, used_weight, asset_count, changed_count, outcome, "
        f"{TO_SHORT_ENDPOINT}, {SQLITE_LATE_RECORDED_AT}, error_class, error_message, http_status, error_code"
        " FROM polls ORDER BY account_id, finished_at"
    )
    _create_compact_balances("balances_new", polls="polls_new")
    op.execute(
        f"INSERT INTO balances_new (id, account_id, {STATE_COLUMNS})"
        f" SELECT id, account_id, {STATE_COLUMNS} FROM balances ORDER BY id"
    )
    _replace_sqlite_tables()
    op.create_index(op.f("ix_balances_account_id_observed_at"), "balances", ["account_id", "observed_at"])
    _restore_sqlite_heads()


def _downgrade_sqlite() -> None:
    _create_old_polls("polls_new")
    op.execute(
        f"INSERT INTO polls_new ({OLD_POLL_COLUMNS}) SELECT {OLD_POLL_VALUES} FROM"
        " (SELECT ROW_NUMBER() OVER (ORDER BY finished_at, account_id) AS n, * FROM polls) AS numbered"
    )
    # Only to find each state's poll id below (a scan per balances row otherwise).
    op.execute("CREATE UNIQUE INDEX polls_new_key ON polls_new (account_id, finished_at)")
    _create_old_balances("balances_new", polls="polls_new")
    # A state without its poll leaves poll_id NULL, which NOT NULL refuses: no row is lost.
    op.execute(
        f"INSERT INTO balances_new (id, account_id, poll_id, {STATE_COLUMNS})"
        " SELECT b.id, b.account_id,"
        " (SELECT p.id FROM polls_new p WHERE p.account_id = b.account_id AND p.finished_at = b.observed_at),"
        f" {', '.join(f'b.{name}' for name in STATE_NAMES)}"
        " FROM balances b ORDER BY b.id"
    )
    op.execute("DROP INDEX polls_new_key")
    _replace_sqlite_tables()
    op.create_index(
        op.f("ix_polls_account_id_outcome_finished_at"), "polls", ["account_id", "outcome", "finished_at"]
    )
    op.create_index(op.f("ix_polls_account_id_started_at"), "polls", ["account_id", "started_at"])
    op.create_index(
        op.f("ix_balances_account_id_asset_observed_at"), "balances", ["account_id", "asset", "observed_at"]
    )
    op.create_index(op.f("ix_balances_account_id_observed_at"), "balances", ["account_id", "observed_at"])
    _restore_sqlite_heads()


def _replace_sqlite_tables() -> None:
    """Swap polls_new/balances_new in for polls/balances without violating any foreign key.

    DROP TABLE runs an implicit DELETE: balance_heads is emptied first (its rows saved in a
    temp table for _restore_sqlite_heads) and balances dropped before polls, so every
    dropped row is one nothing references. Renaming polls_new rewrites balances_new's
    REFERENCES polls_new to polls; balance_heads' REFERENCES balances text is untouched
    and names the new balances table once it is renamed.
    """
    op.execute(f"CREATE TEMP TABLE balance_heads_saved AS SELECT {HEAD_COLUMNS} FROM balance_heads")
    op.execute("DELETE FROM balance_heads")
    op.execute("DROP TABLE balances")
    op.execute("DROP TABLE polls")
    op.execute("ALTER TABLE polls_new RENAME TO polls")
    op.execute("ALTER TABLE balances_new RENAME TO balances")


def _restore_sqlite_heads() -> None:
    op.execute(
        f"INSERT INTO balance_heads ({HEAD_COLUMNS}) SELECT {HEAD_COLUMNS} FROM balance_heads_saved"
        " ORDER BY account_id, asset"
    )
    op.execute("DROP TABLE balance_heads_saved")


# --- PostgreSQL -----------------------------------------------------------------------------


def _upgrade_postgresql() -> None:
    op.drop_constraint(op.f("fk_balances_poll_id_polls"), "balances", type_="foreignkey")
    op.drop_constraint(op.f("uq_balances_poll_id_asset"), "balances", type_="unique")
    op.drop_column("balances", "poll_id")
    # Index and constraint names are per schema: free pk_polls for the new table.
    op.rename_table("polls", "polls_0002")
    op.drop_constraint(op.f("pk_polls"), "polls_0002", type_="primary")
    _create_compact_polls("polls")
    op.execute(
        f"INSERT INTO polls ({COMPACT_POLL_COLUMNS})"
        " SELECT finished_at, started_at, account_id, used_weight, asset_count, changed_count, outcome, "
        f"{TO_SHORT_ENDPOINT}, {POSTGRES_LATE_RECORDED_AT}, error_class, error_message, http_status, error_code"
        " FROM polls_0002 ORDER BY account_id, finished_at"
    )
    op.drop_table("polls_0002")
    op.drop_index(op.f("ix_balances_account_id_asset_observed_at"), table_name="balances")
    op.create_unique_constraint(
        op.f("uq_balances_account_id_asset_observed_at"), "balances", ["account_id", "asset", "observed_at"]
    )
    op.create_foreign_key(
        op.f("fk_balances_account_id_polls"),
        "balances",
        "polls",
        ["account_id", "observed_at"],
        ["account_id", "finished_at"],
    )


def _downgrade_postgresql() -> None:
    op.drop_constraint(op.f("fk_balances_account_id_polls"), "balances", type_="foreignkey")
    op.drop_constraint(op.f("uq_balances_account_id_asset_observed_at"), "balances", type_="unique")
    op.rename_table("polls", "polls_0003")
    op.drop_constraint(op.f("pk_polls"), "polls_0003", type_="primary")
    _create_old_polls("polls")
    op.execute(
        f"INSERT INTO polls ({OLD_POLL_COLUMNS}) SELECT {OLD_POLL_VALUES} FROM"
        " (SELECT ROW_NUMBER() OVER (ORDER BY finished_at, account_id) AS n, * FROM polls_0003) AS numbered"
    )
    # polls.id is a BIGSERIAL again: the next poll written by 0002-era code gets max(id) + 1.
    op.execute("SELECT setval(pg_get_serial_sequence('polls', 'id'), COALESCE(max(id), 0) + 1, false) FROM polls")
    op.create_index(
        op.f("ix_polls_account_id_outcome_finished_at"), "polls", ["account_id", "outcome", "finished_at"]
    )
    op.create_index(op.f("ix_polls_account_id_started_at"), "polls", ["account_id", "started_at"])
    op.add_column("balances", sa.Column("poll_id", BIG_ID, nullable=True))
    op.execute(
        "UPDATE balances SET poll_id = p.id FROM polls p"
        " WHERE p.account_id = balances.account_id AND p.finished_at = balances.observed_at"
    )
    # A state without its poll would keep NULL here, which this refuses: no row is lost.
    op.alter_column("balances", "poll_id", existing_type=BIG_ID, nullable=False)
    op.drop_table("polls_0003")
    op.create_foreign_key(op.f("fk_balances_poll_id_polls"), "balances", "polls", ["poll_id"], ["id"])
    op.create_unique_constraint(op.f("uq_balances_poll_id_asset"), "balances", ["poll_id", "asset"])
    op.create_index(
        op.f("ix_balances_account_id_asset_observed_at"), "balances", ["account_id", "asset", "observed_at"]
    )


# --- Tables ---------------------------------------------------------------------------------


def _create_compact_polls(name: str) -> None:
    op.create_table(
        name,
        # Timestamps first: on PostgreSQL an int before them would cost 4 bytes of padding a row.
        sa.Column("finished_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("started_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("used_weight", sa.Integer(), nullable=True),
        sa.Column("asset_count", sa.Integer(), nullable=True),
        sa.Column("changed_count", sa.Integer(), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=8), nullable=False),
        sa.Column("recorded_at", recorder.db_types.UtcDateTime(timezone=True), nullable=True),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.CheckConstraint("outcome IN ('ok', 'failed')", name=op.f("ck_polls_outcome")),
        sa.CheckConstraint("endpoint IN ('v2', 'v3')", name=op.f("ck_polls_endpoint")),
        sa.CheckConstraint("finished_at >= started_at", name=op.f("ck_polls_finished_after_start")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_polls_account_id_accounts")),
        sa.PrimaryKeyConstraint("account_id", "finished_at", name=op.f("pk_polls")),
        sqlite_with_rowid=False,
    )


def _create_old_polls(name: str) -> None:
    op.create_table(
        name,
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("uid", sa.String(length=36), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("started_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("endpoint", sa.String(length=32), nullable=False),
        sa.Column("asset_count", sa.Integer(), nullable=True),
        sa.Column("changed_count", sa.Integer(), nullable=True),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error_code", sa.Integer(), nullable=True),
        sa.Column("used_weight", sa.Integer(), nullable=True),
        sa.Column("recorded_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("outcome IN ('ok', 'failed')", name=op.f("ck_polls_outcome")),
        sa.CheckConstraint("finished_at >= started_at", name=op.f("ck_polls_finished_after_start")),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_polls_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_polls")),
        sa.UniqueConstraint("uid", name=op.f("uq_polls_uid")),
    )


def _state_columns() -> list[sa.Column]:
    return [
        sa.Column("asset", sa.String(length=32), nullable=False),
        sa.Column("observed_at", recorder.db_types.UtcDateTime(timezone=True), nullable=False),
        sa.Column("present", sa.Boolean(), nullable=False),
        *(sa.Column(name, recorder.db_types.ExactDecimal(), nullable=True) for name in AMOUNTS),
        sa.Column("margin_available", sa.Boolean(), nullable=True),
        sa.Column("update_time", recorder.db_types.UtcDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(present AND balance IS NOT NULL AND cross_wallet_balance IS NOT NULL"
            " AND cross_un_pnl IS NOT NULL AND available_balance IS NOT NULL"
            " AND max_withdraw_amount IS NOT NULL AND margin_available IS NOT NULL"
            " AND update_time IS NOT NULL)"
            " OR (NOT present AND balance IS NULL AND cross_wallet_balance IS NULL"
            " AND cross_un_pnl IS NULL AND available_balance IS NULL"
            " AND max_withdraw_amount IS NULL AND margin_available IS NULL"
            " AND update_time IS NULL)",
            name=op.f("ck_balances_amounts_match_presence"),
        ),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], name=op.f("fk_balances_account_id_accounts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_balances")),
    ]


def _create_compact_balances(name: str, polls: str) -> None:
    """SQLite only (PostgreSQL alters balances in place)."""
    op.create_table(
        name,
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        *_state_columns(),
        sa.ForeignKeyConstraint(
            ["account_id", "observed_at"],
            [f"{polls}.account_id", f"{polls}.finished_at"],
            name=op.f("fk_balances_account_id_polls"),
        ),
        sa.UniqueConstraint(
            "account_id", "asset", "observed_at", name=op.f("uq_balances_account_id_asset_observed_at")
        ),
    )


def _create_old_balances(name: str, polls: str) -> None:
    """SQLite only (PostgreSQL alters balances in place)."""
    op.create_table(
        name,
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("poll_id", BIG_ID, nullable=False),
        *_state_columns(),
        sa.ForeignKeyConstraint(["poll_id"], [f"{polls}.id"], name=op.f("fk_balances_poll_id_polls")),
        sa.UniqueConstraint("poll_id", "asset", name=op.f("uq_balances_poll_id_asset")),
    )


# --- Views ----------------------------------------------------------------------------------
# 0002's SQL, copied; old=True gives 0002's exact text, old=False this revision's views.


def _drop_views() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")


def _create_views(sqlite: bool, old: bool) -> None:
    if sqlite:
        statements = [
            _latest(" COLLATE decimal", old),
            _changes(" COLLATE decimal", "decimal_sub({new}, {old})", old),
            SQLITE_DAILY,
            _poll_log(SQLITE_DURATION, old),
        ]
    else:
        statements = [
            _latest("", old),
            _changes("", "({new} - {old})", old),
            POSTGRES_DAILY,
            _poll_log(POSTGRES_DURATION, old),
        ]
    for statement in statements:
        op.execute(statement)


def _amounts(prefix: str, collate: str) -> str:
    return ",\n    ".join(f"{prefix}.{name}{collate} AS {name}" for name in AMOUNTS)


def _latest(collate: str, old: bool) -> str:
    poll_id = ",\n    b.poll_id" if old else ""
    return f"""
CREATE VIEW latest_balances AS
SELECT
    a.label AS account,
    b.account_id,
    b.asset,
    b.observed_at,
    b.present,
    {_amounts("b", collate)},
    b.margin_available,
    b.update_time{poll_id}
FROM balance_heads h
JOIN balances b ON b.id = h.balance_id
JOIN accounts a ON a.id = h.account_id
"""


def _changes(collate: str, subtract: str, old: bool) -> str:
    lags = ",\n        ".join(f"LAG(b.{name}) OVER w AS previous_{name}" for name in AMOUNTS)
    columns = ",\n    ".join(
        f"c.{name}{collate} AS {name},\n"
        f"    c.previous_{name}{collate} AS previous_{name},\n"
        f"    {subtract.format(new=f'c.{name}', old=f'c.previous_{name}')}{collate} AS delta_{name}"
        for name in AMOUNTS
    )
    poll_id = ",\n    c.poll_id" if old else ""
    return f"""
CREATE VIEW balance_changes AS
SELECT
    a.label AS account,
    c.account_id,
    c.asset,
    c.observed_at,
    CASE WHEN NOT c.present THEN 'vanished'
         WHEN c.previous_present THEN 'changed'
         ELSE 'appeared' END AS kind,
    c.present,
    {columns},
    c.margin_available,
    c.previous_margin_available,
    c.update_time,
    c.previous_observed_at{poll_id}
FROM (
    SELECT
        b.*,
        LAG(b.present) OVER w AS previous_present,
        {lags},
        LAG(b.margin_available) OVER w AS previous_margin_available,
        LAG(b.observed_at) OVER w AS previous_observed_at
    FROM balances b
    WINDOW w AS (PARTITION BY b.account_id, b.asset ORDER BY b.observed_at)
) c
JOIN accounts a ON a.id = c.account_id
"""


def _poll_log(duration: str, old: bool) -> str:
    # 0002's poll_log led with the surrogate id and the uid; this revision's ends with recorded_at.
    id_column, uid_column, recorded_at = ("\n    p.id,", "\n    p.uid,", "") if old else ("", "", ",\n    p.recorded_at")
    return f"""
CREATE VIEW poll_log AS
SELECT{id_column}
    a.label AS account,
    p.account_id,{uid_column}
    p.started_at,
    p.finished_at,
    {duration} AS duration_ms,
    p.outcome,
    p.endpoint,
    p.asset_count,
    p.changed_count,
    p.error_class,
    p.error_message,
    p.http_status,
    p.error_code,
    p.used_weight{recorded_at}
FROM polls p
JOIN accounts a ON a.id = p.account_id
"""


# SQLite stores UtcDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' UTC text, so a day's end is
# compared as the text 'YYYY-MM-DD' of the next day, and the duration is computed from
# whole seconds plus the microsecond digits (julianday() keeps only milliseconds).
SQLITE_DAILY = f"""
CREATE VIEW daily_balances AS
WITH RECURSIVE bounds AS (
    SELECT
        h.account_id,
        h.asset,
        (SELECT date(min(b.observed_at)) FROM balances b
          WHERE b.account_id = h.account_id AND b.asset = h.asset) AS first_day,
        (SELECT date(max(p.finished_at)) FROM polls p
          WHERE p.account_id = h.account_id AND p.outcome = 'ok') AS last_day
    FROM balance_heads h
),
days(account_id, asset, day, last_day) AS (
    SELECT account_id, asset, first_day, last_day FROM bounds
     WHERE first_day IS NOT NULL AND last_day IS NOT NULL
    UNION ALL
    SELECT account_id, asset, date(day, '+1 day'), last_day FROM days WHERE day < last_day
)
SELECT
    a.label AS account,
    d.account_id,
    d.asset,
    d.day,
    b.observed_at,
    b.present,
    {_amounts("b", " COLLATE decimal")},
    b.margin_available,
    b.update_time,
    (SELECT p.finished_at FROM polls p
      WHERE p.account_id = d.account_id AND p.outcome = 'ok' AND p.finished_at < date(d.day, '+1 day')
      ORDER BY p.finished_at DESC LIMIT 1) AS last_poll_at
FROM days d
JOIN balances b ON b.id = (
    SELECT b2.id FROM balances b2
     WHERE b2.account_id = d.account_id AND b2.asset = d.asset AND b2.observed_at < date(d.day, '+1 day')
     ORDER BY b2.observed_at DESC LIMIT 1)
JOIN accounts a ON a.id = d.account_id
"""

SQLITE_DURATION = (
    "(CAST(strftime('%s', p.finished_at) AS INTEGER) - CAST(strftime('%s', p.started_at) AS INTEGER)) * 1000.0"
    " + (CAST(substr(p.finished_at, 21, 6) AS INTEGER) - CAST(substr(p.started_at, 21, 6) AS INTEGER)) / 1000.0"
)

# Days are UTC days whatever the session's TimeZone setting: AT TIME ZONE 'UTC' turns a
# timestamptz into UTC wall time, and a UTC midnight back into a timestamptz.
POSTGRES_DAILY = f"""
CREATE VIEW daily_balances AS
WITH bounds AS (
    SELECT
        h.account_id,
        h.asset,
        (SELECT min(b.observed_at) FROM balances b
          WHERE b.account_id = h.account_id AND b.asset = h.asset) AS first_at,
        (SELECT max(p.finished_at) FROM polls p
          WHERE p.account_id = h.account_id AND p.outcome = 'ok') AS last_at
    FROM balance_heads h
),
days AS (
    SELECT bo.account_id, bo.asset, gs::date AS day, (gs::date + 1)::timestamp AT TIME ZONE 'UTC' AS day_end
    FROM bounds bo,
         generate_series((bo.first_at AT TIME ZONE 'UTC')::date, (bo.last_at AT TIME ZONE 'UTC')::date,
                         interval '1 day') AS gs
    WHERE bo.first_at IS NOT NULL AND bo.last_at IS NOT NULL
)
SELECT
    a.label AS account,
    d.account_id,
    d.asset,
    d.day,
    b.observed_at,
    b.present,
    {_amounts("b", "")},
    b.margin_available,
    b.update_time,
    (SELECT p.finished_at FROM polls p
      WHERE p.account_id = d.account_id AND p.outcome = 'ok' AND p.finished_at < d.day_end
      ORDER BY p.finished_at DESC LIMIT 1) AS last_poll_at
FROM days d
CROSS JOIN LATERAL (
    SELECT b2.* FROM balances b2
     WHERE b2.account_id = d.account_id AND b2.asset = d.asset AND b2.observed_at < d.day_end
     ORDER BY b2.observed_at DESC LIMIT 1) b
JOIN accounts a ON a.id = d.account_id
"""

POSTGRES_DURATION = "EXTRACT(EPOCH FROM p.finished_at - p.started_at) * 1000"
