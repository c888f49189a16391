"""`recorder run` as a service: it polls and syncs the ledger without ever importing the ORM."""

from __future__ import annotations

import subprocess
import sys

# Runs `recorder run` in a child process and stops it (SIGTERM, as a service manager would)
# once the ledger sync, its last job to start, has finished once; then says what it imported.
_RUN_UNTIL_LEDGER_SYNCED = """
import atexit, logging, os, signal, sys

class StopAfterLedgerSync(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("ledger sync ok "):
            os.kill(os.getpid(), signal.SIGTERM)

logging.getLogger("recorder.ledger.sync").addHandler(StopAfterLedgerSync())
imported = lambda prefix: sorted(name for name in sys.modules if name == prefix or name.startswith(prefix + "."))
atexit.register(lambda: print("imported:", imported("sqlalchemy.orm") + imported("recorder.models")
                              + imported("recorder.queries") + imported("alembic"), flush=True))
dialects = lambda: sorted({name.split(".")[2] for name in sys.modules
                           if name.startswith("sqlalchemy.dialects.") and not name.split(".")[2].startswith("_")})
atexit.register(lambda: print("dialects:", dialects(), flush=True))
# With the metrics endpoint: /healthz judges the ledger too (recorder.health), and must not bring the ORM.
sys.argv = ["recorder", "run", "--interval", "1", "--metrics-addr", "127.0.0.1:0"]
from recorder.cli import main
main()
"""


def test_run_polls_and_syncs_the_ledger_without_the_orm(simulator, cli_env, engine):
    """The write path and the metrics endpoint are Core only (recorder.tables) and load one dialect: a
    service never carries the ORM's memory, nor the other database's dialect."""
    result = subprocess.run(
        [sys.executable, "-c", _RUN_UNTIL_LEDGER_SYNCED], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert "poll ok account=default" in result.stderr, result.stderr
    assert "ledger sync ok account=default" in result.stderr, result.stderr
    # atexit runs the last registered first.
    dialects, imported = result.stdout.strip().splitlines()[-2:]
    assert imported == "imported: []"
    # Only the database's own SQLAlchemy dialect: each one costs megabytes for the service's life.
    assert dialects == f"dialects: {[engine.dialect.name]}"
