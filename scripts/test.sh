#!/usr/bin/env bash
# One command for the whole test suite: set up .venv, make sure PostgreSQL is
# up (CI=true: a missing server fails the run), then run pytest in parallel workers
# (pytest-xdist). Arguments go to pytest after ours, so `-n 0` runs in one process.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bootstrap.sh"
export RECORDER_TEST_POSTGRES_URL="${RECORDER_TEST_POSTGRES_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/test}"
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
        for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
    fi
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Most tests wait on subprocesses, HTTP and PostgreSQL rather than the CPU, so more workers
# than cores pay (measured on 2 cores: README, Development). worksteal moves queued tests from
# a busy worker to an idle one, so one slow file does not hold up the end of the run.
workers="${RECORDER_TEST_WORKERS:-4}"
set +e
python -m pytest -n "$workers" --dist worksteal "$@"
status=$?
set -e
# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
if [ "$status" -eq 5 ]; then
    echo "pytest ran no test: failing" >&2
    exit 1
fi
exit "$status"
