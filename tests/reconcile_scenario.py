"""A hand-built history of polls and income entries whose reconciliation is known to the last digit.

Written with the real store (record_poll) and IncomeEntry rows inserted directly. Times are
UTC on 2026-01-01; `at(m, s)` is minute m, second s. Account "main" (one poll a minute):

    poll  USDT balance (update_time)   BNB (update_time)     entries booked since the previous state
    0:00  100      (-0:30)             1.000 (-5:00)         (REALIZED_PNL +7 at -1:00: before the first state)
    1:00   87.7    (0:30)              0.999 (0:20)          USDT FUNDING_FEE -2.1 @0:10, COMMISSION -0.2 @0:20,
                                                             REALIZED_PNL -10 @0:30 (on the bound);
                                                             BNB COMMISSION -0.001 @0:20 (the BNB fee discount)
    2:00   87.7    (0:30)  cross wallet only changed: no wallet state
    3:00  137.7    (2:50)                                    TRANSFER +50 @2:50; COMMISSION -0.5 @2:55 is after the
                                                             state the exchange served (between it and our poll)
    4:00  137.2    (2:55)                                    the COMMISSION -0.5 @2:55
    5:00  135.7    (4:30)                                    FUNDING_FEE -1 @4:30; -0.5 withheld from the ledger
    6:00  136.2    (5:30)                                    NEW_TYPE_X +0.5 @5:30 (unknown when stored)
    7:00  USDT vanished
    8:00  140.2    (7:30)                                    TRANSFER +4 @7:10
          pending after the last state: FUNDING_FEE -0.3 @9:00

Account "multi" (multi-assets mode):

    0:00  USDT -10 (-1:00)   BTC 0.01 (-1:00)
    1:00  USDT 0   (0:30)    BTC 0.0098 (0:30)    AUTO_EXCHANGE USDT +10 and BTC -0.0002 @0:30, one tranId
    2:00  USDT 1   (0:30)    update_time did not move: the whole +1 is residual
    3:00  USDT 1   (1:50)    TRANSFER +1 @1:50 lands here: change 0, residual -1
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from itertools import count

from sqlalchemy import insert, select

from recorder.models import Account, IncomeEntry
from recorder.records import AssetBalance, FetchedBalances
from recorder.store import ensure_account, record_poll

DAY = datetime(2026, 1, 1, tzinfo=timezone.utc)
LOCAL = "http://127.0.0.1:9"
_tran_ids = count(1_000_000_000_000_000_001)


def at(minute: float, second: float = 0) -> datetime:
    return DAY + timedelta(minutes=minute, seconds=second)


def state(name: str, balance: str, update_time: datetime, *, cross: str | None = None, unpnl: str = "0") -> AssetBalance:
    value = Decimal(balance)
    return AssetBalance(
        asset=name,
        balance=value,
        cross_wallet_balance=Decimal(cross) if cross is not None else value,
        cross_un_pnl=Decimal(unpnl),
        available_balance=value,
        max_withdraw_amount=value,
        margin_available=True,
        update_time=update_time,
    )


def poll(sessions, label: str, when: datetime, *assets: AssetBalance) -> None:
    with sessions.begin() as session:
        account = ensure_account(session, label, LOCAL, when)
        fetched = FetchedBalances(account_alias=label, assets=assets, endpoint="/fapi/v2/balance", used_weight=5)
        record_poll(session, account, fetched, started_at=when - timedelta(milliseconds=200), finished_at=when)


def entry(sessions, label: str, when: datetime, income_type: str, asset: str, amount: str, *,
          known: bool = True, tran_id: int | None = None) -> None:
    with sessions.begin() as session:
        account_id = session.scalars(select(Account.id).where(Account.label == label)).one()
        session.execute(insert(IncomeEntry).values(
            account_id=account_id, time=when, income_type=income_type,
            tran_id=tran_id if tran_id is not None else next(_tran_ids), asset=asset, income=Decimal(amount),
            symbol="BTCUSDT", info="", trade_id="", known_type=known, source="api", recorded_at=when,
        ))


def build(sessions) -> None:
    """Write the whole scenario above."""
    bnb0, bnb1 = state("BNB", "1.000", at(-5)), state("BNB", "0.999", at(0, 20))
    poll(sessions, "main", at(0), state("USDT", "100", at(0, -30)), bnb0)
    entry(sessions, "main", at(-1), "REALIZED_PNL", "USDT", "7")
    for when, income_type, amount in ((at(0, 10), "FUNDING_FEE", "-2.1"), (at(0, 20), "COMMISSION", "-0.2"),
                                      (at(0, 30), "REALIZED_PNL", "-10")):
        entry(sessions, "main", when, income_type, "USDT", amount)
    entry(sessions, "main", at(0, 20), "COMMISSION", "BNB", "-0.001")
    poll(sessions, "main", at(1), state("USDT", "87.7", at(0, 30)), bnb1)
    poll(sessions, "main", at(2), state("USDT", "87.7", at(0, 30), cross="80"), bnb1)
    entry(sessions, "main", at(2, 50), "TRANSFER", "USDT", "50")
    entry(sessions, "main", at(2, 55), "COMMISSION", "USDT", "-0.5")
    poll(sessions, "main", at(3), state("USDT", "137.7", at(2, 50)), bnb1)
    poll(sessions, "main", at(4), state("USDT", "137.2", at(2, 55)), bnb1)
    entry(sessions, "main", at(4, 30), "FUNDING_FEE", "USDT", "-1")
    poll(sessions, "main", at(5), state("USDT", "135.7", at(4, 30)), bnb1)
    entry(sessions, "main", at(5, 30), "NEW_TYPE_X", "USDT", "0.5", known=False)
    poll(sessions, "main", at(6), state("USDT", "136.2", at(5, 30)), bnb1)
    poll(sessions, "main", at(7), bnb1)
    entry(sessions, "main", at(7, 10), "TRANSFER", "USDT", "4")
    poll(sessions, "main", at(8), state("USDT", "140.2", at(7, 30)), bnb1)
    entry(sessions, "main", at(9), "FUNDING_FEE", "USDT", "-0.3")

    poll(sessions, "multi", at(0), state("USDT", "-10", at(-1)), state("BTC", "0.01", at(-1)))
    entry(sessions, "multi", at(0, 30), "AUTO_EXCHANGE", "USDT", "10", tran_id=77)
    entry(sessions, "multi", at(0, 30), "AUTO_EXCHANGE", "BTC", "-0.0002", tran_id=77)
    poll(sessions, "multi", at(1), state("USDT", "0", at(0, 30)), state("BTC", "0.0098", at(0, 30)))
    poll(sessions, "multi", at(2), state("USDT", "1", at(0, 30)), state("BTC", "0.0098", at(0, 30)))
    entry(sessions, "multi", at(1, 50), "TRANSFER", "USDT", "1")
    poll(sessions, "multi", at(3), state("USDT", "1", at(1, 50)), state("BTC", "0.0098", at(0, 30)))
