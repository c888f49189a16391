"""The run loop with several accounts: a hung account holds one worker and delays no other."""

from __future__ import annotations

import os
import signal
import threading
import time

from sqlalchemy import select

from recorder.exchange import BinanceFuturesClient
from recorder.models import Account, Poll
from recorder.scheduling import Slot, WeightBudget
from recorder.service import Member, Recorder, run_accounts
from recorder.simulator import ExchangeSimulator


def ok_polls(sessions, label: str) -> int:
    with sessions() as session:
        return len(session.scalars(select(Poll).join(Account).where(Account.label == label, Poll.outcome == "ok")).all())


def test_a_hung_account_does_not_delay_the_others(sessions):
    hung_exchange = ExchangeSimulator(latency=600).start()  # answers long after the test is over
    exchange = ExchangeSimulator().start()
    try:
        members = []
        for label, sim in (("hung", hung_exchange), ("fast", exchange)):
            sim.add_account(api_key=f"key-{label}", api_secret=f"secret-{label}", account_alias=label)
            client = BinanceFuturesClient(base_url=sim.base_url, api_key=f"key-{label}", api_secret=f"secret-{label}",
                                          timeout=600, balance_path="/fapi/v3/balance")
            members.append(Member(Recorder(client, sessions, label), Slot(phase=time.time(), interval=0.3), weight=6))
        done = threading.Event()

        def stop_when_fast_polled_five_times() -> None:
            while not done.wait(0.1):
                if ok_polls(sessions, "fast") >= 5:
                    os.kill(os.getpid(), signal.SIGTERM)
                    return

        watcher = threading.Thread(target=stop_when_fast_polled_five_times)
        watcher.start()
        try:
            result = run_accounts(members, budget=WeightBudget(2400), first_at=time.time(), stop_after=120)
        finally:
            done.set()
            watcher.join()
        # The hung account's one request is still waiting: every other slot of it was skipped.
        assert ok_polls(sessions, "fast") >= 5
        assert ok_polls(sessions, "hung") == 0
        assert result.abandoned_poll and result.exit_code == 0
        assert len([r for r in hung_exchange.requests_log]) <= 1
    finally:
        hung_exchange.stop()
        exchange.stop()
