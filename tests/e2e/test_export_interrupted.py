"""An export stopped by Ctrl-C or SIGTERM leaves no file under its final name, nor a temporary one.

The export runs as the installed `recorder` console script. To stop it mid-way without
racing it, another connection holds an exclusive lock on `balances` (PostgreSQL), so the
export blocks on its first read, after it created its temporary file: the test waits for
both conditions, then signals.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from recorder.db import make_engine, make_sessions
from recorder.records import AssetBalance, FetchedBalances
from recorder.schema import upgrade_to_head
from recorder.store import ensure_account, record_poll

RECORDER = str(Path(sys.executable).with_name("recorder"))
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def wait_for(condition, what: str, process: subprocess.Popen, limit: float = 120.0) -> None:
    """Poll `condition` until true; fail if the export exits first or `limit` seconds pass (a hang)."""
    deadline = time.monotonic() + limit
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the export exited ({process.returncode}) before {what}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"waited {limit} s for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_export_leaves_no_file_under_the_final_name(postgres_db_url, tmp_path, signum, code):
    engine = make_engine(postgres_db_url)
    upgrade_to_head(engine)
    value = Decimal("1.00000000")
    with make_sessions(engine, write=True).begin() as session:
        account = ensure_account(session, "default", "http://127.0.0.1:9", T0)
        balances = (AssetBalance("USDT", value, value, Decimal("0"), value, value, True, T0),)
        record_poll(session, account, FetchedBalances("SgsR", balances, "/fapi/v2/balance", 5),
                    started_at=T0 - timedelta(seconds=1), finished_at=T0)
    engine.dispose()
    out = tmp_path / "history.csv"
    libpq = postgres_db_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(libpq) as locker, psycopg.connect(libpq, autocommit=True) as observer:
        locker.execute("LOCK TABLE balances IN ACCESS EXCLUSIVE MODE")
        process = subprocess.Popen(
            [RECORDER, "export", "--what", "history", "--database-url", postgres_db_url, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            wait_for(lambda: list(tmp_path.glob(".history.csv.*.partial")), "the temporary file exists", process)
            waiting = "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'balances'::regclass"
            wait_for(lambda: observer.execute(waiting).fetchone()[0] > 0, "the export waits on the lock", process)
            process.send_signal(signum)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()  # reaps it and closes the pipes
    assert process.returncode == code, stderr
    assert "no file written" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []
